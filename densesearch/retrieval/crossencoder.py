"""The cross-encoder as served: scoring (query, item) pairs and interpolating them with the first stage."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from densesearch.core.artifacts import open_artifact
from densesearch.core.cpu import usable_cores
from densesearch.core.errors import ArtifactCorrupt
from densesearch.core.manifest import RerankerInfo
from densesearch.core.paths import Workspace
from densesearch.retrieval.encoders import (
    load_tokenizer,
    ort_session,
    padded_feeds,
)
from densesearch.retrieval.fusion import min_max

SCORER_DIR = "onnx"  # inside the reranker artifact: the exported cross-encoder


SCALES = ("min-max", "calibrated")  # how the two scores meet: see the module docstring


@dataclass(frozen=True)
class Interpolation:
    """How the cross-encoder re-scores the first stage's top ``depth``: ``first + weight * cross``, each scaled as
    ``scale`` says (min-max within the list, or calibrated: the fused score as it is plus the cross-encoder's
    probability)."""

    depth: int = 30
    weight: float = 1.0
    scale: str = "min-max"

    @property
    def label(self) -> str:
        scale = ", calibrated" if self.scale == "calibrated" else ""
        return f"cross-encoder on the top {self.depth}, weight {self.weight:g}{scale}"


def sigmoid(logit: float) -> float:
    """The logistic function, without overflow for large negative logits."""
    return 0.5 * (1.0 + math.tanh(0.5 * logit))


def interpolate(first: Sequence[float], cross: Sequence[float], weight: float,
                scale: str = "min-max") -> tuple[list[int], list[float]]:
    """Positions of the re-scored head in their new order, with their interpolated scores (ties: first stage)."""
    if scale == "calibrated":
        first_part, cross_part = [float(a) for a in first], [sigmoid(float(c)) for c in cross]
    else:
        first_part, cross_part = min_max(list(first)), min_max([float(c) for c in cross])
    combined = [a + weight * b for a, b in zip(first_part, cross_part, strict=True)]
    order = sorted(range(len(combined)), key=lambda n: (-combined[n], n))
    return order, [combined[n] for n in order]


def reranked(items: Sequence[str], first: Sequence[float], cross: Sequence[float],
             interpolation: Interpolation) -> tuple[list[str], list[float]]:
    """A first-stage list with its top ``depth`` re-scored; the tail keeps its order, scored below the head."""
    head = min(interpolation.depth, len(items), len(cross))
    order, scores = interpolate(first[:head], cross[:head], interpolation.weight, interpolation.scale)
    tail = list(range(head, len(items)))
    floor = min(scores, default=0.0)
    tail_scores = [floor - 1.0 - n for n in range(1, len(tail) + 1)]
    return [items[n] for n in order] + [items[n] for n in tail], scores + tail_scores


class CrossScorer:
    """The published cross-encoder, scoring (query, item text) pairs as raw logits: its exported ONNX model,
    or torch for a reranker published before the export existed."""

    def __init__(self, workspace: Workspace, threads: int = 0) -> None:
        self.artifact = open_artifact(workspace, "reranker")
        info: RerankerInfo = self.artifact.info
        self.interpolation = Interpolation(info.depth, float(info.weight), info.scale)
        if self.interpolation.scale not in SCALES:
            raise ArtifactCorrupt("reranker", "manifest.json",
                                  f"records an unknown interpolation {self.interpolation.scale!r}")
        max_length, scorer_file, self.label = info.max_length, info.scorer_file, info.scorer
        if scorer_file:
            self.scorer = OnnxCrossScorer(self.artifact.path / scorer_file, self.artifact.path / "tokenizer.json",
                                          max_length, threads)
        else:
            self.scorer = TorchCrossScorer(load_cross_encoder(self.artifact.path, max_length, "cpu", threads))

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        return self.scorer.score(query, texts)


class OnnxCrossScorer:
    """A cross-encoder on ONNX Runtime: each (query, text) tokenised as one pair (segment ids), one logit out."""

    def __init__(self, model_file: Path, tokenizer_file: Path, max_length: int, threads: int = 0) -> None:
        if not model_file.is_file():
            raise ArtifactCorrupt("reranker", model_file.name, "is missing")
        self.session = ort_session(model_file, threads if threads > 0 else usable_cores(), "reranker")
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.tokenizer = load_tokenizer(tokenizer_file, max_length, "reranker")

    def score(self, query: str, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        scores = [np.zeros(0, dtype=np.float32)]
        for start in range(0, len(texts), batch_size):
            encodings = self.tokenizer.encode_batch([(query, text) for text in texts[start:start + batch_size]])
            feeds = padded_feeds([e.ids for e in encodings], self.input_names, [e.type_ids for e in encodings])
            scores.append(self.session.run(None, feeds)[0].reshape(-1))
        return np.concatenate(scores).astype(np.float32)


@dataclass
class TorchCrossScorer:
    """A sentence-transformers CrossEncoder in torch (training, and rerankers published before the export)."""

    model: object

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        return predict(self.model, query, texts)


def load_cross_encoder(path: Path | str, max_length: int, device: str, threads: int = 0):
    import torch
    from sentence_transformers import CrossEncoder

    if threads:
        torch.set_num_threads(threads)
    try:
        return CrossEncoder(str(path), num_labels=1, max_length=max_length, device=device)
    except (OSError, ValueError) as exc:
        raise ArtifactCorrupt("reranker", str(path), f"cannot be loaded ({exc.__class__.__name__})") from exc


def predict(model, query: str, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    import torch

    if not texts:
        return np.zeros(0, dtype=np.float32)
    scores = model.predict([(query, text) for text in texts], batch_size=batch_size, show_progress_bar=False,
                           activation_fn=torch.nn.Identity(), convert_to_numpy=True)
    return np.asarray(scores, dtype=np.float32).reshape(-1)
