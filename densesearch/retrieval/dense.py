"""The dense index as served: FAISS search at its tuned efSearch / nprobe, IVF-PQ candidates re-scored exactly.

Every caller (a query, `bench`, the tuning in `index`, the reranker's training) searches through `DenseIndex`, so
a number measured anywhere is the number of what is served.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from densesearch.core.config import IndexKind
from densesearch.core.cpu import openmp_threads
from densesearch.retrieval.fusion import RankedList

RERANK_DEPTH = 100  # IVF-PQ candidates re-scored exactly from vectors.npy
IVF_KINDS = (IndexKind.IVFPQ, IndexKind.IVF_HNSW)  # searched by nprobe (inverted lists probed), not efSearch


def search_param_name(kind: str) -> str:
    """The FAISS parameter that trades recall for speed on ``kind`` ('' for exact search)."""
    if kind == IndexKind.FLAT:
        return ""
    return "nprobe" if kind in IVF_KINDS else "efSearch"


def set_search_param(index: Any, kind: str, value: int) -> None:
    """Set efSearch (HNSW kinds) or nprobe (IVF kinds) through FAISS's ParameterSpace."""
    import faiss

    name = search_param_name(kind)
    if name and value:
        faiss.ParameterSpace().set_index_parameter(index, name, int(value))


def rerank_exact(vectors: np.ndarray, query: np.ndarray, candidates: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Re-score candidate rows exactly against float32 vectors (a memmap: only those rows are read)."""
    ids = np.unique(candidates[candidates >= 0])
    scores = np.asarray(vectors[ids] @ query, dtype=np.float32)
    best = np.lexsort((ids, -scores))[:k]
    return ids[best], scores[best]


@dataclass
class DenseIndex:
    """A FAISS index with its kind, its tuned search parameter and (for IVF-PQ's exact re-scoring and the learned
    ranker's cosine feature) the catalog's float32 vectors.

    IVF-PQ keeps 8-bit codes; its top ``RERANK_DEPTH`` is re-scored exactly from the memory-mapped vectors, which
    cost disk, not RAM (only the candidates' rows are read). That recovers the recall the codes lose, at a cost of
    about a tenth of a millisecond, so it is the better choice than a finer PQ.
    """

    index: Any
    kind: str
    vectors: np.ndarray | None = None
    param: int = 0
    threads: int = 1
    rescore: bool = True  # IVF-PQ: re-score the codes' top RERANK_DEPTH exactly (False: the raw codes' order)

    def search(self, queries: np.ndarray, k: int, param: int | None = None) -> list[RankedList]:
        """Each query vector's top ``k`` as served (``param`` overrides the tuned efSearch / nprobe)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.index.d)
        value = param or self.param
        if value:
            set_search_param(self.index, self.kind, value if self.kind in IVF_KINDS else max(value, k))
        with openmp_threads(self.threads or 1):
            if self.kind == IndexKind.IVFPQ and self.rescore:
                return self._reranked(queries, k)
            scores, found = self.index.search(queries, k)
        return [_valid(row, values) for row, values in zip(found, scores, strict=True)]

    def ids(self, queries: np.ndarray, k: int, param: int | None = None) -> np.ndarray:
        """Top-k row indices per query, -1 where fewer were found (the form ANN recall is measured on)."""
        found = np.full((len(queries), k), -1, dtype=np.int64)
        for row, ranked in enumerate(self.search(queries, k, param)):
            found[row, : len(ranked.ids)] = ranked.ids
        return found

    def _reranked(self, queries: np.ndarray, k: int) -> list[RankedList]:
        if self.vectors is None:
            raise ValueError("IVF-PQ search re-scores from the catalog vectors, and none were given")
        candidates = self.index.search(queries, max(RERANK_DEPTH, k))[1]
        lists = []
        for query, row in zip(queries, candidates, strict=True):
            ids, scores = rerank_exact(self.vectors, query, row, k)
            lists.append(RankedList(ids.tolist(), scores.tolist()))
        return lists


def _valid(found: np.ndarray, scores: np.ndarray) -> RankedList:
    keep = found >= 0
    return RankedList(found[keep].tolist(), scores[keep].tolist())
