"""densesearch.eval"""
