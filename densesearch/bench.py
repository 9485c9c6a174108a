"""`bench`: retrieval quality (with bootstrap CIs) and latency for every system a workspace holds."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from densesearch.artifacts import (
    BM25_DIR,
    DENSE_FILE,
    NGRAM_DIR,
    VECTORS_FILE,
    Artifact,
    has_artifact,
    open_artifact,
)
from densesearch.config import BenchConfig, QueryConfig
from densesearch.cpu import usable_cores
from densesearch.encoders import Encoder, EncoderSpec, base_spec, choose_encoder
from densesearch.errors import BadInput, MissingArtifact
from densesearch.evaluation import exact_topk, score_rankings
from densesearch.manifest import package_versions
from densesearch.metrics import (
    POOL_METRICS,
    ann_recall,
    bootstrap_ci,
    graded_query_metrics,
    paired_randomization_p,
    write_trec_qrels,
    write_trec_run,
)
from densesearch.paths import Workspace, new_run_id
from densesearch.prepare import Judgments, load_data_manifest, load_judgments
from densesearch.search import Searcher, fuse, ranked_lists, rerank_exact

REPORT_SCHEMA = 1
RERANK_LATENCY_RUNS = 50  # a cross-encoder pass costs ~100x a dense query: fewer timed runs
LATENCY_QUERIES = ("comfy summer dress for beach", "waterproof hiking boots for men",
                   "silver hoop earrings for sensitive ears", "kids halloween costume dinosaur",
                   "high waisted yoga shorts with pockets", "polarized sunglasses for driving")


@dataclass
class SystemQuality:
    """Mean metrics, CIs and (for dense systems) HNSW recall against exact search."""

    system: str
    search: str
    strict: dict[str, float]
    strict_ci: dict[str, list[float]]
    variant: dict[str, float]
    ann_recall_vs_exact: float | None = None
    p_vs_bm25: dict[str, float] = field(default_factory=dict)  # paired randomization test, per metric
    run: str = ""  # the TREC run file's name (bench --trec DIR)


@dataclass
class LatencyStats:
    backend: str
    stage: str
    batch_size: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    qps: float
    samples_ms: list[float] = field(repr=False, default_factory=list)


@dataclass
class BenchReport:
    schema: int
    run_id: str
    created: str
    split: str
    query_source: str
    queries: int
    catalog_items: int
    quality: list[SystemQuality]
    latency: list[LatencyStats]
    sizes: dict[str, int]
    machine: dict[str, Any]
    artifacts: dict[str, str]
    notes: list[str]


def latency_stats(backend: str, stage: str, batch_size: int, samples_ms: list[float]) -> LatencyStats:
    values = np.asarray(samples_ms)
    return LatencyStats(backend=backend, stage=stage, batch_size=batch_size,
                        p50_ms=float(np.percentile(values, 50)), p90_ms=float(np.percentile(values, 90)),
                        p99_ms=float(np.percentile(values, 99)), mean_ms=float(values.mean()),
                        qps=float(batch_size * 1000 / values.mean()), samples_ms=[round(v, 4) for v in samples_ms])


def time_calls(call, inputs: list[Any], runs: int, warmup: int) -> list[float]:
    for n in range(warmup):
        call(inputs[n % len(inputs)])
    samples = []
    for n in range(runs):
        started = time.perf_counter()
        call(inputs[n % len(inputs)])
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def machine_info(threads: int) -> dict[str, Any]:
    flags = set()
    try:
        flags = {f for f in Path("/proc/cpuinfo").read_text().split() if f.startswith(("avx", "amx", "vnni"))}
    except OSError:
        pass
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"platform": platform.platform(), "cpu": model, "cores": usable_cores(), "cpu_flags": sorted(flags),
            "threads": threads or usable_cores(), "versions": package_versions()}


@dataclass
class SystemRun:
    """One system's rankings over the evaluation queries (top ``depth``), as written to its TREC file."""

    name: str
    search: str
    trec_name: str
    rankings: list[list[str]]
    scores: list[list[float]]
    ann: float | None = None

    def __post_init__(self) -> None:
        """Order each ranking as its TREC file does (score down, then item id), so both score the same."""
        for n, (ranked, scores) in enumerate(zip(self.rankings, self.scores, strict=True)):
            ordered = sorted(zip(ranked, scores, strict=True), key=lambda pair: (-pair[1], pair[0]))
            self.rankings[n], self.scores[n] = [d for d, _ in ordered], [float(s) for _, s in ordered]


