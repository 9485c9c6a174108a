"""`bench --scale N`: the serving cost of a full-size catalog, measured on synthetic vectors and documents.

Dense part: N vectors are drawn around the workspace's real catalog embeddings. Each one is a real
item vector plus noise sampled from the real embeddings' own covariance (top principal components
plus an isotropic residual), scaled so that a synthetic vector is as close to its parent as a real
item is to its nearest real neighbour. Ground truth is exact inner-product search, so every index
kind reports recall@10 against exact, build time, memory, size on disk and single-query latency.

Sparse part: N documents made of windows of real item texts, and the real test queries, so the
bm25s vs rank-bm25 speed ratio is measured at catalog scale instead of at 1,000 items.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from densesearch.build.indexer import KINDS, add_in_chunks, new_faiss_index, new_vectors_file, train_if_needed
from densesearch.build.tuning import sweep_search_param
from densesearch.core.artifacts import VECTORS_FILE, Artifact, open_artifact
from densesearch.core.config import IndexConfig, IndexKind, ScaleConfig
from densesearch.core.cpu import openmp_threads, usable_cores
from densesearch.core.errors import BadInput
from densesearch.core.paths import Workspace, atomic_dir, new_run_id
from densesearch.data.readers import load_catalog, load_pairs
from densesearch.eval.metrics import ann_recall
from densesearch.retrieval.dense import DenseIndex, search_param_name
from densesearch.retrieval.encoders import EncoderSpec
from densesearch.retrieval.sparse import Bm25Index, Tokenizer

SCALE_SCHEMA = 1
CHUNK = 65_536
NOISE_RANK = 64


@dataclass
class DenseScaleResult:
    """One index kind at N vectors."""

    kind: str
    vectors: int
    train_seconds: float
    build_seconds: float
    vectors_per_second: float
    index_bytes: int
    ram_bytes: int
    search_param: dict[str, int]
    recall_at_10: float
    p50_ms: float
    p99_ms: float
    qps_one_thread: float
    sweep: list[dict[str, float]] = field(default_factory=list)


@dataclass
class SparseScaleResult:
    """BM25 at N documents: both backends on the same real queries."""

    documents: int
    queries: int
    build_seconds: dict[str, float]
    p50_ms: dict[str, float]
    qps: dict[str, float]
    speedup: float
    same_top10: float


@dataclass
class ScaleReport:
    schema: int
    run_id: str
    created: str
    vectors: int
    dim: int
    seed_items: int
    encoder: str
    noise_scale: float
    parent_cosine: float
    nn_cosine_real: float
    ground_truth_queries: int
    dense: list[DenseScaleResult]
    sparse: SparseScaleResult | None
    machine: dict[str, Any]
    notes: list[str]


def principal_noise(seeds: np.ndarray, rank: int = NOISE_RANK) -> tuple[np.ndarray, np.ndarray, float]:
    """Components, their standard deviations, and the per-dimension residual std of ``seeds``."""
    centered = seeds - seeds.mean(axis=0)
    _, singular, components = np.linalg.svd(centered, full_matrices=False)
    rank = min(rank, len(seeds) - 1, seeds.shape[1])
    variance = singular ** 2 / max(len(seeds) - 1, 1)
    residual = math.sqrt(float(variance[rank:].sum()) / seeds.shape[1])
    return components[:rank].astype(np.float32), np.sqrt(variance[:rank]).astype(np.float32), residual


@dataclass
class VectorSynthesizer:
    """Real embeddings perturbed by covariance-shaped noise; ``scale`` sets how far from the parent."""

    seeds: np.ndarray
    components: np.ndarray
    stds: np.ndarray
    residual: float
    scale: float = 1.0

    @classmethod
    def fit(cls, seeds: np.ndarray) -> VectorSynthesizer:
        seeds = _normalise(np.asarray(seeds, dtype=np.float32))
        return cls(seeds, *principal_noise(seeds))

    def noise(self, rng: np.random.Generator, n: int) -> np.ndarray:
        shaped = (rng.standard_normal((n, len(self.stds)), dtype=np.float32) * self.stds) @ self.components
        return shaped + self.residual * rng.standard_normal((n, self.seeds.shape[1]), dtype=np.float32)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        parents = rng.integers(0, len(self.seeds), n)
        return _normalise(self.seeds[parents] + self.scale * self.noise(rng, n)), parents

    def calibrate(self, target_cosine: float, rng: np.random.Generator, n: int = 4000) -> float:
        """Set ``scale`` so the median cosine between a sample and its parent is ``target_cosine``."""
        parents = rng.integers(0, len(self.seeds), n)
        base, noise = self.seeds[parents], self.noise(rng, n)
        low, high = 0.0, 64.0
        for _ in range(40):
            mid = (low + high) / 2
            cosine = float(np.median((_normalise(base + mid * noise) * base).sum(axis=1)))
            low, high = (mid, high) if cosine > target_cosine else (low, mid)
        self.scale = (low + high) / 2
        return self.scale


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_neighbour_cosine(vectors: np.ndarray) -> float:
    """Median cosine between each vector and its nearest other vector."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    return float(np.median(sims.max(axis=1)))


