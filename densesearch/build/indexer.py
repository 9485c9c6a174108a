"""`index`: encode the catalog into a memory-mapped matrix, build FAISS (dense) and BM25 (sparse) indexes."""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from densesearch.build.ranker import RankerReport, build_ranker
from densesearch.build.tuning import ModeChoice, Tuning, pick_mode, sweep_search_param
from densesearch.core.artifacts import BM25_DIR, DENSE_FILE, ITEMS_FILE, NGRAM_DIR, VECTORS_FILE, open_artifact
from densesearch.core.config import ENCODE_BATCH, GPU_ENCODE_BATCH, RAY_WORKERS, IndexConfig, IndexKind
from densesearch.core.errors import BadInput
from densesearch.core.manifest import Manifest, write_manifest
from densesearch.core.paths import Workspace, allocate, publish, writes_workspace
from densesearch.data.itemtext import ItemFields
from densesearch.data.readers import Catalog, load_catalog, load_data_manifest, load_pairs
from densesearch.data.sources import ReadStats, iter_records
from densesearch.eval.evaluation import exact_topk
from densesearch.retrieval.dense import DenseIndex, search_param_name
from densesearch.retrieval.encoders import ENCODE_NUMERICS, Encoder, EncoderSpec, choose_encoder, pick_device
from densesearch.retrieval.firststage import FirstStage
from densesearch.retrieval.ranker import RANKER_DIR, TERMS_DIR, TitleTerms, title_texts
from densesearch.retrieval.searcher import read_items
from densesearch.retrieval.sparse import Bm25Index

KINDS = tuple(IndexKind)
ENCODE_CHUNK = 4096
SWEEP_QUERIES = 500
LARGE_CATALOG = 200_000                       # above it, HNSW builds with a narrower beam (default_ef_construction)
CHANGES = ("added", "upserted", "deleted", "compacted")  # counts of changes made to a published index after its build
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
    from densesearch.core.cpu import int8_peak_ops, read_cpu, usable_cores
    from densesearch.retrieval.encoders import ops_per_token

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
    from densesearch.core.artifacts import has_artifact
    from densesearch.core.errors import DensesearchError
    from densesearch.core.manifest import fingerprint_files

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
            or any(manifest.counts.get(change) for change in CHANGES) \
            or fingerprint_files(artifact.path) != manifest.fingerprint:
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
    from densesearch.build.distributed import RayPlan, encode_with_ray

    out = new_vectors_file(path, len(texts), encoder.dim)
    directory = open_artifact(workspace, spec.artifact).path if spec.artifact else Path(spec.path)
    encode_with_ray(spec, directory, texts, out, ENCODE_CHUNK, cfg.batch_size,
                    RayPlan(address=cfg.ray_address, workers=cfg.ray_workers or RAY_WORKERS), progress)
    out.flush()
    return out


