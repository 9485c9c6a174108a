"""`finetune`: a shared-weight (two-tower) sentence-transformers bi-encoder trained with MNRL."""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from densesearch.build.batching import LengthGroupedBatchSampler
from densesearch.build.distill import (
    RERANKER_TEACHER,
    Teacher,
    TeacherScores,
    TeacherVectors,
    distill_kind,
    distillation_loss,
    reranker_scores,
    teacher_vectors,
)
from densesearch.build.negatives import Example, NegativePlan, judged_examples, mine_bm25
from densesearch.core.config import DistillLoss, TrainConfig
from densesearch.core.errors import BadInput
from densesearch.core.manifest import Manifest, model_fingerprint, write_manifest
from densesearch.core.paths import Workspace, publish, writes_workspace
from densesearch.data.readers import (
    Catalog,
    Judgments,
    Pair,
    load_catalog,
    load_data_manifest,
    load_judgments,
    load_pairs,
)
from densesearch.eval.evaluation import eval_catalog, evaluate_judged
from densesearch.retrieval.encoders import TorchEncoder, model_prompts, pick_device, resolve_base_model

MODEL_POSITION_LIMIT_FALLBACK = 512
MAX_SEQ_LENGTH = 500
# Defaults measured on Home Depot dev (docs/results.md): judged data gained most from a large batch (more
# in-batch negatives) with a higher learning rate; review pairs keep the settings of the reference system.
JUDGED_BATCH, JUDGED_LR = 256, 1e-4
PAIRS_BATCH, PAIRS_LR = 64, 5e-5


@dataclass
class TrainResult:
    """What `finetune` trained and how it scores on the dev split."""

    path: Path
    manifest: Manifest
    base_model: str
    pairs_available: int
    pairs_used: int
    steps: int
    seconds: float
    pairs_per_second: float
    device: str
    max_seq_length: int
    dev_base: dict[str, float]
    dev_finetuned: dict[str, float]
    notes: list[str]
    recipe: dict[str, object] = field(default_factory=dict)
    dev_epochs: list[dict[str, float]] = field(default_factory=list)


def sample_pairs(pairs: list[Pair], samples: int, seed: int) -> list[Pair]:
    """Up to ``samples`` pairs, seeded."""
    if len(pairs) <= samples:
        return list(pairs)
    return random.Random(seed).sample(pairs, samples)


def capped_seq_length(model, requested: int) -> tuple[int, str | None]:
    """The requested max sequence length, capped at what the model's position embeddings allow."""
    config = model[0].auto_model.config
    limit = getattr(config, "max_position_embeddings", MODEL_POSITION_LIMIT_FALLBACK)
    if requested > limit:
        return limit, f"--max-seq-length {requested} capped at the model's limit {limit}"
    return requested, None


def mine_bm25_negatives(pairs: list[Pair], catalog: Catalog, seed: int) -> list[str]:
    """One hard negative item id per pair: the best BM25 hit outside the positive's variant group."""
    from densesearch.retrieval.sparse import Bm25Index

    bm25 = Bm25Index.build(catalog.texts, backend="bm25s")
    hits = bm25.search([p.query for p in pairs], k=20)
    rng = random.Random(seed)
    negatives = []
    for pair, (ids, _) in zip(pairs, hits, strict=True):
        candidates = [i for i in ids if catalog.groups[i] != pair.group_id]
        negatives.append(catalog.ids[candidates[0] if candidates else rng.randrange(len(catalog))])
    return negatives


def negative_kind(requested: str, graded: bool) -> str:
    """``auto``: one guarded BM25 negative per row for judged data (+0.007 dev nDCG@10 over in-batch negatives
    alone at batch 256 on Home Depot, docs/results.md), none for review or listing pairs."""
    if requested != "auto":
        return requested
    return "bm25" if graded else "none"


def default_positive_grade(requested: int | None, judgments: Judgments) -> int:
    """Positives from one grade under the relevance bar (measured best on Home Depot dev), never below 1."""
    if requested is not None:
        return requested
    return max(1, judgments.min_relevance - 1) if judgments.graded else 1


