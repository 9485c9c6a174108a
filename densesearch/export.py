"""`quantize`: ONNX export, INT8 dynamic quantization, and a parity gate before publishing."""

from __future__ import annotations

import json
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from densesearch.config import QuantizeConfig
from densesearch.encoders import (
    ENCODER_CONFIG,
    FP32_FILE,
    Encoder,
    load_onnx_encoder,
    load_torch_encoder,
    resolve_base_model,
)
from densesearch.errors import BadInput, DensesearchError
from densesearch.evaluation import evaluate_encoder
from densesearch.manifest import Manifest, fingerprint_path, read_manifest, write_manifest
from densesearch.paths import Workspace, atomic_dir
from densesearch.prepare import load_catalog, load_data_manifest, load_pairs
from densesearch.train import sample_pairs

ISAS = ("avx512_vnni", "avx512", "avx2", "arm64")
LATENCY_QUERY = "comfy summer dress for beach"


@dataclass
class QuantizeResult:
    """Sizes, parity and latency of the exported encoders."""

    path: Path
    manifest: Manifest
    source_model: str
    isa: str
    fp32_bytes: int
    int8_bytes: int
    size_ratio: float
    cosine_mean: float
    cosine_min: float
    recall_at_10: dict[str, float]
    latency_ms_p50: dict[str, float]
    passed: bool
    forced: bool


def detect_isa() -> str:
    """The best INT8 instruction set of this CPU: avx512_vnni, avx512, avx2 or arm64."""
    if platform.machine().lower() in {"aarch64", "arm64"}:
        return "arm64"
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def resolve_source_model(spec: str, workspace: Workspace) -> tuple[str, str, dict[str, str]]:
    """(model directory, fingerprint, upstream) for 'finetuned', 'base' or a path."""
    if spec == "finetuned":
        manifest = read_manifest(workspace.artifact("model"), "model")
        return str(workspace.artifact("model")), manifest.fingerprint, {"model": manifest.fingerprint}
    path = resolve_base_model("sentence-transformers/all-MiniLM-L6-v2" if spec == "base" else spec)
    if not Path(path).is_dir():
        raise BadInput(f"model {spec!r} is not a local directory", hint="pass finetuned, base or a model directory")
    return path, fingerprint_path(Path(path)), {}


def export_onnx(model_dir: str, out_dir: Path) -> None:
    """FP32 ONNX of the transformer (token embeddings out) with optimum."""
    from optimum.onnxruntime import ORTModelForFeatureExtraction

    model = ORTModelForFeatureExtraction.from_pretrained(model_dir, export=True, provider="CPUExecutionProvider")
    with tempfile.TemporaryDirectory() as scratch:
        model.save_pretrained(scratch)
        shutil.copy(Path(scratch) / FP32_FILE, out_dir / FP32_FILE)


