"""The learned ranker: LambdaMART (LightGBM) re-orders the hybrid's top candidates from features of the three
lists (dense, word BM25, 3-gram BM25) and of the query and title words. `index` trains it on the judged train
queries and keeps it only when dev says it beats the fusion alone (docs/results.md, session 14)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from pathlib import Path

import numpy as np

from densesearch.config import RankerConfig
from densesearch.errors import ArtifactCorrupt, BadInput
from densesearch.search import min_max

RANKER_DIR = "ranker"
MISSING_RANK = 1000  # the rank feature of an item absent from one list
TERMS_CACHE = 65_536  # titles whose word and 3-gram sets stay cached while serving
MAX_LABEL = 63  # grades above it train as 63 (LambdaMART's gain table is 0..MAX_LABEL)

FEATURES: tuple[str, ...] = (
    "fused_score", "fused_rank", "dense_cosine",
    "dense_rank", "dense_score", "dense_scaled",
    "bm25_rank", "bm25_score", "bm25_scaled",
    "ngram_rank", "ngram_score", "ngram_scaled",
    "query_words", "query_chars", "query_digits", "query_unknown_words",
    "title_words", "title_digits",
    "query_words_in_title", "query_trigrams_in_title", "title_trigrams_in_query", "query_numbers_in_title",
    "query_bigrams_in_title", "last_query_word_in_title", "first_query_word_in_title", "title_words_in_query",
)

Ranked = tuple[list[int], list[float]]


@dataclass
class FirstStage:
    """One query's served lists (item indices with scores) and their fusion."""

    dense: Ranked
    bm25: Ranked
    ngrams: Ranked
    fused: list[tuple[int, float]]


