"""`bench`: retrieval quality (with bootstrap CIs) and latency for every system a workspace holds."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from densesearch.core.artifacts import (
    BM25_DIR,
    DENSE_FILE,
    NGRAM_DIR,
    VECTORS_FILE,
    Artifact,
    has_artifact,
    open_artifact,
)
from densesearch.core.config import BenchConfig, QueryConfig
from densesearch.core.errors import BadInput, DensesearchError, MissingArtifact, os_failure, os_reason
from densesearch.core.paths import Workspace, new_run_id
from densesearch.data.readers import Judgments, load_data_manifest, load_judgments
from densesearch.eval.evaluation import exact_topk, score_rankings
from densesearch.eval.metrics import (
    POOL_METRICS,
    ann_recall,
    bootstrap_ci,
    graded_query_metrics,
    paired_randomization_p,
    write_trec_qrels,
    write_trec_run,
)
from densesearch.eval.timing import (
    LatencyStats,
    cyclic_batches,
    latency_stats,
    machine_info,
    time_calls,
    time_interleaved,
)
from densesearch.retrieval.encoders import (
    Encoder,
    EncoderSpec,
    TorchEncoder,
    base_spec,
    choose_encoder,
    load_catalog_runtime,
)
from densesearch.retrieval.fusion import RankedList
from densesearch.retrieval.searcher import Searcher

REPORT_SCHEMA = 1
REFERENCE_PATH = "reference (ST encode + FAISS)"  # the seed system: sentence-transformers, FAISS
COMPARED_METRICS = ("recall@10", "mrr@10", "ndcg@10")  # what `bench --compare` sets side by side
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
    min_relevance: int = 1  # the grade from which an item counts as relevant (recall, MRR; `prepare --min-relevance`)








@dataclass
class SystemRun:
    """One system's rankings over the evaluation queries (top ``depth``), as written to its TREC file."""

    name: str
    search: str
    trec_name: str
    rankings: list[list[str]]
    scores: list[list[float]]
    ann: float | None = None


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


class TrecNotWritten(DensesearchError):
    """The TREC files could not be written (nothing of them was); ``report`` holds the finished measurement."""

    def __init__(self, exc: OSError, directory: Path, report: Any = None) -> None:
        super().__init__(f"writing the TREC files into {directory} failed: {os_reason(exc)}; "
                         "none of them was written", hint=os_failure(exc).hint)
        self.report = report


