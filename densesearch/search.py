"""Serving: load an index with its encoder (checking they match) and answer dense, BM25 or hybrid queries."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from densesearch.artifacts import BM25_DIR, ITEMS_FILE, NGRAM_DIR, VECTORS_FILE, Artifact, open_artifact
from densesearch.config import QueryConfig, RankerConfig
from densesearch.cpu import openmp_threads, read_cpu
from densesearch.encoders import EncoderSpec, choose_encoder
from densesearch.errors import ArtifactCorrupt, ArtifactMismatch, BadInput
from densesearch.paths import Workspace
from densesearch.sparse import Bm25Index

RERANK_DEPTH = 100  # IVF-PQ candidates re-scored exactly from vectors.npy
MODES = ("dense", "bm25", "hybrid", "rerank")  # rerank: hybrid, its top N re-scored by the cross-encoder
MAX_QUERY_CHARS = 10_000


@dataclass
class Hit:
    rank: int
    score: float
    item_id: str
    group_id: str
    title: str
    store: str
    snippet: str
    price: float | None = None
    rating: float | None = None
    image: str = ""


@dataclass
class Answer:
    query: str
    mode: str
    k: int
    hits: list[Hit]
    encode_ms: float
    search_ms: float
    total_ms: float
    answered_by: str
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        """The `query --json` schema as plain JSON values, built directly (the server does this per request)."""
        return {"query": self.query, "mode": self.mode, "k": self.k, "hits": [dict(vars(hit)) for hit in self.hits],
                "encode_ms": self.encode_ms, "search_ms": self.search_ms, "total_ms": self.total_ms,
                "answered_by": self.answered_by, "notes": list(self.notes)}


def validate_query(text: str) -> str:
    """Reject empty, over-long or non-UTF-8 queries with a one-line reason."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadInput("query is not valid UTF-8", hint="re-encode the query as UTF-8") from exc
    if not text.strip():
        raise BadInput("query is empty", hint="give some words to search for")
    if len(text) > MAX_QUERY_CHARS:
        raise BadInput(f"query is {len(text):,} characters long (max {MAX_QUERY_CHARS:,})", hint="shorten it")
    return text.strip()


def check_encoder_matches(spec: EncoderSpec, workspace: Workspace, override: str | None) -> None:
    """Fail when the encoder asked for (``--model``) is not the one the index was built with."""
    if override is None:
        return
    wanted = choose_encoder(override, workspace)
    if wanted.fingerprint != spec.fingerprint or wanted.backend != spec.backend:
        raise ArtifactMismatch(
            f"the index was built with {spec.label} ({spec.fingerprint[:12]}), "
            f"not with {wanted.label} ({wanted.fingerprint[:12]})",
            hint=f"run `densesearch index --model {override}` to rebuild it")


def read_items(artifact: Artifact) -> list[dict]:
    """The index's item table (display fields and text), checked row by row."""
    items = list(artifact.iter_jsonl(ITEMS_FILE))
    for lineno, row in enumerate(items, start=1):
        if not isinstance(row.get("item_id"), str) or not isinstance(row.get("text"), str):
            raise ArtifactCorrupt("index", f"{ITEMS_FILE}:{lineno}", "lacks item_id or text")
    return items


def cpu_note(spec: EncoderSpec, onnx_manifest_extra: dict) -> str | None:
    """A note when an ONNX Runtime INT8 model quantized for one CPU is served on another (it still runs correctly;
    OpenVINO picks its kernels for the CPU it runs on, so its models need no note)."""
    built = onnx_manifest_extra.get("cpu", {}).get("isa")
    here = read_cpu().isa
    catalog_runtime = onnx_manifest_extra.get("int8_runtime") or "onnxruntime"
    runtimes = {catalog_runtime, onnx_manifest_extra.get("query_int8_runtime") or catalog_runtime}
    if spec.backend != "onnx-int8" or "onnxruntime" not in runtimes or not built or built == here:
        return None
    return (f"the INT8 encoder was quantized for {built} CPUs and this one is {here}: serving it anyway; "
            "`densesearch quantize` makes one matched to this CPU")