def words_of(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def trigrams_of(words: Sequence[str]) -> set[str]:
    """Character 3-grams of each word padded with ``#`` (a word of one letter gives ``#a#``)."""
    grams = set()
    for word in words:
        padded = f"#{word}#"
        grams.update(padded[i:i + 3] for i in range(len(padded) - 2))
    return grams


def title_texts(rows: Sequence[dict]) -> list[str]:
    """Each catalog row's title (its text where it has none): what the word-match features read."""
    return [row.get("title") or row["text"] for row in rows]


class TitleTerms:
    """Lower-cased titles, their word and 3-gram sets (cached on use) and the catalog's word vocabulary.

    Query word pairs are looked up in the lower-cased title as written: "12 gauge" does not match "12-gauge".
    Matching the title's words joined by spaces instead measured the same on Home Depot dev (0.4557 against
    0.4562 nDCG@10, mean of four seeds), so the measured form stays."""

    def __init__(self, titles: Sequence[str]) -> None:
        self.titles = [title.lower() for title in titles]
        self.vocabulary: set[str] = set()
        for title in self.titles:
            self.vocabulary.update(words_of(title))
        self.terms = lru_cache(maxsize=TERMS_CACHE)(self._terms)  # bounded: a served catalog may be large

    def _terms(self, item: int) -> tuple[set[str], set[str]]:
        words = words_of(self.titles[item])
        return set(words), trigrams_of(words)


def list_features(ranked: Ranked) -> dict[int, tuple[float, float, float]]:
    """Per item of one list: (rank, score, min-max scaled score)."""
    ids, scores = ranked
    return {item: (float(rank), float(score), scaled)
            for rank, (item, score, scaled) in enumerate(zip(ids, scores, min_max(list(scores)), strict=True))}


def candidate_features(query: str, query_vector: np.ndarray, stage: FirstStage, vectors: np.ndarray,
                       terms: TitleTerms, depth: int) -> tuple[list[int], np.ndarray]:
    """The top ``depth`` fused items and their feature rows (columns as ``FEATURES``)."""
    top = stage.fused[:depth]
    items = [item for item, _ in top]
    if not items:
        return items, np.zeros((0, len(FEATURES)), dtype=np.float32)
    lists = [list_features(stage.dense), list_features(stage.bm25), list_features(stage.ngrams)]
    cosines = np.asarray(vectors[np.asarray(items)], dtype=np.float32) @ np.asarray(query_vector,
                                                                                   dtype=np.float32).reshape(-1)
    query_words = words_of(query)
    query_set, query_grams = set(query_words), trigrams_of(query_words)
    numbers = {w for w in query_set if any(c.isdigit() for c in w)}
    bigrams = [f"{a} {b}" for a, b in pairwise(query_words)]
    query_row = [len(query_set), len(query), sum(c.isdigit() for c in query),
                 sum(w not in terms.vocabulary for w in query_set)]
    rows = []
    for rank, (item, fused_score) in enumerate(top):
        title_words, title_grams = terms.terms(item)
        title = terms.titles[item]
        row = [fused_score, rank, float(cosines[rank])]
        for found in lists:
            row.extend(found.get(item, (MISSING_RANK, 0.0, 0.0)))
        row.extend(query_row)
        row.extend([len(title_words), sum(c.isdigit() for c in title),
                    len(query_set & title_words) / max(1, len(query_set)),
                    len(query_grams & title_grams) / max(1, len(query_grams)),
                    len(query_grams & title_grams) / max(1, len(title_grams)),
                    len(numbers & title_words) / len(numbers) if numbers else -1.0,
                    sum(bigram in title for bigram in bigrams),
                    float(bool(query_words) and query_words[-1] in title_words),
                    float(bool(query_words) and query_words[0] in title_words),
                    len(title_words & query_set) / max(1, len(title_words))])
        rows.append(row)
    return items, np.asarray(rows, dtype=np.float32)


def import_lightgbm():
    """LightGBM, or a one-line error naming the fix: its Linux wheel loads the system's OpenMP runtime."""
    try:
        import lightgbm
    except (ImportError, OSError) as exc:
        raise BadInput(f"LightGBM, which the learned ranker runs on, cannot load ({exc})",
                       hint="install the OpenMP runtime (Debian/Ubuntu: apt install libgomp1), or build the "
                            "index with `densesearch index --ranker off`") from exc
    return lightgbm


def lightgbm_params(cfg: RankerConfig, seed: int) -> dict:
    return {"objective": "lambdarank", "metric": "ndcg", "ndcg_eval_at": [10], "learning_rate": cfg.learning_rate,
            "num_leaves": cfg.leaves, "min_data_in_leaf": cfg.min_data_in_leaf,
            "feature_fraction": cfg.feature_fraction, "bagging_fraction": cfg.bagging_fraction, "bagging_freq": 1,
            "lambdarank_truncation_level": 20, "label_gain": list(range(MAX_LABEL + 1)), "seed": seed,
            "deterministic": True, "force_row_wise": True, "num_threads": 0, "verbose": -1}


def fit_ranker(features: list[np.ndarray], labels: list[np.ndarray], cfg: RankerConfig,
               progress=None) -> tuple[list[str], list[int]]:
    """LambdaMART on the train queries' candidate rows, one model per fold: each fits the other folds and stops
    early on its own. Returns the models (LightGBM text) and their rounds."""
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
    for k, held in enumerate(folds):
        fit = np.concatenate([fold for j, fold in enumerate(folds) if j != k])
        booster = lightgbm.train(lightgbm_params(cfg, cfg.seed * 100 + k), dataset(fit), cfg.max_rounds,
                                 valid_sets=[dataset(held)],
                                 callbacks=[lightgbm.early_stopping(cfg.early_stopping, verbose=False)])
        rounds.append(int(booster.best_iteration or booster.current_iteration()))
        models.append(booster.model_to_string(num_iteration=rounds[-1]))
        if progress:
            progress("training the learned ranker", k + 1, cfg.folds)
    return models, rounds


def save_models(directory: Path, models: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for k, text in enumerate(models):
        (directory / f"fold-{k}.txt").write_text(text, encoding="utf-8")


class LearnedRanker:
    """The published LambdaMART models: a candidate's score is their mean."""

    def __init__(self, models: list, depth: int) -> None:
        self.models = models
        self.depth = depth

    @classmethod
    def from_texts(cls, models: list[str], depth: int) -> LearnedRanker:
        """From models as LightGBM text (`fit_ranker`'s output)."""
        lightgbm = import_lightgbm()
        return cls([lightgbm.Booster(model_str=text) for text in models], depth)

    @classmethod
    def load(cls, directory: Path, folds: int, depth: int) -> LearnedRanker:
        """The published fold models; one that cannot be read or expects other features is `ArtifactCorrupt`."""
        lightgbm = import_lightgbm()
        models = []
        for k in range(folds):
            path = directory / f"fold-{k}.txt"
            try:
                models.append(lightgbm.Booster(model_str=path.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError, lightgbm.basic.LightGBMError) as exc:
                raise ArtifactCorrupt("index", f"{RANKER_DIR}/{path.name}", "is not a LightGBM model") from exc
            if models[-1].num_feature() != len(FEATURES):
                raise ArtifactCorrupt("index", f"{RANKER_DIR}/{path.name}",
                                      f"expects {models[-1].num_feature()} features, not {len(FEATURES)}")
        return cls(models, depth)

    def score(self, rows: np.ndarray) -> np.ndarray:
        if not len(rows):
            return np.zeros(0)
        return np.mean([model.predict(rows, num_threads=1) for model in self.models], axis=0)


def reorder(stage: FirstStage, items: list[int], scores: np.ndarray) -> list[tuple[int, float]]:
    """The ranked top by learned score (ties keep the fused order), then the rest of the fused list in its order,
    scored below every ranked item (lowest learned score - 2 + fused score; fused scores lie in [0, 1])."""
    if not items:
        return list(stage.fused)
    order = np.argsort(-scores, kind="stable")
    ranked = [(items[i], float(scores[i])) for i in order]
    floor = float(scores.min()) - 2.0
    return ranked + [(item, floor + min(1.0, float(fused))) for item, fused in stage.fused[len(items):]]