def write_trec_dir(directory: Path, judgments: Judgments, runs: list[SystemRun]) -> None:
    """qrels.txt and one TREC run per system (fixed names), so trec_eval or ranx can check every number. All of
    them or none: they are written into a hidden directory beside their place and renamed into it (renames need
    no space), so a full disk leaves the directory as it was."""
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".trec-partial-", dir=directory))
    try:
        write_trec_qrels(staging / "qrels.txt", {q: judgments.qrels[q] for q in judgments.query_ids})
        level = judgments.min_relevance  # trec_eval's -l: the grade from which recall and MRR count an item relevant
        (staging / "relevance.json").write_text(json.dumps({
            "min_relevance": level, "graded": judgments.graded,
            "trec_eval": f"trec_eval -l {level} -m ndcg_cut.10 -m recall.10 -m recip_rank qrels.txt RUN.trec"}) + "\n")
        for run in runs:
            write_trec_run(staging / f"{run.trec_name}.trec", judgments.query_ids, run.rankings, run.scores,
                           run.trec_name)
        for written in sorted(staging.iterdir()):
            os.replace(written, directory / written.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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


@dataclass
class BenchContext:
    """One bench run's inputs: settings, the served searcher, the judged queries and the depth every run keeps."""

    cfg: BenchConfig
    workspace: Workspace
    searcher: Searcher
    judgments: Judgments
    depth: int
    progress: object = None

    @cached_property
    def ids(self) -> list[str]:
        """Each catalog row's item id (the TREC runs name items by id)."""
        return [row["item_id"] for row in self.searcher.items]

    def run(self, name: str, search: str, trec_name: str, lists: list[RankedList], ann: float | None = None
            ) -> SystemRun:
        """A system's rankings (catalog rows mapped to item ids) as scored and written to its TREC file."""
        ids = self.ids
        return SystemRun(name, search, trec_name, [[ids[i] for i in row.ids] for row in lists],
                         [list(row.scores) for row in lists], ann=ann)

    def say(self, what: str) -> None:
        if self.progress:
            self.progress(what, 0, 1)


def bench_context(cfg: BenchConfig, workspace: Workspace, progress=None) -> BenchContext:
    """Check the outputs can be written and load the served index and the split's judgments, before any work."""
    if cfg.trec_path:
        check_writable_dir(cfg.trec_path)
    try:
        workspace.bench_runs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"cannot create {workspace.bench_runs} ({exc.strerror})", hint="use a writable --home") from exc
    if not os.access(workspace.bench_runs, os.W_OK):
        raise BadInput(f"cannot write reports under {workspace.bench_runs}", hint="use a writable --home")
    searcher = Searcher(workspace, threads=cfg.threads)
    searcher.load_for("hybrid")  # a damaged encoder or BM25 fails now, not after minutes of work
    load_catalog_runtime(searcher.encoder)  # and the catalog's INT8 runtime, which queries never load
    judgments = load_judgments(workspace, cfg.split)
    if cfg.queries:
        judgments = replace(judgments, query_ids=judgments.query_ids[: cfg.queries],
                            queries=judgments.queries[: cfg.queries])
    if not judgments.query_ids:
        raise BadInput(f"the {cfg.split} split is empty", hint="prepare more data or use --split dev")
    return BenchContext(cfg, workspace, searcher, judgments, min(max(cfg.ks), len(searcher.items)), progress)


def served_runs(ctx: BenchContext, query_vectors: np.ndarray, exact: np.ndarray) -> dict[str, list[SystemRun]]:
    """The served systems, from one pass of the served first stage: BM25 and 3-gram BM25 (lexical), and the dense
    index, the fusion, the hybrid as served and the reranker over it (served)."""
    searcher, queries = ctx.searcher, ctx.judgments.queries
    stages = searcher.stages(queries, query_vectors, ctx.depth, QueryConfig(), grams=True)
    lexical = [ctx.run("BM25", "inverted index", "bm25", [s.words for s in stages])]
    if searcher.has_ngrams:
        lexical.append(ctx.run("BM25, character 3-grams", "inverted index", "bm25-ngrams", [s.grams for s in stages]))
    name, kind = searcher.spec.label, searcher.kind
    approx = np.asarray([row.ids + [-1] * (ctx.depth - len(row.ids)) for row in (s.dense for s in stages)])
    served = [ctx.run(name, kind, served_trec_name(searcher), [s.dense for s in stages],
                      ann=ann_recall(approx, exact, 10))]
    fusion = searcher.fusion
    label = f"hybrid ({fusion.label}: {name} + {'BM25 + 3-gram BM25' if fusion.uses_ngrams else 'BM25'})"
    if searcher.uses_ranker(QueryConfig()):  # the served hybrid re-orders the fusion: both are rows
        served.append(ctx.run(f"{label}, fusion only", kind, "hybrid-fusion", [s.fused for s in stages]))
        label = f"{label}, re-ordered by the learned ranker"
    served.append(ctx.run(label, kind, "hybrid", [s.ordered for s in stages]))
    if has_artifact(ctx.workspace, "reranker"):
        served.append(reranked_run(ctx, [s.ordered for s in stages]))
    return {"lexical": lexical, "served": served}


def served_trec_name(searcher: Searcher) -> str:
    return "finetuned-int8" if searcher.spec.backend == "onnx-int8" else "served"


