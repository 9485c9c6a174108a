"""Stage `finetune --reranker`: a cross-encoder learnt from the judgments, and re-scoring a first stage's top N.

The cross-encoder (sentence-transformers' CrossEncoder, initialised from the base MiniLM weights) reads a
query and an item together. It trains pointwise on every judged pair of the train split (label: grade over
the top grade) plus a few unjudged items from the served first stage's top hits (label 0), so it learns the
items that first stage confuses. Its score does not replace the first stage's: the two are interpolated
after min-max scaling within each list (``first + weight * cross``), with the weight and the depth chosen
on dev. Re-ranking by the cross-encoder alone was measured worse on Home Depot dev: it promotes items the
lexical judging pool never saw, which the pooled metric scores as 0 (docs/results.md).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from densesearch.artifacts import open_artifact
from densesearch.config import QueryConfig, RerankConfig
from densesearch.cpu import openmp_on_every_core
from densesearch.encoders import pick_device, resolve_base_model
from densesearch.errors import ArtifactCorrupt, BadInput
from densesearch.manifest import Manifest, fingerprint_path, write_manifest
from densesearch.metrics import graded_query_metrics
from densesearch.paths import Workspace, publish, writes_workspace
from densesearch.prepare import Judgments, load_catalog, load_data_manifest, load_judgments
from densesearch.search import Searcher, min_max

Progress = Callable[..., None] | None


@dataclass(frozen=True)
class Interpolation:
    """How the cross-encoder re-scores: the first stage's top ``depth``, ``first + weight * cross``."""

    depth: int = 30
    weight: float = 1.0

    @property
    def label(self) -> str:
        return f"cross-encoder on the top {self.depth}, weight {self.weight:g}"


