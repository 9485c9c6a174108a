"""The serving runtime: encoders, FAISS and BM25 search, fusion, the one first stage, the learned ranker's and the
cross-encoder's scorers, and the Searcher. Imports only `core` (checked by import-linter)."""
