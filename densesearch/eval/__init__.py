"""Evaluation: metrics (graded nDCG, judged-only nDCG, recall, MRR, TREC files), exact top-k, timing."""
