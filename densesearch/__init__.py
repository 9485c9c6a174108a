"""densesearch: domain-adapted dense retrieval for e-commerce catalogs."""

__version__ = "0.1.0"