class Searcher:
    """An index loaded for serving; the encoder and BM25 load lazily, on first use."""

    def __init__(self, workspace: Workspace, threads: int = 1, model: str | None = None) -> None:
        self.artifact = open_artifact(workspace, "index")
        self.manifest = self.artifact.manifest
        try:
            self.spec = EncoderSpec(**self.manifest.extra["encoder"])
        except (KeyError, TypeError) as exc:
            raise ArtifactCorrupt("index", "manifest.json", "does not record its encoder") from exc
        check_encoder_matches(self.spec, workspace, model)
        self.workspace = workspace
        self.directory = self.artifact.path
        self.threads = threads
        self.index = self.artifact.load_faiss()
        self.items = read_items(self.artifact)
        self.fusion = Fusion.from_manifest(self.manifest.extra)  # read once: every hybrid query uses it
        if self.index.ntotal != len(self.items):
            raise ArtifactCorrupt("index", ITEMS_FILE, f"has {len(self.items):,} rows for {self.index.ntotal:,} "
                                                       "vectors")
        self.notes: list[str] = []
        if self.spec.artifact == "onnx":
            note = cpu_note(self.spec, open_artifact(workspace, "onnx").manifest.extra)
            if note:
                self.notes.append(note)
        self._encoder = None
        self._bm25: Bm25Index | None = None
        self._ngrams: Bm25Index | None = None
        self._vectors: np.ndarray | None = None
        self._reranker = None
        self._ranker = None
        self._terms = None

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = self.spec.load(self.workspace, self.threads)
        return self._encoder

    @property
    def bm25(self) -> Bm25Index:
        if self._bm25 is None:
            self._bm25 = Bm25Index.load(self.artifact, BM25_DIR)
        return self._bm25

    @property
    def has_ngrams(self) -> bool:
        """Indexes built before the 3-gram index existed lack it."""
        return (self.directory / NGRAM_DIR / "bm25.json").is_file()

    @property
    def ngrams(self) -> Bm25Index:
        """BM25 over character 3-grams, the third list of a fusion that weighs it."""
        if self._ngrams is None:
            self._ngrams = Bm25Index.load(self.artifact, NGRAM_DIR)
        return self._ngrams

    @property
    def reranker(self):
        """The published cross-encoder (`finetune --reranker`), loaded on first use."""
        if self._reranker is None:
            from densesearch.rerank import CrossScorer

            self._reranker = CrossScorer(self.workspace, self.threads)
        return self._reranker

    @property
    def has_ranker(self) -> bool:
        """Whether `index` trained a learned ranker and kept it (dev said it beats the fusion alone)."""
        return bool((self.manifest.extra.get("ranker") or {}).get("kept"))

    @property
    def ranker(self):
        """The learned ranker over the hybrid's candidates (`ltr`), loaded on first use, and the titles' terms."""
        if self._ranker is None:
            from densesearch.ltr import RANKER_DIR, LearnedRanker, TitleTerms, title_texts

            settings, defaults = self.manifest.extra["ranker"].get("settings") or {}, RankerConfig()
            self._ranker = LearnedRanker.load(self.directory / RANKER_DIR, int(settings.get("folds", defaults.folds)),
                                              int(settings.get("depth", defaults.depth)))
            self._terms = TitleTerms(title_texts(self.items))
        return self._ranker

    def uses_ranker(self, cfg: QueryConfig) -> bool:
        """Hybrid re-ordered by the learned ranker: when the index has one, unless the query turns it off or
        asks for RRF with its own constant (the ranker learned the index's fusion)."""
        return self.has_ranker and cfg.ranker and cfg.rrf_k is None

    @property
    def default_mode(self) -> str:
        mode = self.manifest.extra.get("recommended_mode", "dense")
        return mode if mode in MODES else "dense"

    def _use_search_param(self, k: int, ef_search: int | None) -> str:
        """Set the served efSearch / nprobe (an override, else the swept value); returns the index kind."""
        kind = self.manifest.extra["kind"]
        value = ef_search or next(iter(self.manifest.extra.get("search_param", {}).values()), 0)
        if value:
            set_search_param(self.index, kind, value if kind in IVF_KINDS else max(value, k))
        return kind

    def _search_threads(self):
        """OpenMP for one query's index search: ``threads``, else one (a team of threads only adds wake-ups),
        for this search only."""
        return openmp_threads(self.threads or 1)

    def dense(self, vector: np.ndarray, k: int, ef_search: int | None = None) -> tuple[list[int], list[float]]:
        if self._use_search_param(k, ef_search) == "ivfpq":
            return self._dense_reranked(vector.reshape(-1), k)
        with self._search_threads():
            scores, ids = self.index.search(vector.reshape(1, -1), k)
        keep = ids[0] >= 0
        return ids[0][keep].tolist(), scores[0][keep].tolist()

    def dense_many(self, vectors: np.ndarray, k: int) -> np.ndarray:
        """Top-k item indices for many query vectors exactly as served (-1 where fewer were found)."""
        with self._search_threads():
            if self._use_search_param(k, None) != "ivfpq":
                return self.index.search(vectors, k)[1]
            return reranked_search(self.index, self._memmapped_vectors(), RERANK_DEPTH)(vectors, k)

    def _dense_reranked(self, vector: np.ndarray, k: int) -> tuple[list[int], list[float]]:
        """IVF-PQ codes find candidates; exact scores from the memory-mapped vectors order them."""
        with self._search_threads():
            _, candidates = self.index.search(vector[None, :], max(k, RERANK_DEPTH))
        ids, scores = rerank_exact(self._memmapped_vectors(), vector, candidates[0], k)
        return ids.tolist(), scores.tolist()

    def _memmapped_vectors(self) -> np.ndarray:
        if self._vectors is None:
            self._vectors = self.artifact.load_npy(VECTORS_FILE)
        return self._vectors

    def sparse(self, text: str, k: int) -> tuple[list[int], list[float]]:
        return ranked_lists(self.bm25, [text], k)[0]

    def sparse_ngrams(self, text: str, k: int) -> tuple[list[int], list[float]]:
        return ranked_lists(self.ngrams, [text], k)[0]

    def ask(self, text: str, cfg: QueryConfig) -> Answer:
        """Answer one query: validate, encode, search, fuse, collapse variants, time each step."""
        text = validate_query(text)
        if cfg.k <= 0:
            raise BadInput(f"k must be positive, got {cfg.k}", hint="use -k 10")
        mode = cfg.mode or self.default_mode
        if mode not in MODES:
            raise BadInput(f"unknown mode {mode!r}", hint="use dense, bm25, hybrid or rerank")
        notes = []
        k = cfg.k
        if k > len(self.items):
            notes.append(f"k={k} is larger than the catalog; showing all {len(self.items)} items")
            k = len(self.items)
        depth = min(len(self.items), max(cfg.candidates, k) * (3 if cfg.collapse_variants else 1))
        self.load_for(mode)
        started = time.perf_counter()
        vector = self.encoder.encode_queries([text]) if mode != "bm25" else None
        encoded = time.perf_counter()
        if mode == "dense":
            ids, scores = self.dense(vector, depth if cfg.collapse_variants else k, cfg.ef_search)
        elif mode == "bm25":
            ids, scores = self.sparse(text, depth if cfg.collapse_variants else k)
        elif mode == "hybrid":
            ids, scores = self._hybrid(text, vector, cfg, depth)
        else:
            ids, scores = self._hybrid(text, vector, cfg, max(depth, self._interpolation(cfg).depth))
            ids, scores = self.rerank(text, ids, scores, cfg)
        if cfg.collapse_variants:
            ids, scores = self._collapse(ids, scores)
        searched = time.perf_counter()
        hits = [self._hit(rank, i, s) for rank, (i, s) in enumerate(zip(ids[:k], scores[:k], strict=True), 1)]
        return Answer(query=text, mode=mode, k=k, hits=hits, encode_ms=(encoded - started) * 1000,
                      search_ms=(searched - encoded) * 1000, total_ms=(searched - started) * 1000,
                      answered_by=self._answered_by(mode, cfg), notes=notes)

    def _hybrid(self, text: str, vector: np.ndarray, cfg: QueryConfig, depth: int) -> tuple[list[int], list[float]]:
        fusion = self._fusion_for(cfg)
        learned = self.uses_ranker(cfg)
        dense, words = self.dense(vector, depth, cfg.ef_search), self.sparse(text, depth)
        grams = self.sparse_ngrams(text, depth) if fusion.uses_ngrams or learned else None
        fused = fuse(dense, words, fusion, depth, grams if fusion.uses_ngrams else None)
        if learned:
            fused = self.learned_order(text, vector, dense, words, grams, fused)
        return [i for i, _ in fused], [s for _, s in fused]

    def learned_order(self, text: str, vector: np.ndarray, dense, words, grams,
                      fused: list[tuple[int, float]]) -> list[tuple[int, float]]:
        """The fused list with its top re-ordered by the learned ranker (`ltr.reorder`)."""
        from densesearch.ltr import FirstStage, candidate_features, reorder

        ranker = self.ranker
        stage = FirstStage(dense, words, grams, fused)
        items, rows = candidate_features(text, vector, stage, self._memmapped_vectors(), self._terms, ranker.depth)
        return reorder(stage, items, ranker.score(rows))

    def _interpolation(self, cfg: QueryConfig):
        """The reranker's choice on dev, at the query's ``--rerank`` depth; an ``--rrf-k`` first stage scores by
        rank, so it meets the cross-encoder min-max scaled."""
        chosen = self.reranker.interpolation
        if cfg.rerank:
            chosen = replace(chosen, depth=cfg.rerank)
        return replace(chosen, scale="min-max") if cfg.rrf_k is not None else chosen

    def rerank(self, text: str, ids: list[int], scores: list[float],
               cfg: QueryConfig) -> tuple[list[int], list[float]]:
        """The hybrid list with its top N re-scored by first stage + weight x cross-encoder."""
        from densesearch.rerank import reranked

        interpolation = self._interpolation(cfg)
        cross = self.reranker.score(text, [self.items[i]["text"] for i in ids[: interpolation.depth]])
        return reranked(ids, scores, cross, interpolation)

    def _answered_by(self, mode: str, cfg: QueryConfig) -> str:
        dense = f"{self.spec.label} + {self.manifest.extra['kind']}"
        if mode == "bm25":
            return "BM25"
        if mode == "dense":
            return dense
        hybrid = f"{dense} and BM25, {self._fusion_for(cfg).label}"
        if self.uses_ranker(cfg):
            hybrid += ", re-ordered by the learned ranker"
        return f"{hybrid}, re-scored by a {self._interpolation(cfg).label}" if mode == "rerank" else hybrid

    def _fusion_for(self, cfg: QueryConfig) -> Fusion:
        """The index's fusion, or RRF with the query's own ``--rrf-k``."""
        return self.fusion if cfg.rrf_k is None else Fusion("rrf", rrf_k=cfg.rrf_k)

    def load_for(self, mode: str) -> None:
        """Load what ``mode`` needs before the clock starts, so timings show query work, not start-up."""
        if mode != "bm25":
            _ = self.encoder
        if mode != "dense":
            _ = self.bm25
        if mode in ("hybrid", "rerank") and (self.fusion.uses_ngrams or self.has_ranker):
            _ = self.ngrams
        if mode in ("hybrid", "rerank") and self.has_ranker:
            _ = self.ranker
        if mode == "rerank":
            _ = self.reranker

    def _collapse(self, ids: list[int], scores: list[float]) -> tuple[list[int], list[float]]:
        seen, out_ids, out_scores = set(), [], []
        for i, s in zip(ids, scores, strict=True):
            group = self.items[i]["group_id"]
            if group not in seen:
                seen.add(group)
                out_ids.append(i)
                out_scores.append(s)
        return out_ids, out_scores

    def _hit(self, rank: int, index: int, score: float) -> Hit:
        row = self.items[index]
        text = row["text"]
        body = text[len(row["title"]):].strip() if text.startswith(row["title"]) else text
        brand = f"Brand: {row.get('store')}." if row.get("store") else ""
        body = body[len(brand):].strip() if brand and body.startswith(brand) else body  # the store has a column
        return Hit(rank=rank, score=float(score), item_id=row["item_id"], group_id=row["group_id"],
                   title=row["title"], store=row.get("store") or "", snippet=body[:160],
                   price=row.get("price"), rating=row.get("rating"), image=row.get("image") or "")


