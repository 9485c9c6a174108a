"""`finetune --teacher`: a larger model's similarities taught to the served bi-encoder.

The teacher (any sentence-transformers model, e.g. EmbeddingGemma with its query/document prompts) encodes the
training queries and items once; its vectors are cached per teacher, precision and text, so a second run (another
loss, another mix) costs no teacher time, and an interrupted encoding resumes where it stopped. The student then
trains on MNRL plus a distillation term over the same batch: the KL divergence between the teacher's and the
student's softmax over the in-batch items (``kl``), or the MSE between their positive-minus-negative score
margins (``margin-mse``, Hofstätter et al. 2020).

``--teacher reranker`` takes the workspace's published cross-encoder instead: it scores each training row's
(query, positive) and (query, negative) pairs, cached per pair the same way, and the student learns its margins
(margin-MSE only: a cross-encoder has no vectors to compare across the batch).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from densesearch.core.config import DistillLoss, TeacherPrecision
from densesearch.core.cpu import native_bf16
from densesearch.core.errors import BadInput
from densesearch.core.manifest import model_fingerprint
from densesearch.retrieval.encoders import load_torch_encoder, resolve_base_model

TEACHER_SHARD = 2048          # texts per cache file: an interrupted encoding loses at most this many
MNRL_SCALE = 20.0             # sentence-transformers' MNRL: cosine x 20, i.e. temperature 0.05
RERANKER_TEACHER = "reranker"  # `--teacher reranker`: the workspace's published cross-encoder


def distill_kind(requested: DistillLoss, cross_encoder: bool) -> DistillLoss:
    """auto: KL over the batch for a bi-encoder teacher, margin-MSE for a cross-encoder (it scores a row's own
    pairs only); KL from a cross-encoder is refused in one line."""
    if requested == DistillLoss.AUTO:
        return DistillLoss.MARGIN_MSE if cross_encoder else DistillLoss.KL
    if cross_encoder and requested == DistillLoss.KL:
        raise BadInput("a cross-encoder teacher scores each row's own pairs, not the whole batch",
                       hint="use --distill-loss margin-mse (or auto)")
    return requested


def teacher_precision(requested: TeacherPrecision, device: str, bf16_native: bool) -> str:
    """auto: bf16 where the hardware computes it natively (1.8x faster on 2 AVX-512-BF16 cores, cosine >= 0.998
    to fp32 on Home Depot titles), else fp32."""
    if requested != TeacherPrecision.AUTO:
        return str(requested)
    return "bf16" if device.startswith("cuda") or bf16_native else "fp32"


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Teacher:
    """A teacher model: where it is, what it is (fingerprint) and the precision it encodes in."""

    source: str
    path: str
    fingerprint: str
    precision: str

    @classmethod
    def resolve(cls, name: str, device: str, precision: TeacherPrecision = TeacherPrecision.AUTO) -> Teacher:
        path = resolve_base_model(name)
        return cls(source=name, path=path, fingerprint=model_fingerprint(path),
                   precision=teacher_precision(precision, device, native_bf16()))

    @property
    def label(self) -> str:
        return f"{self.source} ({self.fingerprint[:12]}, {self.precision})"

    def encoder(self, device: str, max_seq_length: int):
        encoder = load_torch_encoder(self.path, self.fingerprint, max_seq_length=max_seq_length, device=device)
        if self.precision == "bf16":
            import torch

            encoder.model.to(torch.bfloat16)
        return encoder


class TeacherCache:
    """Teacher vectors by role and text, in shard files written atomically (a cache: an unreadable shard is
    encoded again)."""

    def __init__(self, root: Path, teacher: Teacher, max_seq_length: int) -> None:
        name = hashlib.sha1(f"{teacher.fingerprint}|{teacher.precision}|{max_seq_length}".encode()).hexdigest()
        self.directory = root / name[:16]

    def _load(self, role: str) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for shard in sorted(self.directory.glob(f"{role}-*.npz")):
            try:
                with np.load(shard) as data:
                    found.update(zip(data["keys"].tolist(), data["vectors"], strict=True))
            except (OSError, ValueError, KeyError):
                continue
        return found

    def _write(self, role: str, keys: list[str], vectors: np.ndarray) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        number = len(list(self.directory.glob(f"{role}-*.npz")))
        final = self.directory / f"{role}-{number:05d}-{os.getpid()}.npz"
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            np.savez(handle, keys=np.array(keys), vectors=vectors.astype(np.float32))
        os.replace(tmp, final)

    def vectors(self, texts: Sequence[str], role: str, encode: Callable[[list[str]], np.ndarray],
                progress=None) -> np.ndarray:
        """One teacher vector per text (float32, normalised), encoding only the texts not cached yet."""
        cached = self._load(role)
        keys = [text_key(text) for text in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in cached))
        text_of = dict(zip(keys, texts, strict=True))
        for start in range(0, len(missing), TEACHER_SHARD):
            chunk = missing[start:start + TEACHER_SHARD]
            vectors = encode([text_of[k] for k in chunk])
            self._write(role, chunk, vectors)
            cached.update(zip(chunk, vectors, strict=True))
            if progress:
                progress(f"teacher: {role} texts", start + len(chunk), len(missing))
        return np.stack([cached[k] for k in keys]) if keys else np.zeros((0, 0), dtype=np.float32)


@dataclass
class TeacherVectors:
    """The teacher's vectors for the training rows: queries and items, and each row's indices into them."""

    queries: np.ndarray
    items: np.ndarray
    rows: np.ndarray          # (rows, 1 + items per row): query index, then item indices


def teacher_vectors(teacher: Teacher, cache_root: Path, queries: list[str], item_texts: list[list[str]],
                    device: str, max_seq_length: int, progress=None) -> TeacherVectors:
    """Encode (or read from the cache) every training query and item with the teacher's prompts."""
    cache = TeacherCache(cache_root, teacher, max_seq_length)
    unique_queries = list(dict.fromkeys(queries))
    unique_items = list(dict.fromkeys(text for row in item_texts for text in row))
    encoder = None

    def encode(role: str) -> Callable[[list[str]], np.ndarray]:
        def run(texts: list[str]) -> np.ndarray:
            nonlocal encoder
            encoder = encoder or teacher.encoder(device, max_seq_length)
            return encoder.encode_queries(texts, 64) if role == "query" else encoder.encode(texts, 64)
        return run

    query_vectors = cache.vectors(unique_queries, "query", encode("query"), progress)
    item_vectors = cache.vectors(unique_items, "document", encode("document"), progress)
    query_row = {text: n for n, text in enumerate(unique_queries)}
    item_row = {text: n for n, text in enumerate(unique_items)}
    rows = np.array([[query_row[q], *(item_row[t] for t in texts)] for q, texts in zip(queries, item_texts,
                                                                                       strict=True)])
    return TeacherVectors(query_vectors, item_vectors, rows)


