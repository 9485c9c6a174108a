"""The dense index as served: FAISS search at its tuned efSearch / nprobe, IVF-PQ candidates re-scored exactly.

Every caller (a query, `bench`, the tuning in `index`, the reranker's training) searches through `DenseIndex`, so
a number measured anywhere is the number of what is served.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from densesearch.core.config import IndexKind
from densesearch.core.cpu import openmp_threads
from densesearch.retrieval.fusion import RankedList

if TYPE_CHECKING:  # a query without --where or deletions never loads the filter language
    from densesearch.retrieval.filters import Allowed

RERANK_DEPTH = 100  # IVF-PQ candidates re-scored exactly from vectors.npy
# Filtered search (docs/results.md, "Filtered search"): FAISS walks its structure with the filter's bitmap as an ID
# selector, which finds fewer of the kept items the fewer there are; so the walk widens as the share kept drops, and
# a filter keeping few rows, or a small share of the catalog, is scored exactly over the rows it keeps.
EXACT_ROWS = 4096         # at most this many kept rows: exact scoring costs less than the walk (measured on 2 cores)
GRAPH_MIN_SHARE = 0.02    # below this share kept, even a widened walk misses kept items: exact
WIDEN_SHARE = 0.1         # below this share kept, efSearch / nprobe grow as 0.1 / share (up to MAX_WIDEN times)
MAX_WIDEN = 8
MAX_FILTERED_EF = 2048


def widened(value: int, share: float) -> int:
    """efSearch / nprobe for a filter keeping ``share`` of the catalog: wider below ``WIDEN_SHARE``."""
    return int(value * min(MAX_WIDEN, max(1.0, WIDEN_SHARE / max(share, 1e-9))))


def scores_exactly(allowed: Allowed) -> bool:
    """Whether a filtered search scores the kept rows exactly rather than walking the index."""
    return allowed.count <= EXACT_ROWS or allowed.share < GRAPH_MIN_SHARE
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

    def search(self, queries: np.ndarray, k: int, param: int | None = None,
               allowed: Allowed | None = None) -> list[RankedList]:
        """Each query vector's top ``k`` as served (``param`` overrides the tuned efSearch / nprobe), among the
        ``allowed`` rows only when given: FAISS searches with their bitmap as its ID selector, and a selection
        of few rows is scored exactly over them (`scores_exactly`), and a walk widens as the share kept drops."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.index.d)
        if allowed is not None and self.vectors is not None and scores_exactly(allowed):
            return exact_among(self.vectors, queries, allowed.rows, k)
        value = self._search_value(param, k, allowed)
        if value:
            set_search_param(self.index, self.kind, value)
        selector = selector_params(self.index, self.kind, allowed, value) if allowed is not None else None
        with openmp_threads(self.threads or 1):
            if self.kind == IndexKind.IVFPQ and self.rescore:
                return self._reranked(queries, k, selector)
            scores, found = self.index.search(queries, k, params=selector.params) if selector else \
                self.index.search(queries, k)
        return [_valid(row, values) for row, values in zip(found, scores, strict=True)]

    def _search_value(self, param: int | None, k: int, allowed: Allowed | None) -> int:
        """efSearch (at least k) or nprobe for this search, widened for a filter (0: the index's own). A filtered
        HNSW walk meets about ``share`` kept items per item it visits, so its beam holds at least ``k / share``
        (up to ``MAX_FILTERED_EF``): a hybrid's 100-deep lists need that, a top 10 rarely does."""
        value = param or self.param
        if not value:
            return 0
        if self.kind in IVF_KINDS:
            return widened(value, allowed.share) if allowed is not None else value
        value = max(value, k)
        if allowed is None:
            return value
        return max(widened(value, allowed.share), min(MAX_FILTERED_EF, math.ceil(k / max(allowed.share, 1e-9))))

    def ids(self, queries: np.ndarray, k: int, param: int | None = None) -> np.ndarray:
        """Top-k row indices per query, -1 where fewer were found (the form ANN recall is measured on)."""
        found = np.full((len(queries), k), -1, dtype=np.int64)
        for row, ranked in enumerate(self.search(queries, k, param)):
            found[row, : len(ranked.ids)] = ranked.ids
        return found

    def _reranked(self, queries: np.ndarray, k: int, selector: Selector | None = None) -> list[RankedList]:
        if self.vectors is None:
            raise ValueError("IVF-PQ search re-scores from the catalog vectors, and none were given")
        depth = max(RERANK_DEPTH, k)
        candidates = (self.index.search(queries, depth, params=selector.params) if selector
                      else self.index.search(queries, depth))[1]
        lists = []
        for query, row in zip(queries, candidates, strict=True):
            ids, scores = rerank_exact(self.vectors, query, row, k)
            lists.append(RankedList(ids.tolist(), scores.tolist()))
        return lists


@dataclass
class Selector:
    """FAISS search parameters restricted to a bitmap of rows (the selector and bitmap kept alive with them)."""

    params: Any
    selector: Any
    bitmap: np.ndarray


def selector_params(index: Any, kind: str, allowed: Allowed, value: int) -> Selector:
    """Search parameters for ``index`` at efSearch / nprobe ``value`` (0: the index's own) that keep only the
    ``allowed`` rows (parameters passed to a FAISS search replace the index's settings, so both are set)."""
    import faiss

    bitmap = allowed.bitmap
    selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))  # n: its bytes
    if kind in IVF_KINDS:
        params = faiss.SearchParametersIVF(sel=selector, nprobe=value or faiss.extract_index_ivf(index).nprobe)
    elif kind == IndexKind.FLAT:
        params = faiss.SearchParameters(sel=selector)
    else:
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=value or faiss.downcast_index(index).hnsw.efSearch)
    return Selector(params, selector, bitmap)


def exact_among(vectors: np.ndarray, queries: np.ndarray, rows: np.ndarray, k: int) -> list[RankedList]:
    """Each query's top ``k`` of ``rows`` by exact inner product (ties: lower row first)."""
    if len(rows) == 0:
        return [RankedList([], []) for _ in queries]
    scores = np.asarray(vectors[rows], dtype=np.float32) @ queries.T
    lists = []
    for column in scores.T:
        top = np.argpartition(-column, k - 1)[:k] if len(column) > k else np.arange(len(column))
        top = top[np.lexsort((rows[top], -column[top]))]
        lists.append(RankedList(rows[top].tolist(), column[top].tolist()))
    return lists


def _valid(found: np.ndarray, scores: np.ndarray) -> RankedList:
    keep = found >= 0
    return RankedList(found[keep].tolist(), scores[keep].tolist())
