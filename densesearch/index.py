"""`index`: encode the catalog into a memory-mapped matrix, build FAISS (dense) and BM25 (sparse) indexes."""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from densesearch.artifacts import BM25_DIR, DENSE_FILE, ITEMS_FILE, NGRAM_DIR, VECTORS_FILE, open_artifact
from densesearch.config import ENCODE_BATCH, GPU_ENCODE_BATCH, IndexConfig, RankerConfig
from densesearch.encoders import ENCODE_NUMERICS, Encoder, EncoderSpec, choose_encoder, pick_device
from densesearch.errors import BadInput
from densesearch.evaluation import exact_topk
from densesearch.itemtext import ItemFields
from densesearch.ltr import (
    FEATURES,
    MAX_LABEL,
    RANKER_DIR,
    FirstStage,
    LearnedRanker,
    TitleTerms,
    candidate_features,
    fit_ranker,
    reorder,
    save_models,
    title_texts,
)
from densesearch.manifest import Manifest, write_manifest
from densesearch.metrics import ann_recall, graded_query_metrics, paired_randomization_p
from densesearch.paths import Workspace, allocate, publish, writes_workspace
from densesearch.prepare import Judgments, load_catalog, load_data_manifest, load_judgments, load_pairs
from densesearch.search import (
    IVF_KINDS,
    RERANK_DEPTH,
    Fusion,
    Ranked,
    fuse,
    ranked_lists,
    read_items,
    reranked_search,
    search_param_name,
    set_search_param,
)
from densesearch.sources import ReadStats, iter_records
from densesearch.sparse import Bm25Index

KINDS = ("hnsw", "flat", "hnsw-sq8", "ivfpq", "ivf-hnsw")
EF_CANDIDATES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
NPROBE_CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
ENCODE_CHUNK = 4096
SWEEP_QUERIES = 500
LARGE_CATALOG = 200_000                       # above it, HNSW builds with a narrower beam (default_ef_construction)
MODE_QUERIES = 2000                           # dev queries that choose the default mode and the fusion
FUSION_DEPTH = 100                            # each side's list length before fusion (as served)
RRF_CONSTANTS = (10, 30, 60, 100)
BM25_WEIGHTS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
# three-list score fusion (dense, BM25, 3-gram BM25): (w_bm25, w_ngram), dense keeps at least 0.2
THREE_WAY_WEIGHTS = tuple((b / 10, n / 10) for n in range(1, 7) for b in range(0, 6) if b + n <= 8)
MODE_SIGNIFICANCE = 0.05
IVFPQ_MIN_VECTORS = 39 * 256  # FAISS wants 39 training points per centroid of the 8-bit PQ codebooks


@dataclass
class IndexResult:
    """What `index` built."""

    path: Path
    manifest: Manifest
    encoder: EncoderSpec
    kind: str
    vectors: int
    encode_seconds: float
    items_per_second: float
    build_seconds: float
    sweep: list[dict[str, float]]
    search_param: dict[str, int]
    mode: ModeChoice
    bytes_on_disk: int
    added: int = 0
    notes: list[str] = field(default_factory=list)
    throughput: EncodeThroughput | None = None
    ranker: RankerReport | None = None


@dataclass
class EncodeThroughput:
    """How fast the catalog was encoded, in real (unpadded) tokens and against the CPU's rough INT8 peak."""

    items_per_second: float
    tokens_per_second: float | None
    runtime: str
    peak_share: float | None      # achieved ops/s over the rough INT8 peak (INT8 encoders only)


def measure_throughput(encoder: Encoder, spec: EncoderSpec, workspace: Workspace, items: int,
                       tokens_before: int, seconds: float) -> EncodeThroughput:
    """Items/s, tokens/s and the INT8 peak share of one catalog encode by ``encoder`` (tokens: local ONNX only)."""
    from densesearch.cpu import int8_peak_ops, read_cpu, usable_cores
    from densesearch.encoders import ops_per_token

    seconds = max(seconds, 1e-9)
    tokens = getattr(encoder, "tokens_encoded", tokens_before) - tokens_before
    runtime = getattr(encoder, "runtime", "torch")
    if tokens <= 0:
        return EncodeThroughput(items / seconds, None, runtime, None)
    share = None
    if spec.backend == "onnx-int8":
        ops = ops_per_token(open_artifact(workspace, spec.artifact).path, tokens / max(items, 1))
        peak = int8_peak_ops(read_cpu(), usable_cores())
        share = ops * tokens / seconds / peak if ops and peak else None
    return EncodeThroughput(items / seconds, tokens / seconds, runtime, share)


