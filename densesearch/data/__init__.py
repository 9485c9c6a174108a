"""Data in: Amazon Reviews 2023 metadata and reviews, BEIR folders, item texts; `prepare` and the readers of
what it prepared."""
