"""Training the learned ranker (LambdaMART over the hybrid's candidates), kept only when dev says so."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from densesearch.build.tuning import MODE_QUERIES, MODE_SIGNIFICANCE, Tuning, first_queries
from densesearch.core.artifacts import open_artifact
from densesearch.core.config import RankerConfig, RankerMode
from densesearch.core.paths import Workspace
from densesearch.data.readers import Judgments, load_judgments
from densesearch.eval.metrics import graded_query_metrics, paired_randomization_p
from densesearch.retrieval.fusion import Fusion, Stage
from densesearch.retrieval.ranker import (
    FEATURES,
    MAX_LABEL,
    TERMS_DIR,
    LearnedRanker,
    candidate_features,
    import_lightgbm,
    reorder,
)


def lightgbm_params(cfg: RankerConfig, seed: int) -> dict:
    return {"objective": "lambdarank", "metric": "ndcg", "ndcg_eval_at": [10], "learning_rate": cfg.learning_rate,
            "num_leaves": cfg.leaves, "min_data_in_leaf": cfg.min_data_in_leaf,
            "feature_fraction": cfg.feature_fraction, "bagging_fraction": cfg.bagging_fraction, "bagging_freq": 1,
            "lambdarank_truncation_level": 20, "label_gain": list(range(MAX_LABEL + 1)), "seed": seed,
            "deterministic": True, "force_row_wise": True, "num_threads": 0, "verbose": -1}


def fit_ranker(features: list[np.ndarray], labels: list[np.ndarray], cfg: RankerConfig,
               progress=None) -> tuple[list[str], list[int]]:
    """LambdaMART on the train queries' candidate rows: one model per fold fits the other folds and stops early
    on its own; with ``cfg.refit`` models, that many more fit every query for the folds' mean rounds, without
    bagging or feature sampling, and are returned instead of the folds'. Returns the models (LightGBM text) and
    the folds' rounds."""
    lightgbm = import_lightgbm()

    if len(features) < max(2, cfg.folds):
        raise ValueError(f"a learned ranker needs at least {max(2, cfg.folds)} queries, got {len(features)}")
    order = np.random.default_rng(cfg.seed).permutation(len(features))
    folds = np.array_split(order, cfg.folds)

    def dataset(queries: np.ndarray):
        queries = np.sort(queries)
        return lightgbm.Dataset(np.concatenate([features[q] for q in queries]),
                                np.concatenate([labels[q] for q in queries]),
                                group=[len(features[q]) for q in queries], feature_name=list(FEATURES),
                                free_raw_data=True)

    models, rounds = [], []
    steps = cfg.folds + cfg.refit
    for k, held in enumerate(folds):
        fit = np.concatenate([fold for j, fold in enumerate(folds) if j != k])
        booster = lightgbm.train(lightgbm_params(cfg, cfg.seed * 100 + k), dataset(fit), cfg.max_rounds,
                                 valid_sets=[dataset(held)],
                                 callbacks=[lightgbm.early_stopping(cfg.early_stopping, verbose=False)])
        rounds.append(int(booster.best_iteration or booster.current_iteration()))
        models.append(booster.model_to_string(num_iteration=rounds[-1]))
        if progress:
            progress("training the learned ranker", k + 1, steps)
    refits, whole = [], replace(cfg, bagging_fraction=1.0, feature_fraction=1.0)  # no sampling noise in a refit
    for k in range(cfg.refit):
        refits.append(lightgbm.train(lightgbm_params(whole, cfg.seed * 100 + cfg.folds + k), dataset(order),
                                     max(1, round(float(np.mean(rounds))))).model_to_string())
        if progress:
            progress("training the learned ranker", cfg.folds + k + 1, steps)
    return refits or models, rounds


def save_models(directory: Path, models: list[str]) -> list[str]:
    """Write each model as ``model-<k>.txt``; returns the file names (the index manifest records them)."""
    directory.mkdir(parents=True, exist_ok=True)
    names = [f"model-{k}.txt" for k in range(len(models))]
    for name, text in zip(names, models, strict=True):
        (directory / name).write_text(text, encoding="utf-8")
    return names


@dataclass
class RankerReport:
    """What `index` did about the learned ranker, and why."""

    kept: bool
    reason: str
    train_queries: int = 0
    dev_queries: int = 0
    rounds: list[int] = field(default_factory=list)
    model_files: list[str] = field(default_factory=list)  # in the ranker directory; the served score is their mean
    dev_ndcg_fusion: float | None = None
    dev_ndcg_ranker: float | None = None
    p_vs_fusion: float | None = None
    seconds: float = 0.0

    def to_manifest(self, cfg: RankerConfig) -> dict:
        return {**asdict(self), "settings": asdict(cfg), "features": list(FEATURES)}


