"""densesearch.cli"""
