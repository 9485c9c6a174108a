"""densesearch.data"""
