"""Training examples from graded judgments: positives, and hard negatives behind a false-negative guard.

Judged data gives every query several graded items. Items at or above the positive grade become
positives (one example each). A hard negative for a query is either an item judged at the lowest
grades for it (a real, query-specific near miss) or an item BM25 ranks just below its top hits; the
guard rejects any item judged above the low grade for that query and any item whose text equals one of
its positives (duplicate listings), so a relevant item is never pushed away.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class NegativePlan:
    """Which hard negatives to add: judged low grades, BM25 mined from ``ranks``, or a 50/50 mix."""

    kind: str = "mixed"
    low_grade: int = 1                 # judged negatives: grade <= this ("far below" the positives)
    ranks: tuple[int, int] = (10, 50)  # BM25 negatives come from these ranks: the top ones are often unjudged
    #                                    true matches, so skipping them keeps false negatives out


@dataclass(frozen=True)
class Example:
    """One training row: a query, a positive item and an optional hard-negative item (item ids)."""

    query: str
    positive: str
    negative: str | None = None


def allowed_negatives(candidates: Sequence[str], judged: dict[str, int], low_grade: int,
                      positive_texts: set[str], text_of: dict[str, str]) -> list[str]:
    """The false-negative guard: drop items judged above ``low_grade`` and items with a positive's text."""
    return [item for item in candidates
            if judged.get(item, low_grade) <= low_grade and text_of.get(item) not in positive_texts]


def judged_examples(query_ids: Sequence[str], queries: Sequence[str], qrels: dict[str, dict[str, int]],
                    positive_grade: int, plan: NegativePlan, mined: dict[str, list[str]], text_of: dict[str, str],
                    seed: int) -> list[Example]:
    """One example per (query, item judged >= ``positive_grade``), each with one guarded hard negative.

    ``mined`` holds each query's BM25 candidates (already cut to ``plan.ranks``). A query with no allowed
    negative of the planned kind falls back to the other kind, then to a random catalog item that passes
    the guard (every row needs a negative once any has one).
    """
    rng = random.Random(seed)
    catalog = sorted(text_of)
    examples = []
    for query_id, query in zip(query_ids, queries, strict=True):
        judged = qrels.get(query_id, {})
        positives = sorted(item for item, grade in judged.items() if grade >= positive_grade and item in text_of)
        if not positives:
            continue
        positive_texts = {text_of[item] for item in positives}
        low = allowed_negatives(sorted(i for i, g in judged.items() if g <= plan.low_grade and i in text_of),
                                judged, plan.low_grade, positive_texts, text_of)
        bm25 = allowed_negatives(mined.get(query_id, []), judged, plan.low_grade, positive_texts, text_of)
        for positive in positives:
            negative = pick_negative(plan.kind, low, bm25, rng)
            if negative is None and plan.kind != "none":
                negative = random_negative(catalog, judged, plan.low_grade, positive_texts, text_of, rng)
            examples.append(Example(query, positive, negative))
    return examples


def random_negative(catalog: list[str], judged: dict[str, int], low_grade: int, positive_texts: set[str],
                    text_of: dict[str, str], rng: random.Random, tries: int = 20) -> str | None:
    """A random catalog item that passes the guard (None for a catalog that is all positives)."""
    for _ in range(tries):
        item = rng.choice(catalog)
        if allowed_negatives([item], judged, low_grade, positive_texts, text_of):
            return item
    return None


def pick_negative(kind: str, judged_low: list[str], bm25: list[str], rng: random.Random) -> str | None:
    """One negative of ``kind``; mixed flips a coin between the two sources; an empty source defers."""
    if kind == "none":
        return None
    first, second = (judged_low, bm25) if kind == "judged" else (bm25, judged_low)
    if kind == "mixed" and rng.random() < 0.5:
        first, second = second, first
    pool = first or second
    return rng.choice(pool) if pool else None


def mine_bm25(bm25, query_ids: Sequence[str], queries: Sequence[str], item_ids: Sequence[str],
              ranks: tuple[int, int]) -> dict[str, list[str]]:
    """Each query's BM25 hits at ranks [lo, hi) as item ids (unguarded: `judged_examples` applies the guard)."""
    low, high = ranks
    hits = bm25.search(list(queries), k=high)
    return {query_id: [item_ids[i] for i in found[low:high]]
            for query_id, (found, _) in zip(query_ids, hits, strict=True)}
