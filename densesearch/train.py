"""`finetune`: a shared-weight (two-tower) sentence-transformers bi-encoder trained with MNRL."""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from densesearch.batching import LengthGroupedBatchSampler
from densesearch.config import TrainConfig
from densesearch.encoders import TorchEncoder, resolve_base_model
from densesearch.errors import BadInput
from densesearch.evaluation import evaluate_encoder
from densesearch.manifest import Manifest, fingerprint_path, write_manifest
from densesearch.paths import Workspace, publish, writes_workspace
from densesearch.prepare import Catalog, Pair, load_catalog, load_data_manifest, load_pairs

MODEL_POSITION_LIMIT_FALLBACK = 512


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


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda asked for, but no CUDA device is available", hint="use --device cpu")
    return requested


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
    """One hard negative per pair: the best BM25 hit that is neither the positive nor its variant."""
    from densesearch.sparse import Bm25Index

    bm25 = Bm25Index.build(catalog.texts, backend="bm25s")
    hits = bm25.search([p.query for p in pairs], k=20)
    rng = random.Random(seed)
    negatives = []
    for pair, (ids, _) in zip(pairs, hits, strict=True):
        candidates = [i for i in ids if catalog.groups[i] != pair.group_id]
        negatives.append(catalog.texts[candidates[0] if candidates else rng.randrange(len(catalog))])
    return negatives


def build_dataset(pairs: list[Pair], catalog: Catalog, negatives: list[str] | None):
    from datasets import Dataset

    text_of = dict(zip(catalog.ids, catalog.texts, strict=True))
    columns = {"anchor": [p.query for p in pairs], "positive": [text_of[p.item_id] for p in pairs]}
    if negatives is not None:
        columns["negative"] = negatives
    return Dataset.from_dict(columns)


def build_loss(model, cfg: TrainConfig):
    from sentence_transformers import losses

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


def model_card_widget(dataset) -> list[dict[str, object]]:
    """The saved model card's example: the first training query against its item and another one."""
    rows = dataset[:2]
    return [{"source_sentence": rows["anchor"][0], "sentences": rows["positive"][:2]}]


def last_checkpoint(directory: Path) -> str | None:
    checkpoints = sorted(directory.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(checkpoints[-1]) if checkpoints else None


def dev_split(workspace: Workspace, limit: int, seed: int) -> list[Pair]:
    return sample_pairs(load_pairs(workspace, "dev"), limit, seed)


@writes_workspace
def run_finetune(cfg: TrainConfig, workspace: Workspace, progress=None) -> TrainResult:
    """Fine-tune, evaluate base vs fine-tuned on dev, publish the model atomically."""
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.training_args import BatchSamplers
    from transformers.trainer_callback import PrinterCallback

    started = time.perf_counter()
    data_manifest = load_data_manifest(workspace)
    catalog = load_catalog(workspace)
    available = load_pairs(workspace, "train")
    if not available:
        raise BadInput("the training split is empty", hint="prepare more data (`densesearch prepare`)")
    notes: list[str] = []
    pairs = sample_pairs(available, cfg.samples, cfg.seed)
    if len(available) < cfg.samples:
        notes.append(f"asked for {cfg.samples:,} samples; only {len(available):,} training pairs exist, using all")
    device = pick_device(cfg.device)
    base_path = resolve_base_model(cfg.base_model)
    model = SentenceTransformer(base_path, device=device)
    max_seq_length, cap_note = capped_seq_length(model, cfg.max_seq_length)
    model.max_seq_length = max_seq_length
    if cap_note:
        notes.append(cap_note)
    batch_size = min(cfg.batch_size, len(pairs))
    negatives = mine_bm25_negatives(pairs, catalog, cfg.seed) if cfg.hard_negatives == "bm25" else None
    dataset = build_dataset(pairs, catalog, negatives)
    dev = dev_split(workspace, cfg.eval_queries, cfg.seed)
    group_of = dict(zip(catalog.ids, catalog.groups, strict=True))
    base_fingerprint = fingerprint_path(Path(base_path)) if Path(base_path).exists() else base_path

    def evaluate(encoder_model) -> dict[str, float]:
        if not dev:
            return {}
        encoder = TorchEncoder(model=encoder_model, fingerprint="", source="")
        return evaluate_encoder(encoder, catalog.ids, catalog.texts, [p.query for p in dev],
                                [p.item_id for p in dev], group_of)

    dev_base = evaluate(model)
    checkpoints = workspace.checkpoints
    resume_from = last_checkpoint(checkpoints) if cfg.resume else None
    if cfg.resume and resume_from is None:
        notes.append("--resume: no checkpoint found, training from the start")
    if not cfg.resume and checkpoints.exists():
        shutil.rmtree(checkpoints)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints), num_train_epochs=cfg.epochs, per_device_train_batch_size=batch_size,
        learning_rate=cfg.lr, warmup_ratio=cfg.warmup_ratio, seed=cfg.seed, data_seed=cfg.seed,
        batch_sampler=LengthGroupedBatchSampler if cfg.group_by_length else BatchSamplers.NO_DUPLICATES,
        save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=1, logging_steps=5, disable_tqdm=True, report_to=[], use_cpu=device == "cpu",
        bf16=device == "cuda", dataloader_drop_last=len(pairs) > batch_size)
    model.model_card_data.widget = model_card_widget(dataset)  # else the trainer samples widgets with a tqdm bar
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                         loss=build_loss(model, cfg), callbacks=[_progress_callback(progress)])
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts to stdout, which would break --json
    train_started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.perf_counter() - train_started
    dev_finetuned = evaluate(model)
    with publish(workspace, "model") as tmp:
        model.save(str(tmp))
        manifest = write_manifest(tmp, Manifest(
            kind="model", settings={**asdict(cfg), "max_seq_length": max_seq_length, "batch_size": batch_size},
            inputs={"base_model": f"{cfg.base_model} ({base_fingerprint[:12]})"},
            upstream={"data": data_manifest.fingerprint},
            counts={"train_pairs": len(pairs), "train_pairs_available": len(available),
                    "steps": trainer.state.global_step, "dev_queries": len(dev)},
            extra={"base_model": cfg.base_model, "device": device, "train_seconds": round(train_seconds, 2),
                   "dev_base": dev_base, "dev_finetuned": dev_finetuned,
                   "query_source": data_manifest.extra.get("query_source"), "dim":
                   model.get_embedding_dimension()}))
    shutil.rmtree(checkpoints, ignore_errors=True)
    return TrainResult(
        path=workspace.artifact("model"), manifest=manifest, base_model=cfg.base_model,
        pairs_available=len(available), pairs_used=len(pairs), steps=trainer.state.global_step,
        seconds=time.perf_counter() - started,
        pairs_per_second=len(pairs) * cfg.epochs / max(train_seconds, 1e-9), device=device,
        max_seq_length=max_seq_length, dev_base=dev_base, dev_finetuned=dev_finetuned, notes=notes)
