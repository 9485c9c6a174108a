"""`index`: encode the catalog into a memory-mapped matrix, build FAISS (dense) and BM25 (sparse) indexes."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from densesearch.artifacts import BM25_DIR, DENSE_FILE, ITEMS_FILE, VECTORS_FILE, open_artifact
from densesearch.config import IndexConfig
from densesearch.encoders import Encoder, EncoderSpec, choose_encoder
from densesearch.errors import BadInput
from densesearch.evaluation import exact_topk, score_rankings
from densesearch.itemtext import ItemFields
from densesearch.manifest import Manifest, write_manifest
from densesearch.metrics import ann_recall, mean_metrics
from densesearch.paths import Workspace, allocate, publish, writes_workspace
from densesearch.prepare import load_catalog, load_data_manifest, load_pairs
from densesearch.search import RERANK_DEPTH, read_items, reranked_search, rrf_fuse, set_search_param
from densesearch.sources import ReadStats, iter_records
from densesearch.sparse import Bm25Index

KINDS = ("hnsw", "flat", "hnsw-sq8", "ivfpq")
EF_CANDIDATES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
NPROBE_CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ENCODE_CHUNK = 4096
SWEEP_QUERIES = 500
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
    dev_recall_at_10: dict[str, float]
    recommended_mode: str
    bytes_on_disk: int
    added: int = 0
    notes: list[str] = field(default_factory=list)


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
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
        sub = next(m for m in (dim // 8, dim // 4, dim // 2, dim) if dim % m == 0)
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, sub, 8, faiss.METRIC_INNER_PRODUCT)
        index.by_residual = True
        return index
    else:
        raise BadInput(f"unknown index kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
    index.hnsw.efConstruction = cfg.ef_construction
    return index


def add_in_chunks(index, vectors: np.ndarray, start: int = 0) -> None:
    for offset in range(start, len(vectors), 65536):
        index.add(np.ascontiguousarray(vectors[offset: offset + 65536]))


def train_if_needed(index, vectors: np.ndarray) -> None:
    if not index.is_trained:
        sample = vectors[np.random.default_rng(0).permutation(len(vectors))[: 100_000]]
        index.train(np.ascontiguousarray(sample))


def sweep_search_param(index, kind: str, queries: np.ndarray, exact: np.ndarray, target: float,
                       k: int = 10, search=None) -> tuple[list[dict[str, float]], int]:
    """Recall vs exact and ms/query for each efSearch (or nprobe); the smallest value reaching ``target``.

    ``search(queries, k) -> ids`` is how the index is served (default: ``index.search``).
    """
    if kind == "flat":
        return [], 0
    search = search or (lambda q, depth: index.search(q, depth)[1])
    if kind == "ivfpq":
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


def dev_mode_comparison(dense_top: np.ndarray, bm25: Bm25Index, queries: list[str], positives: list[str],
                        ids: list[str], group_of: dict[str, str], rrf_k: int) -> dict[str, float]:
    """Dev Recall@10 of dense, BM25 and hybrid, to pick the default query mode."""
    sparse = [list(found) for found, _ in bm25.search(queries, 100)]
    runs = {"dense": [list(row) for row in dense_top], "bm25": sparse,
            "hybrid": [[i for i, _ in rrf_fuse([list(d), s], rrf_k, 10)] for d, s in zip(dense_top, sparse,
                                                                                       strict=True)]}
    return {mode: mean_metrics(score_rankings([[ids[i] for i in r] for r in ranking], positives, group_of,
                                              ks=(10,)))["recall@10"] for mode, ranking in runs.items()}


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
    encoder = spec.load(workspace, cfg.threads)
    spec.dim = encoder.dim
    dev = load_pairs(workspace, "dev")[:SWEEP_QUERIES] or load_pairs(workspace, "train")[:SWEEP_QUERIES]
    group_of = dict(zip(catalog.ids, catalog.groups, strict=True))
    upstream = {"data": data_manifest.fingerprint, spec.artifact or "encoder": spec.fingerprint}
    with publish(workspace, "index") as tmp:
        started = time.perf_counter()
        vectors = encode_to_memmap(encoder, catalog.texts, tmp / VECTORS_FILE, cfg.batch_size, progress)
        encode_seconds = time.perf_counter() - started
        started = time.perf_counter()
        index = new_faiss_index(cfg.kind, encoder.dim, len(vectors), cfg)
        train_if_needed(index, vectors)
        add_in_chunks(index, vectors)
        build_seconds = time.perf_counter() - started
        queries = encoder.encode([p.query for p in dev], batch_size=cfg.batch_size)
        exact, _ = exact_topk(queries, vectors, 100)
        served = reranked_search(index, vectors, RERANK_DEPTH) if cfg.kind == "ivfpq" else None
        sweep, chosen = sweep_search_param(index, cfg.kind, queries, exact[:, :10], cfg.target_recall,
                                           search=served)
        faiss.write_index(index, str(tmp / DENSE_FILE))
        bm25 = Bm25Index.build(catalog.texts, cfg.bm25)
        bm25.save(tmp / BM25_DIR)
        _, dense_top = index.search(queries, 100)
        modes = dev_mode_comparison(dense_top, bm25, [p.query for p in dev], [p.item_id for p in dev],
                                    catalog.ids, group_of, rrf_k=60)
        recommended = max(("hybrid", "dense", "bm25"), key=lambda m: (round(modes[m], 6)))
        _write_items(tmp / ITEMS_FILE, catalog.rows)
        param_name = "nprobe" if cfg.kind == "ivfpq" else "efSearch"
        manifest = write_manifest(tmp, Manifest(
            kind="index", settings={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
            upstream=upstream, counts={"vectors": len(vectors), "dev_queries": len(dev)},
            extra={"kind": cfg.kind, "encoder": asdict(spec), "dim": encoder.dim, "metric": "inner_product",
                   "search_param": {param_name: chosen} if chosen else {}, "sweep": sweep,
                   "dev_recall_at_10": modes, "recommended_mode": recommended, "bm25": cfg.bm25,
                   "encode_seconds": encode_seconds, "build_seconds": build_seconds,
                   "query_source": data_manifest.extra.get("query_source")}))
    return IndexResult(
        path=workspace.artifact("index"), manifest=manifest, encoder=spec, kind=cfg.kind, vectors=len(vectors),
        encode_seconds=encode_seconds, items_per_second=len(vectors) / max(encode_seconds, 1e-9),
        build_seconds=build_seconds, sweep=sweep, search_param=manifest.extra["search_param"],
        dev_recall_at_10=modes, recommended_mode=recommended,
        bytes_on_disk=_disk_bytes(workspace.artifact("index")))


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
    with publish(workspace, "index") as tmp:
        old = artifact.load_npy(VECTORS_FILE)
        vectors = new_vectors_file(tmp / VECTORS_FILE, len(old) + len(new_rows), old.shape[1])
        vectors[: len(old)] = old
        started = time.perf_counter()
        encode_to_memmap(encoder, [r["text"] for r in new_rows], tmp / VECTORS_FILE, cfg.batch_size,
                         progress, start_row=len(old), out=vectors)
        encode_seconds = time.perf_counter() - started
        index = artifact.load_faiss()
        add_in_chunks(index, vectors, start=len(old))
        faiss.write_index(index, str(tmp / DENSE_FILE))
        rows = existing + new_rows
        Bm25Index.build([r["text"] for r in rows], manifest.extra["bm25"]).save(tmp / BM25_DIR)
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
        dev_recall_at_10=manifest.extra["dev_recall_at_10"], recommended_mode=manifest.extra["recommended_mode"],
        bytes_on_disk=_disk_bytes(directory), added=len(new_rows))

