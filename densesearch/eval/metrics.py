"""Retrieval metrics (per query, so they can be bootstrapped) and TREC run output.

Definitions follow trec_eval / ranx with binary relevance: recall@k = |relevant in top k| / |relevant|,
mrr@k = 1 / rank of the first relevant item within k (else 0), ndcg@k with gains 1 and IDCG over
min(|relevant|, k) items. Variant-aware scoring first collapses a ranking to variant groups.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np


def recall_at(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    if not relevant:
        return 0.0
    return len(set(ranked[:k]) & relevant) / len(relevant)


def mrr_at(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    for rank, item in enumerate(ranked[:k], start=1):
        if item in relevant:
            return 1.0 / rank
    return 0.0


def ndcg_at(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    return graded_ndcg_at(ranked, dict.fromkeys(relevant, 1), k)


def graded_ndcg_at(ranked: Sequence[str], judged: dict[str, int], k: int) -> float:
    """nDCG@k with linear graded gain (trec_eval's ndcg_cut, ranx's ndcg): unjudged items gain 0."""
    ideal_gains = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    ideal = sum(g / math.log2(rank + 1) for rank, g in enumerate(ideal_gains, start=1))
    if ideal == 0:
        return 0.0
    dcg = sum(judged.get(item, 0) / math.log2(rank + 1) for rank, item in enumerate(ranked[:k], start=1))
    return dcg / ideal


POOL_METRICS = ("judged_ndcg@10", "judged@10")  # what a judgment pool says of a ranking: graded data only


def graded_query_metrics(rankings: Sequence[Sequence[str]], qrels: Sequence[dict[str, int]], min_relevance: int,
                         ks: Sequence[int] = (1, 5, 10, 50, 100)) -> dict[str, np.ndarray]:
    """Per-query recall@k and mrr@10 (relevant: grade >= ``min_relevance``), graded nDCG@10, judged-only nDCG@10
    and judged@10.

    Judged-only nDCG drops unjudged items from the ranking first: pooled judgments come from one engine,
    so unjudged items are not all irrelevant, and counting them as 0 favours the engine that made the pool.
    judged@10 is the share of the top 10 that carries a judgment (any grade): how much of a system's
    ranking the pool can score at all.
    """
    metrics: dict[str, list[float]] = {f"recall@{k}": [] for k in ks}
    metrics["mrr@10"], metrics["ndcg@10"], metrics["judged_ndcg@10"], metrics["judged@10"] = [], [], [], []
    for ranked, judged in zip(rankings, qrels, strict=True):
        relevant = {item for item, grade in judged.items() if grade >= min_relevance}
        for k in ks:
            metrics[f"recall@{k}"].append(recall_at(ranked, relevant, k))
        metrics["mrr@10"].append(mrr_at(ranked, relevant, 10))
        metrics["ndcg@10"].append(graded_ndcg_at(ranked, judged, 10))
        metrics["judged_ndcg@10"].append(graded_ndcg_at([item for item in ranked if item in judged], judged, 10))
        metrics["judged@10"].append(judged_share_at(ranked, judged, 10))
    return {name: np.asarray(values, dtype=np.float64) for name, values in metrics.items()}


def judged_share_at(ranked: Sequence[str], judged: dict[str, int], k: int) -> float:
    """The share of the top ``k`` (of the top ``len(ranked)`` when shorter) that has a judgment; 0 for none."""
    head = list(ranked[:k])
    return sum(item in judged for item in head) / len(head) if head else 0.0


def paired_randomization_p(a: np.ndarray, b: np.ndarray, resamples: int = 10_000, seed: int = 13) -> float:
    """Two-sided p-value that per-query scores ``a`` and ``b`` have the same mean (Fisher's randomization test)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(diff) == 0 or not np.any(diff):
        return 1.0
    observed = abs(diff.mean())
    signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=(resamples, len(diff)))
    extreme = np.count_nonzero(np.abs((signs * diff).mean(axis=1)) >= observed - 1e-12)
    return float((extreme + 1) / (resamples + 1))


def write_trec_qrels(path: Path, qrels: dict[str, dict[str, int]]) -> None:
    """TREC qrels: ``qid 0 docid grade`` (what trec_eval -q and ranx's Qrels.from_file read)."""
    with open(path, "w", encoding="utf-8") as handle:
        for query_id in sorted(qrels):
            for doc_id, grade in sorted(qrels[query_id].items()):
                handle.write(f"{query_id} 0 {doc_id} {grade}\n")


def collapse(ranked: Iterable[str], group_of: dict[str, str]) -> list[str]:
    """A ranking of items as a ranking of their variant groups (first occurrence kept)."""
    seen: dict[str, None] = {}
    for item in ranked:
        seen.setdefault(group_of.get(item, item), None)
    return list(seen)


def per_query_metrics(rankings: Sequence[Sequence[str]], relevant: Sequence[set[str]],
                      ks: Sequence[int] = (1, 5, 10, 50, 100)) -> dict[str, np.ndarray]:
    """Per-query arrays for recall@k (each k), mrr@10 and ndcg@10: binary relevance, i.e. every grade 1."""
    metrics = graded_query_metrics(rankings, [dict.fromkeys(rel, 1) for rel in relevant], 1, ks)
    for name in POOL_METRICS:
        del metrics[name]
    return metrics




def bootstrap_ci(values: np.ndarray, resamples: int = 1000, seed: int = 13,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean."""
    if len(values) == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(values), size=(resamples, len(values)))
    means = values[draws].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def ann_recall(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean overlap of the top-k ids of an approximate search with exact search."""
    hits = [len(set(a[:k]) & set(e[:k])) / k for a, e in zip(approx, exact, strict=True)]
    return float(np.mean(hits)) if hits else 0.0


def write_trec_run(path: Path, query_ids: Sequence[str], rankings: Sequence[Sequence[str]],
                   scores: Sequence[Sequence[float]], tag: str) -> None:
    """TREC run format: ``qid Q0 docid rank score tag``, each ranking in its own (served) order. Tools break ties
    their own way (trec_eval by docid descending, ranx by an unstable sort), so tied scores are written 1e-6 apart
    in rank order (`strictly_decreasing`): every tool then reads the order our metrics scored and `query` served."""
    with open(path, "w", encoding="utf-8") as handle:
        for qid, ranked, ranked_scores in zip(query_ids, rankings, scores, strict=True):
            written = strictly_decreasing(ranked_scores)
            for rank, (doc, score) in enumerate(zip(ranked, written, strict=True), start=1):
                handle.write(f"{qid} Q0 {doc} {rank} {score:.6f} {tag}\n")


def strictly_decreasing(scores: Sequence[float], step: float = 1e-6) -> list[float]:
    """Non-increasing scores rounded to 6 decimals, each tie (at that precision) moved ``step`` below the one
    before it."""
    written: list[float] = []
    for score in scores:
        value = round(float(score), 6)
        if written and value >= written[-1]:
            value = round(written[-1] - step, 6)
        written.append(value)
    return written