def reuse_published_vectors(workspace: Workspace, spec: EncoderSpec, data_fingerprint: str, batch_size: int,
                            device: str, path: Path, rows: int, dim: int) -> np.ndarray | None:
    """The published index's catalog vectors copied to ``path`` when they are exactly what encoding would give
    (same encoder version, backend, device and numerics, same catalog, same batch size, no items added) and its
    files still hash to its fingerprint; None otherwise. Rebuilding with another index kind or HNSW setting then
    costs no encode."""
    from densesearch.artifacts import has_artifact
    from densesearch.errors import DensesearchError
    from densesearch.manifest import fingerprint_files

    if not has_artifact(workspace, "index"):
        return None
    try:
        artifact = open_artifact(workspace, "index", upstream=False)
    except DensesearchError:
        return None
    manifest, encoder = artifact.manifest, artifact.manifest.extra.get("encoder", {})
    if (encoder.get("fingerprint"), encoder.get("backend")) != (spec.fingerprint, spec.backend) \
            or manifest.upstream.get("data") != data_fingerprint or manifest.extra.get("device") != device \
            or manifest.extra.get("encode_batch") != batch_size \
            or manifest.extra.get("encode_numerics") != ENCODE_NUMERICS \
            or manifest.counts.get("added") or fingerprint_files(artifact.path) != manifest.fingerprint:
        return None
    old = artifact.load_npy(VECTORS_FILE)
    if old.shape != (rows, dim) or old.dtype != np.float32:
        return None
    out = new_vectors_file(path, rows, dim)
    for start in range(0, rows, 65536):
        out[start:start + 65536] = old[start:start + 65536]
    out.flush()
    return out


def encode_batch_size(device: str) -> int:
    """Texts per encoder batch: small on a CPU (less padding, warm caches: measured fastest), large on a GPU."""
    return GPU_ENCODE_BATCH if device.startswith("cuda") else ENCODE_BATCH


