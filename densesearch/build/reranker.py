"""Stage `finetune --reranker`: a cross-encoder learnt from the judgments, and re-scoring a first stage's top N.

The cross-encoder (sentence-transformers' CrossEncoder, initialised from the base MiniLM weights) reads a query and
an item together. It learns from every judged pair of the train split (label: grade over the top grade) plus a few
unjudged items from the served first stage's top hits (label 0), so it learns the items that first stage confuses.
The default loss is *pointwise*: binary cross-entropy on each pair, on shuffled pairs. The *grouped* loss makes
each train query's items one group and adds to that BCE a listwise cross-entropy (the softmax of the group's logits
against its labels normalised to sum 1); it measured equal on Home Depot dev at 1.25x the training time. The score
does not replace the first stage's: the two are interpolated (``first + weight * cross``), with the form, the
weight and the depth chosen on dev. One form scales both lists to [0, 1] within each list (``min-max``). The other
(``calibrated``) adds ``weight`` times the cross-encoder's probability (the sigmoid of its logit, trained against
grade / top grade) to the hybrid's own fused score, itself a weighted sum of [0, 1]-scaled lists. It keeps what
min-max throws away: how sure each side is on this query, so a list the cross-encoder scores alike is not stretched
to [0, 1]. Re-ranking by the cross-encoder alone was measured worse on Home Depot dev: it promotes items the
lexical judging pool never saw, which the pooled metric scores as 0 (docs/results.md).

Like the bi-encoder, it is served from ONNX, INT8-quantized for this CPU, behind a parity gate: on the dev lists
the depth and weight are chosen from, the top 10 that INT8 serves must overlap the top 10 FP32 ONNX would serve,
and INT8 may lose at most a set dev nDCG@10. (The raw scores' rank correlation is reported, not gated: the tail of
each list, items the cross-encoder scores alike, reorders freely at no cost.) When no INT8 recipe passes, FP32 ONNX
is served and the result says so.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from densesearch.build.export import export_onnx, quantize_int8, recipe_ladder, top_overlap
from densesearch.core.config import QueryConfig, RerankConfig
from densesearch.core.cpu import read_cpu
from densesearch.core.errors import BadInput, DensesearchError
from densesearch.core.manifest import Manifest, model_fingerprint, write_manifest
from densesearch.core.paths import Workspace, publish, writes_workspace
from densesearch.data.readers import Judgments, load_catalog, load_data_manifest, load_judgments
from densesearch.eval.metrics import graded_query_metrics
from densesearch.retrieval.crossencoder import (
    SCORER_DIR,
    Interpolation,
    OnnxCrossScorer,
    load_cross_encoder,
    predict,
    reranked,
)
from densesearch.retrieval.encoders import (
    FP32_FILE,
    pick_device,
    resolve_base_model,
)
from densesearch.retrieval.fusion import Fusion
from densesearch.retrieval.searcher import Searcher

Progress = Callable[..., None] | None






@dataclass
class CrossParity:
    """How closely one exported cross-encoder follows FP32 ONNX on the dev lists, and whether it may serve."""

    precision: str
    top10_overlap: float
    spearman: float
    ndcg_fp32: float
    ndcg: float
    passed: bool
    reasons: list[str] = field(default_factory=list)


@dataclass
class RerankerResult:
    path: Path
    base_model: str
    loss: str
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
    scorer: str = ""
    parity: list[CrossParity] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)








def top_grade(judgments: Judgments) -> int:
    """The highest grade in the judgments (labels are grade / top grade)."""
    return max((g for judged in judgments.qrels.values() for g in judged.values()), default=1) or 1


def grade_label(grade: int, top: int) -> float:
    """A training label: grade / top grade, kept in [0, 1]."""
    return min(1.0, max(0.0, grade / top))


def unjudged_hits(judged: dict[str, int], first_stage: list[str], text_of: dict[str, str], count: int,
                  rng: random.Random) -> list[str]:
    """``count`` of a query's first-stage hits nobody judged for it (never an item whose text equals a judged
    one's: a duplicate listing of a relevant item is no negative)."""
    judged_texts = {text_of[item] for item in judged if item in text_of}
    pool = [item for item in first_stage
            if item not in judged and item in text_of and text_of[item] not in judged_texts]
    return rng.sample(pool, min(count, len(pool)))