def write_synthetic(synth: VectorSynthesizer, n: int, path: Path, seed: int, progress=None) -> np.ndarray:
    """N synthetic vectors into a float32 .npy memmap, chunk by chunk (its disk reserved first: a full disk is one
    ENOSPC line, never a SIGBUS)."""
    out = new_vectors_file(path, n, synth.seeds.shape[1])
    rng = np.random.default_rng(seed)
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        out[start:stop] = synth.sample(rng, stop - start)[0]
        if progress:
            progress("synthesising vectors", stop, n)
    out.flush()
    return out


def exact_ground_truth(vectors: np.ndarray, queries: np.ndarray, k: int, progress=None) -> np.ndarray:
    """Exact top-k by inner product over a memmap, one chunk of the catalog at a time (faiss contrib's
    `knn_ground_truth`: only a chunk is in memory at once)."""
    import faiss
    from faiss.contrib.exhaustive_search import knn_ground_truth

    def chunks():
        for start in range(0, len(vectors), CHUNK * 2):
            yield np.ascontiguousarray(vectors[start:start + CHUNK * 2])
            if progress:
                progress("exact ground truth", min(start + CHUNK * 2, len(vectors)), len(vectors))

    _, ids = knn_ground_truth(np.ascontiguousarray(queries, dtype=np.float32), chunks(), k,
                              metric_type=faiss.METRIC_INNER_PRODUCT)
    return ids


_LOADED_RAM_PROBE = """
import sys, faiss, psutil
def heap():
    try:
        return int(next(l for l in open("/proc/self/status") if l.startswith("RssAnon:")).split()[1]) * 1024
    except (OSError, StopIteration):
        return psutil.Process().memory_info().rss
before = heap()
index = faiss.read_index(sys.argv[1])
print(heap() - before)
"""


