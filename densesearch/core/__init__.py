"""densesearch.core"""
