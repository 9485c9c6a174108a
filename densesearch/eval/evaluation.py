"""Evaluate encoders and rankings: exact top-k search, per-query metrics, the dev catalog subset."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from densesearch.eval.metrics import collapse, graded_query_metrics, per_query_metrics
from densesearch.retrieval.encoders import Encoder


def exact_topk(queries: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item indices and scores by inner product (FAISS's brute-force `knn`), ties by lower index."""
    import faiss

    k = min(k, len(items))
    scores, ids = faiss.knn(np.ascontiguousarray(queries, dtype=np.float32),
                            np.ascontiguousarray(items, dtype=np.float32), k, metric=faiss.METRIC_INNER_PRODUCT)
    order = np.lexsort((ids, -scores), axis=1)  # FAISS's heap leaves equal scores in no fixed order
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)


def score_rankings(rankings: Sequence[Sequence[str]], positives: Sequence[str], group_of: dict[str, str],
                   ks: Sequence[int] = (1, 5, 10, 50, 100), variant_aware: bool = False) -> dict[str, np.ndarray]:
    """Per-query metrics; variant-aware scoring counts any item of the positive's variant group."""
    if variant_aware:
        rankings = [collapse(r, group_of) for r in rankings]
        relevant = [{group_of[p]} for p in positives]
    else:
        relevant = [{p} for p in positives]
    return per_query_metrics(rankings, relevant, ks)


def eval_catalog(item_ids: Sequence[str], qrels: dict[str, dict[str, int]], limit: int,
                 seed: int) -> np.ndarray:
    """Catalog rows to evaluate on: all of them up to ``limit``; beyond it every item judged for the
    evaluated queries plus a seeded sample of the rest (the numbers then hold for that subset only)."""
    if len(item_ids) <= limit:
        return np.arange(len(item_ids))
    judged = {item for grades in qrels.values() for item in grades}
    keep = np.array([i for i, item in enumerate(item_ids) if item in judged], dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(item_ids)), keep)
    fill = max(0, limit - len(keep))
    sample = np.random.default_rng(seed).choice(rest, size=min(fill, len(rest)), replace=False)
    return np.sort(np.concatenate([keep, sample]))


def evaluate_judged(encoder: Encoder, item_ids: Sequence[str], item_texts: Sequence[str], queries: Sequence[str],
                    qrels: Sequence[dict[str, int]], min_relevance: int, batch_size: int = 64) -> dict[str, float]:
    """Recall@1/10, MRR@10 (grade >= ``min_relevance``) and graded nDCG@10 by exact search over the items."""
    item_vectors = encoder.encode(item_texts, batch_size=batch_size)
    query_vectors = encoder.encode_queries(queries, batch_size)
    top, _ = exact_topk(query_vectors, item_vectors, 10)
    per_query = graded_query_metrics([[item_ids[i] for i in row] for row in top], qrels, min_relevance, ks=(1, 10))
    return {name: float(per_query[name].mean()) for name in ("recall@1", "recall@10", "mrr@10", "ndcg@10")}