def training_examples(cfg: TrainConfig, workspace: Workspace, catalog: Catalog,
                      notes: list[str]) -> tuple[list[Example], dict[str, object]]:
    """The training rows and how they were made: judged data by grade with guarded negatives, else pairs."""
    judgments = load_judgments(workspace, "train")
    kind = negative_kind(cfg.hard_negatives, judgments.graded)
    if judgments.graded:
        positive_grade = default_positive_grade(cfg.positive_grade, judgments)
        plan = NegativePlan(kind=kind, low_grade=cfg.low_grade, ranks=(cfg.bm25_from_rank, cfg.bm25_to_rank))
        mined = {}
        if kind != "none":  # judged falls back to mined negatives where a query has no low grade
            from densesearch.retrieval.sparse import Bm25Index

            bm25 = Bm25Index.build(catalog.texts, backend="bm25s")
            mined = mine_bm25(bm25, judgments.query_ids, judgments.queries, catalog.ids, plan.ranks)
        examples = judged_examples(judgments.query_ids, judgments.queries, judgments.qrels, positive_grade, plan,
                                   mined, dict(zip(catalog.ids, catalog.texts, strict=True)), cfg.seed)
        recipe = {"source": "judgments", "positive_grade": positive_grade, "negatives": kind,
                  "low_grade": cfg.low_grade, "bm25_ranks": list(plan.ranks), "queries": len(judgments.query_ids)}
    else:
        all_pairs = load_pairs(workspace, "train")
        pairs = sample_pairs(all_pairs, cfg.samples, cfg.seed)  # before mining: mining costs a search per pair
        negatives = mine_bm25_negatives(pairs, catalog, cfg.seed) if kind != "none" else [None] * len(pairs)
        examples = [Example(p.query, p.item_id, n) for p, n in zip(pairs, negatives, strict=True)]
        recipe = {"source": "pairs", "negatives": "bm25" if kind != "none" else "none",
                  "pairs_before_sampling": len(all_pairs)}
    if not examples:
        raise BadInput("the training split has no usable pairs", hint="prepare more data (`densesearch prepare`)")
    available = int(recipe.get("pairs_before_sampling", len(examples)))
    if len(examples) > cfg.samples:
        examples = random.Random(cfg.seed).sample(examples, cfg.samples)
    else:
        if available < cfg.samples:
            notes.append(f"asked for {cfg.samples:,} samples; only {available:,} training pairs exist, using all")
        random.Random(cfg.seed).shuffle(examples)
    return examples, {**recipe, "available": available}