@dataclass
class RerankerResult:
    path: Path
    base_model: str
    rows: int
    steps: int
    seconds: float
    rows_per_second: float
    device: str
    interpolation: Interpolation
    dev_first_stage: float
    dev_reranked: float
    dev_queries: int
    grid: list[dict[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def interpolate(first: Sequence[float], cross: Sequence[float], weight: float) -> tuple[list[int], list[float]]:
    """Positions of the re-scored head in their new order, with their interpolated scores (ties: first stage)."""
    combined = [a + weight * b for a, b in zip(min_max(list(first)), min_max([float(c) for c in cross]), strict=True)]
    order = sorted(range(len(combined)), key=lambda n: (-combined[n], n))
    return order, [combined[n] for n in order]


def reranked(items: Sequence[str], first: Sequence[float], cross: Sequence[float],
             interpolation: Interpolation) -> tuple[list[str], list[float]]:
    """A first-stage list with its top ``depth`` re-scored; the tail keeps its order, scored below the head."""
    head = min(interpolation.depth, len(items), len(cross))
    order, scores = interpolate(first[:head], cross[:head], interpolation.weight)
    tail = list(range(head, len(items)))
    floor = min(scores, default=0.0)
    tail_scores = [floor - 1.0 - n for n in range(1, len(tail) + 1)]
    return [items[n] for n in order] + [items[n] for n in tail], scores + tail_scores


def training_rows(judgments: Judgments, first_stage: dict[str, list[str]], text_of: dict[str, str],
                  unjudged: int, seed: int) -> list[tuple[str, str, float]]:
    """(query, item text, label) rows: every judged pair (grade / top grade) and ``unjudged`` first-stage hits
    nobody judged for that query (label 0; never an item whose text equals a judged one's)."""
    rng = random.Random(seed)
    top = max((g for judged in judgments.qrels.values() for g in judged.values()), default=1) or 1
    rows = []
    for query_id, query in zip(judgments.query_ids, judgments.queries, strict=True):
        judged = {item: grade for item, grade in judgments.qrels.get(query_id, {}).items() if item in text_of}
        rows += [(query, text_of[item], min(1.0, max(0.0, grade / top))) for item, grade in sorted(judged.items())]
        judged_texts = {text_of[item] for item in judged}
        pool = [item for item in first_stage.get(query_id, [])
                if item not in judged and item in text_of and text_of[item] not in judged_texts]
        rows += [(query, text_of[item], 0.0) for item in rng.sample(pool, min(unjudged, len(pool)))]
    rng.shuffle(rows)
    return rows


def choose_interpolation(items: list[list[str]], first: list[list[float]], cross: list[np.ndarray],
                         qrels: list[dict[str, int]], min_relevance: int, depths: Sequence[int],
                         weights: Sequence[float]) -> tuple[Interpolation, float, list[dict[str, float]]]:
    """The (depth, weight) with the best mean nDCG@10 (ties: the cheaper, then the lighter), the first stage's
    own nDCG@10 and the whole grid."""
    base = float(graded_query_metrics(items, qrels, min_relevance, ks=(10,))["ndcg@10"].mean())
    grid = []
    for depth in depths:
        for weight in weights:
            choice = Interpolation(depth, weight)
            ranked = [reranked(ids, scores, ce, choice)[0] for ids, scores, ce in zip(items, first, cross, strict=True)]
            ndcg = float(graded_query_metrics(ranked, qrels, min_relevance, ks=(10,))["ndcg@10"].mean())
            grid.append({"depth": depth, "weight": weight, "ndcg@10": ndcg})
    best = max(grid, key=lambda row: (round(row["ndcg@10"], 6), -row["depth"], -row["weight"]), default=None)
    if best is None or best["ndcg@10"] <= base:  # no setting helps: re-scoring leaves the first stage's order
        return Interpolation(min(depths, default=10), 0.0), base, grid
    return Interpolation(int(best["depth"]), float(best["weight"])), base, grid


class CrossScorer:
    """The published cross-encoder, scoring (query, item text) pairs as raw logits."""

    def __init__(self, workspace: Workspace, threads: int = 0) -> None:
        self.artifact = open_artifact(workspace, "reranker")
        extra = self.artifact.manifest.extra
        try:
            self.interpolation = Interpolation(int(extra["depth"]), float(extra["weight"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactCorrupt("reranker", "manifest.json", "does not record its depth and weight") from exc
        self.model = load_cross_encoder(self.artifact.path, int(extra.get("max_length", 64)), "cpu", threads)

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


def first_stage_lists(searcher, queries: Sequence[str], depth: int) -> list[tuple[list[str], list[float]]]:
    """The served first stage's top ``depth`` (item ids, scores) for each query: hybrid, fused over the same
    candidate depth as served, so its scores are the ones `query --mode rerank` interpolates."""
    config = QueryConfig(k=depth, mode="hybrid")
    lists = []
    for query in queries:
        hits = searcher.ask(query, config).hits
        lists.append(([hit.item_id for hit in hits], [hit.score for hit in hits]))
    return lists


def train_cross_encoder(model, rows: list[tuple[str, str, float]], cfg: RerankConfig, device: str,
                        progress: Progress) -> int:
    """Pointwise BCE on soft labels with AdamW and linear warm-up and decay; returns the optimiser steps."""
    import torch
    import torch.nn.functional as functional

    torch.manual_seed(cfg.seed)
    network = model.model
    tokenizer = model.tokenizer
    steps = math.ceil(len(rows) / cfg.batch_size) * cfg.epochs
    optimiser = torch.optim.AdamW(network.parameters(), lr=cfg.lr)
    warm = max(1, int(cfg.warmup_ratio * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
    network.train()
    step = 0
    for epoch in range(cfg.epochs):
        order = rows[:]
        random.Random(cfg.seed + epoch).shuffle(order)
        for start in range(0, len(order), cfg.batch_size):
            chunk = order[start:start + cfg.batch_size]
            features = tokenizer([r[0] for r in chunk], [r[1] for r in chunk], truncation=True,
                                 max_length=cfg.max_length, padding=True, return_tensors="pt").to(device)
            logits = network(**features).logits.reshape(-1)
            loss = functional.binary_cross_entropy_with_logits(
                logits, torch.tensor([r[2] for r in chunk], dtype=logits.dtype, device=device))
            loss.backward()
            optimiser.step()
            schedule.step()
            optimiser.zero_grad(set_to_none=True)
            step += 1
            if progress:
                progress("training the reranker", step, steps, f"loss {loss.item():.4f}")
    network.eval()
    return step


@writes_workspace
def run_train_reranker(cfg: RerankConfig, workspace: Workspace, progress: Progress = None) -> RerankerResult:
    """Train the cross-encoder on the train judgments, choose depth and weight on dev, publish it."""
    started = time.perf_counter()
    data_manifest = load_data_manifest(workspace)
    catalog = load_catalog(workspace)
    text_of = dict(zip(catalog.ids, catalog.texts, strict=True))
    searcher = Searcher(workspace)  # the first stage it learns to correct (MissingArtifact: run `index` first)
    train = load_judgments(workspace, "train")
    dev = load_judgments(workspace, "dev")
    notes: list[str] = []
    if progress:
        progress("searching the train queries", 0, 1)
    mined = {q: ids for q, (ids, _) in zip(train.query_ids, first_stage_lists(
        searcher, train.queries, cfg.unjudged_depth), strict=True)}
    rows = training_rows(train, mined, text_of, cfg.unjudged, cfg.seed)
    if not rows:
        raise BadInput("the training split has no judged pairs", hint="prepare judged data (`prepare --beir`)")
    if len(rows) > cfg.samples:
        rows = random.Random(cfg.seed).sample(rows, cfg.samples)
        notes.append(f"trained on {cfg.samples:,} sampled rows")
    device = pick_device(cfg.device)
    base_path = resolve_base_model(cfg.base_model)
    model = load_cross_encoder(base_path, cfg.max_length, device)
    train_started = time.perf_counter()
    with openmp_on_every_core():  # the Searcher above left OpenMP, which torch shares, at one thread
        steps = train_cross_encoder(model, rows, cfg, device, progress)
    train_seconds = time.perf_counter() - train_started
    chosen = random.Random(cfg.seed).sample(range(len(dev.query_ids)), min(cfg.eval_queries, len(dev.query_ids)))
    chosen.sort()
    depth = max(cfg.depths)
    lists = first_stage_lists(searcher, [dev.queries[i] for i in chosen], depth)
    cross = []
    with openmp_on_every_core():
        for n, (i, (ids, _)) in enumerate(zip(chosen, lists, strict=True)):
            cross.append(predict(model, dev.queries[i], [text_of[item] for item in ids]))
            if progress:
                progress("choosing depth and weight on dev", n + 1, len(chosen))
    qrels = [dev.qrels[dev.query_ids[i]] for i in chosen]
    if chosen:
        interpolation, first_ndcg, grid = choose_interpolation(
            [ids for ids, _ in lists], [scores for _, scores in lists], cross, qrels, dev.min_relevance,
            cfg.depths, cfg.weights)
    else:
        interpolation, first_ndcg, grid = Interpolation(), 0.0, []
        notes.append("no dev queries: depth 30 and weight 1 without a check")
    best = next((row["ndcg@10"] for row in grid if row["depth"] == interpolation.depth
                 and row["weight"] == interpolation.weight), first_ndcg)
    if chosen and not interpolation.weight:
        notes.append("no depth and weight beat the first stage on dev: rerank mode keeps the hybrid order "
                     "(weight 0); train on more judged queries")
    with publish(workspace, "reranker") as tmp:
        model.save(str(tmp))
        (tmp / "README.md").unlink(missing_ok=True)  # a generated model card with no numbers of ours
        base_fingerprint = fingerprint_path(Path(base_path)) if Path(base_path).exists() else base_path
        write_manifest(tmp, Manifest(
            kind="reranker", settings=asdict(cfg) | {"depths": list(cfg.depths), "weights": list(cfg.weights)},
            inputs={"base_model": f"{cfg.base_model} ({base_fingerprint[:12]})",
                    "first_stage": f"index {searcher.manifest.fingerprint[:12]}"},
            upstream={"data": data_manifest.fingerprint},
            counts={"train_rows": len(rows), "steps": steps, "dev_queries": len(chosen)},
            extra={"depth": interpolation.depth, "weight": interpolation.weight, "max_length": cfg.max_length,
                   "device": device, "train_seconds": round(train_seconds, 2), "dev_first_stage": first_ndcg,
                   "dev_reranked": best, "grid": grid, "first_stage_index": searcher.manifest.fingerprint}))
    return RerankerResult(
        path=workspace.artifact("reranker"), base_model=cfg.base_model, rows=len(rows), steps=steps,
        seconds=time.perf_counter() - started, rows_per_second=len(rows) * cfg.epochs / max(train_seconds, 1e-9),
        device=device, interpolation=interpolation, dev_first_stage=first_ndcg, dev_reranked=best,
        dev_queries=len(chosen), grid=grid, notes=notes)
