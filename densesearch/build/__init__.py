"""densesearch.build"""