def training_rows(judgments: Judgments, first_stage: dict[str, list[str]], text_of: dict[str, str],
                  unjudged: int, seed: int) -> list[tuple[str, str, float]]:
    """(query, item text, label) rows for the pointwise loss: every judged pair (grade / top grade) and
    ``unjudged`` first-stage hits nobody judged for that query (label 0), shuffled."""
    rng = random.Random(seed)
    top = top_grade(judgments)
    rows = []
    for query_id, query in zip(judgments.query_ids, judgments.queries, strict=True):
        judged = judgments.qrels.get(query_id, {})
        items = sorted((item, grade) for item, grade in judged.items() if item in text_of)
        items += [(item, 0) for item in unjudged_hits(judged, first_stage.get(query_id, []), text_of, unjudged, rng)]
        rows += [(query, text_of[item], grade_label(grade, top)) for item, grade in items]
    rng.shuffle(rows)
    return rows


@dataclass(frozen=True)
class QueryGroup:
    """One train query's items for the grouped loss: judged items and unjudged first-stage hits (label 0)."""

    query: str
    texts: list[str]
    labels: list[float]  # grade / top grade


def training_groups(judgments: Judgments, first_stage: dict[str, list[str]], text_of: dict[str, str],
                    unjudged: int, max_judged: int, seed: int) -> list[QueryGroup]:
    """One group per train query with a positive judgment (a softmax needs a target): up to ``max_judged`` of its
    judged items (label grade / top grade) and ``unjudged`` of its `unjudged_hits` (label 0), shuffled."""
    rng = random.Random(seed)
    top = top_grade(judgments)
    groups = []
    for query_id, query in zip(judgments.query_ids, judgments.queries, strict=True):
        judged = {item: grade for item, grade in judgments.qrels.get(query_id, {}).items() if item in text_of}
        if not any(grade > 0 for grade in judged.values()):
            continue
        items = sorted(judged.items())
        if len(items) > max_judged:
            items = sorted(rng.sample(items, max_judged))
        items += [(item, 0) for item in unjudged_hits(judged, first_stage.get(query_id, []), text_of, unjudged, rng)]
        groups.append(QueryGroup(query, [text_of[item] for item, _ in items],
                                 [grade_label(grade, top) for _, grade in items]))
    rng.shuffle(groups)
    return groups


def capped_groups(groups: list[QueryGroup], pairs: int, seed: int) -> list[QueryGroup]:
    """Whole groups, seeded, up to ``pairs`` pairs in all (a group is never cut: its softmax needs every item)."""
    order = groups[:]
    random.Random(seed).shuffle(order)
    kept, total = [], 0
    for group in order:
        if total + len(group.texts) <= pairs:
            kept.append(group)
            total += len(group.texts)
    return kept


@dataclass(frozen=True)
class Batch:
    """One optimiser step: (query, text) pairs and their labels; ``sizes`` splits them into query groups
    (grouped loss) or is empty (pointwise)."""

    queries: list[str]
    texts: list[str]
    labels: list[float]
    sizes: tuple[int, ...] = ()


def pointwise_batches(rows: list[tuple[str, str, float]], batch_size: int, seed: int) -> list[Batch]:
    """Rows shuffled by ``seed`` into batches of ``batch_size`` pairs."""
    order = rows[:]
    random.Random(seed).shuffle(order)
    return [Batch([r[0] for r in chunk], [r[1] for r in chunk], [r[2] for r in chunk])
            for chunk in (order[start:start + batch_size] for start in range(0, len(order), batch_size))]


def grouped_batches(groups: list[QueryGroup], queries_per_step: int, seed: int) -> list[Batch]:
    """Groups shuffled by ``seed``, ``queries_per_step`` whole groups a batch."""
    order = groups[:]
    random.Random(seed).shuffle(order)
    batches = []
    for start in range(0, len(order), queries_per_step):
        chunk = order[start:start + queries_per_step]
        batches.append(Batch([g.query for g in chunk for _ in g.texts], [t for g in chunk for t in g.texts],
                             [label for g in chunk for label in g.labels], tuple(len(g.texts) for g in chunk)))
    return batches


