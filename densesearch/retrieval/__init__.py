"""densesearch.retrieval"""