def new_vectors_file(path: Path, rows: int, dim: int) -> np.ndarray:
    """A float32 .npy memmap whose disk blocks are reserved up front: a full disk is an error, not a SIGBUS."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    allocate(path, path.stat().st_size)
    return out


def factory_string(kind: str, dim: int, n: int, hnsw_m: int) -> str:
    """The FAISS ``index_factory`` description of ``kind`` for ``n`` vectors of ``dim`` dimensions (recorded in the
    index manifest, so `faiss.index_factory` rebuilds the same structure)."""
    if kind == IndexKind.FLAT:
        return "Flat"
    if kind == IndexKind.HNSW:
        return f"HNSW{hnsw_m},Flat"
    if kind == IndexKind.HNSW_SQ8:
        return f"HNSW{hnsw_m},SQ8"
    if kind == IndexKind.IVFPQ:
        if n < IVFPQ_MIN_VECTORS:
            raise BadInput(f"ivfpq needs at least {IVFPQ_MIN_VECTORS:,} items to train its codebooks "
                           f"(the catalog has {n:,})", hint="use --kind hnsw or hnsw-sq8")
        sub = next(m for m in (dim // 8, dim // 4, dim // 2, dim) if dim % m == 0)
        return f"IVF{ivf_lists(n)},PQ{sub}x8"
    if kind == IndexKind.IVF_HNSW:  # the largest catalogs: an HNSW graph over the centroids, exact vectors in lists
        return f"IVF{ivf_lists(n)}_HNSW{hnsw_m},Flat"
    raise BadInput(f"unknown index kind {kind!r}", hint=f"use one of {', '.join(IndexKind)}")


def new_faiss_index(kind: str, dim: int, n: int, cfg: IndexConfig):
    """An empty inner-product index of ``kind`` from its factory string, with its build-time settings."""
    import faiss

    index = faiss.index_factory(dim, factory_string(kind, dim, n, cfg.hnsw_m), faiss.METRIC_INNER_PRODUCT)
    if kind in (IndexKind.HNSW, IndexKind.HNSW_SQ8):
        index.hnsw.efConstruction = ef_construction(cfg, n)
    elif kind == IndexKind.IVF_HNSW:
        quantizer = faiss.downcast_index(index.quantizer)
        quantizer.hnsw.efConstruction = 200  # a few thousand centroids: the best graph costs seconds
        quantizer.hnsw.efSearch = 128
        index.cp.spherical = True  # unit-length centroids: inner product on them is a metric HNSW can walk
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




























def _write_items(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


@dataclass
class IndexPlan:
    """What one `index` run builds from: settings (batch size resolved), the catalog, the encoder and its device."""

    cfg: IndexConfig
    workspace: Workspace
    data: Manifest
    catalog: Catalog
    spec: EncoderSpec
    encoder: Encoder
    device: str


@dataclass
class CatalogVectors:
    """The catalog's vectors in the new version, and how they got there."""

    vectors: np.ndarray
    seconds: float = 0.0
    throughput: EncodeThroughput | None = None
    notes: list[str] = field(default_factory=list)


def plan_index(cfg: IndexConfig, workspace: Workspace) -> IndexPlan:
    """Check the settings, read the prepared data and load the encoder the index is built with."""
    if cfg.kind not in KINDS:
        raise BadInput(f"unknown index kind {cfg.kind!r}", hint=f"use one of {', '.join(IndexKind)}")
    data, catalog = load_data_manifest(workspace), load_catalog(workspace)
    spec = choose_encoder(cfg.model, workspace)
    device = pick_device(cfg.device) if spec.backend == "torch" else "cpu"  # ONNX Runtime runs on the CPU here
    encoder = spec.load(workspace, cfg.threads, device)
    spec = replace(spec, dim=encoder.dim)
    cfg = replace(cfg, batch_size=cfg.batch_size or encode_batch_size(device))
    return IndexPlan(cfg, workspace, data, catalog, spec, encoder, device)


def catalog_vectors(plan: IndexPlan, path: Path, progress=None) -> CatalogVectors:
    """The published index's vectors when they are what encoding would give, else the catalog encoded."""
    cfg, encoder = plan.cfg, plan.encoder
    copied = None if cfg.reencode else reuse_published_vectors(
        plan.workspace, plan.spec, plan.data.fingerprint, cfg.batch_size, plan.device, path, len(plan.catalog),
        encoder.dim)
    if copied is not None:
        return CatalogVectors(copied, notes=["catalog vectors copied from the published index (same encoder, "
                                             "catalog and batch size); nothing was re-encoded"])
    started, tokens_before = time.perf_counter(), getattr(encoder, "tokens_encoded", 0)
    vectors = encode_catalog(cfg, plan.spec, encoder, plan.workspace, plan.catalog.texts, path, progress)
    seconds = time.perf_counter() - started
    return CatalogVectors(vectors, seconds, measure_throughput(encoder, plan.spec, plan.workspace, len(vectors),
                                                               tokens_before, seconds))


def build_dense(plan: IndexPlan, vectors: np.ndarray) -> tuple[DenseIndex, float]:
    """The FAISS index over ``vectors`` (trained where it needs to be) and its build seconds."""
    started = time.perf_counter()
    index = new_faiss_index(plan.cfg.kind, plan.encoder.dim, len(vectors), plan.cfg)
    train_if_needed(index, vectors)
    add_in_chunks(index, vectors)
    return DenseIndex(index, plan.cfg.kind, vectors, 0, plan.cfg.threads or 1), time.perf_counter() - started