def quantize_int8(out_dir: Path, isa: str, per_channel: bool) -> str:
    """INT8 dynamic quantization of model.onnx; returns the INT8 file name."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    make_config = {"avx512_vnni": AutoQuantizationConfig.avx512_vnni, "avx512": AutoQuantizationConfig.avx512,
                   "avx2": AutoQuantizationConfig.avx2, "arm64": AutoQuantizationConfig.arm64}[isa]
    config = make_config(is_static=False, per_channel=per_channel)
    quantizer = ORTQuantizer.from_pretrained(out_dir, file_name=FP32_FILE)
    with tempfile.TemporaryDirectory() as scratch:
        quantizer.quantize(save_dir=scratch, quantization_config=config, file_suffix=f"qint8_{isa}")
        name = f"model_qint8_{isa}.onnx"
        shutil.copy(Path(scratch) / name, out_dir / name)
    return name


def write_encoder_files(model_dir: str, out_dir: Path, int8_file: str, torch_encoder) -> None:
    """Tokenizer and the pooling/normalisation settings the ONNX encoder needs without torch."""
    shutil.copy(Path(model_dir) / "tokenizer.json", out_dir / "tokenizer.json")
    pooling = "mean"
    pooling_config = Path(model_dir) / "1_Pooling" / "config.json"
    if pooling_config.is_file() and json.loads(pooling_config.read_text()).get("pooling_mode_cls_token"):
        pooling = "cls"
    (out_dir / ENCODER_CONFIG).write_text(json.dumps({
        "dim": torch_encoder.dim, "pooling": pooling, "normalize": True, "int8_file": int8_file,
        "max_seq_length": int(torch_encoder.model.max_seq_length), "source_model": model_dir}, indent=2))


def median_latency_ms(encoder: Encoder, text: str, runs: int = 50, warmup: int = 5) -> float:
    for _ in range(warmup):
        encoder.encode([text], batch_size=1)
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        encoder.encode([text], batch_size=1)
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def run_quantize(cfg: QuantizeConfig, workspace: Workspace, progress=None) -> QuantizeResult:
    """Export, quantize, check parity on dev texts, and publish only when parity holds (or --force)."""
    if cfg.isa not in ("auto", *ISAS):
        raise BadInput(f"unknown instruction set {cfg.isa!r}", hint=f"use auto or one of {', '.join(ISAS)}")
    isa = detect_isa() if cfg.isa == "auto" else cfg.isa
    model_dir, model_fingerprint, upstream = resolve_source_model(cfg.model, workspace)
    data_manifest = load_data_manifest(workspace)
    catalog = load_catalog(workspace)
    dev = sample_pairs(load_pairs(workspace, "dev"), cfg.parity_texts, 13)
    group_of = dict(zip(catalog.ids, catalog.groups, strict=True))
    torch_encoder = load_torch_encoder(model_dir, model_fingerprint)
    with atomic_dir(workspace.artifact("onnx")) as tmp:
        if progress:
            progress("exporting to ONNX", 0, 2)
        export_onnx(model_dir, tmp)
        if progress:
            progress("exporting to ONNX", 1, 2)
        int8_file = quantize_int8(tmp, isa, cfg.per_channel)
        write_encoder_files(model_dir, tmp, int8_file, torch_encoder)
        if progress:
            progress("exporting to ONNX", 2, 2)
        encoders: dict[str, Encoder] = {
            "torch": torch_encoder,
            "onnx": load_onnx_encoder(tmp, int8=False, fingerprint="", threads=cfg.threads),
            "onnx-int8": load_onnx_encoder(tmp, int8=True, fingerprint="", threads=cfg.threads)}
        parity_texts = ([p.query for p in dev] + catalog.texts)[: cfg.parity_texts]
        fp32 = encoders["onnx"].encode(parity_texts)
        int8 = encoders["onnx-int8"].encode(parity_texts)
        cosines = np.sum(fp32 * int8, axis=1)
        torch_vs_onnx = float(np.min(np.sum(fp32 * torch_encoder.encode(parity_texts), axis=1)))
        recall = {}
        for name, encoder in encoders.items():
            metrics = evaluate_encoder(encoder, catalog.ids, catalog.texts, [p.query for p in dev],
                                       [p.item_id for p in dev], group_of, progress=progress)
            recall[name] = metrics.get("recall@10", 0.0)
        latency = {name: median_latency_ms(encoder, LATENCY_QUERY) for name, encoder in encoders.items()}
        fp32_bytes, int8_bytes = (tmp / FP32_FILE).stat().st_size, (tmp / int8_file).stat().st_size
        drop = recall["torch"] - recall["onnx-int8"]
        passed = float(cosines.mean()) >= cfg.min_mean_cosine and drop <= cfg.max_recall_drop
        if not passed and not cfg.force:
            raise DensesearchError(
                f"INT8 parity gate failed: mean cosine {cosines.mean():.4f} (min {cfg.min_mean_cosine}), "
                f"Recall@10 drop {drop:.4f} (max {cfg.max_recall_drop}); nothing was published",
                hint="inspect with --force, or quantize with another --isa")
        manifest = write_manifest(tmp, Manifest(
            kind="onnx", settings={**asdict(cfg), "isa": isa}, inputs={"model": model_dir},
            upstream={**upstream, "data": data_manifest.fingerprint},
            counts={"parity_texts": len(parity_texts), "dev_queries": len(dev)},
            extra={"isa": isa, "int8_file": int8_file, "source_model": model_dir,
                   "source_fingerprint": model_fingerprint, "fp32_bytes": fp32_bytes, "int8_bytes": int8_bytes,
                   "size_ratio": int8_bytes / fp32_bytes, "cosine_mean": float(cosines.mean()),
                   "cosine_min": float(cosines.min()), "torch_onnx_cosine_min": torch_vs_onnx,
                   "recall_at_10": recall, "latency_ms_p50": latency, "parity_passed": passed,
                   "dim": torch_encoder.dim}))
    return QuantizeResult(
        path=workspace.artifact("onnx"), manifest=manifest, source_model=model_dir, isa=isa,
        fp32_bytes=fp32_bytes, int8_bytes=int8_bytes, size_ratio=int8_bytes / fp32_bytes,
        cosine_mean=float(cosines.mean()), cosine_min=float(cosines.min()), recall_at_10=recall,
        latency_ms_p50=latency, passed=passed, forced=cfg.force and not passed)
