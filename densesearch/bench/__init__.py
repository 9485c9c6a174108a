"""densesearch.bench"""