def live_exact_topk(searcher: Searcher, queries: np.ndarray, item_vectors: np.ndarray, depth: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``depth`` rows per query among the index's live rows (deleted or replaced ones never count)."""
    if searcher.live is None:
        return exact_topk(queries, np.asarray(item_vectors), depth)
    rows = np.flatnonzero(searcher.live)
    found, scores = exact_topk(queries, np.asarray(item_vectors)[rows], depth)
    return np.where(found >= 0, rows[np.maximum(found, 0)], -1), scores


def system_runs(ctx: BenchContext, encoders: dict[str, Encoder]) -> list[SystemRun]:
    """Every system's run, BM25 first (the baseline of the significance tests): lexical, then each dense model
    searched exactly, and the served index with the hybrid and reranker built on it."""
    searcher, queries = ctx.searcher, ctx.judgments.queries
    exact_runs, served = [], {}
    for name, spec in dense_systems(searcher, ctx.workspace):
        ctx.say(f"evaluating {name}")
        encoder = spec.load(ctx.workspace, ctx.cfg.threads)
        is_served = spec.fingerprint == searcher.spec.fingerprint and spec.backend == searcher.spec.backend
        encoders["served" if is_served else spec.backend] = encoder
        item_vectors = (searcher.dense.vectors if is_served
                        else cached_catalog_vectors(ctx.workspace, spec, encoder, searcher.items))
        query_vectors = encoder.encode_queries(queries)  # one at a time, as served
        exact, exact_scores = live_exact_topk(searcher, query_vectors, item_vectors, ctx.depth)
        trec_name = ("base" if name == "base" else "finetuned-fp32" if spec.backend == "torch"
                     else f"{served_trec_name(searcher)}-exact")
        exact_runs.append(ctx.run(name, "exact", trec_name, [RankedList(row.tolist(), values.tolist())
                                                             for row, values in zip(exact, exact_scores, strict=True)]))
        if is_served:
            served = served_runs(ctx, query_vectors, exact)
            exact_runs.extend(served.pop("served"))
    return served.get("lexical", []) + exact_runs


def run_bench(cfg: BenchConfig, workspace: Workspace, progress=None) -> BenchReport:
    """Measure every system on the split, then latency per backend; save the run in the workspace."""
    ctx = bench_context(cfg, workspace, progress)
    data_manifest = load_data_manifest(workspace)
    encoders: dict[str, Encoder] = {}
    runs = system_runs(ctx, encoders)
    group_of = {row["item_id"]: row["group_id"] for row in ctx.searcher.items}
    quality, baseline = [], None
    for run in runs:
        result, per_query = _quality(run, ctx.judgments, group_of, cfg, baseline)
        baseline = per_query if baseline is None else baseline
        quality.append(result)
    if has_artifact(workspace, "onnx") and ctx.searcher.spec.backend != "onnx":
        encoders["onnx"] = choose_encoder("onnx", workspace).load(workspace, cfg.threads)
    report = BenchReport(
        schema=REPORT_SCHEMA, run_id=new_run_id(), created=datetime.now(UTC).isoformat(timespec="seconds"),
        split=cfg.split, query_source=data_manifest.extra.get("query_source", "?"),
        queries=len(ctx.judgments.query_ids), catalog_items=len(ctx.searcher.items), quality=quality,
        latency=measure_latency(ctx.searcher, encoders, cfg), sizes=artifact_sizes(workspace, ctx.searcher.artifact),
        machine=machine_info(cfg.threads),
        artifacts={"data": data_manifest.fingerprint, "index": ctx.searcher.manifest.fingerprint,
                   "encoder": ctx.searcher.spec.fingerprint},
        notes=source_notes(data_manifest.extra.get("query_source"), ctx.judgments),
        min_relevance=ctx.judgments.min_relevance)
    if cfg.trec_path:
        try:
            write_trec_dir(cfg.trec_path, ctx.judgments, runs)
        except OSError as exc:  # the measurement stands: the caller saves the report and names what failed
            raise TrecNotWritten(exc, cfg.trec_path, report) from exc
    return report


def reranked_run(ctx: BenchContext, hybrid: list[RankedList]) -> SystemRun:
    """The hybrid run with each query's top N re-scored by the cross-encoder, as `query --mode rerank` does."""
    config, searcher, queries = QueryConfig(mode="rerank"), ctx.searcher, ctx.judgments.queries
    lists = []
    for n, (query, row) in enumerate(zip(queries, hybrid, strict=True)):
        lists.append(searcher.rerank(query, row.ids, row.scores, config))
        if ctx.progress:
            ctx.progress("re-scoring with the cross-encoder", n + 1, len(queries))
    reranker = searcher.reranker
    return ctx.run(f"rerank ({reranker.interpolation.label}; {reranker.label})", searcher.kind, "rerank", lists)


def source_notes(query_source: str | None, judgments: Judgments) -> list[str]:
    if query_source == "listing":
        return ["queries are held-out listing sentences (a proxy), not customer reviews"]
    if judgments.graded:
        return [f"graded judgments: nDCG@10 uses the grades as gains (unjudged = 0); judged-only nDCG@10 drops "
                f"unjudged items first; recall and MRR count grade >= {judgments.min_relevance} as relevant"]
    return []




def measure_latency(searcher: Searcher, encoders: dict[str, Encoder], cfg: BenchConfig) -> list[LatencyStats]:
    """Encode, search and end-to-end latency per backend and batch size (warm-up runs first), and the reference
    system's serving path beside the product's."""
    texts = list(LATENCY_QUERIES)
    stats = encode_latency(encoders, searcher.spec.backend, texts, cfg)
    vectors = searcher.encoder.encode_queries(texts)
    for batch in cfg.batch_sizes:
        blocks = [np.stack(block) for block in cyclic_batches(list(vectors), batch)]
        search = searcher.dense.ids
        stats.append(latency_stats(searcher.kind, "search", batch, time_calls(lambda v, s=search: s(v, 10), blocks,
                                                                              cfg.latency_runs, cfg.warmup_runs)))
    stats += served_latency(searcher, texts, cfg)
    if isinstance(encoders.get("torch"), TorchEncoder):
        stats.append(reference_latency(searcher, encoders["torch"], texts, cfg))
    return stats


def encode_latency(encoders: dict[str, Encoder], served_backend: str, texts: list[str],
                   cfg: BenchConfig) -> list[LatencyStats]:
    stats = []
    for name, encoder in encoders.items():
        backend = served_backend if name == "served" else name
        for batch in cfg.batch_sizes:
            samples = time_calls(lambda b, e=encoder, bs=batch: e.encode_queries(b, bs), cyclic_batches(texts, batch),
                                 cfg.latency_runs, cfg.warmup_runs)
            stats.append(latency_stats(backend, "encode", batch, samples))
    return stats


def served_latency(searcher: Searcher, texts: list[str], cfg: BenchConfig) -> list[LatencyStats]:
    """`Searcher.ask` end to end per mode (one query a request), and batched dense search."""
    def ask(mode: str):
        config = QueryConfig(k=10, mode=mode, threads=cfg.threads)
        return lambda q: searcher.ask(q, config)

    def label(mode: str) -> str:
        return f"{searcher.spec.backend} {mode}" if mode != "bm25" else "bm25"

    samples = time_interleaved({mode: ask(mode) for mode in ("dense", "hybrid", "bm25")}, texts, cfg.latency_runs,
                               cfg.warmup_runs)  # interleaved: the hybrid/dense ratio is measured in one run
    stats = [latency_stats(label(mode), "end-to-end", 1, values) for mode, values in samples.items()]
    if has_artifact(searcher.workspace, "reranker"):
        runs = min(cfg.latency_runs, RERANK_LATENCY_RUNS)
        stats.append(latency_stats(label("rerank"), "end-to-end", 1,
                                   time_calls(ask("rerank"), texts, runs, min(cfg.warmup_runs, runs))))
    for batch in (b for b in cfg.batch_sizes if b > 1):
        stats.append(latency_stats(f"{searcher.spec.backend} dense", "end-to-end", batch,
                                   time_calls(lambda b, bs=batch: searcher.dense.ids(
                                       searcher.encoder.encode_queries(b, bs), 10), cyclic_batches(texts, batch),
                                       cfg.latency_runs, cfg.warmup_runs)))
    return stats


def reference_latency(searcher: Searcher, encoder: TorchEncoder, texts: list[str], cfg: BenchConfig) -> LatencyStats:
    """The reference system's serving path on the same fine-tuned model and the same FAISS index: one
    sentence-transformers ``encode`` call, then the index's own ``search``."""
    model, index = encoder.model, searcher.dense.index

    def answer(text: str) -> None:
        vector = model.encode([text], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        index.search(np.asarray(vector, dtype=np.float32), 10)

    return latency_stats(REFERENCE_PATH, "end-to-end", 1, time_calls(answer, texts, cfg.latency_runs,
                                                                      cfg.warmup_runs))


def check_writable_dir(path: Path) -> None:
    """Fail before minutes of work when an output directory cannot be created or written."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if path.exists() and not path.is_dir() or existing is None or not existing.is_dir() or not os.access(
            existing, os.W_OK):
        raise BadInput(f"cannot write TREC files into {path}", hint="give a directory path under a writable one")


def artifact_sizes(workspace: Workspace, index: Artifact) -> dict[str, int]:
    """Model and index sizes from the manifests' file records, plus the dense index's RAM once loaded."""
    from densesearch.bench.scale import loaded_index_ram

    sizes = {}
    if has_artifact(workspace, "onnx"):
        onnx = open_artifact(workspace, "onnx", upstream=False).info
        sizes["model_fp32_onnx_bytes"] = onnx.fp32_bytes
        sizes["model_int8_onnx_bytes"] = onnx.int8_bytes
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
    from densesearch.core.paths import atomic_dir

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
    """An earlier run by id (or 'latest', or a path to report.json), checked to be a bench report that
    `compare_reports` can read before any measuring starts."""
    path = Path(run)
    if not path.is_file():
        runs = sorted(workspace.bench_runs.glob("*/report.json")) if workspace.bench_runs.exists() else []
        matches = runs[-1:] if run == "latest" else [p for p in runs if p.parent.name == run]
        if not matches:
            raise MissingArtifact(f"bench run {run!r}", "bench")
        path = matches[0]
    refusal = BadInput("is not a densesearch bench report (damaged, or another tool's file)", str(path),
                       hint="pass --compare latest, a run id under the bench/ directory, or its report.json")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise refusal from exc
    if not _is_bench_report(report):
        raise refusal
    return report


def _is_bench_report(report: Any) -> bool:
    """Whether a JSON value has what `compare_reports` reads: a run id and per system its strict metrics."""
    if not isinstance(report, dict) or not isinstance(report.get("run_id"), str):
        return False
    rows = report.get("quality")
    return isinstance(rows, list) and all(
        isinstance(row, dict) and isinstance(row.get("system"), str) and isinstance(row.get("search"), str)
        and isinstance(row.get("strict"), dict)
        and all(_is_number(row["strict"].get(metric)) for metric in COMPARED_METRICS) for row in rows)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def compare_reports(current: dict[str, Any], earlier: dict[str, Any]) -> list[dict[str, Any]]:
    """Per system and metric: earlier value, current value, delta."""
    before = {(q["system"], q["search"]): q["strict"] for q in earlier["quality"]}
    rows = []
    for q in current["quality"]:
        old = before.get((q["system"], q["search"]))
        if old:
            for metric in COMPARED_METRICS:
                rows.append({"system": q["system"], "search": q["search"], "metric": metric, "before": old[metric],
                             "after": q["strict"][metric], "delta": q["strict"][metric] - old[metric]})
    return rows