def _quality(run: SystemRun, judgments: Judgments, group_of: dict[str, str], cfg: BenchConfig,
             baseline: dict[str, np.ndarray] | None) -> tuple[SystemQuality, dict[str, np.ndarray]]:
    qrels = [judgments.qrels[q] for q in judgments.query_ids]
    strict = graded_query_metrics(run.rankings, qrels, judgments.min_relevance, cfg.ks)
    if judgments.graded:
        variant: dict[str, np.ndarray] = {}
    else:  # one listing per query: variant-aware scoring counts any listing of the positive's variant group
        for name in POOL_METRICS:
            strict.pop(name)
        positives = [next(iter(judged)) for judged in qrels]
        variant = score_rankings(run.rankings, positives, group_of, cfg.ks, variant_aware=True)
    p_values = ({metric: paired_randomization_p(strict[metric], baseline[metric], seed=cfg.seed)
                 for metric in ("ndcg@10", "recall@10") if metric in baseline} if baseline is not None else {})
    quality = SystemQuality(
        system=run.name, search=run.search, strict={k: float(v.mean()) for k, v in strict.items()},
        strict_ci={k: list(bootstrap_ci(v, cfg.bootstrap, cfg.seed)) for k, v in strict.items()},
        variant={k: float(v.mean()) for k, v in variant.items()}, ann_recall_vs_exact=run.ann,
        p_vs_bm25=p_values, run=run.trec_name)
    return quality, strict


VECTOR_CACHE_KEEP = 4  # newest cached catalogs kept per workspace


def cached_catalog_vectors(workspace: Workspace, spec: EncoderSpec, encoder: Encoder, items: list[dict]) -> np.ndarray:
    """The catalog's vectors from this encoder: read from the workspace's cache, else encoded once and cached.

    The file name holds the encoder's fingerprint and a hash of the item texts, so a changed model or catalog
    never reuses old vectors; a damaged file is encoded again. It is written to a temporary name and renamed.
    """
    texts = [row["text"] for row in items]
    digest = hashlib.sha256("\x1e".join(texts).encode("utf-8")).hexdigest()[:16]
    path = workspace.vector_cache / f"{spec.backend}-{spec.fingerprint[:16]}-{digest}.npy"
    try:
        cached = np.load(path, mmap_mode="r")
        if cached.shape == (len(texts), encoder.dim) and cached.dtype == np.float32:
            return cached
    except (OSError, ValueError):
        pass
    vectors = encoder.encode(texts, batch_size=64)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as handle:
            np.save(handle, vectors)
        os.replace(tmp, path)
        for old in sorted(path.parent.glob("*.npy"), key=lambda f: f.stat().st_mtime)[:-VECTOR_CACHE_KEEP]:
            old.unlink(missing_ok=True)
    except OSError:
        pass  # a cache that cannot be written costs time on the next run, nothing else
    return vectors


def write_trec_dir(directory: Path, judgments: Judgments, runs: list[SystemRun]) -> None:
    """qrels.txt and one TREC run per system (fixed names), so trec_eval or ranx can check every number."""
    directory.mkdir(parents=True, exist_ok=True)
    write_trec_qrels(directory / "qrels.txt", {q: judgments.qrels[q] for q in judgments.query_ids})
    for run in runs:
        write_trec_run(directory / f"{run.trec_name}.trec", judgments.query_ids, run.rankings, run.scores,
                       run.trec_name)


def dense_systems(searcher: Searcher, workspace: Workspace) -> list[tuple[str, EncoderSpec]]:
    """Base model, fine-tuned FP32 and fine-tuned INT8 (those the workspace holds)."""
    systems = [("base", base_spec())]
    if has_artifact(workspace, "model"):
        systems.append(("fine-tuned FP32", choose_encoder("finetuned", workspace)))
    systems.append((searcher.spec.label, searcher.spec))
    unique, seen = [], set()
    for name, spec in systems:
        if (spec.fingerprint, spec.backend) not in seen:
            seen.add((spec.fingerprint, spec.backend))
            unique.append((name, spec))
    return unique


