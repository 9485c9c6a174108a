"""Serving: load an index with its encoder (checking they match) and answer dense, BM25 or hybrid queries."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from densesearch.core.artifacts import (
    BM25_DIR,
    ITEMS_FILE,
    LIVE_FILE,
    NGRAM_DIR,
    VECTORS_FILE,
    Artifact,
    open_artifact,
)
from densesearch.core.config import Mode, QueryConfig, RankerConfig
from densesearch.core.cpu import read_cpu
from densesearch.core.errors import ArtifactCorrupt, ArtifactMismatch, BadInput
from densesearch.core.manifest import IndexInfo, OnnxInfo
from densesearch.core.paths import Workspace
from densesearch.retrieval.dense import DenseIndex
from densesearch.retrieval.encoders import EncoderSpec, choose_encoder
from densesearch.retrieval.firststage import FirstStage, ranked_lists
from densesearch.retrieval.fusion import Fusion, RankedList, Stage

if TYPE_CHECKING:  # imported where used: a query loads the filter language, BM25 and the ranker only if it needs them
    from densesearch.retrieval.filters import Allowed, Attributes
    from densesearch.retrieval.ranker import LearnedOrder
    from densesearch.retrieval.sparse import Bm25Index

MODES = tuple(Mode)
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


class UnknownItem(BadInput):
    """An item id the served index does not hold (the server answers 404)."""

    def __init__(self, item_id: str) -> None:
        super().__init__(f"no item {item_id!r} in the index", hint="use an item_id that `query` shows")


def kept_items(count: int) -> str:
    return "no items" if count == 0 else "1 item" if count == 1 else f"{count:,} items"


def check_utf8(text: str) -> None:
    """Refuse text that held bytes no UTF-8 decoder accepts (decoded with ``surrogateescape``, as Python decodes
    command-line arguments): the one rule for the CLI and the server."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise not_utf8() from exc


def not_utf8() -> BadInput:
    """The refusal of a query that is not valid UTF-8 (the server's JSON validation answers with it too)."""
    return BadInput("query is not valid UTF-8", hint="re-encode the query as UTF-8")


def validate_query(text: str) -> str:
    """Reject empty, over-long or non-UTF-8 queries with a one-line reason."""
    check_utf8(text)
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


def cpu_note(spec: EncoderSpec, onnx: OnnxInfo) -> str | None:
    """A note when an ONNX Runtime INT8 model quantized for one CPU is served on another (it still runs correctly;
    OpenVINO picks its kernels for the CPU it runs on, so its models need no note)."""
    built = onnx.cpu.get("isa")
    here = read_cpu().isa
    catalog_runtime = onnx.int8_runtime or "onnxruntime"
    runtimes = {catalog_runtime, onnx.query_int8_runtime or catalog_runtime}
    if spec.backend != "onnx-int8" or "onnxruntime" not in runtimes or not built or built == here:
        return None
    return (f"the INT8 encoder was quantized for {built} CPUs and this one is {here}: serving it anyway; "
            "`densesearch quantize` makes one matched to this CPU")