@dataclass
class TeacherScores:
    """A cross-encoder teacher's raw score (logit) of each training row's items: (rows, 1 + negatives),
    the positive first."""

    pairs: np.ndarray


def pair_text(query: str, text: str) -> str:
    """One (query, item) pair as the cache's text key."""
    return json.dumps([query, text], ensure_ascii=False)


def reranker_scores(workspace, queries: list[str], item_texts: list[list[str]],
                    progress=None) -> tuple[TeacherScores, str]:
    """The published cross-encoder's score of every (query, item) pair of the training rows (cached per pair),
    and the teacher's label for the model's manifest."""
    from densesearch.retrieval.crossencoder import CrossScorer

    scorer = CrossScorer(workspace)
    teacher = Teacher(source=RERANKER_TEACHER, path=str(scorer.artifact.path),
                      fingerprint=scorer.artifact.manifest.fingerprint, precision=scorer.label)
    cache = TeacherCache(workspace.teacher_cache, teacher, scorer.artifact.info.max_length)

    def score(pairs: list[str]) -> np.ndarray:
        by_query: dict[str, list[int]] = {}
        decoded = [json.loads(pair) for pair in pairs]
        for n, (query, _) in enumerate(decoded):
            by_query.setdefault(query, []).append(n)
        scores = np.zeros((len(pairs), 1), dtype=np.float32)
        for query, rows in by_query.items():
            scores[rows, 0] = scorer.score(query, [decoded[n][1] for n in rows])
        return scores

    texts = [pair_text(query, text) for query, row in zip(queries, item_texts, strict=True) for text in row]
    values = cache.vectors(texts, "pair", score, progress)
    return TeacherScores(values.reshape(len(queries), -1)), teacher.label


def distillation_loss(model, kind: DistillLoss, weight: float, temperature: float,
                      teacher: TeacherVectors | TeacherScores):
    """MNRL plus ``weight`` x a distillation term; the dataset's ``label`` column holds each row's indices into
    the teacher's vectors, or (a cross-encoder teacher) the row's number in its scores."""
    import torch
    from torch import nn
    from torch.nn import functional

    class MnrlWithTeacher(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            if isinstance(teacher, TeacherScores):
                self.register_buffer("teacher_pairs", torch.from_numpy(teacher.pairs), persistent=False)
            else:
                self.register_buffer("teacher_queries", torch.from_numpy(teacher.queries), persistent=False)
                self.register_buffer("teacher_items", torch.from_numpy(teacher.items), persistent=False)

        def forward(self, sentence_features, labels):
            embeddings = [functional.normalize(self.model(f)["sentence_embedding"], dim=-1)
                          for f in sentence_features]
            queries, items = embeddings[0], torch.cat(embeddings[1:])
            scores = queries @ items.T
            batch = len(queries)
            loss = functional.cross_entropy(scores * MNRL_SCALE, torch.arange(batch, device=scores.device))
            rows = labels.long()
            if isinstance(teacher, TeacherScores):
                return loss + weight * self._margins(scores, self.teacher_pairs[rows.reshape(-1)], batch)
            t_queries = self.teacher_queries[rows[:, 0]]
            t_items = self.teacher_items[rows[:, 1:].T.reshape(-1)]  # column-major: positives, then negatives
            t_scores = t_queries @ t_items.T
            return loss + weight * self._term(scores, t_scores.to(scores.dtype), batch)

        def _margins(self, scores, t_pairs, batch):
            """The student's cosine margin against the cross-encoder's logit margin (the reranker's logits, trained
            on grade / 6, span about -1 to 1 on Home Depot: the cosine's own range, so neither is rescaled)."""
            if scores.shape[1] < 2 * batch or t_pairs.shape[1] < 2:
                raise ValueError("margin-mse needs a negative per row")
            idx = torch.arange(batch, device=scores.device)
            student = scores[idx, idx] - scores[idx, idx + batch]
            return functional.mse_loss(student, (t_pairs[:, 0] - t_pairs[:, 1]).to(scores.dtype))

        def _term(self, scores, t_scores, batch):
            if kind == DistillLoss.MARGIN_MSE:
                if scores.shape[1] < 2 * batch:
                    raise ValueError("margin-mse needs a negative per row")
                idx = torch.arange(batch, device=scores.device)
                student = scores[idx, idx] - scores[idx, idx + batch]
                target = t_scores[idx, idx] - t_scores[idx, idx + batch]
                return functional.mse_loss(student, target)
            return functional.kl_div(functional.log_softmax(scores / temperature, dim=1),
                                     functional.softmax(t_scores / temperature, dim=1), reduction="batchmean")

    return MnrlWithTeacher()