def build_lexical(texts: list[str], backend: str, out: Path, rows: np.ndarray | None = None
                  ) -> tuple[Bm25Index, Bm25Index]:
    """Word BM25 and character 3-gram BM25 over the catalog texts, saved under ``out`` (``rows``: each text's row
    in the index, when the texts are its live rows only)."""
    words, grams = Bm25Index.build(texts, backend), Bm25Index.build_ngrams(texts)
    for index, name in ((words, BM25_DIR), (grams, NGRAM_DIR)):
        index.rows = rows
        index.save(out / name)
    return words, grams


def copy_ranker(published: Path, out: Path, rows: list[dict]) -> None:
    """The published learned ranker (its features are per query and item, so it serves changed catalogs) with the
    title terms of ``rows``, every row of the new version."""
    if (published / RANKER_DIR).is_dir():
        shutil.copytree(published / RANKER_DIR, out / RANKER_DIR, ignore=shutil.ignore_patterns(TERMS_DIR))
        TitleTerms.of(title_texts(rows)).save(out / RANKER_DIR / TERMS_DIR)


def append_vectors(artifact, encoder: Encoder, texts: list[str], out: Path, batch_size: int,
                   progress=None) -> float:
    """The published vectors with ``texts`` encoded after them, and its FAISS structure with them added, written
    under ``out``; the encode's seconds."""
    import faiss

    old = artifact.load_npy(VECTORS_FILE)
    vectors = new_vectors_file(out / VECTORS_FILE, len(old) + len(texts), old.shape[1])
    for start in range(0, len(old), 65536):
        chunk = old[start:start + 65536]
        vectors[start:start + len(chunk)] = chunk
    started = time.perf_counter()
    encode_to_memmap(encoder, texts, out / VECTORS_FILE, batch_size, progress, start_row=len(old), out=vectors)
    seconds = time.perf_counter() - started
    index = artifact.load_faiss()
    add_in_chunks(index, vectors, start=len(old))
    faiss.write_index(index, str(out / DENSE_FILE))
    return seconds


def sweep_queries(plan: IndexPlan) -> list[str]:
    """The dev queries (train when dev is empty) that the efSearch / nprobe sweep measures recall on."""
    pairs = load_pairs(plan.workspace, "dev")[:SWEEP_QUERIES] or load_pairs(plan.workspace, "train")[:SWEEP_QUERIES]
    return [pair.query for pair in pairs]


def tune_search_param(plan: IndexPlan, tuning: Tuning, queries: list[str]) -> tuple[list[dict[str, float]], int]:
    """efSearch / nprobe: the smallest value whose served top 10 reaches the target recall against exact search."""
    vectors = tuning.vectors(queries)
    exact, _ = exact_topk(vectors, tuning.first_stage.dense.vectors, 10)
    return sweep_search_param(tuning.first_stage.dense, vectors, exact, plan.cfg.target_recall)


