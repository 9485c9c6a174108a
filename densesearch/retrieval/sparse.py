"""BM25 over item texts: `bm25s` (fast, sparse matrices) or `rank-bm25` (the reference implementation).

Both backends share one tokenizer (lowercase words, English stopwords, Snowball stemming) and the
same scoring (Robertson BM25, k1=1.2, b=0.75), so they rank alike and either can be served.
bm25s builds the index; its term-score matrix is then saved and served with numpy alone.

A second lexical index scores character 3-grams of the words (``NgramTokenizer``): it matches what
shoppers type but word BM25 cannot, such as typos ("saww horse"), joined or split words and partial model
numbers. Hybrid search can fuse it in (``index`` decides on dev).
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from densesearch.core.errors import BadInput

K1, B = 1.2, 0.75
ROWS_FILE = "rows.npy"  # an index over the live rows only (after deletes): each document's row in the index
NGRAM, NGRAM_K1, NGRAM_B = 3, 0.9, 0.4  # chosen on Home Depot dev among (3, 4, 3+4, 2+3) x three (k1, b)
_TOKEN_RE = re.compile(r"(?u)\b\w\w+\b")
_WORD_RE = re.compile(r"(?u)\w+")


class Tokenizer:
    """Lowercase word tokens without English stopwords, Snowball-stemmed."""

    def __init__(self, stopwords: Sequence[str] | None = None) -> None:
        import Stemmer

        if stopwords is None:
            from bm25s.stopwords import STOPWORDS_EN

            stopwords = STOPWORDS_EN
        self.stopwords = frozenset(stopwords)
        self.stem = Stemmer.Stemmer("english").stemWords

    def __call__(self, text: str) -> list[str]:
        return self.stem([t for t in _TOKEN_RE.findall(text.lower()) if t not in self.stopwords])

    def describe(self) -> dict:
        return {"tokenizer": "words", "stemmer": "snowball-english", "stopwords": sorted(self.stopwords)}


class NgramTokenizer:
    """Character n-grams of each lowercase word, with '#' marking the word's ends ("saw" -> #sa saw aw#)."""

    def __init__(self, n: int = NGRAM) -> None:
        self.n = n

    def __call__(self, text: str) -> list[str]:
        grams: list[str] = []
        for word in _WORD_RE.findall(text.lower()):
            marked = f"#{word}#"
            grams.extend(marked[i:i + self.n] for i in range(max(1, len(marked) - self.n + 1)))
        return grams

    def describe(self) -> dict:
        return {"tokenizer": "char-ngrams", "n": self.n}


def tokenizer_from(meta: dict) -> Tokenizer | NgramTokenizer:
    """The tokenizer a saved index describes (indexes saved before n-grams existed are word indexes)."""
    if meta.get("tokenizer", "words") == "char-ngrams":
        return NgramTokenizer(int(meta["n"]))
    return Tokenizer(meta.get("stopwords"))


@dataclass
class TermScores:
    """bm25s's precomputed per-term document scores (a CSC matrix), served with numpy alone.

    Loading bm25s pulls in scipy (and numba where installed): half a second of a cold query. The
    matrix is saved as plain .npy files and memory-mapped, so a query reads only its terms' columns.
    """

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    vocab: dict[str, int]
    size: int

    @classmethod
    def from_bm25s(cls, engine) -> TermScores:
        scores = engine.scores
        return cls(np.asarray(scores["data"], dtype=np.float32), np.asarray(scores["indices"]),
                   np.asarray(scores["indptr"]), dict(engine.vocab_dict), int(scores["num_docs"]))

    def get_scores(self, tokens: Sequence[str]) -> np.ndarray:
        """Every document's score: the query terms' columns summed in one ``bincount`` (a term repeated in the
        query counts each time, as BM25 scores it; summed in float64, then float32)."""
        spans = [(int(self.indptr[term]), int(self.indptr[term + 1]))
                 for term in (self.vocab.get(token) for token in tokens) if term is not None]
        if not spans:
            return np.zeros(self.size, dtype=np.float32)
        documents = np.concatenate([self.indices[start:end] for start, end in spans])
        weights = np.concatenate([self.data[start:end] for start, end in spans])
        return np.bincount(documents, weights=weights, minlength=self.size).astype(np.float32)

    def save(self, directory: Path) -> None:
        for name in ("data", "indices", "indptr"):
            np.save(directory / f"{name}.npy", getattr(self, name))
        (directory / "vocab.json").write_text(json.dumps(self.vocab, ensure_ascii=False))