def cross_encoder_loss(logits, batch: Batch):
    """Pointwise: BCE of each logit against its label. Grouped: per query, cross-entropy between the softmax of
    its logits and its labels normalised to sum 1 (a listwise loss: it orders a query's items), plus the same
    BCE (which keeps the sigmoid a probability, as calibrated interpolation needs); the mean over queries."""
    import torch
    import torch.nn.functional as functional

    labels = torch.tensor(batch.labels, dtype=logits.dtype, device=logits.device)
    if not batch.sizes:
        return functional.binary_cross_entropy_with_logits(logits, labels)
    losses = []
    for group_logits, group_labels in zip(torch.split(logits, list(batch.sizes)),
                                          torch.split(labels, list(batch.sizes)), strict=True):
        target = group_labels / group_labels.sum()
        listwise = -(target * functional.log_softmax(group_logits, dim=0)).sum()
        losses.append(listwise + functional.binary_cross_entropy_with_logits(group_logits, group_labels))
    return torch.stack(losses).mean()


def scales_for(fusion: Fusion, requested: Sequence[str]) -> tuple[tuple[str, ...], str | None]:
    """The interpolation forms a first stage allows: calibrated needs a score fusion's [0, 1] scores, so an RRF
    hybrid (rank scores) keeps min-max; with a note when that drops a requested form."""
    if fusion.method == "wsum" or "calibrated" not in requested:
        return tuple(requested), None
    return ("min-max",), "the index fuses by RRF, whose scores are ranks, not [0, 1] scores: min-max interpolation only"


def choose_interpolation(items: list[list[str]], first: list[list[float]], cross: list[np.ndarray],
                         qrels: list[dict[str, int]], min_relevance: int, depths: Sequence[int],
                         weights: Sequence[float], scales: Sequence[str] = ("min-max",)
                         ) -> tuple[Interpolation, float, list[dict]]:
    """The (scale, depth, weight) with the best mean nDCG@10 (ties: the cheaper, then the lighter, then min-max),
    the first stage's own nDCG@10 and the whole grid."""
    base = float(graded_query_metrics(items, qrels, min_relevance, ks=(10,))["ndcg@10"].mean())
    grid = []
    for scale in scales:
        for depth in depths:
            for weight in weights:
                choice = Interpolation(depth, weight, scale)
                ranked = [reranked(ids, scores, ce, choice)[0]
                          for ids, scores, ce in zip(items, first, cross, strict=True)]
                ndcg = float(graded_query_metrics(ranked, qrels, min_relevance, ks=(10,))["ndcg@10"].mean())
                grid.append({"scale": scale, "depth": depth, "weight": weight, "ndcg@10": ndcg})
    best = max(grid, key=lambda row: (round(row["ndcg@10"], 6), -row["depth"], -row["weight"],
                                      row["scale"] == "min-max"), default=None)
    if best is None or best["ndcg@10"] <= base:  # no setting helps: re-scoring leaves the first stage's order
        return Interpolation(min(depths, default=10), 0.0), base, grid
    return Interpolation(int(best["depth"]), float(best["weight"]), str(best["scale"])), base, grid












def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two score lists (1.0 for lists too short or too flat to rank)."""
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 1.0
    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def top10_overlap(reference: list[list[str]], candidate: list[list[str]]) -> float:
    """Mean share of each (non-empty) reference top 10 that the candidate's top 10 also holds."""
    pairs = [(r[:10], c[:10]) for r, c in zip(reference, candidate, strict=True) if r]
    return float(np.mean(top_overlap([r for r, _ in pairs], [c for _, c in pairs]))) if pairs else 1.0


def cross_parity(precision: str, reference: list[np.ndarray], candidate: list[np.ndarray], overlap: float,
                 ndcg_fp32: float, ndcg: float, cfg: RerankConfig) -> CrossParity:
    """Whether the served top 10 with ``candidate`` scores follows FP32's closely enough and costs at most
    ``cfg.max_ndcg_drop`` dev nDCG@10; the raw scores' rank correlation is reported alongside."""
    correlation = float(np.mean([spearman(r, c) for r, c in zip(reference, candidate, strict=True)] or [1.0]))
    reasons = []
    if overlap < cfg.min_top10_overlap:
        reasons.append(f"top-10 overlap {overlap:.3f} < {cfg.min_top10_overlap}")
    if ndcg < ndcg_fp32 - cfg.max_ndcg_drop:
        reasons.append(f"dev nDCG@10 {ndcg:.4f} < FP32 {ndcg_fp32:.4f} - {cfg.max_ndcg_drop}")
    return CrossParity(precision, overlap, correlation, ndcg_fp32, ndcg, passed=not reasons, reasons=reasons)