def index_manifest(plan: IndexPlan, built: BuiltIndex) -> Manifest:
    """The new index's manifest: settings, upstream fingerprints, the dense structure and every dev choice."""
    cfg, n = plan.cfg, len(built.encoded.vectors)
    name = search_param_name(cfg.kind)
    return Manifest(
        kind="index", settings={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        upstream={"data": plan.data.fingerprint, plan.spec.artifact or "encoder": plan.spec.fingerprint},
        counts={"vectors": n, "dev_queries": built.sweep_queries},
        extra={"kind": cfg.kind, "factory": factory_string(cfg.kind, plan.encoder.dim, n, cfg.hnsw_m),
               "encoder": asdict(plan.spec), "dim": plan.encoder.dim, "metric": "inner_product",
               "search_param": {name: built.param} if built.param else {}, "sweep": built.sweep,
               **built.mode.to_manifest(), "ranker": built.ranker.to_manifest(cfg.ranker), "bm25": cfg.bm25,
               "encode_seconds": built.encoded.seconds, "build_seconds": built.build_seconds, "device": plan.device,
               "throughput": asdict(built.encoded.throughput) if built.encoded.throughput else None,
               "encode_batch": cfg.batch_size, "encode_numerics": ENCODE_NUMERICS,
               "hnsw": {"M": cfg.hnsw_m, "efConstruction": ef_construction(cfg, n)}
               if cfg.kind in (IndexKind.HNSW, IndexKind.HNSW_SQ8) else {},
               "query_source": plan.data.extra.get("query_source")})


@dataclass
class BuiltIndex:
    """What the steps of one `index` run produced, before the manifest is written."""

    encoded: CatalogVectors
    build_seconds: float
    sweep: list[dict[str, float]]
    param: int
    sweep_queries: int
    mode: ModeChoice
    ranker: RankerReport


@writes_workspace
def run_index(cfg: IndexConfig, workspace: Workspace, progress=None) -> IndexResult:
    """Encode the catalog, build dense + BM25 indexes, tune them on dev as served, publish atomically."""
    import faiss

    plan = plan_index(cfg, workspace)
    with publish(workspace, "index") as tmp:
        encoded = catalog_vectors(plan, tmp / VECTORS_FILE, progress)
        dense, build_seconds = build_dense(plan, encoded.vectors)
        words, grams = build_lexical(plan.catalog.texts, plan.cfg.bm25, tmp)
        tuning = Tuning(workspace, plan.encoder, FirstStage(dense, words, grams), plan.catalog.ids,
                        title_texts(plan.catalog.rows))
        queries = sweep_queries(plan)
        sweep, param = tune_search_param(plan, tuning, queries)
        faiss.write_index(dense.index, str(tmp / DENSE_FILE))
        mode = pick_mode(tuning)
        ranker = build_ranker(plan.cfg.ranker, tuning, mode.fusion, tmp / RANKER_DIR, progress)
        _write_items(tmp / ITEMS_FILE, plan.catalog.rows)
        built = BuiltIndex(encoded, build_seconds, sweep, param, len(queries), mode, ranker)
        manifest = write_manifest(tmp, index_manifest(plan, built))
    return IndexResult(
        path=workspace.artifact("index"), manifest=manifest, encoder=plan.spec, kind=plan.cfg.kind,
        vectors=len(encoded.vectors), encode_seconds=encoded.seconds,
        items_per_second=len(encoded.vectors) / max(encoded.seconds, 1e-9) if encoded.throughput else 0.0,
        build_seconds=build_seconds, sweep=sweep, search_param=manifest.extra["search_param"], mode=mode,
        bytes_on_disk=_disk_bytes(workspace.artifact("index")), throughput=encoded.throughput, notes=encoded.notes,
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


def unseen_items(rows: list[dict], known: set[str]) -> list[dict]:
    """The rows whose item id is neither indexed nor met earlier in the same file (its first occurrence is kept)."""
    seen = set(known)
    unseen = []
    for row in rows:
        if row["item_id"] not in seen:
            seen.add(row["item_id"])
            unseen.append(row)
    return unseen


@writes_workspace
def run_add(cfg: IndexConfig, workspace: Workspace, progress=None) -> IndexResult:
    """Append items to the dense index without rebuilding it; BM25 is rebuilt (its statistics are global)."""
    artifact = open_artifact(workspace, "index")
    manifest = artifact.manifest
    spec = EncoderSpec.from_record(artifact.info.encoder)
    existing = read_items(artifact)
    known = {row["item_id"] for row in existing}
    new_rows = unseen_items(read_new_items(cfg.add_path), known)
    if not new_rows:
        raise BadInput("no new items to add (all already indexed)", str(cfg.add_path))
    encoder = spec.load(workspace, cfg.threads)
    batch_size = cfg.batch_size or manifest.extra.get("encode_batch") or encode_batch_size("cpu")
    with publish(workspace, "index") as tmp:
        encode_seconds = append_vectors(artifact, encoder, [r["text"] for r in new_rows], tmp, batch_size, progress)
        rows = existing + new_rows
        build_lexical([r["text"] for r in rows], manifest.extra["bm25"], tmp)
        copy_ranker(artifact.path, tmp, rows)
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