def run_bench(cfg: BenchConfig, workspace: Workspace, progress=None) -> BenchReport:
    """Measure every system on the split, then latency per backend; save the run in the workspace."""
    if cfg.trec_path:
        check_writable_dir(cfg.trec_path)
    try:
        workspace.bench_runs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"cannot create {workspace.bench_runs} ({exc.strerror})", hint="use a writable --home") from exc
    if not os.access(workspace.bench_runs, os.W_OK):
        raise BadInput(f"cannot write reports under {workspace.bench_runs}", hint="use a writable --home")
    data_manifest = load_data_manifest(workspace)
    searcher = Searcher(workspace, threads=cfg.threads)
    searcher.load_for("hybrid")  # a damaged encoder or BM25 fails now, not after minutes of work
    judgments = load_judgments(workspace, cfg.split)
    if cfg.queries:
        judgments = replace(judgments, query_ids=judgments.query_ids[: cfg.queries],
                            queries=judgments.queries[: cfg.queries])
    if not judgments.query_ids:
        raise BadInput(f"the {cfg.split} split is empty", hint="prepare more data or use --split dev")
    items = searcher.items
    ids = [row["item_id"] for row in items]
    group_of = {row["item_id"]: row["group_id"] for row in items}
    queries = judgments.queries
    depth = min(max(cfg.ks), len(items))
    sparse = ranked_lists(searcher.bm25, queries, depth)
    runs = [SystemRun("BM25", "inverted index", "bm25", [[ids[i] for i in found] for found, _ in sparse],
                      [scores for _, scores in sparse])]
    grams = ranked_lists(searcher.ngrams, queries, depth) if searcher.has_ngrams else None
    if grams is not None:  # searched once: its own row here, and the hybrid's third list below
        runs.append(SystemRun("BM25, character 3-grams", "inverted index", "bm25-ngrams",
                              [[ids[i] for i in found] for found, _ in grams], [scores for _, scores in grams]))
    vectors = searcher.artifact.load_npy(VECTORS_FILE)
    encoders: dict[str, Encoder] = {}
    served_name = "finetuned-int8" if searcher.spec.backend == "onnx-int8" else "served"
    for name, spec in dense_systems(searcher, workspace):
        if progress:
            progress(f"evaluating {name}", 0, 1)
        encoder = spec.load(workspace, cfg.threads)
        encoders[spec.backend if spec is not searcher.spec else "served"] = encoder
        served = spec.fingerprint == searcher.spec.fingerprint and spec.backend == searcher.spec.backend
        item_vectors = vectors if served else cached_catalog_vectors(workspace, spec, encoder, items)
        query_vectors = encoder.encode_queries(queries)  # one at a time, as served
        exact, exact_scores = exact_topk(query_vectors, np.asarray(item_vectors), depth)
        trec_name = ("base" if name == "base" else "finetuned-fp32" if spec.backend == "torch"
                     else f"{served_name}-exact")
        runs.append(SystemRun(name, "exact", trec_name, [[ids[i] for i in row] for row in exact],
                              exact_scores.tolist()))
        if served:
            approx = searcher.dense_many(query_vectors, depth)
            scored = [rerank_exact(item_vectors, q, row, depth) for row, q in zip(approx, query_vectors, strict=True)]
            runs.append(SystemRun(name, searcher.manifest.extra["kind"], served_name,
                                  [[ids[i] for i in found] for found, _ in scored],
                                  [s.tolist() for _, s in scored], ann=ann_recall(approx, exact, 10)))
            fusion = searcher.fusion
            third = grams if fusion.uses_ngrams else [None] * len(queries)
            fused = [fuse((found.tolist(), values.tolist()), words, fusion, depth, g)
                     for (found, values), words, g in zip(scored, sparse, third, strict=True)]
            lexical = "BM25 + 3-gram BM25" if fusion.uses_ngrams else "BM25"
            label = f"hybrid ({fusion.label}: {name} + {lexical})"
            if searcher.uses_ranker(QueryConfig()):  # the served hybrid re-orders the fusion: both are rows
                runs.append(SystemRun(f"{label}, fusion only", searcher.manifest.extra["kind"], "hybrid-fusion",
                                      [[ids[i] for i, _ in row] for row in fused],
                                      [[s for _, s in row] for row in fused]))
                fused = [searcher.learned_order(query, vector, (found.tolist(), values.tolist()), words, g, row)
                         for query, vector, (found, values), words, g, row
                         in zip(queries, query_vectors, scored, sparse, grams, fused, strict=True)]
                label = f"{label}, re-ordered by the learned ranker"
            runs.append(SystemRun(label, searcher.manifest.extra["kind"], "hybrid",
                                  [[ids[i] for i, _ in row] for row in fused], [[s for _, s in row] for row in fused]))
            if has_artifact(workspace, "reranker"):
                runs.append(reranked_run(searcher, queries, fused, progress))
    quality, baseline = [], None
    for run in runs:
        result, per_query = _quality(run, judgments, group_of, cfg, baseline)
        baseline = per_query if baseline is None else baseline
        quality.append(result)
    if has_artifact(workspace, "onnx") and searcher.spec.backend != "onnx":
        encoders["onnx"] = choose_encoder("onnx", workspace).load(workspace, cfg.threads)
    latency = measure_latency(searcher, encoders, cfg)
    report = BenchReport(
        schema=REPORT_SCHEMA, run_id=new_run_id(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), split=cfg.split,
        query_source=data_manifest.extra.get("query_source", "?"), queries=len(judgments.query_ids),
        catalog_items=len(items),
        quality=quality, latency=latency, sizes=artifact_sizes(workspace, searcher.artifact),
        machine=machine_info(cfg.threads),
        artifacts={"data": data_manifest.fingerprint, "index": searcher.manifest.fingerprint,
                   "encoder": searcher.spec.fingerprint},
        notes=source_notes(data_manifest.extra.get("query_source"), judgments))
    if cfg.trec_path:
        write_trec_dir(cfg.trec_path, judgments, runs)
    return report