def build_ranker(cfg: RankerConfig, tuning: Tuning, fusion: Fusion, out: Path, progress=None) -> RankerReport:
    """Train LambdaMART on the train queries' served candidates; keep it (write ``out``) when dev says so."""
    started = time.perf_counter()
    skip = skip_reason(cfg, tuning.workspace)
    if skip:
        return skip
    train = load_judgments(tuning.workspace, "train")
    needed = max(cfg.min_queries if cfg.mode == RankerMode.AUTO else 0, cfg.folds, 2)
    if len(train.query_ids) < needed:
        return RankerReport(False, f"{len(train.query_ids)} train queries; it needs {needed}",
                            train_queries=len(train.query_ids))
    dev = first_queries(load_judgments(tuning.workspace, "dev"), MODE_QUERIES)  # the queries the mode was chosen on
    if not dev.query_ids:
        return RankerReport(False, "no dev queries to check it on", train_queries=len(train.query_ids))
    train_rows = candidate_rows(cfg, tuning, fusion, train, "ranker features: train queries", progress)
    labels = [np.asarray([min(MAX_LABEL, max(0, train.qrels[q].get(tuning.ids[i], 0))) for i in items],
                         dtype=np.float32) for q, (_, items, _) in zip(train.query_ids, train_rows, strict=True)]
    models, rounds = fit_ranker([features for _, _, features in train_rows], labels, cfg, progress)
    before, after = dev_check(LearnedRanker.from_texts(models, cfg.depth), tuning, dev,
                              candidate_rows(cfg, tuning, fusion, dev, "ranker features: dev queries", progress))
    p_value = paired_randomization_p(after, before)
    better = after.mean() > before.mean() and p_value < MODE_SIGNIFICANCE
    kept = cfg.mode == RankerMode.ON or better
    reason = ("dev nDCG@10 significantly higher than the fusion's" if better
              else "kept as asked (--ranker on)" if kept else "not significantly better than the fusion on dev")
    files = save_models(out, models) if kept else []
    if kept:
        tuning.terms.save(out / TERMS_DIR)  # served from these arrays: no query computes a title's terms
    return RankerReport(kept, reason, train_queries=len(train.query_ids), dev_queries=len(dev.query_ids),
                        rounds=rounds, model_files=files, dev_ndcg_fusion=float(before.mean()),
                        dev_ndcg_ranker=float(after.mean()), p_vs_fusion=p_value, seconds=time.perf_counter() - started)


def skip_reason(cfg: RankerConfig, workspace: Workspace) -> RankerReport | None:
    """Why no ranker is trained here (turned off, or ungraded data in auto mode), or None."""
    if cfg.mode == RankerMode.OFF:
        return RankerReport(False, "turned off (--ranker off)")
    if cfg.mode == RankerMode.AUTO and not open_artifact(workspace, "data").info.graded:
        return RankerReport(False, "the data has no graded judgments (--ranker on trains on its pairs anyway)")
    return None


def candidate_rows(cfg: RankerConfig, tuning: Tuning, fusion: Fusion, judgments: Judgments, label: str,
                   progress=None) -> list[tuple[Stage, list[int], np.ndarray]]:
    """Each query's served first stage, and its top ``cfg.depth`` candidates with their feature rows."""
    stages = tuning.stages(judgments.queries, fusion)
    vectors = tuning.vectors(judgments.queries)
    found = []
    for n, (query, vector, stage) in enumerate(zip(judgments.queries, vectors, stages, strict=True)):
        found.append((stage, *candidate_features(query, vector, stage, tuning.first_stage.dense.vectors,
                                                          tuning.terms, cfg.depth)))
        if progress and (n % 200 == 0 or n + 1 == len(stages)):
            progress(label, n + 1, len(stages))
    return found


def dev_check(ranker: LearnedRanker, tuning: Tuning, dev: Judgments,
              rows: list[tuple[Stage, list[int], np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Per dev query nDCG@10 of the fusion alone and of the fusion re-ordered by ``ranker``, as served."""
    qrels = [dev.qrels[q] for q in dev.query_ids]
    fused = [[tuning.ids[i] for i in stage.fused.ids[:10]] for stage, _, _ in rows]
    learned = [[tuning.ids[i] for i in reorder(stage, items, ranker.score(features)).ids[:10]]
               for stage, items, features in rows]
    before = graded_query_metrics(fused, qrels, dev.min_relevance, ks=(10,))["ndcg@10"]
    after = graded_query_metrics(learned, qrels, dev.min_relevance, ks=(10,))["ndcg@10"]
    return before, after