def encode_to_memmap(encoder: Encoder, texts: list[str], path: Path, batch_size: int,
                     progress=None, start_row: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """Encode texts chunk by chunk straight into a float32 .npy memmap (one copy of the matrix)."""
    if out is None:
        out = new_vectors_file(path, len(texts), encoder.dim)
    for start in range(0, len(texts), ENCODE_CHUNK):
        chunk = texts[start:start + ENCODE_CHUNK]
        out[start_row + start: start_row + start + len(chunk)] = encoder.encode(chunk, batch_size=batch_size)
        if progress:
            progress("encoding catalog", start + len(chunk), len(texts))
    out.flush()
    return out


def encode_catalog(cfg: IndexConfig, spec: EncoderSpec, encoder: Encoder, workspace: Workspace, texts: list[str],
                   path: Path, progress=None) -> np.ndarray:
    """The catalog's vectors in a .npy memmap, encoded here or (``--engine ray``) by Ray actors."""
    if cfg.engine != "ray":
        return encode_to_memmap(encoder, texts, path, cfg.batch_size, progress)
    from densesearch.distributed import RayPlan, encode_with_ray

    out = new_vectors_file(path, len(texts), encoder.dim)
    directory = open_artifact(workspace, spec.artifact).path if spec.artifact else Path(spec.path)
    encode_with_ray(spec, directory, texts, out, ENCODE_CHUNK, cfg.batch_size,
                    RayPlan(address=cfg.ray_address, workers=cfg.ray_workers), progress)
    out.flush()
    return out


def new_vectors_file(path: Path, rows: int, dim: int) -> np.ndarray:
    """A float32 .npy memmap whose disk blocks are reserved up front: a full disk is an error, not a SIGBUS."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    allocate(path, path.stat().st_size)
    return out


def new_faiss_index(kind: str, dim: int, n: int, cfg: IndexConfig):
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    elif kind == "hnsw-sq8":
        index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    elif kind == "ivfpq":
        if n < IVFPQ_MIN_VECTORS:
            raise BadInput(f"ivfpq needs at least {IVFPQ_MIN_VECTORS:,} items to train its codebooks "
                           f"(the catalog has {n:,})", hint="use --kind hnsw or hnsw-sq8")
        nlist = ivf_lists(n)
        sub = next(m for m in (dim // 8, dim // 4, dim // 2, dim) if dim % m == 0)
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, sub, 8, faiss.METRIC_INNER_PRODUCT)
        index.by_residual = True
        return index
    elif kind == "ivf-hnsw":  # the largest catalogs: an HNSW graph over the centroids, exact vectors in the lists
        quantizer = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        quantizer.hnsw.efConstruction = 200  # a few thousand centroids: the best graph costs seconds
        quantizer.hnsw.efSearch = 128
        index = faiss.IndexIVFFlat(quantizer, dim, ivf_lists(n), faiss.METRIC_INNER_PRODUCT)
        index.cp.spherical = True  # unit-length centroids: inner product on them is a metric HNSW can walk
        return index
    else:
        raise BadInput(f"unknown index kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
    index.hnsw.efConstruction = ef_construction(cfg, n)
    return index


def ivf_lists(n: int) -> int:
    """Inverted lists for ``n`` vectors: 4 sqrt(n), with at least 39 training points per centroid."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def ef_construction(cfg: IndexConfig, n: int) -> int:
    """``--ef-construction``, else 200 up to ``LARGE_CATALOG`` vectors (seconds to build) and 48 above it.
    Measured at 826,402 vectors on 2 cores (M=32): 3.6 min instead of 14.4 min, with recall@10 vs exact
    0.957 at efSearch 768 (docs/results.md)."""
    return cfg.ef_construction or (200 if n <= LARGE_CATALOG else 48)


def add_in_chunks(index, vectors: np.ndarray, start: int = 0) -> None:
    for offset in range(start, len(vectors), 65536):
        index.add(np.ascontiguousarray(vectors[offset: offset + 65536]))


def train_if_needed(index, vectors: np.ndarray) -> None:
    """Train IVF centroids (and PQ codebooks) on a sample: 100,000 vectors, or 39 per centroid if that is more."""
    if not index.is_trained:
        size = max(100_000, 39 * getattr(index, "nlist", 0))
        sample = vectors[np.random.default_rng(0).permutation(len(vectors))[:size]]
        index.train(np.ascontiguousarray(sample))


def sweep_search_param(index, kind: str, queries: np.ndarray, exact: np.ndarray, target: float,
                       k: int = 10, search=None) -> tuple[list[dict[str, float]], int]:
    """Recall vs exact and ms/query for each efSearch (or nprobe); the smallest value reaching ``target``.

    ``search(queries, k) -> ids`` is how the index is served (default: ``index.search``).
    """
    if kind == "flat":
        return [], 0
    search = search or (lambda q, depth: index.search(q, depth)[1])
    if kind in IVF_KINDS:
        candidates = tuple(p for p in NPROBE_CANDIDATES if p <= index.nlist)
    else:
        candidates = tuple(dict.fromkeys(max(value, k) for value in EF_CANDIDATES))
    sweep, chosen = [], candidates[-1]
    for value in candidates:
        set_search_param(index, kind, value)
        started = time.perf_counter()
        for row in queries:
            search(row[None, :], k)
        ms = (time.perf_counter() - started) * 1000 / max(len(queries), 1)
        recall = ann_recall(search(queries, k), exact, k)
        sweep.append({"value": value, "recall_vs_exact": recall, "ms_per_query": ms})
        if recall >= target:
            chosen = value
            break
    set_search_param(index, kind, chosen)
    return sweep, chosen


@dataclass
class ModeChoice:
    """The default query mode and hybrid fusion, chosen on dev by nDCG@10 (graded where judgments are)."""

    recommended: str
    fusion: Fusion
    dev_ndcg: dict[str, float]            # dense, bm25, hybrid (the chosen fusion)
    candidates: dict[str, float]          # every fusion tried
    p_vs_hybrid: dict[str, float]         # paired randomization test of dense and bm25 against hybrid
    queries: int

    def to_manifest(self) -> dict:
        return {"recommended_mode": self.recommended, "fusion": asdict(self.fusion),
                "dev_ndcg_at_10": self.dev_ndcg, "fusion_candidates": self.candidates,
                "mode_p_vs_hybrid": self.p_vs_hybrid, "mode_queries": self.queries}

    @classmethod
    def from_manifest(cls, extra: dict) -> ModeChoice:
        return cls(recommended=extra["recommended_mode"], fusion=Fusion.from_manifest(extra),
                   dev_ndcg=extra.get("dev_ndcg_at_10", {}), candidates=extra.get("fusion_candidates", {}),
                   p_vs_hybrid=extra.get("mode_p_vs_hybrid", {}), queries=int(extra.get("mode_queries", 0)))


def fusion_candidates() -> list[Fusion]:
    return ([Fusion("rrf", rrf_k=k) for k in RRF_CONSTANTS]
            + [Fusion("wsum", w_bm25=w) for w in BM25_WEIGHTS]
            + [Fusion("wsum", w_bm25=b, w_ngram=n) for b, n in THREE_WAY_WEIGHTS])


def choose_mode(dense: Ranked, sparse: Ranked, qrels: list[dict[str, int]], ids: list[str], min_relevance: int,
                ngrams: Ranked | None = None) -> ModeChoice:
    """Pick the fusion best on dev, then hybrid as the default mode unless dense or BM25 is significantly better.

    Ties go to the earlier candidate (RRF first: it needs no score scale). A single mode beats hybrid only
    when its dev nDCG@10 is higher and a paired randomization test gives p < ``MODE_SIGNIFICANCE``.
    """
    def ndcg(rows: list[list[int]]) -> np.ndarray:
        return graded_query_metrics([[ids[i] for i in row] for row in rows], qrels, min_relevance,
                                    ks=(10,))["ndcg@10"]

    per_query = {"dense": ndcg([row for row, _ in dense]), "bm25": ndcg([row for row, _ in sparse])}
    candidates: dict[str, float] = {}
    best, best_scores = None, None
    for fusion in fusion_candidates():
        if fusion.uses_ngrams and ngrams is None:
            continue
        lists = ngrams if fusion.uses_ngrams else [None] * len(dense)
        scores = ndcg([[i for i, _ in fuse(d, s, fusion, 10, n)]
                       for d, s, n in zip(dense, sparse, lists, strict=True)])
        candidates[fusion.label] = round(float(scores.mean()), 6)
        if best_scores is None or scores.mean() > best_scores.mean() + 1e-12:
            best, best_scores = fusion, scores
    per_query["hybrid"] = best_scores
    recommended, p_values = recommended_mode(per_query)
    return ModeChoice(recommended=recommended, fusion=best,
                      dev_ndcg={mode: float(values.mean()) for mode, values in per_query.items()},
                      candidates=candidates, p_vs_hybrid=p_values, queries=len(qrels))


def recommended_mode(per_query: dict[str, np.ndarray]) -> tuple[str, dict[str, float]]:
    """hybrid, unless dense or BM25 has a higher mean and a paired randomization p < ``MODE_SIGNIFICANCE``."""
    means = {mode: float(values.mean()) for mode, values in per_query.items()}
    p_values = {mode: paired_randomization_p(per_query[mode], per_query["hybrid"]) for mode in ("dense", "bm25")}
    better = [m for m in ("dense", "bm25") if means[m] > means["hybrid"] and p_values[m] < MODE_SIGNIFICANCE]
    return (max(better, key=lambda m: means[m]) if better else "hybrid"), p_values


def encode_each_query_once(encoder: Encoder, texts: list[str], cache: dict[str, np.ndarray]) -> np.ndarray:
    """Query vectors as served (one request each), every distinct text encoded once: ``cache`` keeps them
    between the efSearch sweep and the mode choice, which share most of their dev queries."""
    missing = [text for text in dict.fromkeys(texts) if text not in cache]
    if missing:
        cache.update(zip(missing, encoder.encode_queries(missing), strict=True))
    return np.stack([cache[text] for text in texts]) if texts else np.zeros((0, encoder.dim), dtype=np.float32)


def pick_mode(workspace: Workspace, encoder: Encoder, index, bm25: Bm25Index, ids: list[str],
              encoded: dict[str, np.ndarray] | None = None, ngrams: Bm25Index | None = None) -> ModeChoice:
    """Search dev queries with the new dense index and BM25, and choose the mode and fusion from them."""
    judgments = dev_judgments(workspace)
    if not judgments.query_ids:  # nothing to choose with: RRF k=60 and hybrid, the usual defaults
        return ModeChoice(recommended="hybrid", fusion=Fusion(), dev_ndcg={}, candidates={}, p_vs_hybrid={},
                          queries=0)
    vectors = encode_each_query_once(encoder, judgments.queries, {} if encoded is None else encoded)
    return choose_mode(dense_lists(index, vectors), ranked_lists(bm25, judgments.queries, FUSION_DEPTH),
                       [judgments.qrels[q] for q in judgments.query_ids], ids, judgments.min_relevance,
                       ranked_lists(ngrams, judgments.queries, FUSION_DEPTH) if ngrams else None)


def dense_lists(index, vectors: np.ndarray) -> Ranked:
    """Each query vector's FAISS top ``FUSION_DEPTH`` as (item indices, scores), the form fusion takes."""
    scores, found = index.search(vectors, FUSION_DEPTH)
    return [([int(i) for i in row if i >= 0], [float(v) for i, v in zip(row, vals, strict=True) if i >= 0])
            for row, vals in zip(found, scores, strict=True)]


def served_stages(encoder: Encoder, index, bm25: Bm25Index, ngrams: Bm25Index, fusion: Fusion, queries: list[str],
                  encoded: dict[str, np.ndarray]) -> tuple[np.ndarray, list[FirstStage]]:
    """Each query's vector and its three lists and their fusion, as `query` serves them."""
    vectors = encode_each_query_once(encoder, queries, encoded)
    dense = dense_lists(index, vectors)
    words, grams = ranked_lists(bm25, queries, FUSION_DEPTH), ranked_lists(ngrams, queries, FUSION_DEPTH)
    stages = [FirstStage(d, w, g, fuse(d, w, fusion, FUSION_DEPTH, g if fusion.uses_ngrams else None))
              for d, w, g in zip(dense, words, grams, strict=True)]
    return vectors, stages


@dataclass
class RankerReport:
    """What `index` did about the learned ranker, and why."""

    kept: bool
    reason: str
    train_queries: int = 0
    dev_queries: int = 0
    rounds: list[int] = field(default_factory=list)
    dev_ndcg_fusion: float | None = None
    dev_ndcg_ranker: float | None = None
    p_vs_fusion: float | None = None
    seconds: float = 0.0

    def to_manifest(self, cfg: RankerConfig) -> dict:
        return {**asdict(self), "settings": asdict(cfg), "features": list(FEATURES)}


def build_ranker(cfg: RankerConfig, workspace: Workspace, encoder: Encoder, index, bm25: Bm25Index,
                 ngrams: Bm25Index, vectors: np.ndarray, titles: list[str], ids: list[str], fusion: Fusion,
                 encoded: dict[str, np.ndarray], out: Path, progress=None) -> RankerReport:
    """Train LambdaMART on the train queries' served candidates; keep it (write ``out``) when dev says so."""
    started = time.perf_counter()
    if cfg.mode == "off":
        return RankerReport(False, "turned off (--ranker off)")
    if cfg.mode == "auto" and not load_data_manifest(workspace).extra.get("graded"):
        return RankerReport(False, "the data has no graded judgments (--ranker on trains on its pairs anyway)")
    train = load_judgments(workspace, "train")
    needed = max(cfg.min_queries if cfg.mode == "auto" else 0, cfg.folds, 2)
    if len(train.query_ids) < needed:
        return RankerReport(False, f"{len(train.query_ids)} train queries; it needs {needed}",
                            train_queries=len(train.query_ids))
    dev = first_queries(load_judgments(workspace, "dev"), MODE_QUERIES)  # the queries the mode was chosen on
    if not dev.query_ids:
        return RankerReport(False, "no dev queries to check it on", train_queries=len(train.query_ids))
    terms = TitleTerms(titles)

    def rows(judgments: Judgments, stage_name: str):
        query_vectors, stages = served_stages(encoder, index, bm25, ngrams, fusion, judgments.queries, encoded)
        found = []
        for n, (query, vector, stage) in enumerate(zip(judgments.queries, query_vectors, stages, strict=True)):
            found.append((stage, *candidate_features(query, vector, stage, vectors, terms, cfg.depth)))
            if progress and (n % 200 == 0 or n + 1 == len(stages)):
                progress(stage_name, n + 1, len(stages))
        return found

    train_rows = rows(train, "ranker features: train queries")
    labels = [np.asarray([min(MAX_LABEL, max(0, train.qrels[q].get(ids[i], 0))) for i in items], dtype=np.float32)
              for q, (_, items, _) in zip(train.query_ids, train_rows, strict=True)]
    models, rounds = fit_ranker([features for _, _, features in train_rows], labels, cfg, progress)
    ranker = LearnedRanker.from_texts(models, cfg.depth)
    dev_rows = rows(dev, "ranker features: dev queries")
    qrels = [dev.qrels[q] for q in dev.query_ids]
    fused = [[ids[i] for i, _ in stage.fused[:10]] for stage, _, _ in dev_rows]
    learned = [[ids[i] for i, _ in reorder(stage, items, ranker.score(features))[:10]]
               for stage, items, features in dev_rows]
    before = graded_query_metrics(fused, qrels, dev.min_relevance, ks=(10,))["ndcg@10"]
    after = graded_query_metrics(learned, qrels, dev.min_relevance, ks=(10,))["ndcg@10"]
    p_value = paired_randomization_p(after, before)
    better = after.mean() > before.mean() and p_value < MODE_SIGNIFICANCE
    kept = cfg.mode == "on" or better
    reason = ("dev nDCG@10 significantly higher than the fusion's" if better
              else "kept as asked (--ranker on)" if kept else "not significantly better than the fusion on dev")
    if kept:
        save_models(out, models)
    return RankerReport(kept, reason, train_queries=len(train.query_ids), dev_queries=len(dev.query_ids),
                        rounds=rounds, dev_ndcg_fusion=float(before.mean()), dev_ndcg_ranker=float(after.mean()),
                        p_vs_fusion=p_value, seconds=time.perf_counter() - started)


def dev_judgments(workspace: Workspace) -> Judgments:
    """Dev judgments for picking the mode (train when dev is empty), at most ``MODE_QUERIES`` queries."""
    judgments = load_judgments(workspace, "dev")
    if not judgments.query_ids:
        judgments = load_judgments(workspace, "train")
    return first_queries(judgments, MODE_QUERIES)


def first_queries(judgments: Judgments, count: int) -> Judgments:
    """The judgments of the first ``count`` queries."""
    keep = judgments.query_ids[:count]
    return replace(judgments, query_ids=keep, queries=judgments.queries[:count],
                   qrels={q: judgments.qrels[q] for q in keep})


def _write_items(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


@writes_workspace
def run_index(cfg: IndexConfig, workspace: Workspace, progress=None) -> IndexResult:
    """Encode the catalog, build dense + BM25 indexes, sweep efSearch on dev queries, publish atomically."""
    import faiss

    if cfg.kind not in KINDS:
        raise BadInput(f"unknown index kind {cfg.kind!r}", hint=f"use one of {', '.join(KINDS)}")
    data_manifest = load_data_manifest(workspace)
    catalog = load_catalog(workspace)
    spec = choose_encoder(cfg.model, workspace)
    device = pick_device(cfg.device) if spec.backend == "torch" else "cpu"  # ONNX Runtime runs on the CPU here
    encoder = spec.load(workspace, cfg.threads, device)
    spec.dim = encoder.dim
    dev = load_pairs(workspace, "dev")[:SWEEP_QUERIES] or load_pairs(workspace, "train")[:SWEEP_QUERIES]
    upstream = {"data": data_manifest.fingerprint, spec.artifact or "encoder": spec.fingerprint}
    cfg = replace(cfg, batch_size=cfg.batch_size or encode_batch_size(device))
    notes = []
    with publish(workspace, "index") as tmp:
        started, tokens_before = time.perf_counter(), getattr(encoder, "tokens_encoded", 0)
        vectors = None if cfg.reencode else reuse_published_vectors(
            workspace, spec, data_manifest.fingerprint, cfg.batch_size, device, tmp / VECTORS_FILE, len(catalog),
            encoder.dim)
        if vectors is None:
            vectors = encode_catalog(cfg, spec, encoder, workspace, catalog.texts, tmp / VECTORS_FILE, progress)
            encode_seconds = time.perf_counter() - started
            throughput = measure_throughput(encoder, spec, workspace, len(vectors), tokens_before, encode_seconds)
        else:
            encode_seconds, throughput = 0.0, None
            notes.append("catalog vectors copied from the published index (same encoder, catalog and batch size); "
                         "nothing was re-encoded")
        started = time.perf_counter()
        index = new_faiss_index(cfg.kind, encoder.dim, len(vectors), cfg)
        train_if_needed(index, vectors)
        add_in_chunks(index, vectors)
        build_seconds = time.perf_counter() - started
        encoded: dict[str, np.ndarray] = {}
        queries = encode_each_query_once(encoder, [p.query for p in dev], encoded)
        exact, _ = exact_topk(queries, vectors, 100)
        served = reranked_search(index, vectors, RERANK_DEPTH) if cfg.kind == "ivfpq" else None
        sweep, chosen = sweep_search_param(index, cfg.kind, queries, exact[:, :10], cfg.target_recall,
                                           search=served)
        faiss.write_index(index, str(tmp / DENSE_FILE))
        bm25 = Bm25Index.build(catalog.texts, cfg.bm25)
        bm25.save(tmp / BM25_DIR)
        ngrams = Bm25Index.build_ngrams(catalog.texts)
        ngrams.save(tmp / NGRAM_DIR)
        choice = pick_mode(workspace, encoder, index, bm25, catalog.ids, encoded, ngrams)
        ranker = build_ranker(cfg.ranker, workspace, encoder, index, bm25, ngrams, vectors,
                              title_texts(catalog.rows),
                              catalog.ids, choice.fusion, encoded, tmp / RANKER_DIR, progress)
        _write_items(tmp / ITEMS_FILE, catalog.rows)
        param_name = search_param_name(cfg.kind)
        manifest = write_manifest(tmp, Manifest(
            kind="index", settings={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
            upstream=upstream, counts={"vectors": len(vectors), "dev_queries": len(dev)},
            extra={"kind": cfg.kind, "encoder": asdict(spec), "dim": encoder.dim, "metric": "inner_product",
                   "search_param": {param_name: chosen} if chosen else {}, "sweep": sweep,
                   **choice.to_manifest(), "ranker": ranker.to_manifest(cfg.ranker), "bm25": cfg.bm25,
                   "encode_seconds": encode_seconds, "build_seconds": build_seconds, "device": device,
                   "throughput": asdict(throughput) if throughput else None, "encode_batch": cfg.batch_size,
                   "encode_numerics": ENCODE_NUMERICS,
                   "hnsw": {"M": cfg.hnsw_m, "efConstruction": ef_construction(cfg, len(vectors))}
                   if cfg.kind.startswith("hnsw") else {},
                   "query_source": data_manifest.extra.get("query_source")}))
    return IndexResult(
        path=workspace.artifact("index"), manifest=manifest, encoder=spec, kind=cfg.kind, vectors=len(vectors),
        encode_seconds=encode_seconds,
        items_per_second=len(vectors) / max(encode_seconds, 1e-9) if throughput else 0.0, build_seconds=build_seconds,
        sweep=sweep, search_param=manifest.extra["search_param"],
        mode=choice, bytes_on_disk=_disk_bytes(workspace.artifact("index")), throughput=throughput, notes=notes,
        ranker=ranker)


def read_new_items(path: Path, max_chars: int = 2000) -> list[dict]:
    """Catalog rows from a metadata file in the Amazon schema (for ``index --add``)."""
    stats = ReadStats("add")
    rows = []
    for lineno, record in iter_records(path, stats):
        try:
            item = ItemFields.from_record(record)
        except ValueError as exc:
            raise BadInput(str(exc), str(path), lineno) from exc
        rows.append({"item_id": item.item_id, "group_id": item.group_key(), **item.display_fields(),
                     "text": item.text(max_chars)})
    return rows


@writes_workspace
def run_add(cfg: IndexConfig, workspace: Workspace, progress=None) -> IndexResult:
    """Append items to the dense index without rebuilding it; BM25 is rebuilt (its statistics are global)."""
    import faiss

    artifact = open_artifact(workspace, "index")
    manifest = artifact.manifest
    spec = EncoderSpec(**manifest.extra["encoder"])
    existing = read_items(artifact)
    known = {row["item_id"] for row in existing}
    new_rows = [row for row in read_new_items(cfg.add_path) if row["item_id"] not in known]
    if not new_rows:
        raise BadInput("no new items to add (all already indexed)", str(cfg.add_path))
    encoder = spec.load(workspace, cfg.threads)
    batch_size = cfg.batch_size or manifest.extra.get("encode_batch") or encode_batch_size("cpu")
    with publish(workspace, "index") as tmp:
        old = artifact.load_npy(VECTORS_FILE)
        vectors = new_vectors_file(tmp / VECTORS_FILE, len(old) + len(new_rows), old.shape[1])
        vectors[: len(old)] = old
        started = time.perf_counter()
        encode_to_memmap(encoder, [r["text"] for r in new_rows], tmp / VECTORS_FILE, batch_size,
                         progress, start_row=len(old), out=vectors)
        encode_seconds = time.perf_counter() - started
        index = artifact.load_faiss()
        add_in_chunks(index, vectors, start=len(old))
        faiss.write_index(index, str(tmp / DENSE_FILE))
        rows = existing + new_rows
        Bm25Index.build([r["text"] for r in rows], manifest.extra["bm25"]).save(tmp / BM25_DIR)
        Bm25Index.build_ngrams([r["text"] for r in rows]).save(tmp / NGRAM_DIR)
        if (artifact.path / RANKER_DIR).is_dir():  # its features are per query and item: it serves the new items
            shutil.copytree(artifact.path / RANKER_DIR, tmp / RANKER_DIR)
        _write_items(tmp / ITEMS_FILE, rows)
        manifest.counts = {**manifest.counts, "vectors": len(rows), "added": manifest.counts.get("added", 0)
                           + len(new_rows)}
        manifest.inputs = {**manifest.inputs, f"add:{Path(cfg.add_path).name}": str(cfg.add_path)}
        manifest = write_manifest(tmp, manifest)
    directory = workspace.artifact("index")
    return IndexResult(
        path=directory, manifest=manifest, encoder=spec, kind=manifest.extra["kind"], vectors=len(rows),
        encode_seconds=encode_seconds, items_per_second=len(new_rows) / max(encode_seconds, 1e-9),
        build_seconds=0.0, sweep=manifest.extra["sweep"], search_param=manifest.extra["search_param"],
        mode=ModeChoice.from_manifest(manifest.extra),
        bytes_on_disk=_disk_bytes(directory), added=len(new_rows))