def loaded_index_ram(path: Path) -> int:
    """Heap bytes a fresh serving process spends holding the index (measured in a child process)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _LOADED_RAM_PROBE, str(path)], capture_output=True, text=True,
                          check=True)
    return int(done.stdout.strip().splitlines()[-1])


def measure_kind(kind: str, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, cfg: ScaleConfig,
                 scratch: Path, progress=None) -> list[DenseScaleResult]:
    """Build one index kind over ``vectors``; its sweep, recall vs exact, latency, RAM and disk size."""
    import faiss

    if progress:
        progress(f"building {kind}", 0, None)
    with openmp_threads(cfg.threads or usable_cores()):
        started = time.perf_counter()
        index = new_faiss_index(kind, vectors.shape[1], len(vectors),
                                IndexConfig(hnsw_m=cfg.hnsw_m, ef_construction=cfg.ef_construction))
        train_if_needed(index, vectors)
        trained = time.perf_counter()
        add_in_chunks(index, vectors)
        built = time.perf_counter()
    path = scratch / f"{kind}.faiss"
    faiss.write_index(index, str(path))
    disk, ram = path.stat().st_size, loaded_index_ram(path)
    path.unlink()
    served = [(kind, DenseIndex(index, kind, vectors, rescore=False))]
    if kind == IndexKind.IVFPQ:
        served.append(("ivfpq+rerank", DenseIndex(index, kind, vectors)))
    results = []
    for label, dense in served:  # searched as served: one query, one thread
        sweep, chosen = sweep_search_param(dense, queries[: cfg.sweep_queries], truth[: cfg.sweep_queries, :10],
                                           cfg.target_recall)
        param = {search_param_name(kind): chosen} if chosen else {}
        cost = BuildCost(trained - started, built - started, ram, disk)
        results.append(_served(label, lambda q, d=dense: d.ids(q, 10), (vectors, queries, truth),
                               cfg.latency_queries, (param, sweep), cost))
    return results


@dataclass
class BuildCost:
    """What one index kind cost to build and hold: training and build seconds, RAM once loaded, bytes on disk."""

    train_s: float
    build_s: float
    ram: int
    disk: int


def _served(kind: str, search, data: tuple[np.ndarray, np.ndarray, np.ndarray], latency_queries: int,
            tuned: tuple[dict[str, int], list[dict[str, float]]], cost: BuildCost) -> DenseScaleResult:
    """Recall@10 vs exact over all queries and single-query latency at the chosen search parameter."""
    from densesearch.eval.timing import time_calls

    vectors, queries, truth = data
    (param, sweep), train_s, build_s, ram, disk = tuned, cost.train_s, cost.build_s, cost.ram, cost.disk
    found = search(queries)
    rows = [row[None, :] for row in queries[:latency_queries]]
    samples = time_calls(search, rows, runs=len(rows), warmup=min(20, len(rows)))
    return DenseScaleResult(
        kind=kind, vectors=len(vectors), train_seconds=train_s, build_seconds=build_s,
        vectors_per_second=len(vectors) / max(build_s, 1e-9), index_bytes=disk, ram_bytes=ram,
        search_param=param, recall_at_10=ann_recall(found, truth[:, :10], 10),
        p50_ms=float(np.percentile(samples, 50)), p99_ms=float(np.percentile(samples, 99)),
        qps_one_thread=1000 / float(np.mean(samples)), sweep=sweep)


def synthetic_documents(texts: Sequence[str], n: int, seed: int) -> list[list[str]]:
    """N token lists: a random window of one real item text plus a shorter window of another."""
    tokenize = Tokenizer()
    tokens = [tokenize(t) or ["__empty__"] for t in texts]
    rng = np.random.default_rng(seed)
    docs = []
    for main, other, keep, extra in zip(rng.integers(0, len(tokens), n), rng.integers(0, len(tokens), n),
                                        rng.uniform(0.6, 1.0, n), rng.uniform(0.0, 0.3, n), strict=True):
        docs.append(_window(tokens[main], keep, rng) + _window(tokens[other], extra, rng))
    return docs


def _window(tokens: list[str], fraction: float, rng: np.random.Generator) -> list[str]:
    size = max(1, int(len(tokens) * fraction))
    start = int(rng.integers(0, len(tokens) - size + 1))
    return tokens[start:start + size]


def measure_bm25(texts: Sequence[str], queries: Sequence[str], n: int, seed: int, progress=None) -> SparseScaleResult:
    """bm25s vs rank-bm25 at N documents on the same queries: build time, p50, QPS, top-10 agreement."""
    if progress:
        progress(f"BM25 over {n:,} documents", 0, None)
    docs = synthetic_documents(texts, n, seed)
    build, p50, qps, tops = {}, {}, {}, {}
    for backend in ("bm25s", "rank-bm25"):
        started = time.perf_counter()
        index = Bm25Index.from_tokens(docs, backend)
        build[backend] = time.perf_counter() - started
        samples, found = [], []
        for text in queries:
            started = time.perf_counter()
            found.append(index.search([text], 10)[0][0].tolist())
            samples.append((time.perf_counter() - started) * 1000)
        p50[backend] = float(np.percentile(samples, 50))
        qps[backend] = 1000 / float(np.mean(samples))
        tops[backend] = found
        del index
    same = float(np.mean([a == b for a, b in zip(tops["bm25s"], tops["rank-bm25"], strict=True)]))
    return SparseScaleResult(documents=n, queries=len(queries), build_seconds=build, p50_ms=p50, qps=qps,
                             speedup=qps["bm25s"] / qps["rank-bm25"], same_top10=same)


def real_query_vectors(workspace: Workspace, artifact: Artifact, cfg: ScaleConfig) -> np.ndarray:
    """The workspace's real queries (every split, up to ``cfg.queries``) encoded by the index's encoder."""

    texts = [p.query for split in ("test", "dev", "train") for p in load_pairs(workspace, split)][: cfg.queries]
    if len(texts) < 10:
        raise BadInput("fewer than 10 prepared queries to measure with", hint="run `densesearch prepare` on more data")
    encoder = EncoderSpec.from_record(artifact.info.encoder).load(workspace, cfg.threads)
    return np.ascontiguousarray(encoder.encode_queries(texts), dtype=np.float32)


# What one synthetic BM25 document costs in memory while both backends index it: its token lists (1.3 KB) plus the
# larger backend's structures (1.9 KB), measured at 100,000 documents; rounded up.
BM25_BYTES_PER_DOCUMENT = 3_500
RAM_SPARE = 1.25  # allocator overhead and the ground-truth chunks on top of the estimate


@dataclass(frozen=True)
class ScaleNeeds:
    """What `bench --scale` will hold at its peak: bytes of disk under the scratch directory and bytes of RAM."""

    disk: int
    ram: int

    @classmethod
    def of(cls, cfg: ScaleConfig, dim: int) -> ScaleNeeds:
        vectors = cfg.vectors * dim * 4
        graph = cfg.vectors * 2 * cfg.hnsw_m * 4 * 1.2  # HNSW level 0 plus upper levels
        dense_ram = vectors + graph  # the largest kind (an HNSW over exact vectors) while it is built
        return cls(disk=int(2 * vectors + graph),  # the vectors file plus one index written to measure its size
                   ram=int(RAM_SPARE * max(dense_ram, cfg.documents * BM25_BYTES_PER_DOCUMENT)))


def available_ram() -> int:
    """Memory this process can still take: what the system has available, within an address-space limit."""
    import resource

    import psutil

    available = psutil.virtual_memory().available
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY:
        available = min(available, limit - psutil.Process().memory_info().vms)
    return max(available, 0)


def check_resources(cfg: ScaleConfig, dim: int, scratch: Path) -> None:
    """Refuse, before anything is allocated or written, a scale the disk or the memory cannot hold."""
    import shutil

    needs, gib = ScaleNeeds.of(cfg, dim), 1024 ** 3
    free = shutil.disk_usage(scratch).free
    if needs.disk > free:
        raise BadInput(f"--scale {cfg.vectors:,} needs about {needs.disk / gib:.1f} GiB of disk under {scratch} and "
                       f"{free / gib:.1f} GiB are free", hint="free disk space, use a smaller --scale, or point --home "
                                                              "at a larger disk")
    ram = available_ram()
    if needs.ram > ram:
        raise BadInput(f"--scale {cfg.vectors:,} with --documents {cfg.documents:,} needs about "
                       f"{needs.ram / gib:.1f} GiB of memory and {ram / gib:.1f} GiB are available",
                       hint="use a smaller --scale or --documents (--documents 0 skips BM25)")


def run_scale(cfg: ScaleConfig, workspace: Workspace, progress=None) -> ScaleReport:
    """Measure every requested index kind at ``cfg.vectors`` and BM25 at ``cfg.documents``."""
    from densesearch.eval.timing import machine_info

    for kind in cfg.kinds:
        if kind not in KINDS:
            raise BadInput(f"unknown index kind {kind!r}", hint=f"use some of {', '.join(KINDS)}")
    if cfg.vectors < 1000:
        raise BadInput(f"--scale {cfg.vectors} is too small", hint="use at least 1000 vectors")
    artifact = open_artifact(workspace, "index")  # its real catalog vectors seed the synthetic ones
    check_resources(cfg, artifact.info.dim or artifact.info.encoder.dim, workspace.scratch)
    seeds = np.asarray(artifact.load_npy(VECTORS_FILE))
    synth = VectorSynthesizer.fit(seeds)
    nn_cosine = nearest_neighbour_cosine(synth.seeds)
    synth.calibrate(nn_cosine, np.random.default_rng(cfg.seed))
    check, parents = synth.sample(np.random.default_rng(cfg.seed + 1), 4000)
    parent_cosine = float(np.median((check * synth.seeds[parents]).sum(axis=1)))
    queries = real_query_vectors(workspace, artifact, cfg)
    run_id = "scale-" + new_run_id()
    dense: list[DenseScaleResult] = []
    with tempfile.TemporaryDirectory(prefix="scale-", dir=workspace.scratch) as scratch:
        vectors = write_synthetic(synth, cfg.vectors, Path(scratch) / "vectors.npy", cfg.seed + 2, progress)
        truth = exact_ground_truth(vectors, queries, 10, progress)
        for kind in cfg.kinds:
            dense.extend(measure_kind(kind, vectors, queries, truth, cfg, Path(scratch), progress))
        del vectors
    sparse = None
    if cfg.documents:
        texts = load_catalog(workspace).texts
        real_queries = [p.query for p in load_pairs(workspace, "test")][: cfg.bm25_queries]
        sparse = measure_bm25(texts, real_queries, cfg.documents, cfg.seed, progress)
    return ScaleReport(
        schema=SCALE_SCHEMA, run_id=run_id, created=datetime.now(UTC).isoformat(timespec="seconds"),
        vectors=cfg.vectors, dim=seeds.shape[1], seed_items=len(seeds),
        encoder=artifact.info.encoder.label, noise_scale=synth.scale,
        parent_cosine=parent_cosine, nn_cosine_real=nn_cosine, ground_truth_queries=len(queries), dense=dense,
        sparse=sparse, machine=machine_info(cfg.threads),
        notes=["catalog vectors are synthetic (real catalog embeddings plus covariance-shaped noise); "
               "queries are the real prepared queries, encoded by the index's encoder",
               "latency is single-query, one search thread; build uses all threads"])


def save_scale_report(report: ScaleReport, workspace: Workspace, markdown: str) -> Path:
    import json

    target = workspace.scale_runs / report.run_id
    with atomic_dir(target) as tmp:
        (tmp / "report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
        (tmp / "report.md").write_text(markdown)
    return target
