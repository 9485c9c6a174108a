"""The first stage, once: dense, word BM25 and 3-gram BM25 lists, their fusion, and the learned ranker's order.

The server (a batch of one query), `bench`, the tuning in `index` and the reranker's training all call
`FirstStage.run`, so the lists each of them sees are the lists that are served.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from densesearch.retrieval.fusion import EMPTY, Fusion, RankedList, Stage, fuse

if TYPE_CHECKING:  # a dense query imports neither filters, the ranker nor BM25
    from densesearch.retrieval.dense import DenseIndex
    from densesearch.retrieval.filters import Allowed
    from densesearch.retrieval.ranker import LearnedOrder
    from densesearch.retrieval.sparse import Bm25Index

FUSION_DEPTH = 100  # each list's length before fusion, as served


def ranked_lists(index: Bm25Index, queries: Sequence[str], k: int, allowed: Allowed | None = None
                 ) -> list[RankedList]:
    """Each query's BM25 top ``k`` (among the ``allowed`` rows when given)."""
    mask = allowed.mask if allowed is not None else None
    return [RankedList(found.tolist(), scores.tolist()) for found, scores in index.search(queries, k, mask)]


@dataclass
class FirstStage:
    """The served retrievers and how their lists meet: a fusion and, when the index kept one, a learned ranker."""

    dense: DenseIndex
    words: Bm25Index
    grams: Bm25Index | None
    ranker: LearnedOrder | None = None

    def lists(self, texts: Sequence[str], vectors: np.ndarray, depth: int, grams: bool = True,
              param: int | None = None, allowed: Allowed | None = None) -> list[Stage]:
        """Each query's dense, word and (when ``grams`` and the index has them) 3-gram lists, unfused, among the
        ``allowed`` rows when given."""
        texts = list(texts)
        dense = self.dense.search(vectors, depth, param, allowed)
        words = ranked_lists(self.words, texts, depth, allowed)
        third = ranked_lists(self.grams, texts, depth, allowed) if grams and self.grams is not None \
            else [None] * len(texts)
        return [Stage(d, w, g, EMPTY, EMPTY) for d, w, g in zip(dense, words, third, strict=True)]

    def run(self, texts: Sequence[str], vectors: np.ndarray, depth: int, fusion: Fusion, learned: bool = True,
            param: int | None = None, grams: bool = False, allowed: Allowed | None = None) -> list[Stage]:
        """The whole first stage for a batch of queries: lists, ``fusion``, and the learned ranker's order when
        ``learned`` and the index has one (``grams``: search the 3-gram list even when neither needs it), among
        the ``allowed`` rows when given (each list is filtered inside its retriever, so fusion meets full lists)."""
        use_ranker = learned and self.ranker is not None
        stages = self.lists(texts, vectors, depth, grams or fusion.uses_ngrams or use_ranker, param, allowed)
        for text, vector, stage in zip(texts, vectors, stages, strict=True):
            stage.fused = fuse(stage.dense, stage.words, fusion, depth, stage.grams if fusion.uses_ngrams else None)
            stage.ordered = self.ranker.order(text, vector, stage) if use_ranker else stage.fused
        return stages