def reranked_run(searcher: Searcher, queries: list[str], fused: list[list[tuple[int, float]]],
                 progress=None) -> SystemRun:
    """The hybrid run with each query's top N re-scored by the cross-encoder, as `query --mode rerank` does."""
    config = QueryConfig(mode="rerank")
    rankings, scores = [], []
    for n, (query, row) in enumerate(zip(queries, fused, strict=True)):
        order, new = searcher.rerank(query, [i for i, _ in row], [v for _, v in row], config)
        rankings.append([searcher.items[i]["item_id"] for i in order])
        scores.append(new)
        if progress:
            progress("re-scoring with the cross-encoder", n + 1, len(queries))
    reranker = searcher.reranker
    return SystemRun(f"rerank ({reranker.interpolation.label}; {reranker.label})", searcher.manifest.extra["kind"],
                     "rerank", rankings, scores)


def source_notes(query_source: str | None, judgments: Judgments) -> list[str]:
    if query_source == "listing":
        return ["queries are held-out listing sentences (a proxy), not customer reviews"]
    if judgments.graded:
        return [f"graded judgments: nDCG@10 uses the grades as gains (unjudged = 0); judged-only nDCG@10 drops "
                f"unjudged items first; recall and MRR count grade >= {judgments.min_relevance} as relevant"]
    return []


def cyclic_batches(items: list[Any], batch: int) -> list[list[Any]]:
    """One batch per item, starting there and wrapping around: every run sees a full batch."""
    return [[items[(n + j) % len(items)] for j in range(batch)] for n in range(len(items))]


def measure_latency(searcher: Searcher, encoders: dict[str, Encoder], cfg: BenchConfig) -> list[LatencyStats]:
    """Encode, search and end-to-end latency per backend and batch size (warm-up runs first)."""
    stats = []
    texts = list(LATENCY_QUERIES)
    for name, encoder in encoders.items():
        backend = searcher.spec.backend if name == "served" else name
        for batch in cfg.batch_sizes:
            batches = cyclic_batches(texts, batch)
            samples = time_calls(lambda b, e=encoder, bs=batch: e.encode_queries(b, bs), batches,
                                 cfg.latency_runs, cfg.warmup_runs)
            stats.append(latency_stats(backend, "encode", batch, samples))
    vectors = searcher.encoder.encode_queries(texts)
    kind = searcher.manifest.extra["kind"]
    for batch in cfg.batch_sizes:
        blocks = [np.stack(block) for block in cyclic_batches(list(vectors), batch)]
        stats.append(latency_stats(kind, "search", batch, time_calls(lambda v: searcher.dense_many(v, 10), blocks,
                                                                     cfg.latency_runs, cfg.warmup_runs)))
    for mode in ("dense", "hybrid", "bm25") + (("rerank",) if has_artifact(searcher.workspace, "reranker") else ()):
        config = QueryConfig(k=10, mode=mode, threads=cfg.threads)
        runs = cfg.latency_runs if mode != "rerank" else min(cfg.latency_runs, RERANK_LATENCY_RUNS)
        stats.append(latency_stats(f"{searcher.spec.backend} {mode}" if mode != "bm25" else "bm25", "end-to-end", 1,
                                   time_calls(lambda q, c=config: searcher.ask(q, c), texts, runs,
                                              min(cfg.warmup_runs, runs))))
    for batch in (b for b in cfg.batch_sizes if b > 1):
        batches = cyclic_batches(texts, batch)
        stats.append(latency_stats(f"{searcher.spec.backend} dense", "end-to-end", batch,
                                   time_calls(lambda b, bs=batch: searcher.dense_many(
                                       searcher.encoder.encode_queries(b, bs), 10), batches,
                                       cfg.latency_runs, cfg.warmup_runs)))
    return stats