IVF_KINDS = ("ivfpq", "ivf-hnsw")  # searched by nprobe (inverted lists probed), not efSearch


def search_param_name(kind: str) -> str:
    return "nprobe" if kind in IVF_KINDS else "efSearch"


def set_search_param(index, kind: str, value: int) -> None:
    """Set efSearch (HNSW kinds) or nprobe (IVF kinds)."""
    if kind in ("hnsw", "hnsw-sq8"):
        index.hnsw.efSearch = value
    elif kind in IVF_KINDS:
        index.nprobe = value


def reranked_search(index, vectors: np.ndarray, depth: int):
    """A ``search(queries, k) -> ids`` that re-scores the index's top ``depth`` exactly (IVF-PQ serving)."""
    def search(queries: np.ndarray, k: int) -> np.ndarray:
        candidates = index.search(queries, max(depth, k))[1]
        found = np.full((len(queries), k), -1, dtype=np.int64)
        for row, (query, ids) in enumerate(zip(queries, candidates, strict=True)):
            best = rerank_exact(vectors, query, ids, k)[0]
            found[row, : len(best)] = best
        return found

    return search


def rerank_exact(vectors: np.ndarray, query: np.ndarray, candidates: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Re-score candidate rows exactly against float32 vectors (a memmap: only those rows are read)."""
    ids = np.unique(candidates[candidates >= 0])
    scores = np.asarray(vectors[ids] @ query, dtype=np.float32)
    best = np.lexsort((ids, -scores))[:k]
    return ids[best], scores[best]


@dataclass(frozen=True)
class Fusion:
    """How hybrid mode merges the dense and BM25 lists: RRF with constant ``rrf_k``, or a weighted sum of
    min-max normalised scores with weight ``w_bm25`` on BM25 and ``w_ngram`` on character 3-gram BM25, the
    rest on dense (``index`` picks the one best on dev)."""

    method: str = "rrf"          # rrf | wsum
    rrf_k: int = 60
    w_bm25: float = 0.5
    w_ngram: float = 0.0         # wsum only; 0: the 3-gram list is not searched

    @classmethod
    def from_manifest(cls, extra: dict) -> Fusion:
        recorded = extra.get("fusion") or {}
        try:
            fusion = cls(method=str(recorded.get("method", "rrf")), rrf_k=int(recorded.get("rrf_k", 60)),
                         w_bm25=float(recorded.get("w_bm25", 0.5)), w_ngram=float(recorded.get("w_ngram", 0.0)))
        except (TypeError, ValueError) as exc:
            raise ArtifactCorrupt("index", "manifest.json", "records an unreadable fusion setting") from exc
        if fusion.method not in ("rrf", "wsum"):
            raise ArtifactCorrupt("index", "manifest.json", f"records an unknown fusion {fusion.method!r}")
        if (fusion.w_ngram and fusion.method != "wsum") or min(fusion.w_bm25, fusion.w_ngram) < 0 \
                or fusion.w_bm25 + fusion.w_ngram > 1 + 1e-9:
            raise ArtifactCorrupt("index", "manifest.json", f"records fusion weights it cannot use "
                                                            f"(BM25 {fusion.w_bm25:g}, 3-grams {fusion.w_ngram:g})")
        return fusion

    @property
    def label(self) -> str:
        if self.method == "rrf":
            return f"RRF k={self.rrf_k}"
        ngrams = f", 3-gram weight {self.w_ngram:g}" if self.w_ngram else ""
        return f"score fusion, BM25 weight {self.w_bm25:g}{ngrams}"

    @property
    def uses_ngrams(self) -> bool:
        return self.method == "wsum" and self.w_ngram > 0


Ranked = list[tuple[list[int], list[float]]]


def ranked_lists(index: Bm25Index, queries: Sequence[str], k: int) -> Ranked:
    """Each query's BM25 top ``k`` as (item indices, scores) lists, the form fusion takes."""
    return [(found.tolist(), scores.tolist()) for found, scores in index.search(queries, k)]


def fuse(dense: tuple[list[int], list[float]], sparse: tuple[list[int], list[float]], fusion: Fusion,
         limit: int, ngrams: tuple[list[int], list[float]] | None = None) -> list[tuple[int, float]]:
    """Merge a dense, a BM25 and (when ``fusion`` weighs it) a 3-gram BM25 result list (item indices with
    scores) as ``fusion`` says."""
    if fusion.method == "rrf":
        return rrf_fuse([list(dense[0]), list(sparse[0])], fusion.rrf_k, limit)
    if fusion.uses_ngrams:
        if ngrams is None:
            raise ValueError("this fusion weighs the 3-gram list, and none was given")
        return weighted_fuse([dense, sparse, ngrams], [1.0 - fusion.w_bm25 - fusion.w_ngram, fusion.w_bm25,
                                                       fusion.w_ngram], limit)
    return weighted_fuse([dense, sparse], [1.0 - fusion.w_bm25, fusion.w_bm25], limit)


def min_max(scores: list[float]) -> list[float]:
    """Scores scaled to [0, 1] within one list (all 1.0 when they are equal)."""
    if not scores:
        return []
    low, high = min(scores), max(scores)
    return [(s - low) / (high - low) if high > low else 1.0 for s in scores]


def weighted_fuse(lists: list[tuple[list[int], list[float]]], weights: list[float],
                  limit: int) -> list[tuple[int, float]]:
    """Weighted sum of min-max normalised scores; an item missing from a list gets 0 from it; ties by index."""
    scores: dict[int, float] = {}
    for (ids, values), weight in zip(lists, weights, strict=True):
        for item, value in zip(ids, min_max(list(values)), strict=True):
            if item >= 0:
                scores[item] = scores.get(item, 0.0) + weight * value
    return sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))[:limit]


def rrf_fuse(rankings: list[list[int]], k_constant: int, limit: int) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion: score = sum of 1 / (k_constant + rank); ties by lower item index.

    An empty ranking (BM25 knows none of the query's words) contributes nothing, so hybrid equals the other side.
    """
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k_constant + rank)
    return sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))[:limit]