def first_stage_lists(searcher, queries: Sequence[str], depth: int) -> list[tuple[list[str], list[float]]]:
    """The served first stage's top ``depth`` (item ids, scores) for each query: hybrid, fused over the same
    candidate depth as served, so its scores are the ones `query --mode rerank` interpolates."""
    config = QueryConfig(k=depth, mode="hybrid")
    lists = []
    for query in queries:
        hits = searcher.ask(query, config).hits
        lists.append(([hit.item_id for hit in hits], [hit.score for hit in hits]))
    return lists


def train_cross_encoder(model, epochs: list[list[Batch]], cfg: RerankConfig, device: str, progress: Progress) -> int:
    """AdamW with linear warm-up and decay over each epoch's batches (`cross_encoder_loss`); the optimiser steps."""
    import torch

    torch.manual_seed(cfg.seed)
    network = model.model
    tokenizer = model.tokenizer
    steps = sum(len(batches) for batches in epochs)
    optimiser = torch.optim.AdamW(network.parameters(), lr=cfg.lr)
    warm = max(1, int(cfg.warmup_ratio * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
    network.train()
    step = 0
    for batches in epochs:
        for batch in batches:
            features = tokenizer(batch.queries, batch.texts, truncation=True, max_length=cfg.max_length,
                                 padding=True, return_tensors="pt").to(device)
            loss = cross_encoder_loss(network(**features).logits.reshape(-1), batch)
            loss.backward()
            optimiser.step()
            schedule.step()
            optimiser.zero_grad(set_to_none=True)
            step += 1
            if progress:
                progress("training the reranker", step, steps, f"loss {loss.item():.4f}")
    network.eval()
    return step


def training_batches(cfg: RerankConfig, train: Judgments, mined: dict[str, list[str]], text_of: dict[str, str],
                     notes: list[str]) -> tuple[list[list[Batch]], int]:
    """Each epoch's batches for ``cfg.loss`` (a resolved config) and the training pairs in one epoch."""
    if cfg.loss == "grouped":
        groups = training_groups(train, mined, text_of, cfg.unjudged, cfg.max_judged, cfg.seed)
        pairs = sum(len(g.texts) for g in groups)
        if pairs > cfg.samples:
            groups = capped_groups(groups, cfg.samples, cfg.seed)
            pairs = sum(len(g.texts) for g in groups)
            notes.append(f"trained on {len(groups):,} sampled queries ({pairs:,} pairs)")
        epochs = [grouped_batches(groups, cfg.batch_size, cfg.seed + epoch) for epoch in range(cfg.epochs)]
        return epochs, pairs
    rows = training_rows(train, mined, text_of, cfg.unjudged, cfg.seed)
    if len(rows) > cfg.samples:
        rows = random.Random(cfg.seed).sample(rows, cfg.samples)
        notes.append(f"trained on {cfg.samples:,} sampled rows")
    return [pointwise_batches(rows, cfg.batch_size, cfg.seed + epoch) for epoch in range(cfg.epochs)], len(rows)


@writes_workspace
def run_train_reranker(cfg: RerankConfig, workspace: Workspace, progress: Progress = None) -> RerankerResult:
    """Train the cross-encoder on the train judgments, choose the form, depth and weight on dev, publish it."""
    started = time.perf_counter()
    data_manifest = load_data_manifest(workspace)
    catalog = load_catalog(workspace)
    text_of = dict(zip(catalog.ids, catalog.texts, strict=True))
    searcher = Searcher(workspace)  # the first stage it learns to correct (MissingArtifact: run `index` first)
    train = load_judgments(workspace, "train")
    dev = load_judgments(workspace, "dev")
    notes: list[str] = []
    scales, note = scales_for(searcher.fusion, cfg.scales)
    cfg = replace(cfg.resolved(), scales=scales)
    notes += [note] if note else []
    if progress:
        progress("searching the train queries", 0, 1)
    train_lists = first_stage_lists(searcher, train.queries, cfg.unjudged_depth)
    mined = {q: ids for q, (ids, _) in zip(train.query_ids, train_lists, strict=True)}
    epochs, rows = training_batches(cfg, train, mined, text_of, notes)
    if not rows:
        raise BadInput("the training split has no judged pairs", hint="prepare judged data (`prepare --beir`)")
    device = pick_device(cfg.device)
    base_path = resolve_base_model(cfg.base_model)
    model = load_cross_encoder(base_path, cfg.max_length, device)
    train_started = time.perf_counter()
    steps = train_cross_encoder(model, epochs, cfg, device, progress)
    train_seconds = time.perf_counter() - train_started
    chosen = random.Random(cfg.seed).sample(range(len(dev.query_ids)), min(cfg.eval_queries, len(dev.query_ids)))
    chosen.sort()
    lists = first_stage_lists(searcher, [dev.queries[i] for i in chosen], max(cfg.depths))
    dev_lists = DevLists([dev.queries[i] for i in chosen], lists, [dev.qrels[dev.query_ids[i]] for i in chosen],
                         dev.min_relevance, text_of)
    if not chosen:
        notes.append("no dev queries: depth 30 and weight 1 without a check; INT8 gated on train queries only")
        dev_lists = DevLists(train.queries[: cfg.eval_queries], train_lists[: cfg.eval_queries], [], 1, text_of)
    with publish(workspace, "reranker") as tmp:
        model.save(str(tmp))
        (tmp / "README.md").unlink(missing_ok=True)  # a generated model card with no numbers of ours
        served = export_and_gate(model, tmp, dev_lists, cfg, progress)
        notes += served.notes
        choice = served.choice
        if chosen and not choice.interpolation.weight:
            notes.append("no form, depth and weight beat the first stage on dev: rerank mode keeps the hybrid order "
                         "(weight 0); train on more judged queries")
        base_fingerprint = model_fingerprint(base_path)
        write_manifest(tmp, Manifest(
            kind="reranker", settings=asdict(cfg) | {"depths": list(cfg.depths), "weights": list(cfg.weights),
                                                     "scales": list(cfg.scales)},
            inputs={"base_model": f"{cfg.base_model} ({base_fingerprint[:12]})",
                    "first_stage": f"index {searcher.manifest.fingerprint[:12]}"},
            upstream={"data": data_manifest.fingerprint},
            counts={"train_rows": rows, "steps": steps, "dev_queries": len(chosen)},
            extra={"depth": choice.interpolation.depth, "weight": choice.interpolation.weight,
                   "scale": choice.interpolation.scale,
                   "max_length": cfg.max_length,
                   "scorer_file": served.file, "scorer": served.label,
                   "parity": [asdict(report) for report in served.parity],
                   "device": device, "train_seconds": round(train_seconds, 2), "dev_first_stage": choice.first_stage,
                   "dev_reranked": choice.ndcg, "grid": choice.grid,
                   "first_stage_index": searcher.manifest.fingerprint}))
    return RerankerResult(
        path=workspace.artifact("reranker"), base_model=cfg.base_model, loss=cfg.loss, rows=rows, steps=steps,
        seconds=time.perf_counter() - started, rows_per_second=rows * cfg.epochs / max(train_seconds, 1e-9),
        device=device, interpolation=choice.interpolation, dev_first_stage=choice.first_stage,
        dev_reranked=choice.ndcg, dev_queries=len(chosen), grid=choice.grid, scorer=served.label,
        parity=served.parity, notes=notes)


@dataclass
class DevLists:
    """The first stage's lists that choose the form, depth and weight and gate the export (dev, else train queries)."""

    queries: list[str]
    lists: list[tuple[list[str], list[float]]]
    qrels: list[dict[str, int]]
    min_relevance: int
    text_of: dict[str, str]

    def score(self, scorer, progress: Progress, label: str) -> list[np.ndarray]:
        scores = []
        for n, (query, (ids, _)) in enumerate(zip(self.queries, self.lists, strict=True)):
            scores.append(scorer.score(query, [self.text_of[item] for item in ids]))
            if progress:
                progress(label, n + 1, len(self.queries))
        return scores

    def served(self, cross: list[np.ndarray], interpolation: Interpolation) -> list[list[str]]:
        """Each list as `query --mode rerank` would serve it with these scores."""
        return [reranked(ids, first, scores, interpolation)[0]
                for (ids, first), scores in zip(self.lists, cross, strict=True)]

    def choose(self, cross: list[np.ndarray], cfg: RerankConfig) -> Choice:
        """The best form, depth and weight on these lists (without judgments: the defaults, unchecked)."""
        if not self.qrels:
            return Choice(Interpolation(), 0.0, [], 0.0)
        interpolation, first, grid = choose_interpolation(
            [ids for ids, _ in self.lists], [scores for _, scores in self.lists], cross, self.qrels,
            self.min_relevance, cfg.depths, cfg.weights, cfg.scales)
        best = next((row["ndcg@10"] for row in grid if row["depth"] == interpolation.depth
                     and row["weight"] == interpolation.weight and row["scale"] == interpolation.scale), first)
        return Choice(interpolation, first, grid, best)


@dataclass
class Choice:
    """A form, depth and weight chosen on the dev lists: the first stage's nDCG@10, the grid, the chosen nDCG@10."""

    interpolation: Interpolation
    first_stage: float
    grid: list[dict[str, float]]
    ndcg: float


@dataclass
class ServedScorer:
    """The exported model `query --mode rerank` runs, its choice of form, depth and weight, and the gate's reports."""

    file: str
    label: str
    choice: Choice
    parity: list[CrossParity] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


EXPORT_MAX_LOGIT_ERROR = 1e-2  # FP32 ONNX must reproduce the torch logits


def export_and_gate(model, directory: Path, dev_lists: DevLists, cfg: RerankConfig,
                    progress: Progress) -> ServedScorer:
    """Export the trained cross-encoder in ``directory`` to ONNX, quantize it for this CPU and keep the first INT8
    recipe that passes the parity gate (else FP32 ONNX); form, depth and weight are chosen on the served scores."""
    onnx_dir = directory / SCORER_DIR
    onnx_dir.mkdir()
    if progress:
        progress("exporting the reranker to ONNX", 0, 1)
    export_onnx(str(directory), onnx_dir, cross_encoder=True)
    tokenizer = directory / "tokenizer.json"
    fp32 = OnnxCrossScorer(onnx_dir / FP32_FILE, tokenizer, cfg.max_length)
    check_export(model, fp32, dev_lists)
    reference = dev_lists.score(fp32, progress, "scoring dev lists, FP32 ONNX")
    reference_choice = dev_lists.choose(reference, cfg)
    served = ServedScorer(f"{SCORER_DIR}/{FP32_FILE}", "onnx fp32", reference_choice)
    if not cfg.int8:
        return served
    reference_lists = dev_lists.served(reference, reference_choice.interpolation)
    for recipe in recipe_ladder(read_cpu()):
        name = quantize_int8(onnx_dir, recipe, cfg.per_channel)
        scores = dev_lists.score(OnnxCrossScorer(onnx_dir / name, tokenizer, cfg.max_length), progress,
                                 f"scoring dev lists, INT8 {recipe.name}")
        choice = dev_lists.choose(scores, cfg)
        overlap = top10_overlap(reference_lists, dev_lists.served(scores, choice.interpolation))
        report = cross_parity(f"int8 {recipe.name}", reference, scores, overlap, reference_choice.ndcg, choice.ndcg,
                              cfg)
        served.parity.append(report)
        if report.passed:
            (onnx_dir / FP32_FILE).unlink()  # the INT8 model serves; the torch weights stay beside it
            return ServedScorer(f"{SCORER_DIR}/{name}", f"onnx int8 ({recipe.name})", choice, served.parity)
        (onnx_dir / name).unlink()
    served.notes.append("no INT8 recipe passed the parity gate ("
                        + "; ".join(f"{r.precision}: {', '.join(r.reasons)}" for r in served.parity)
                        + "): serving FP32 ONNX")
    return served


def check_export(model, exported: OnnxCrossScorer, dev_lists: DevLists, probes: int = 8) -> None:
    """The FP32 ONNX model must give torch's logits on the first few lists."""
    for query, (ids, _) in list(zip(dev_lists.queries, dev_lists.lists, strict=True))[:probes]:
        texts = [dev_lists.text_of[item] for item in ids]
        error = float(np.max(np.abs(predict(model, query, texts) - exported.score(query, texts)), initial=0.0))
        if error > EXPORT_MAX_LOGIT_ERROR:
            raise DensesearchError(f"the ONNX export of the reranker differs from torch (logit error {error:.3g}); "
                                   "nothing was published", hint="report this with `pip freeze`")