@dataclass
class Bm25Index:
    """A BM25 index with one search method for either backend."""

    backend: str
    engine: object
    size: int
    tokenizer: Tokenizer | NgramTokenizer
    k1: float = K1
    b: float = B
    method: str = "robertson"
    rows: np.ndarray | None = None  # each document's row in the index (None: document i is row i)

    @classmethod
    def build(cls, texts: Sequence[str], backend: str = "bm25s") -> Bm25Index:
        tokenizer = Tokenizer()
        return cls.from_tokens([tokenizer(t) or ["__empty__"] for t in texts], backend, tokenizer)

    @classmethod
    def build_ngrams(cls, texts: Sequence[str]) -> Bm25Index:
        """BM25 over character 3-grams, on bm25s with Lucene's idf: a 3-gram in over half the items keeps a small
        positive weight (Robertson's idf turns negative there). k1 and b as measured best for product titles."""
        tokenizer = NgramTokenizer()
        return cls.from_tokens([tokenizer(t) or ["__empty__"] for t in texts], "bm25s", tokenizer,
                               k1=NGRAM_K1, b=NGRAM_B, method="lucene")

    @classmethod
    def from_tokens(cls, tokens: Sequence[list[str]], backend: str = "bm25s",
                    tokenizer: Tokenizer | NgramTokenizer | None = None, k1: float = K1,
                    b: float = B, method: str = "robertson") -> Bm25Index:
        """An index over documents already split by ``tokenizer`` (queries are tokenized the same way)."""
        if backend == "bm25s":
            import logging

            import bm25s

            logging.getLogger("bm25s").setLevel(logging.WARNING)  # it sets itself to DEBUG when imported
            indexer = bm25s.BM25(k1=k1, b=b, method=method)
            indexer.index(tokens, show_progress=False)
            engine = TermScores.from_bm25s(indexer)
        elif backend == "rank-bm25":
            from rank_bm25 import BM25Okapi

            engine = BM25Okapi(tokens, k1=k1, b=b, epsilon=0.0)
        else:
            raise BadInput(f"unknown BM25 backend {backend!r}", hint="use bm25s or rank-bm25")
        return cls(backend=backend, engine=engine, size=len(tokens), tokenizer=tokenizer or Tokenizer(), k1=k1, b=b,
                   method=method)

    def search(self, queries: Sequence[str], k: int,
               allowed: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each query, item rows and scores, best first (ties by lower row), among the ``allowed`` rows only
        when that mask is given (every other document scores 0 before the top k is taken).

        Only items sharing a term with the query are returned: a query of unknown words gets no hits.
        """
        k = min(k, self.size)
        keep = None if allowed is None else (allowed if self.rows is None else allowed[self.rows])
        found = []
        for query in queries:
            scores = np.asarray(self.engine.get_scores(self.tokenizer(query)), dtype=np.float32)
            if keep is not None:
                scores[~keep] = 0.0
            documents, values = _best_matching(scores, k)
            found.append((documents if self.rows is None else self.rows[documents], values))
        return found

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "bm25.json").write_text(json.dumps({
            "backend": self.backend, "size": self.size, "k1": self.k1, "b": self.b, "method": self.method,
            "mapped_rows": self.rows is not None, **self.tokenizer.describe()}))
        if self.rows is not None:
            np.save(directory / ROWS_FILE, self.rows)
        if self.backend == "bm25s":
            self.engine.save(directory)
        else:
            with open(directory / "rank_bm25.pkl", "wb") as handle:
                pickle.dump(self.engine, handle)

    @classmethod
    def load(cls, artifact, subdir: str) -> Bm25Index:
        """Load from ``subdir`` of an opened index artifact; damaged files are named, not tracebacks."""
        meta = artifact.read_json(f"{subdir}/bm25.json")
        try:
            backend, size, tokenizer = meta["backend"], int(meta["size"]), tokenizer_from(meta)
            k1, b, method = float(meta.get("k1", K1)), float(meta.get("b", B)), str(meta.get("method", "robertson"))
        except (KeyError, TypeError, ValueError) as exc:
            raise artifact.corrupt(f"{subdir}/bm25.json", "is not a BM25 description") from exc
        if backend == "bm25s":
            vocab = artifact.read_json(f"{subdir}/vocab.json")
            arrays = {name: artifact.load_npy(f"{subdir}/{name}.npy") for name in ("data", "indices", "indptr")}
            indptr = arrays["indptr"]
            if (not isinstance(vocab, dict) or len(indptr) == 0 or int(indptr[-1]) != len(arrays["data"])
                    or len(arrays["indices"]) != len(arrays["data"])):
                raise artifact.corrupt(f"{subdir}/indptr.npy", "does not match the score arrays")
            engine = TermScores(vocab=vocab, size=size, **arrays)
        else:
            try:
                with open(artifact.file(f"{subdir}/rank_bm25.pkl"), "rb") as handle:
                    engine = pickle.load(handle)  # our own artifact, written by save()
            except (OSError, pickle.UnpicklingError, EOFError) as exc:
                raise artifact.corrupt(f"{subdir}/rank_bm25.pkl", "cannot be read") from exc
        rows = artifact.load_npy(f"{subdir}/{ROWS_FILE}") if meta.get("mapped_rows") else None
        if rows is not None and len(rows) != size:
            raise artifact.corrupt(f"{subdir}/{ROWS_FILE}", f"maps {len(rows):,} documents of {size:,}")
        return cls(backend=backend, engine=engine, size=size, tokenizer=tokenizer, k1=k1, b=b, method=method,
                   rows=rows)


SAMPLE_STRIDE = 16  # _best_matching reads every 16th score to guess a floor for the top k


def _best_matching(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best positive scores (items sharing a term with the query), ties by lower index, in O(N).

    Only the items at or above a floor are partitioned and sorted: the floor is a high score of every 16th item,
    so a few hundred items pass it where a 3-gram query matches half the catalog (all 30K matching items cost
    ~0.26 ms a query on Home Depot, the floored few hundred ~0.1 ms). When fewer than k items pass, every matching
    item is a candidate; either way the top k is exact.
    """
    if k <= 0:
        return _ranked(scores, np.zeros(0, dtype=np.int64), 0)
    floor = _sampled_floor(scores, k)
    candidates = np.flatnonzero(scores >= floor) if floor > 0 else np.zeros(0, dtype=np.int64)
    if len(candidates) < k:
        candidates = np.flatnonzero(scores > 0)
    return _ranked(scores, candidates, k)


def _sampled_floor(scores: np.ndarray, k: int) -> float:
    """A score that about 4k items reach, read from every ``SAMPLE_STRIDE``-th item (0 when too few match)."""
    sample = scores[::SAMPLE_STRIDE]
    sample = sample[sample > 0]  # partitioning the zeros of a rare term's query is slow (all ties)
    wanted = 4 * k // SAMPLE_STRIDE + 1
    if wanted > len(sample):
        return 0.0
    return float(np.partition(sample, len(sample) - wanted)[len(sample) - wanted])


def _ranked(scores: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of ``candidates`` (ascending item indices), ties by lower index."""
    if len(candidates) > k:
        values = scores[candidates]
        kth = np.partition(values, len(values) - k)[len(values) - k]
        above = candidates[values > kth]
        candidates = np.concatenate([above, candidates[values == kth][: k - len(above)]])  # ascending: lowest first
    order = candidates[np.lexsort((candidates, -scores[candidates]))][:k]
    return order, scores[order]
