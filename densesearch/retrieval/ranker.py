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

from densesearch.core.errors import ArtifactCorrupt, BadInput
from densesearch.retrieval.fusion import EMPTY, RankedList, Stage, min_max

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


def list_features(ranked: RankedList | None) -> dict[int, tuple[float, float, float]]:
    """Per item of one list: (rank, score, min-max scaled score)."""
    ids, scores = ranked or EMPTY
    return {item: (float(rank), float(score), scaled)
            for rank, (item, score, scaled) in enumerate(zip(ids, scores, min_max(list(scores)), strict=True))}


@dataclass(frozen=True)
class QueryTerms:
    """What the word-match features read from one query."""

    words: list[str]
    word_set: set[str]
    grams: set[str]
    numbers: set[str]
    bigrams: list[str]
    row: list[float]  # the query's own features: words, characters, digits, words no title has

    @classmethod
    def of(cls, query: str, vocabulary: set[str]) -> QueryTerms:
        words = words_of(query)
        word_set = set(words)
        return cls(words, word_set, trigrams_of(words), {w for w in word_set if any(c.isdigit() for c in w)},
                   [f"{a} {b}" for a, b in pairwise(words)],
                   [len(word_set), len(query), sum(c.isdigit() for c in query),
                    sum(w not in vocabulary for w in word_set)])


def title_match(query: QueryTerms, title: str, title_words: set[str], title_grams: set[str]) -> list[float]:
    """How the query's words, 3-grams, numbers and word pairs meet one title (the columns after the query's)."""
    shared_grams = len(query.grams & title_grams)
    return [len(title_words), sum(c.isdigit() for c in title),
            len(query.word_set & title_words) / max(1, len(query.word_set)),
            shared_grams / max(1, len(query.grams)),
            shared_grams / max(1, len(title_grams)),
            len(query.numbers & title_words) / len(query.numbers) if query.numbers else -1.0,
            sum(bigram in title for bigram in query.bigrams),
            float(bool(query.words) and query.words[-1] in title_words),
            float(bool(query.words) and query.words[0] in title_words),
            len(title_words & query.word_set) / max(1, len(title_words))]


def candidate_features(query: str, query_vector: np.ndarray, stage: Stage, vectors: np.ndarray,
                       terms: TitleTerms, depth: int) -> tuple[list[int], np.ndarray]:
    """The top ``depth`` fused items and their feature rows (columns as ``FEATURES``)."""
    items, fused_scores = list(stage.fused.ids[:depth]), list(stage.fused.scores[:depth])
    if not items:
        return items, np.zeros((0, len(FEATURES)), dtype=np.float32)
    lists = [list_features(stage.dense), list_features(stage.words), list_features(stage.grams)]
    cosines = np.asarray(vectors[np.asarray(items)], dtype=np.float32) @ np.asarray(query_vector,
                                                                                   dtype=np.float32).reshape(-1)
    words = QueryTerms.of(query, terms.vocabulary)
    rows = []
    for rank, (item, fused_score) in enumerate(zip(items, fused_scores, strict=True)):
        row = [fused_score, rank, float(cosines[rank])]
        for found in lists:
            row.extend(found.get(item, (MISSING_RANK, 0.0, 0.0)))
        row.extend(words.row)
        row.extend(title_match(words, terms.titles[item], *terms.terms(item)))
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


def reorder(stage: Stage, items: list[int], scores: np.ndarray) -> RankedList:
    """The ranked top by learned score (ties keep the fused order), then the rest of the fused list in its order,
    scored below every ranked item (lowest learned score - 2 + fused score; fused scores lie in [0, 1])."""
    if not items:
        return stage.fused
    order = np.argsort(-scores, kind="stable")
    floor = float(scores.min()) - 2.0
    tail = range(len(items), len(stage.fused.ids))
    return RankedList([items[i] for i in order] + [stage.fused.ids[n] for n in tail],
                      [float(scores[i]) for i in order] + [floor + min(1.0, float(stage.fused.scores[n]))
                                                           for n in tail])


@dataclass
class LearnedOrder:
    """The learned ranker as a first stage applies it: the models, the catalog's title terms and its vectors."""

    ranker: LearnedRanker
    terms: TitleTerms
    vectors: np.ndarray

    def order(self, query: str, query_vector: np.ndarray, stage: Stage) -> RankedList:
        """``stage``'s fused list with its top re-ordered by the learned ranker."""
        items, rows = candidate_features(query, query_vector, stage, self.vectors, self.terms, self.ranker.depth)
        return reorder(stage, items, self.ranker.score(rows))