def data_seq_length(tokenizer, texts: list[str], cap: int, seed: int, sample: int = 2000) -> int:
    """Tokens that cover 99% of the texts (items and queries), rounded up to 16, within [32, cap]."""
    chosen = random.Random(seed).sample(texts, min(sample, len(texts)))
    lengths = sorted(len(ids) for ids in tokenizer(chosen, add_special_tokens=True)["input_ids"])
    p99 = lengths[min(len(lengths) - 1, int(0.99 * len(lengths)))] if lengths else cap
    return max(32, min(cap, -(-p99 // 16) * 16))


def text_columns(examples: list[Example], catalog: Catalog) -> dict[str, list[str]]:
    """anchor / positive (/ negative) texts; the negative column only when every row has one."""
    text_of = dict(zip(catalog.ids, catalog.texts, strict=True))
    columns = {"anchor": [e.query for e in examples], "positive": [text_of[e.positive] for e in examples]}
    if all(e.negative is not None for e in examples):
        columns["negative"] = [text_of[e.negative] for e in examples]
    return columns


def build_dataset(columns: dict[str, list]):
    from datasets import Dataset

    return Dataset.from_dict(columns)


def with_teacher(cfg: TrainConfig, workspace: Workspace, columns: dict[str, list[str]], device: str,
                 progress) -> tuple[dict[str, list], TeacherVectors | TeacherScores | None, dict[str, object]]:
    """The training columns plus, with ``--teacher``, each row's indices into the teacher's vectors, or its row
    number in the cross-encoder's scores (``label``)."""
    if not cfg.teacher:
        return columns, None, {}
    started = time.perf_counter()
    cross = cfg.teacher == RERANKER_TEACHER
    kind = distill_kind(cfg.distill_loss, cross)
    item_texts = [list(row) for row in zip(*(columns[c] for c in columns if c != "anchor"), strict=True)]
    if kind == DistillLoss.MARGIN_MSE and item_texts and len(item_texts[0]) < 2:
        raise BadInput("margin-mse distillation needs a hard negative per training row",
                       hint="drop --hard-negatives none")
    if cross:
        scores, label = reranker_scores(workspace, columns["anchor"], item_texts, progress)
        labels, teacher, shape = [[float(n)] for n in range(len(item_texts))], scores, {}
    else:
        resolved = Teacher.resolve(cfg.teacher, device, cfg.teacher_precision)
        teacher = teacher_vectors(resolved, workspace.teacher_cache, columns["anchor"], item_texts, device,
                                  cfg.teacher_max_seq_length, progress)
        labels, label = teacher.rows.astype(np.float32).tolist(), resolved.label
        shape = {"teacher_dim": int(teacher.queries.shape[1])}  # a cross-encoder has no vectors
    info = {"teacher": label, "distill_loss": str(kind), "teacher_seconds": round(time.perf_counter() - started, 1),
            **shape}
    return {**columns, "label": labels}, teacher, info


def build_loss(model, cfg: TrainConfig, teacher: TeacherVectors | TeacherScores | None = None):
    from sentence_transformers import losses

    if teacher is not None:
        if cfg.loss != "mnrl":
            raise BadInput("--teacher trains with MNRL plus the distillation term", hint="drop --loss")
        kind = distill_kind(cfg.distill_loss, isinstance(teacher, TeacherScores))
        return distillation_loss(model, kind, cfg.distill_weight, cfg.distill_temperature, teacher)
    if cfg.loss == "mnrl":
        return losses.MultipleNegativesRankingLoss(model)
    if cfg.loss == "cached-mnrl":
        return losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=cfg.mini_batch_size)
    raise BadInput(f"unknown loss {cfg.loss!r}", hint="use mnrl or cached-mnrl")


def _progress_callback(progress):
    from transformers import TrainerCallback

    class ReportProgress(TrainerCallback):
        """Forward step, total and the latest loss to the UI's progress callback."""

        def __init__(self) -> None:
            self.loss = ""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.loss = f"loss {logs['loss']:.4f}"

        def on_step_end(self, args, state, control, **kwargs):
            if progress:
                progress("fine-tuning", state.global_step, state.max_steps, self.loss)

    return ReportProgress()


def _epoch_evaluation(model, evaluate, progress):
    """Evaluate on dev after every epoch and keep a copy of the best weights (graded nDCG@10)."""
    from transformers import TrainerCallback

    class EpochEvaluation(TrainerCallback):
        def __init__(self) -> None:
            self.history: list[dict[str, float]] = []
            self.best: dict[str, float] | None = None  # the best epoch's entry of ``history``
            self.best_state: dict | None = None

        def on_epoch_end(self, args, state, control, **kwargs):
            if progress:
                progress("evaluating on dev", 0, 1)
            entry = {"epoch": int(round(state.epoch or len(self.history) + 1)), **evaluate(model)}
            self.history.append(entry)
            if self.best is None or entry.get("ndcg@10", 0.0) > self.best.get("ndcg@10", 0.0):
                self.best = entry
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    return EpochEvaluation()


def model_card_widget(dataset) -> list[dict[str, object]]:
    """The saved model card's example: the first training query against its item and another one."""
    rows = dataset[:2]
    return [{"source_sentence": rows["anchor"][0], "sentences": rows["positive"][:2]}]


def last_checkpoint(directory: Path) -> str | None:
    checkpoints = sorted(directory.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(checkpoints[-1]) if checkpoints else None


def load_training_model(cfg: TrainConfig, texts: list[str], notes: list[str]):
    """The base model on its device, its max sequence length set (from the data unless given)."""
    from sentence_transformers import SentenceTransformer

    device = pick_device(cfg.device)
    model = SentenceTransformer(resolve_base_model(cfg.base_model), device=device)
    requested = cfg.max_seq_length
    if requested is None:
        requested = data_seq_length(model.tokenizer, texts, MAX_SEQ_LENGTH, cfg.seed)
        notes.append(f"max sequence length {requested} tokens, from the data (99% of texts fit)")
    max_seq_length, cap_note = capped_seq_length(model, requested)
    model.max_seq_length = max_seq_length
    if cap_note:
        notes.append(cap_note)
    return model, device


@dataclass
class DevCheck:
    """The dev queries and items `finetune` scores after every epoch (every judged item plus a sample)."""

    catalog: Catalog
    dev: Judgments
    query_rows: list[int]
    item_rows: list[int]

    @classmethod
    def of(cls, cfg: TrainConfig, catalog: Catalog, dev: Judgments, notes: list[str]) -> DevCheck:
        query_rows = sorted(random.Random(cfg.seed).sample(range(len(dev.query_ids)),
                                                           min(cfg.eval_queries, len(dev.query_ids))))
        qrels = {dev.query_ids[i]: dev.qrels[dev.query_ids[i]] for i in query_rows}
        item_rows = eval_catalog(catalog.ids, qrels, cfg.eval_items, cfg.seed)
        if len(item_rows) < len(catalog):
            notes.append(f"dev metrics are over {len(item_rows):,} of {len(catalog):,} items (every judged item and "
                         "a sample); `bench` scores the whole catalog")
        return cls(catalog, dev, query_rows, item_rows)

    def __call__(self, encoder_model) -> dict[str, float]:
        if not self.query_rows:
            return {}
        encoder = TorchEncoder(model=encoder_model, fingerprint="", source="")
        qrels = [self.dev.qrels[self.dev.query_ids[i]] for i in self.query_rows]
        return evaluate_judged(encoder, [self.catalog.ids[r] for r in self.item_rows],
                               [self.catalog.texts[r] for r in self.item_rows],
                               [self.dev.queries[i] for i in self.query_rows], qrels, self.dev.min_relevance)


def resume_point(cfg: TrainConfig, checkpoints: Path, notes: list[str]) -> str | None:
    """The checkpoint `--resume` continues from (None: train from the start, old checkpoints removed)."""
    resume_from = last_checkpoint(checkpoints) if cfg.resume else None
    if cfg.resume and resume_from is None:
        notes.append("--resume: no checkpoint found, training from the start")
    if not cfg.resume and checkpoints.exists():
        shutil.rmtree(checkpoints)
    return resume_from


def column_prompts(model) -> dict[str, str] | None:
    """The model's query prompt for the anchor column and its document prompt for the item columns, so a model
    with task prompts (EmbeddingGemma) trains on the texts it will encode; None for a model without prompts."""
    prompts = model_prompts(model)
    if not prompts.query and not prompts.document:
        return None
    return {"anchor": prompts.query, "positive": prompts.document, "negative": prompts.document}


def training_arguments(cfg: TrainConfig, checkpoints: Path, batch_size: int, lr: float, device: str,
                       examples: int, prompts: dict[str, str] | None = None):
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.training_args import BatchSamplers

    return SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints), num_train_epochs=cfg.epochs, per_device_train_batch_size=batch_size,
        learning_rate=lr, warmup_ratio=cfg.warmup_ratio, seed=cfg.seed, data_seed=cfg.seed,
        batch_sampler=LengthGroupedBatchSampler if cfg.group_by_length else BatchSamplers.NO_DUPLICATES,
        save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=1, logging_steps=5, disable_tqdm=True, report_to=[], use_cpu=device == "cpu",
        bf16=device == "cuda", dataloader_drop_last=examples > batch_size, prompts=prompts)


def model_manifest(cfg: TrainConfig, run: dict, data_manifest: Manifest) -> Manifest:
    """The model artifact's manifest: the recipe, the base model, and dev nDCG before, during and after."""
    base_path = resolve_base_model(cfg.base_model)
    base_fingerprint = model_fingerprint(base_path)
    return Manifest(
        kind="model", settings={**asdict(cfg), "max_seq_length": run["max_seq_length"],
                                "batch_size": run["batch_size"], "lr": run["lr"], "recipe": run["recipe"]},
        inputs={"base_model": f"{cfg.base_model} ({base_fingerprint[:12]})"},
        upstream={"data": data_manifest.fingerprint},
        counts={"train_pairs": run["pairs"], "train_pairs_available": run["recipe"]["available"],
                "steps": run["steps"], "dev_queries": run["dev_queries"], "dev_items": run["dev_items"]},
        extra={"base_model": cfg.base_model, "device": run["device"], "train_seconds": round(run["seconds"], 2),
               "dev_base": run["dev_base"], "dev_finetuned": run["dev_finetuned"], "dev_epochs": run["epochs"],
               "best_epoch": run["best_epoch"], "query_source": data_manifest.extra.get("query_source"),
               "dim": run["dim"]})


@writes_workspace
def run_finetune(cfg: TrainConfig, workspace: Workspace, progress=None) -> TrainResult:
    """Fine-tune, evaluate base vs fine-tuned on dev, publish the model atomically."""
    from sentence_transformers import SentenceTransformerTrainer
    from transformers.trainer_callback import PrinterCallback

    started = time.perf_counter()
    data_manifest, catalog = load_data_manifest(workspace), load_catalog(workspace)
    notes: list[str] = []
    examples, recipe = training_examples(cfg, workspace, catalog, notes)
    dev = load_judgments(workspace, "dev")
    model, device = load_training_model(cfg, catalog.texts + dev.queries, notes)
    judged = recipe["source"] == "judgments"
    batch_size = min(cfg.batch_size or (JUDGED_BATCH if judged else PAIRS_BATCH), len(examples))
    lr = cfg.lr or (JUDGED_LR if judged else PAIRS_LR)
    columns, teacher, teacher_info = with_teacher(cfg, workspace, text_columns(examples, catalog), device, progress)
    recipe = {**recipe, **teacher_info}
    dataset = build_dataset(columns)
    evaluate = DevCheck.of(cfg, catalog, dev, notes)
    dev_base = evaluate(model)
    resume_from = resume_point(cfg, workspace.checkpoints, notes)
    args = training_arguments(cfg, workspace.checkpoints, batch_size, lr, device, len(examples),
                              column_prompts(model))
    model.model_card_data.widget = model_card_widget(dataset)  # else the trainer samples widgets with a tqdm bar
    epochs = _epoch_evaluation(model, evaluate, progress)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                         loss=build_loss(model, cfg, teacher),
                                         callbacks=[_progress_callback(progress), epochs])
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts to stdout, which would break --json
    train_started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.perf_counter() - train_started
    best = epochs.best
    if best is not None and best is not epochs.history[-1]:
        model.load_state_dict(epochs.best_state)
        notes.append(f"kept epoch {best['epoch']} of {len(epochs.history)}: best dev nDCG@10")
    dev_finetuned = {k: v for k, v in best.items() if k != "epoch"} if best else evaluate(model)
    run = {"max_seq_length": model.max_seq_length, "batch_size": batch_size, "lr": lr, "recipe": recipe,
           "pairs": len(examples), "steps": trainer.state.global_step, "dev_queries": len(evaluate.query_rows),
           "dev_items": len(evaluate.item_rows), "device": device, "seconds": train_seconds, "dev_base": dev_base,
           "dev_finetuned": dev_finetuned, "epochs": epochs.history, "best_epoch": best["epoch"] if best else 0,
           "dim": model.get_embedding_dimension()}
    with publish(workspace, "model") as tmp:
        model.save(str(tmp))
        manifest = write_manifest(tmp, model_manifest(cfg, run, data_manifest))
    shutil.rmtree(workspace.checkpoints, ignore_errors=True)
    return TrainResult(
        path=workspace.artifact("model"), manifest=manifest, base_model=cfg.base_model,
        pairs_available=recipe["available"], pairs_used=len(examples), steps=trainer.state.global_step,
        seconds=time.perf_counter() - started,
        pairs_per_second=len(examples) * cfg.epochs / max(train_seconds, 1e-9), device=device,
        max_seq_length=model.max_seq_length, dev_base=dev_base, dev_finetuned=dev_finetuned, notes=notes,
        recipe=recipe, dev_epochs=epochs.history)