def check_writable_dir(path: Path) -> None:
    """Fail before minutes of work when an output directory cannot be created or written."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if path.exists() and not path.is_dir() or existing is None or not existing.is_dir() or not os.access(
            existing, os.W_OK):
        raise BadInput(f"cannot write TREC files into {path}", hint="give a directory path under a writable one")


def artifact_sizes(workspace: Workspace, index: Artifact) -> dict[str, int]:
    """Model and index sizes from the manifests' file records, plus the dense index's RAM once loaded."""
    from densesearch.scale import loaded_index_ram

    sizes = {}
    if has_artifact(workspace, "onnx"):
        extra = open_artifact(workspace, "onnx", upstream=False).manifest.extra
        sizes["model_fp32_onnx_bytes"] = extra["fp32_bytes"]
        sizes["model_int8_onnx_bytes"] = extra["int8_bytes"]
    if has_artifact(workspace, "model"):
        weights = open_artifact(workspace, "model", upstream=False).manifest.files.get("model.safetensors")
        if weights:
            sizes["model_torch_bytes"] = weights
    files = index.manifest.files
    for name in (DENSE_FILE, VECTORS_FILE):
        if name in files:
            sizes[f"index_{name.replace('.', '_')}_bytes"] = files[name]
    sizes["index_bm25_bytes"] = sum(size for name, size in files.items() if name.startswith(f"{BM25_DIR}/"))
    sizes["index_bm25_ngrams_bytes"] = sum(size for name, size in files.items() if name.startswith(f"{NGRAM_DIR}/"))
    sizes["index_dense_loaded_ram_bytes"] = loaded_index_ram(index.file(DENSE_FILE))
    return sizes


def save_report(report: BenchReport, workspace: Workspace, markdown: str) -> Path:
    """JSON + Markdown + PNG histogram of a run, in bench/<run_id>/ (written atomically)."""
    from densesearch.paths import atomic_dir

    target = workspace.bench_runs / report.run_id
    with atomic_dir(target) as tmp:
        (tmp / "report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
        (tmp / "report.md").write_text(markdown)
        plot_histograms(report, tmp / "latency.png")
    return target


def plot_histograms(report: BenchReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    encode = [s for s in report.latency if s.stage in ("encode", "end-to-end") and s.batch_size == 1]
    fig, axes = plt.subplots(len(encode), 1, figsize=(8, 1.8 * len(encode)), squeeze=False)
    for axis, stats in zip(axes[:, 0], encode, strict=True):
        axis.hist(stats.samples_ms, bins=40, color="#4477aa")
        axis.axvline(stats.p50_ms, color="#cc3311", label=f"p50 {stats.p50_ms:.2f} ms")
        axis.set_title(f"{stats.stage}: {stats.backend} (batch 1)", fontsize=9)
        axis.legend(fontsize=8)
    axes[-1, 0].set_xlabel("milliseconds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_report(workspace: Workspace, run: str) -> dict[str, Any]:
    """An earlier run by id (or 'latest', or a path to report.json)."""
    path = Path(run)
    if not path.is_file():
        runs = sorted(workspace.bench_runs.glob("*/report.json")) if workspace.bench_runs.exists() else []
        matches = runs[-1:] if run == "latest" else [p for p in runs if p.parent.name == run]
        if not matches:
            raise MissingArtifact(f"bench run {run!r}", "bench")
        path = matches[0]
    return json.loads(path.read_text())


def compare_reports(current: dict[str, Any], earlier: dict[str, Any]) -> list[dict[str, Any]]:
    """Per system and metric: earlier value, current value, delta."""
    before = {(q["system"], q["search"]): q["strict"] for q in earlier["quality"]}
    rows = []
    for q in current["quality"]:
        old = before.get((q["system"], q["search"]))
        if old:
            for metric in ("recall@10", "mrr@10", "ndcg@10"):
                rows.append({"system": q["system"], "search": q["search"], "metric": metric, "before": old[metric],
                             "after": q["strict"][metric], "delta": q["strict"][metric] - old[metric]})
    return rows