class Searcher:
    """An index loaded for serving; the encoder, BM25, the ranker and the cross-encoder load lazily, on first use."""

    def __init__(self, workspace: Workspace, threads: int = 1, model: str | None = None, mapped: bool = False) -> None:
        self.artifact = open_artifact(workspace, "index", mapped=mapped)  # mapped: for a one-shot query only
        self.manifest = self.artifact.manifest
        self.info: IndexInfo = self.artifact.info
        self.spec = EncoderSpec.from_record(self.info.encoder)
        self.kind = self.info.kind
        check_encoder_matches(self.spec, workspace, model)
        self.workspace = workspace
        self.directory = self.artifact.path
        self.threads = threads
        self.fusion = Fusion.from_record(self.info.fusion)  # read once: every hybrid query uses it
        self.notes: list[str] = []
        if self.spec.artifact == "onnx":
            note = cpu_note(self.spec, open_artifact(workspace, "onnx").info)
            if note:
                self.notes.append(note)
        self._encoder = None
        self._encoder_loading: Future | None = None
        self._reranker = None

    @cached_property
    def items(self) -> list[dict]:
        """The item table, read on first use (after `start_loading` has set the encoder loading)."""
        return read_items(self.artifact)

    @property
    def encoder(self):
        if self._encoder is None:
            loading = self._encoder_loading
            self._encoder = loading.result() if loading else self.spec.load(self.workspace, self.threads)
        return self._encoder

    def start_loading(self, mode: str | None = None) -> None:
        """Start building the query encoder's runtime on a second thread when ``mode`` (default: the index's)
        encodes queries, and return. ONNX Runtime releases the GIL while it builds a session, so the indexes and
        the item table load meanwhile: a cold query waits for the longer of the two, not for their sum."""
        if (mode or self.default_mode) == Mode.BM25 or self._encoder is not None or self._encoder_loading:
            return
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="densesearch-encoder")
        self._encoder_loading = pool.submit(self.spec.load, self.workspace, self.threads)
        pool.shutdown(wait=False)  # the thread ends with its one task

    @cached_property
    def dense(self) -> DenseIndex:
        """The FAISS index at its tuned search parameter, with the catalog's vectors."""
        index = self.artifact.load_faiss()
        if index.ntotal != len(self.items):
            raise ArtifactCorrupt("index", ITEMS_FILE, f"has {len(self.items):,} rows for {index.ntotal:,} vectors")
        return DenseIndex(index, self.kind, self.artifact.load_npy(VECTORS_FILE), self.info.param, self.threads)

    @cached_property
    def live(self) -> np.ndarray | None:
        """Which rows are live (None: all are): an item deleted or replaced by `index --delete / --upsert` keeps
        its row, dead, until `index --compact`; no mode ever returns it."""
        if LIVE_FILE not in self.manifest.files:
            return None
        live = np.asarray(self.artifact.load_npy(LIVE_FILE), dtype=bool)
        if live.shape != (len(self.items),):
            raise ArtifactCorrupt("index", LIVE_FILE, f"has {live.size:,} flags for {len(self.items):,} rows")
        return live

    @cached_property
    def live_rows(self) -> Allowed | None:
        """The live rows as a query's selection, built once per loaded version (its count, rows and FAISS bitmap
        are then computed once, not per query); None when every row is live."""
        if self.live is None:
            return None
        from densesearch.retrieval.filters import Allowed

        return Allowed(self.live)

    @property
    def size(self) -> int:
        """Live items (what a query can return)."""
        return len(self.items) if self.live_rows is None else self.live_rows.count

    @cached_property
    def attributes(self) -> Attributes:
        """The items' filterable attributes, columns built on first use."""
        from densesearch.retrieval.filters import Attributes

        return Attributes(self.items)

    def allowed(self, where: Sequence[str] = ()) -> Allowed | None:
        """The rows a query may return: live, and kept by every ``--where`` expression (None: every row)."""
        if not where:
            return self.live_rows
        from densesearch.retrieval.filters import Allowed, where_mask

        mask = where_mask(where, self.attributes)
        if mask is None:
            return self.live_rows
        return Allowed(mask if self.live is None else mask & self.live)

    @cached_property
    def row_of(self) -> dict[str, int]:
        """Each live item id's row in the index (`similar`, `recommend` and the server look items up by id)."""
        live = self.live
        return {row["item_id"]: number for number, row in enumerate(self.items) if live is None or live[number]}

    def row(self, item_id: str) -> int:
        """The row of ``item_id`` (UnknownItem when the index does not hold it)."""
        found = self.row_of.get(item_id)
        if found is None:
            raise UnknownItem(item_id)
        return found

    @cached_property
    def words(self) -> Bm25Index:
        from densesearch.retrieval.sparse import Bm25Index

        return Bm25Index.load(self.artifact, BM25_DIR)

    @cached_property
    def first_stage(self) -> FirstStage:
        """The dense index, both BM25 indexes and the learned ranker, as hybrid, rerank and `bench` search them
        (dense and BM25 queries load only their own index)."""
        from densesearch.retrieval.sparse import Bm25Index

        grams = Bm25Index.load(self.artifact, NGRAM_DIR) if self.has_ngrams else None
        ranker = self._load_ranker(self.dense.vectors) if self.has_ranker else None
        return FirstStage(self.dense, self.words, grams, ranker)

    def _load_ranker(self, vectors: np.ndarray) -> LearnedOrder:
        from densesearch.retrieval.ranker import (
            RANKER_DIR,
            TERMS_DIR,
            LearnedOrder,
            LearnedRanker,
            TitleTerms,
            title_texts,
        )

        settings, defaults = self.info.ranker.get("settings") or {}, RankerConfig()
        files = self.info.ranker.get("model_files") or [  # indexes built before issue 30: the fold models
            f"fold-{k}.txt" for k in range(int(settings.get("folds", defaults.folds)))]
        ranker = LearnedRanker.load(self.directory / RANKER_DIR, files, int(settings.get("depth", defaults.depth)))
        terms = TitleTerms.load(self.artifact, f"{RANKER_DIR}/{TERMS_DIR}", title_texts(self.items))
        return LearnedOrder(ranker, terms, vectors)

    @property
    def has_ngrams(self) -> bool:
        """Indexes built before the 3-gram index existed lack it."""
        return (self.directory / NGRAM_DIR / "bm25.json").is_file()

    @property
    def reranker(self):
        """The published cross-encoder (`finetune --reranker`), loaded on first use."""
        if self._reranker is None:
            from densesearch.retrieval.crossencoder import CrossScorer

            self._reranker = CrossScorer(self.workspace, self.threads)
        return self._reranker

    @property
    def has_ranker(self) -> bool:
        """Whether `index` trained a learned ranker and kept it (dev said it beats the fusion alone)."""
        return self.info.has_ranker

    def uses_ranker(self, cfg: QueryConfig) -> bool:
        """Hybrid re-ordered by the learned ranker: when the index has one, unless the query turns it off or
        asks for RRF with its own constant (the ranker learned the index's fusion)."""
        return self.has_ranker and cfg.ranker and cfg.rrf_k is None

    @property
    def default_mode(self) -> Mode:
        mode = self.info.recommended_mode
        return Mode(mode) if mode in MODES else Mode.DENSE

    def stages(self, texts: Sequence[str], vectors: np.ndarray, depth: int, cfg: QueryConfig,
               grams: bool = False, allowed: Allowed | None = None) -> list[Stage]:
        """The first stage of a batch of queries exactly as `query` serves them (fusion and ranker per ``cfg``,
        live rows kept by ``cfg.where`` only; ``allowed``: those rows, already computed)."""
        allowed = allowed if allowed is not None else self.allowed(cfg.where)
        return self.first_stage.run(texts, vectors, depth, self._fusion_for(cfg), self.uses_ranker(cfg),
                                    cfg.ef_search, grams, allowed)

    def ask(self, text: str, cfg: QueryConfig) -> Answer:
        """Answer one query: validate, encode, search, fuse, collapse variants, time each step."""
        text = validate_query(text)
        mode, k, notes = self._checked(cfg)
        depth = min(len(self.items), max(cfg.candidates, k) * (3 if cfg.collapse_variants else 1))
        self.load_for(mode)
        started = time.perf_counter()
        vector = self.encoder.encode_queries([text]) if mode != Mode.BM25 else None
        encoded = time.perf_counter()
        allowed = self.allowed(cfg.where)
        if cfg.where and allowed.count < k:
            notes.append(f"the filter keeps {kept_items(allowed.count)}")
        ids, scores = self._search(mode, text, vector, cfg, depth if cfg.collapse_variants else k, depth, allowed)
        if cfg.collapse_variants:
            ids, scores = self._collapse(ids, scores)
        searched = time.perf_counter()
        hits = [self.hit(rank, i, s) for rank, (i, s) in enumerate(zip(ids[:k], scores[:k], strict=True), 1)]
        return Answer(query=text, mode=mode, k=k, hits=hits, encode_ms=(encoded - started) * 1000,
                      search_ms=(searched - encoded) * 1000, total_ms=(searched - started) * 1000,
                      answered_by=self._answered_by(mode, cfg), notes=notes)

    def _checked(self, cfg: QueryConfig) -> tuple[Mode, int, list[str]]:
        """The query's mode and k (capped at the catalog's size, with a note), or a one-line error."""
        if cfg.k <= 0:
            raise BadInput(f"k must be positive, got {cfg.k}", hint="use -k 10")
        mode = cfg.mode or self.default_mode
        if mode not in MODES:
            raise BadInput(f"unknown mode {mode!r}", hint="use dense, bm25, hybrid or rerank")
        if cfg.k > self.size:
            return Mode(mode), self.size, [f"k={cfg.k} is larger than the catalog; showing all {self.size} items"]
        return Mode(mode), cfg.k, []

    def _search(self, mode: Mode, text: str, vector: np.ndarray | None, cfg: QueryConfig, k: int,
                depth: int, allowed: Allowed | None) -> RankedList:
        """One query's ranked list in ``mode`` among the ``allowed`` rows: ``k`` items for a single list, ``depth``
        fused candidates."""
        if mode == Mode.DENSE:
            return self.dense.search(vector, k, cfg.ef_search, allowed)[0]
        if mode == Mode.BM25:
            return ranked_lists(self.words, [text], k, allowed)[0]
        if mode == Mode.HYBRID:
            return self.stages([text], vector, depth, cfg, allowed=allowed)[0].ordered
        depth = max(depth, self._interpolation(cfg).depth)
        ordered = self.stages([text], vector, depth, cfg, allowed=allowed)[0].ordered
        return self.rerank(text, ordered.ids, ordered.scores, cfg)

    def _interpolation(self, cfg: QueryConfig):
        """The reranker's choice on dev, at the query's ``--rerank`` depth; an ``--rrf-k`` first stage scores by
        rank, so it meets the cross-encoder min-max scaled."""
        chosen = self.reranker.interpolation
        if cfg.rerank:
            chosen = replace(chosen, depth=cfg.rerank)
        return replace(chosen, scale="min-max") if cfg.rrf_k is not None else chosen

    def rerank(self, text: str, ids: list[int], scores: list[float], cfg: QueryConfig) -> RankedList:
        """The hybrid list with its top N re-scored by first stage + weight x cross-encoder."""
        from densesearch.retrieval.crossencoder import reranked

        interpolation = self._interpolation(cfg)
        cross = self.reranker.score(text, [self.items[i]["text"] for i in ids[: interpolation.depth]])
        return RankedList(*reranked(ids, scores, cross, interpolation))

    def _answered_by(self, mode: str, cfg: QueryConfig) -> str:
        dense = f"{self.spec.label} + {self.kind}"
        if mode == Mode.BM25:
            return "BM25"
        if mode == Mode.DENSE:
            return dense
        hybrid = f"{dense} and BM25, {self._fusion_for(cfg).label}"
        if self.uses_ranker(cfg):
            hybrid += ", re-ordered by the learned ranker"
        return f"{hybrid}, re-scored by a {self._interpolation(cfg).label}" if mode == Mode.RERANK else hybrid

    def _fusion_for(self, cfg: QueryConfig) -> Fusion:
        """The index's fusion, or RRF with the query's own ``--rrf-k``."""
        return self.fusion if cfg.rrf_k is None else Fusion("rrf", rrf_k=cfg.rrf_k)

    def load_for(self, mode: str) -> None:
        """Load what ``mode`` needs before the clock starts, so timings show query work, not start-up: the query
        encoder on a second thread (`start_loading`) while this one reads the indexes."""
        self.start_loading(mode)
        if mode == Mode.DENSE:
            _ = self.dense
        elif mode == Mode.BM25:
            _ = self.words
        else:
            _ = self.first_stage
        if mode != Mode.BM25:
            _ = self.encoder
        if mode == Mode.RERANK:
            _ = self.reranker

    def _collapse(self, ids: list[int], scores: list[float]) -> RankedList:
        seen, out_ids, out_scores = set(), [], []
        for i, s in zip(ids, scores, strict=True):
            group = self.items[i]["group_id"]
            if group not in seen:
                seen.add(group)
                out_ids.append(i)
                out_scores.append(s)
        return RankedList(out_ids, out_scores)

    def hit(self, rank: int, index: int, score: float) -> Hit:
        """One result row as shown: the item's display fields, its score and rank."""
        row = self.items[index]
        text = row["text"]
        body = text[len(row["title"]):].strip() if text.startswith(row["title"]) else text
        brand = f"Brand: {row.get('store')}." if row.get("store") else ""
        body = body[len(brand):].strip() if brand and body.startswith(brand) else body  # the store has a column
        return Hit(rank=rank, score=float(score), item_id=row["item_id"], group_id=row["group_id"],
                   title=row["title"], store=row.get("store") or "", snippet=body[:160],
                   price=row.get("price"), rating=row.get("rating"), image=row.get("image") or "")
