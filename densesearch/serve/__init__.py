"""densesearch.serve"""
