"""`quantize`: ONNX export, INT8 dynamic quantization chosen for this CPU, and a parity gate before publishing.

Recipes are tried in order until one passes the gate: the fastest exact recipe for this CPU first
(u8 activations, s8 per-channel weights; 7-bit weights where the x86 kernel would saturate), then
u8/u8 (exact on every x86 kernel, slower on VNNI). The gate compares INT8 with FP32 ONNX on what
serving depends on (catalog texts in served batches, queries one at a time): the cosine of their
vectors, on average and for every vector (a kernel that breaks on some shapes spoils a few rows,
not the mean), the overlap of their top-10 neighbours over every dev query and over catalog texts
used as queries, and the dev Recall@10 drop judged with a paired bootstrap (it fails only when the
drop is both over the tolerance and significant).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from densesearch.core.artifacts import open_artifact
from densesearch.core.config import QuantizeConfig
from densesearch.core.cpu import ISAS, CpuInfo, read_cpu
from densesearch.core.errors import BadInput, DensesearchError
from densesearch.core.manifest import Manifest, fingerprint_path, write_manifest
from densesearch.core.paths import Workspace, publish, writes_workspace
from densesearch.data.readers import Catalog, Pair, load_catalog, load_data_manifest, load_pairs
from densesearch.eval.evaluation import exact_topk
from densesearch.eval.metrics import bootstrap_ci
from densesearch.retrieval.encoders import (
    DENSE_FILE,
    ENCODER_CONFIG,
    FP32_FILE,
    HEAD_ACTIVATIONS,
    Encoder,
    OnnxEncoder,
    load_onnx_encoder,
    load_torch_encoder,
    model_prompts,
    padded_feeds,
    resolve_base_model,
)

LATENCY_QUERY = "comfy summer dress for beach"
EXPORT_MIN_COSINE = 0.999  # FP32 ONNX must reproduce the torch model
OPENVINO_FILE = "openvino_int8.xml"
SPEED_ROUNDS = 3  # interleaved timing rounds per runtime; the best of each counts
QUERY_PROBES = 32  # dev queries timed one at a time per runtime and round
SPEED_TIE = 0.05  # speeds this close are a tie on a shared machine: the closer to FP32 wins


@dataclass(frozen=True)
class Recipe:
    """One INT8 dynamic-quantization recipe (activations are always u8, per tensor, computed per batch)."""

    name: str
    signed_weights: bool
    reduce_range: bool

    def config(self, per_channel: bool):
        from onnxruntime.quantization import QuantFormat, QuantizationMode, QuantType
        from optimum.onnxruntime.configuration import QuantizationConfig

        return QuantizationConfig(
            is_static=False, format=QuantFormat.QOperator, mode=QuantizationMode.IntegerOps,
            activations_dtype=QuantType.QUInt8, weights_dtype=QuantType.QInt8 if self.signed_weights
            else QuantType.QUInt8, per_channel=per_channel, reduce_range=self.reduce_range,
            operators_to_quantize=["MatMul", "Gather"])


U8S8 = Recipe("u8s8", signed_weights=True, reduce_range=False)
U8S8_7BIT = Recipe("u8s8-7bit", signed_weights=True, reduce_range=True)
U8U8 = Recipe("u8u8", signed_weights=False, reduce_range=False)


def recipe_ladder(cpu: CpuInfo) -> list[Recipe]:
    """Recipes to try on ``cpu``, fastest exact one first."""
    return [U8S8_7BIT if cpu.saturates_u8s8 else U8S8, U8U8]


@dataclass
class ParityReport:
    """How closely one INT8 model follows FP32, and whether that is close enough to serve."""

    recipe: str
    cosine_mean: float
    cosine_min: float
    top10_overlap: float
    overlap_probes: int
    recall_fp32: float
    recall_int8: float
    recall_drop: float
    drop_ci: tuple[float, float]
    passed: bool
    reasons: list[str] = field(default_factory=list)


@dataclass
class QuantizeResult:
    """Sizes, parity and latency of the exported encoders."""

    path: Path
    manifest: Manifest
    source_model: str
    isa: str
    recipe: str | None
    runtime: str | None
    query_runtime: str | None
    fp32_bytes: int
    int8_bytes: int
    size_ratio: float
    cosine_mean: float
    cosine_min: float
    top10_overlap: float
    recall_at_10: dict[str, float]
    latency_ms_p50: dict[str, float]
    attempts: list[ParityReport]
    trials: list[RuntimeTrial]
    passed: bool
    forced: bool
    fell_back_to_fp32: bool


@dataclass
class ParitySample:
    """What the gate measures on: a corpus of catalog texts, dev queries and the index of their positive."""

    corpus: list[str]
    queries: list[str]
    positives: np.ndarray


def parity_sample(catalog: Catalog, dev: list[Pair], max_items: int, max_queries: int, seed: int) -> ParitySample:
    """Up to ``max_items`` catalog texts (every sampled query's positive among them) and up to ``max_queries``."""
    rng = np.random.default_rng(seed)
    position = {item: n for n, item in enumerate(catalog.ids)}
    pairs = [dev[i] for i in sorted(rng.permutation(len(dev))[:max_queries])]
    chosen = list(dict.fromkeys(position[p.item_id] for p in pairs if p.item_id in position))[:max_items]
    others = [i for i in rng.permutation(len(catalog)).tolist() if i not in set(chosen)]
    corpus = sorted(chosen + others[: max(0, max_items - len(chosen))])
    local = {item: n for n, item in enumerate(corpus)}
    pairs = [p for p in pairs if position.get(p.item_id) in local]
    return ParitySample(corpus=[catalog.texts[i] for i in corpus], queries=[p.query for p in pairs],
                        positives=np.asarray([local[position[p.item_id]] for p in pairs], dtype=np.int64))


def neighbours(queries: np.ndarray, items: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    """Top-k item indices per query; with ``exclude_self`` query n is item n and never its own neighbour."""
    top, _ = exact_topk(queries, items, k + 1 if exclude_self else k)
    if not exclude_self:
        return top
    return np.stack([row[row != n][:k] for n, row in enumerate(top)])


def top_overlap(a, b) -> np.ndarray:
    """Per row, the share of ``a``'s neighbours (item indices or ids) that ``b`` also returns."""
    return np.asarray([len(set(np.asarray(x).tolist()) & set(np.asarray(y).tolist())) / max(len(x), 1)
                       for x, y in zip(a, b, strict=True)])


def parity_check(reference: Encoder, candidate: Encoder, sample: ParitySample, cfg: QuantizeConfig,
                 recipe: str) -> ParityReport:
    """Judge ``candidate`` (INT8) against ``reference`` (FP32) on ``sample``."""
    ref_items, cand_items = (e.encode(sample.corpus, batch_size=cfg.encode_batch) for e in (reference, candidate))
    ref_q, cand_q = (e.encode_queries(sample.queries) for e in (reference, candidate))  # one at a time, as served
    cosines = np.concatenate([np.sum(ref_items * cand_items, axis=1), np.sum(ref_q * cand_q, axis=1)])
    k = min(10, len(sample.corpus) - 1)
    ref_top, cand_top = neighbours(ref_q, ref_items, k), neighbours(cand_q, cand_items, k)
    overlaps = np.concatenate([
        top_overlap(ref_top, cand_top),
        top_overlap(neighbours(ref_items, ref_items, k, True), neighbours(cand_items, cand_items, k, True))])
    hits_ref, hits_int8 = (np.asarray([p in row for p, row in zip(sample.positives, top, strict=True)],
                                      dtype=np.float64) for top in (ref_top, cand_top))
    drop = float(hits_ref.mean() - hits_int8.mean()) if len(hits_ref) else 0.0
    low, high = bootstrap_ci(hits_ref - hits_int8, cfg.bootstrap, cfg.seed) if len(hits_ref) else (0.0, 0.0)
    reasons = []
    if cosines.mean() < cfg.min_mean_cosine:
        reasons.append(f"mean cosine {cosines.mean():.4f} < {cfg.min_mean_cosine}")
    if cosines.min() < cfg.min_cosine:  # a kernel that breaks on some shapes spoils a few rows, not the mean
        reasons.append(f"min cosine {cosines.min():.4f} < {cfg.min_cosine}")
    if overlaps.mean() < cfg.min_top10_overlap:
        reasons.append(f"top-10 overlap {overlaps.mean():.3f} < {cfg.min_top10_overlap}")
    if drop > cfg.max_recall_drop and low > 0:
        reasons.append(f"Recall@10 drop {drop:.4f} > {cfg.max_recall_drop} (95% CI {low:.3f}..{high:.3f})")
    return ParityReport(recipe=recipe, cosine_mean=float(cosines.mean()), cosine_min=float(cosines.min()),
                        top10_overlap=float(overlaps.mean()), overlap_probes=len(overlaps),
                        recall_fp32=float(hits_ref.mean()) if len(hits_ref) else 0.0,
                        recall_int8=float(hits_int8.mean()) if len(hits_int8) else 0.0,
                        recall_drop=drop, drop_ci=(low, high), passed=not reasons, reasons=reasons)


def resolve_source_model(spec: str, workspace: Workspace) -> tuple[str, str, str, dict[str, str]]:
    """(model directory, label, fingerprint, upstream) for 'finetuned', 'base' or a path."""
    if spec == "finetuned":
        artifact = open_artifact(workspace, "model")
        return str(artifact.path), "finetuned", artifact.fingerprint, {"model": artifact.fingerprint}
    name = "sentence-transformers/all-MiniLM-L6-v2" if spec == "base" else spec
    path = resolve_base_model(name)
    if not Path(path).is_dir():
        raise BadInput(f"model {spec!r} is not a local directory", hint="pass finetuned, base or a model directory")
    fingerprint = fingerprint_path(Path(path))
    return path, name, fingerprint, {"base_model": fingerprint}


def export_onnx(model_dir: str, out_dir: Path, cross_encoder: bool = False) -> None:
    """FP32 ONNX of the transformer with optimum: token embeddings out, or, for a cross-encoder, one relevance
    logit per (query, text) pair."""
    from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTModelForSequenceClassification

    exporter = ORTModelForSequenceClassification if cross_encoder else ORTModelForFeatureExtraction
    model = exporter.from_pretrained(model_dir, export=True, provider="CPUExecutionProvider")
    with tempfile.TemporaryDirectory() as scratch:
        model.save_pretrained(scratch)
        shutil.copy(Path(scratch) / FP32_FILE, out_dir / FP32_FILE)
        shutil.copy(Path(scratch) / "config.json", out_dir / "config.json")


def quantize_int8(out_dir: Path, recipe: Recipe, per_channel: bool) -> str:
    """INT8 dynamic quantization of model.onnx with ``recipe``; returns the INT8 file name."""
    from optimum.onnxruntime import ORTQuantizer

    quantizer = ORTQuantizer.from_pretrained(out_dir, file_name=FP32_FILE)
    name = f"model_qint8_{recipe.name}.onnx"
    with tempfile.TemporaryDirectory() as scratch:
        quantizer.quantize(save_dir=scratch, quantization_config=recipe.config(per_channel),
                           file_suffix=f"qint8_{recipe.name}")
        shutil.copy(Path(scratch) / name, out_dir / name)
    return name


def write_encoder_files(model_dir: str, out_dir: Path, int8_file: str | None, torch_encoder, label: str) -> None:
    """Tokenizer and the pooling/normalisation settings the ONNX encoder needs without torch."""
    shutil.copy(Path(model_dir) / "tokenizer.json", out_dir / "tokenizer.json")
    pooling = "mean"
    pooling_config = Path(model_dir) / "1_Pooling" / "config.json"
    if pooling_config.is_file() and json.loads(pooling_config.read_text()).get("pooling_mode_cls_token"):
        pooling = "cls"
    heads = write_dense_heads(torch_encoder.model, out_dir)
    (out_dir / ENCODER_CONFIG).write_text(json.dumps({
        "dim": torch_encoder.dim, "pooling": pooling, "normalize": True, "int8_file": int8_file,
        "max_seq_length": int(torch_encoder.model.max_seq_length), "source_model": label,
        "prompts": model_prompts(torch_encoder.model).as_dict(), "dense_heads": heads}, indent=2))


def write_dense_heads(model, out_dir: Path) -> int:
    """The model's Dense modules after pooling (weights, bias, activation) as one .npz the ONNX encoder applies in
    numpy; returns how many. A module this version cannot run is refused before anything is published."""
    from sentence_transformers.models import Dense, Normalize, Pooling, Transformer

    arrays: dict[str, np.ndarray] = {}
    heads, normalized = 0, False
    for module in model:
        if isinstance(module, Pooling) and not getattr(module, "include_prompt", True):
            raise BadInput("the model's pooling leaves its prompt out, which the ONNX encoder cannot do",
                           hint="serve it with --model finetuned (torch)")
        previous_normalized, normalized = normalized, isinstance(module, Normalize)
        if isinstance(module, Dense):
            activation = type(module.activation_function).__name__
            if activation not in HEAD_ACTIVATIONS:
                raise BadInput(f"the model's Dense layer uses {activation}, which the ONNX encoder cannot run",
                               hint="serve it with --model finetuned (torch)")
            arrays[f"weight_{heads}"] = module.linear.weight.detach().float().cpu().numpy()
            if module.linear.bias is not None:
                arrays[f"bias_{heads}"] = module.linear.bias.detach().float().cpu().numpy()
            arrays[f"activation_{heads}"] = np.array(activation)
            arrays[f"normalize_{heads}"] = np.array(previous_normalized)
            heads += 1
        elif not isinstance(module, (Transformer, Pooling, Normalize)):
            raise BadInput(f"the model has a {type(module).__name__} module the ONNX encoder cannot run",
                           hint="serve it with --model finetuned (torch)")
    if heads:
        np.savez(out_dir / DENSE_FILE, **arrays)
    return heads


def set_int8_file(out_dir: Path, int8_file: str | None, runtime: str | None, query_file: str | None = None,
                  query_runtime: str | None = None) -> None:
    """Point encoder.json at the INT8 model (and runtime) for catalog texts and, when another one answers single
    queries faster, at that one for queries."""
    path = out_dir / ENCODER_CONFIG
    config = json.loads(path.read_text())
    config["int8_file"] = int8_file
    config["int8_runtime"] = runtime
    config["query_int8_file"] = query_file if query_file != int8_file else None
    config["query_int8_runtime"] = query_runtime if query_file != int8_file else None
    path.write_text(json.dumps(config, indent=2))


def onnxruntime_files(out_dir: Path) -> list[str]:
    """The model files ONNX Runtime serves from this artifact: the INT8 ones it runs, or FP32 when nothing passed."""
    config = json.loads((out_dir / ENCODER_CONFIG).read_text())
    files = [config.get("int8_file") if (config.get("int8_runtime") or "onnxruntime") == "onnxruntime" else None,
             config.get("query_int8_file") if config.get("query_int8_runtime") == "onnxruntime" else None]
    files = [f for f in files if f] or ([] if config.get("int8_file") else [FP32_FILE])
    return list(dict.fromkeys(files))


def write_optimized_graphs(out_dir: Path, texts: list[str], threads: int) -> dict[str, dict[str, str]]:
    """Each ONNX Runtime model's graph optimized once, here, and saved beside it: a session then loads it with the
    optimizer off (about half the session's build time on a cold query). Extended level, not all: layout changes
    are specific to one CPU. A saved graph is kept only where it encodes ``texts`` exactly as its source does; it
    is served only by the ONNX Runtime version that wrote it (recorded in encoder.json)."""
    import onnxruntime as ort

    optimized: dict[str, dict[str, str]] = {}
    for name in onnxruntime_files(out_dir):
        target = f"{Path(name).stem}.optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(out_dir / target)
        options.log_severity_level = 3
        ort.InferenceSession(str(out_dir / name), options, providers=["CPUExecutionProvider"])
        source, saved = (OnnxEncoder(out_dir, int8=name != FP32_FILE, fingerprint="", threads=threads,
                                     model_file=file, pre_optimized=file == target) for file in (name, target))
        if np.array_equal(source.encode(texts), saved.encode(texts)):
            optimized[name] = {"file": target, "onnxruntime": ort.__version__}
        else:
            (out_dir / target).unlink()
    config = json.loads((out_dir / ENCODER_CONFIG).read_text())
    config["optimized"] = optimized
    (out_dir / ENCODER_CONFIG).write_text(json.dumps(config, indent=2))
    return optimized


def target_cpu(isa: str) -> CpuInfo:
    """This CPU (``auto``) or the instruction set asked for."""
    if isa == "auto":
        return read_cpu()
    if isa not in ISAS:
        raise BadInput(f"unknown instruction set {isa!r}", hint=f"use auto or one of {', '.join(ISAS)}")
    return CpuInfo(isa=isa, model="(given with --isa)", flags=())


def gate_failure(attempts: list[ParityReport]) -> DensesearchError:
    detail = "; ".join(f"{a.recipe}: {', '.join(a.reasons)}" for a in attempts)
    return DensesearchError(f"INT8 parity gate failed for every recipe ({detail}); nothing was published",
                            hint="`quantize --fallback-fp32` serves FP32 ONNX instead; --force publishes INT8 anyway")


@dataclass
class RuntimeTrial:
    """One INT8 runtime measured on this CPU: catalog encode speed, batch-1 latency and batch independence."""

    runtime: str
    recipe: str
    file: str
    items_per_second: float
    tokens_per_second: float
    batch1_ms: float               # median per dev query, one request at a time (shapes change as they do live)
    batch_cosine_min: float        # one text encoded alone vs the same text in a catalog batch
    batch_recall_delta: float      # dev Recall@10 with a batched catalog minus one-at-a-time encoding
    top10_overlap: float = 0.0     # the parity gate's neighbour overlap with FP32


def encode_speeds(encoders: list[Encoder], texts: list[str], batch_size: int,
                  rounds: int = SPEED_ROUNDS) -> list[tuple[float, float]]:
    """(items/s, real tokens/s) of each encoder over ``texts``: the best of ``rounds`` interleaved runs, so a
    noisy neighbour on a shared machine slows every contestant alike rather than one of them."""
    best = [(0.0, 0.0)] * len(encoders)
    for encoder in encoders:
        encoder.encode(texts[:batch_size], batch_size=batch_size)  # warm-up
    for _ in range(rounds):
        for n, encoder in enumerate(encoders):
            tokens_before = getattr(encoder, "tokens_encoded", 0)
            started = time.perf_counter()
            encoder.encode(texts, batch_size=batch_size)
            elapsed = max(time.perf_counter() - started, 1e-9)
            speed = (len(texts) / elapsed, (getattr(encoder, "tokens_encoded", 0) - tokens_before) / elapsed)
            best[n] = max(best[n], speed)
    return best


def query_latencies(encoders: list[Encoder], queries: list[str], rounds: int = SPEED_ROUNDS) -> list[float]:
    """Median ms per query, one request at a time, for each encoder (rounds interleaved across encoders)."""
    samples: list[list[float]] = [[] for _ in encoders]
    for encoder in encoders:
        encoder.encode_queries(queries)  # warm-up: every query length seen once
    for _ in range(rounds):
        for n, encoder in enumerate(encoders):
            for query in queries:
                started = time.perf_counter()
                encoder.encode_queries([query])
                samples[n].append((time.perf_counter() - started) * 1000)
    return [statistics.median(values) for values in samples]


def batch_independence(encoder: Encoder, sample: ParitySample, batch_size: int) -> tuple[float, float]:
    """(min cosine, dev Recall@10 change) between the catalog encoded in batches and one text at a time."""
    batched = encoder.encode(sample.corpus, batch_size=batch_size)
    alone = encoder.encode_queries(sample.corpus)  # one text per call
    queries = encoder.encode_queries(sample.queries)
    k = min(10, len(sample.corpus))
    recall = [float(np.mean([p in row for p, row in zip(sample.positives, neighbours(queries, items, k),
                                                         strict=True)])) if len(sample.queries) else 0.0
              for items in (batched, alone)]
    return float(np.min(np.sum(batched * alone, axis=1))), recall[0] - recall[1]


@dataclass
class Contestant:
    """An INT8 model that passed the parity gate, loaded and waiting for the speed race."""

    runtime: str
    recipe: str
    file: str
    encoder: Encoder
    report: ParityReport


def race_runtimes(contestants: list[Contestant], sample: ParitySample, cfg: QuantizeConfig) -> list[RuntimeTrial]:
    """Catalog speed (interleaved rounds), batch-1 latency and batch independence of every contestant."""
    speeds = encode_speeds([c.encoder for c in contestants], sample.corpus[:cfg.speed_items], cfg.encode_batch)
    latencies = query_latencies([c.encoder for c in contestants], sample.queries[:QUERY_PROBES] or [LATENCY_QUERY])
    trials = []
    for contestant, (items_per_second, tokens_per_second), batch1_ms in zip(contestants, speeds, latencies,
                                                                              strict=True):
        cosine_min, recall_delta = batch_independence(contestant.encoder, sample, cfg.encode_batch)
        trials.append(RuntimeTrial(
            runtime=contestant.runtime, recipe=contestant.recipe, file=contestant.file,
            items_per_second=items_per_second, tokens_per_second=tokens_per_second,
            batch1_ms=batch1_ms, batch_cosine_min=cosine_min,
            batch_recall_delta=recall_delta, top10_overlap=contestant.report.top10_overlap))
    return trials


def openvino_available() -> bool:
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def runtimes_to_try(cfg: QuantizeConfig) -> tuple[str, ...]:
    """INT8 runtimes to build and race: ONNX Runtime always (the portable default), OpenVINO where installed.

    A quantization for another CPU (``--isa``) cannot be raced here, so it stays on ONNX Runtime unless
    OpenVINO is asked for by name.
    """
    if cfg.runtime not in ("auto", "onnxruntime", "openvino"):
        raise BadInput(f"unknown runtime {cfg.runtime!r}", hint="use auto, onnxruntime or openvino")
    if cfg.runtime == "openvino" and not openvino_available():
        raise BadInput("--runtime openvino needs the openvino and nncf packages",
                       hint="pip install 'openvino==2026.4.*' 'nncf==3.4.*' (or use --runtime onnxruntime)")
    if cfg.runtime == "auto":
        return ("onnxruntime", "openvino") if cfg.isa == "auto" and openvino_available() else ("onnxruntime",)
    return (cfg.runtime,)


def calibration_texts(catalog: Catalog, workspace: Workspace, count: int, seed: int) -> list[str]:
    """Catalog texts and training queries (never dev ones: the gate judges on dev) for static INT8 scales."""
    rng = np.random.default_rng(seed + 1)
    items = [catalog.texts[i] for i in rng.permutation(len(catalog))[: count * 2 // 3]]
    train = load_pairs(workspace, "train")
    queries = [train[i].query for i in rng.permutation(len(train))[: count - len(items)]]
    return items + queries


def quantize_openvino(out_dir: Path, texts: list[str], fp32: OnnxEncoder) -> str:
    """Static INT8 with NNCF (transformer preset: scales calibrated on ``texts``, tokenised and fed as ``fp32``,
    the FP32 encoder of the same export, feeds its model); returns the model file name."""
    import logging

    os.environ.setdefault("NNCF_CI", "1")  # NNCF's switch for its usage telemetry: none from a user's machine
    import nncf
    import openvino as ov

    nncf.set_log_level(logging.ERROR)
    model = ov.Core().read_model(str(out_dir / FP32_FILE))
    calibration = [padded_feeds([fp32.tokenizer.encode(text).ids], fp32.input_names) for text in texts]
    # NNCF draws its own progress bars on stdout; the command shows one progress bar (DENSESEARCH_DEBUG=1 shows them)
    shown = os.environ.get("DENSESEARCH_DEBUG") == "1"
    with contextlib.nullcontext() if shown else contextlib.redirect_stdout(io.StringIO()):
        quantized = nncf.quantize(model, nncf.Dataset(calibration), subset_size=len(texts),
                                  model_type=nncf.ModelType.TRANSFORMER)
    ov.save_model(quantized, str(out_dir / OPENVINO_FILE), compress_to_fp16=False)
    return OPENVINO_FILE


def model_bytes(out_dir: Path, name: str) -> int:
    """On-disk size of a model file (an OpenVINO .xml counts its .bin weights too)."""
    path = out_dir / name
    weights = path.with_suffix(".bin") if path.suffix == ".xml" else None
    return path.stat().st_size + (weights.stat().st_size if weights and weights.is_file() else 0)


def fastest(trials: list[RuntimeTrial]) -> RuntimeTrial | None:
    """The catalog encoder: the most items/s; within ``SPEED_TIE`` of the best, the one closest to FP32."""
    if not trials:
        return None
    best = max(t.items_per_second for t in trials)
    return max((t for t in trials if t.items_per_second >= best * (1 - SPEED_TIE)), key=lambda t: t.top10_overlap)


def quickest(trials: list[RuntimeTrial]) -> RuntimeTrial | None:
    """The query encoder: the fewest ms per query; within ``SPEED_TIE`` of the best, the one closest to FP32."""
    if not trials:
        return None
    best = min(t.batch1_ms for t in trials)
    return max((t for t in trials if t.batch1_ms <= best * (1 + SPEED_TIE)), key=lambda t: t.top10_overlap)


@dataclass
class QuantizeJob:
    """One `quantize` run's inputs: settings, target CPU, runtimes, the source model and the parity sample."""

    cfg: QuantizeConfig
    cpu: CpuInfo
    runtimes: tuple[str, ...]
    model_dir: str
    label: str
    model_fingerprint: str
    upstream: dict[str, str]
    catalog: Catalog
    sample: ParitySample
    torch_encoder: object
    progress: object = None

    @property
    def ladder(self) -> list[Recipe]:
        """ONNX Runtime's INT8 recipes for this CPU, in the order they are tried (none when it is not raced)."""
        return recipe_ladder(self.cpu) if "onnxruntime" in self.runtimes else []

    def say(self, what: str, step: int, total: int) -> None:
        if self.progress:
            self.progress(what, step, total)


@dataclass
class Gated:
    """The INT8 models that passed the gate (or were forced), every gate report, and the FP32 export."""

    fp32: object
    export_cosine: float
    contestants: list[Contestant] = field(default_factory=list)
    attempts: list[ParityReport] = field(default_factory=list)


def quantize_job(cfg: QuantizeConfig, workspace: Workspace, progress=None) -> QuantizeJob:
    """Resolve the model, the CPU's recipes and runtimes, and draw the parity sample, before anything is written."""
    model_dir, label, model_fingerprint, upstream = resolve_source_model(cfg.model, workspace)
    upstream = {**upstream, "data": load_data_manifest(workspace).fingerprint}
    catalog = load_catalog(workspace)
    dev = load_pairs(workspace, "dev") or load_pairs(workspace, "train")
    sample = parity_sample(catalog, dev, cfg.parity_items, cfg.parity_queries, cfg.seed)
    return QuantizeJob(cfg, target_cpu(cfg.isa), runtimes_to_try(cfg), model_dir, label, model_fingerprint, upstream,
                       catalog, sample, load_torch_encoder(model_dir, model_fingerprint), progress)


def export_checked(job: QuantizeJob, tmp: Path) -> Gated:
    """The FP32 ONNX export in ``tmp``, checked against the torch model on a few texts."""
    job.say("exporting to ONNX", 0, 1)
    export_onnx(job.model_dir, tmp)
    write_encoder_files(job.model_dir, tmp, None, job.torch_encoder, job.label)
    fp32 = load_onnx_encoder(tmp, int8=False, fingerprint="", threads=job.cfg.threads)
    probe = job.sample.corpus[:32] + job.sample.queries[:32]
    queries = job.sample.queries[:32]
    export_cosine = min(float(np.min(np.sum(fp32.encode(probe) * job.torch_encoder.encode(probe), axis=1))),
                        float(np.min(np.sum(fp32.encode_queries(queries, 8)
                                            * job.torch_encoder.encode_queries(queries, 8), axis=1))))
    if export_cosine < EXPORT_MIN_COSINE:
        raise DensesearchError(f"the ONNX export does not reproduce the model (min cosine {export_cosine:.4f})",
                               hint="check the model directory loads with sentence-transformers")
    return Gated(fp32, export_cosine)


def gate_onnxruntime(job: QuantizeJob, tmp: Path, gated: Gated) -> None:
    """ONNX Runtime's dynamic INT8: this CPU's recipes in order until one passes the gate (``--force``: the last)."""
    ladder = job.ladder
    for step, recipe in enumerate(ladder):
        job.say(f"quantizing ({recipe.name}) and checking parity", step, len(ladder) + 1)
        int8_file = quantize_int8(tmp, recipe, job.cfg.per_channel)
        set_int8_file(tmp, int8_file, "onnxruntime")
        encoder = load_onnx_encoder(tmp, int8=True, fingerprint="", threads=job.cfg.threads)
        report = parity_check(gated.fp32, encoder, job.sample, job.cfg, recipe.name)
        gated.attempts.append(report)
        forced = job.cfg.force and step == len(ladder) - 1 and "openvino" not in job.runtimes
        if report.passed or forced:
            gated.contestants.append(Contestant("onnxruntime", recipe.name, int8_file, encoder, report))
            return
        (tmp / int8_file).unlink()


def gate_openvino(job: QuantizeJob, workspace: Workspace, tmp: Path, gated: Gated) -> None:
    """OpenVINO's static INT8, calibrated on catalog texts and training queries, behind the same gate."""
    if "openvino" not in job.runtimes:
        return
    job.say("quantizing (OpenVINO static INT8) and checking parity", len(job.ladder), len(job.ladder) + 1)
    texts = calibration_texts(job.catalog, workspace, job.cfg.calibration_texts, job.cfg.seed)
    int8_file = quantize_openvino(tmp, texts, gated.fp32)
    set_int8_file(tmp, int8_file, "openvino")
    encoder = load_onnx_encoder(tmp, int8=True, fingerprint="", threads=job.cfg.threads)
    report = parity_check(gated.fp32, encoder, job.sample, job.cfg, "openvino-static")
    gated.attempts.append(report)
    if report.passed or (job.cfg.force and not gated.contestants):
        gated.contestants.append(Contestant("openvino", "static", int8_file, encoder, report))
        return
    for name in (int8_file, Path(int8_file).with_suffix(".bin").name):
        (tmp / name).unlink(missing_ok=True)


@dataclass
class Served:
    """What `quantize` publishes: the catalog's and the queries' INT8 models (None: FP32 serves) and the race."""

    trials: list
    chosen: object
    for_queries: object
    final: ParityReport


def race_and_choose(job: QuantizeJob, tmp: Path, gated: Gated) -> Served:
    """Race the gated models on this CPU; the faster in batches encodes the catalog, the quicker per query answers
    queries, and a mixed pair must pass the gate together."""
    job.say("racing the INT8 runtimes on this CPU", len(job.ladder) + 1, len(job.ladder) + 1)
    trials = race_runtimes(gated.contestants, job.sample, job.cfg)
    chosen = fastest(trials)
    if chosen is None and not job.cfg.fallback_fp32:
        raise gate_failure(gated.attempts)
    final = next(c.report for c in gated.contestants if c.file == chosen.file) if chosen else gated.attempts[-1]
    for_queries = quickest(trials)
    if chosen and for_queries.file != chosen.file:  # the pair as served must pass the gate too
        set_int8_file(tmp, chosen.file, chosen.runtime, for_queries.file, for_queries.runtime)
        pair = parity_check(gated.fp32, load_onnx_encoder(tmp, int8=True, fingerprint="", threads=job.cfg.threads),
                            job.sample, job.cfg, f"catalog {chosen.runtime}, queries {for_queries.runtime}")
        gated.attempts.append(pair)
        final, for_queries = (pair, for_queries) if pair.passed else (final, chosen)
    set_int8_file(tmp, chosen.file if chosen else None, chosen.runtime if chosen else None,
                  for_queries.file if for_queries else None, for_queries.runtime if for_queries else None)
    return Served(trials, chosen, for_queries, final)


def recipe_name_of(chosen) -> str | None:
    if chosen is None:
        return None
    return chosen.recipe if chosen.runtime == "onnxruntime" else "openvino-static"


def onnx_manifest(job: QuantizeJob, gated: Gated, served: Served, sizes: tuple[int, int],
                  latency: dict[str, float]) -> Manifest:
    """The onnx artifact's manifest: the gate's reports, the race, the files each runtime serves, the sizes."""
    chosen, for_queries, final = served.chosen, served.for_queries, served.final
    fp32_bytes, int8_bytes = sizes
    return Manifest(
        kind="onnx", settings={**asdict(job.cfg), "isa": job.cpu.isa}, inputs={"model": job.label},
        upstream=job.upstream,
        counts={"parity_items": len(job.sample.corpus), "parity_queries": len(job.sample.queries)},
        extra={"isa": job.cpu.isa, "cpu": job.cpu.as_dict(), "recipe": recipe_name_of(chosen),
               "int8_file": chosen.file if chosen else None, "int8_runtime": chosen.runtime if chosen else None,
               "query_int8_runtime": for_queries.runtime if for_queries else None,
               "query_int8_file": for_queries.file if for_queries else None,
               "runtimes": [asdict(t) for t in served.trials], "source_model": job.label,
               "source_fingerprint": job.model_fingerprint,
               "fp32_bytes": fp32_bytes, "int8_bytes": int8_bytes, "size_ratio": int8_bytes / fp32_bytes,
               "cosine_mean": final.cosine_mean, "cosine_min": final.cosine_min,
               "top10_overlap": final.top10_overlap, "torch_onnx_cosine_min": gated.export_cosine,
               "parity": [asdict(a) for a in gated.attempts], "latency_ms_p50": latency,
               "parity_passed": final.passed and chosen is not None,
               "fell_back_to_fp32": chosen is None, "dim": job.torch_encoder.dim})


@writes_workspace
def run_quantize(cfg: QuantizeConfig, workspace: Workspace, progress=None) -> QuantizeResult:
    """Export -> for each recipe: quantize, gate -> race -> choose -> publish: ONNX Runtime's recipes for this CPU
    until one passes the gate, OpenVINO's static INT8 where installed; the fastest that passes serves (or FP32)."""
    job = quantize_job(cfg, workspace, progress)
    with publish(workspace, "onnx") as tmp:
        gated = export_checked(job, tmp)
        gate_onnxruntime(job, tmp, gated)
        gate_openvino(job, workspace, tmp, gated)
        served = race_and_choose(job, tmp, gated)
        write_optimized_graphs(tmp, job.sample.queries[:QUERY_PROBES] + job.sample.corpus[:QUERY_PROBES],
                               job.cfg.threads)
        probes = job.sample.queries[:QUERY_PROBES] or [LATENCY_QUERY]
        latency = dict(zip(("torch", "onnx"), query_latencies([job.torch_encoder, gated.fp32], probes), strict=True))
        latency.update({f"int8 {t.runtime}": t.batch1_ms for t in served.trials})  # the same probes, in the race
        fp32_bytes = (tmp / FP32_FILE).stat().st_size
        int8_bytes = model_bytes(tmp, served.chosen.file) if served.chosen else fp32_bytes
        manifest = write_manifest(tmp, onnx_manifest(job, gated, served, (fp32_bytes, int8_bytes), latency))
    return quantize_result(job, workspace, manifest, gated, served)


def quantize_result(job: QuantizeJob, workspace: Workspace, manifest: Manifest, gated: Gated,
                    served: Served) -> QuantizeResult:
    chosen, for_queries, final = served.chosen, served.for_queries, served.final
    extra = manifest.extra
    return QuantizeResult(
        path=workspace.artifact("onnx"), manifest=manifest, source_model=job.label, isa=job.cpu.isa,
        recipe=recipe_name_of(chosen), runtime=chosen.runtime if chosen else None,
        query_runtime=for_queries.runtime if for_queries else None, fp32_bytes=extra["fp32_bytes"],
        int8_bytes=extra["int8_bytes"], size_ratio=extra["size_ratio"], cosine_mean=final.cosine_mean,
        cosine_min=final.cosine_min, top10_overlap=final.top10_overlap,
        recall_at_10={"onnx": final.recall_fp32, **({"onnx-int8": final.recall_int8} if chosen else {})},
        latency_ms_p50=extra["latency_ms_p50"], attempts=gated.attempts, trials=served.trials,
        passed=extra["parity_passed"], forced=job.cfg.force and not final.passed, fell_back_to_fp32=chosen is None)
