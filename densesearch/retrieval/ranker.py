"""The learned ranker: LambdaMART (LightGBM) re-orders the hybrid's top candidates from features of the three
lists (dense, word BM25, 3-gram BM25) and of the query and title words. `index` trains it on the judged train
queries and keeps it only when dev says it beats the fusion alone (docs/results.md, session 14)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from densesearch.core.errors import ArtifactCorrupt, BadInput
from densesearch.retrieval.fusion import EMPTY, RankedList, Stage

RANKER_DIR = "ranker"
MISSING_RANK = 1000  # the rank feature of an item absent from one list
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


TERMS_DIR = "terms"  # inside the ranker's directory: each title's word ids, 3-gram codes and digit count
TERMS_ARRAYS = ("word_ptr", "word_ids", "gram_ptr", "gram_codes", "digits")
VOCABULARY_FILE = "vocabulary.json"


class TitleTerms:
    """Lower-cased titles, the catalog's word vocabulary (each word an id) and each title's word ids, 3-gram codes
    and digit count as CSR arrays: what the word-match features read.

    `index` computes them once and stores them beside the ranker, so a served query reads a candidate's terms
    by slicing memory-mapped arrays (computing them per candidate cost ~3 ms of each cold hybrid query).

    Query word pairs are looked up in the lower-cased title as written: "12 gauge" does not match "12-gauge".
    Matching the title's words joined by spaces instead measured the same on Home Depot dev (0.4557 against
    0.4562 nDCG@10, mean of four seeds), so the measured form stays."""

    def __init__(self, titles: Sequence[str], vocabulary: dict[str, int], arrays: Mapping[str, np.ndarray]) -> None:
        self.titles = [title.lower() for title in titles]
        self.vocabulary = vocabulary  # every word of some title, and its id
        self.word_ptr, self.word_ids, self.gram_ptr, self.gram_codes, self.digits = (arrays[n] for n in TERMS_ARRAYS)

    @classmethod
    def of(cls, titles: Sequence[str]) -> TitleTerms:
        """Computed from the titles (what `index` stores; ~0.1 ms a title)."""
        vocabulary: dict[str, int] = {}
        words, grams, digits = [], [], []
        for title in titles:
            title = title.lower()
            title_words = words_of(title)
            words.append(np.fromiter({vocabulary.setdefault(w, len(vocabulary)) for w in title_words}, dtype=np.int64))
            grams.append(gram_codes(trigrams_of(title_words)))
            digits.append(sum(c.isdigit() for c in title))
        arrays = {"word_ptr": _offsets(words), "word_ids": _joined(words), "gram_ptr": _offsets(grams),
                  "gram_codes": _joined(grams), "digits": np.asarray(digits, dtype=np.int64)}
        return cls(titles, vocabulary, arrays)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name in TERMS_ARRAYS:
            np.save(directory / f"{name}.npy", getattr(self, name))
        words = sorted(self.vocabulary, key=self.vocabulary.__getitem__)
        (directory / VOCABULARY_FILE).write_text(json.dumps(words, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, artifact, subdir: str, titles: Sequence[str]) -> TitleTerms:
        """The stored terms of ``titles`` (an index built before they were stored: computed now, once)."""
        if not artifact.file(f"{subdir}/{VOCABULARY_FILE}").is_file():
            return cls.of(titles)
        words = artifact.read_json(f"{subdir}/{VOCABULARY_FILE}")
        if not isinstance(words, list):
            raise artifact.corrupt(f"{subdir}/{VOCABULARY_FILE}", "is not a word list")
        arrays = {name: artifact.load_npy(f"{subdir}/{name}.npy") for name in TERMS_ARRAYS}
        damaged = _damaged_terms(arrays, len(titles), len(words))
        if damaged:
            raise artifact.corrupt(f"{subdir}/{damaged}.npy", "does not match the catalog's titles")
        return cls(titles, {word: i for i, word in enumerate(words)}, arrays)

    def block(self, items: np.ndarray) -> tuple[CandidateValues, CandidateValues, np.ndarray]:
        """The candidates' word ids and 3-gram codes (each with its candidate and each candidate's count) and
        their titles' digit counts."""
        return (_gather(self.word_ptr, self.word_ids, items), _gather(self.gram_ptr, self.gram_codes, items),
                self.digits[items])


def _damaged_terms(arrays: Mapping[str, np.ndarray], titles: int, words: int) -> str | None:
    """The first stored terms array whose shape does not fit ``titles`` titles and ``words`` words, or None."""
    sizes = {"word_ptr": titles + 1, "gram_ptr": titles + 1, "digits": titles}
    for name, size in sizes.items():
        if arrays[name].shape != (size,):
            return name
    for ptr, values in (("word_ptr", "word_ids"), ("gram_ptr", "gram_codes")):
        if int(arrays[ptr][-1]) != len(arrays[values]):
            return values
    ids = arrays["word_ids"]
    return "word_ids" if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= words) else None


@dataclass(frozen=True)
class CandidateValues:
    """The candidates' values in one array, each value's candidate, and each candidate's count."""

    values: np.ndarray
    owner: np.ndarray
    counts: np.ndarray


def _offsets(values: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum([len(v) for v in values], dtype=np.int64)])


def _joined(values: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(values) if values else np.zeros(0, dtype=np.int64)


def _gather(ptr: np.ndarray, values: np.ndarray, items: np.ndarray) -> CandidateValues:
    """Rows ``items`` of a CSR array, concatenated."""
    starts = ptr[items]
    counts = ptr[items + 1] - starts
    owner = np.repeat(np.arange(len(items)), counts)
    offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return CandidateValues(values[np.repeat(starts, counts) + offsets], owner, counts)


def gram_codes(grams: Iterable[str]) -> np.ndarray:
    """Each 3-gram as one integer (three code points of 21 bits): equal grams, equal codes, with no vocabulary."""
    return np.fromiter((ord(g[0]) << 42 | ord(g[1]) << 21 | ord(g[2]) for g in grams), dtype=np.int64)


def list_block(ranked: RankedList | None, items: np.ndarray) -> np.ndarray:
    """Per candidate, its (rank, score, min-max scaled score) in one list; (MISSING_RANK, 0, 0) when absent."""
    block = np.tile(np.array([MISSING_RANK, 0.0, 0.0]), (len(items), 1))
    ids, scores = ranked or EMPTY
    if not len(ids):
        return block
    ids, scores = np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float64)
    low, high = scores.min(), scores.max()
    scaled = (scores - low) / (high - low) if high > low else np.ones_like(scores)
    order = np.argsort(ids, kind="stable")
    at = np.searchsorted(ids[order], items, side="right") - 1  # an item listed twice: its later place, as a dict
    found = (at >= 0) & (ids[order][np.maximum(at, 0)] == items)
    place = order[at[found]]
    block[found] = np.column_stack([place, scores[place], scaled[place]])
    return block


@dataclass(frozen=True)
class QueryTerms:
    """What the word-match features read from one query: its words (``ids`` in the title vocabulary, -1 for a word
    no title has), 3-gram codes, numbers and word pairs."""

    ids: np.ndarray
    grams: np.ndarray
    numbers: np.ndarray
    bigrams: list[str]
    first: int  # the first and last words' ids (-1: no words, or no title has it)
    last: int
    row: list[float]  # the query's own features: words, characters, digits, words no title has

    @classmethod
    def of(cls, query: str, vocabulary: Mapping[str, int]) -> QueryTerms:
        words = words_of(query)
        word_set = set(words)
        ids = np.fromiter((vocabulary.get(word, -1) for word in word_set), dtype=np.int64, count=len(word_set))
        numbers = np.fromiter((vocabulary.get(w, -1) for w in word_set if any(c.isdigit() for c in w)),
                              dtype=np.int64)
        first, last = (vocabulary.get(words[0], -1), vocabulary.get(words[-1], -1)) if words else (-1, -1)
        return cls(ids, gram_codes(trigrams_of(words)), numbers, [f"{a} {b}" for a, b in pairwise(words)],
                   first, last, [len(word_set), len(query), sum(c.isdigit() for c in query), int(np.sum(ids < 0))])


WORD, NUMBER, FIRST, LAST = 1, 2, 4, 8  # a title word's flags: in the query, a query number, its first, its last


def word_flags(query: QueryTerms, vocabulary_size: int) -> np.ndarray:
    """One flag byte per vocabulary word: which of the query's roles it plays (read by table lookup)."""
    table = np.zeros(vocabulary_size, dtype=np.uint8)
    table[query.ids[query.ids >= 0]] |= WORD
    table[query.numbers[query.numbers >= 0]] |= NUMBER
    for flag, word in ((FIRST, query.first), (LAST, query.last)):
        if word >= 0:
            table[word] |= flag
    return table


def contained(values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Which ``values`` are in the small array ``wanted``: a binary search in it (faster than ``np.isin``'s sort
    of both arrays for a query's few dozen 3-grams)."""
    if not len(wanted):
        return np.zeros(len(values), dtype=bool)
    wanted = np.sort(wanted)
    return wanted[np.minimum(np.searchsorted(wanted, values), len(wanted) - 1)] == values


def title_block(query: QueryTerms, items: np.ndarray, terms: TitleTerms) -> np.ndarray:
    """How the query's words, 3-grams, numbers and word pairs meet each candidate's title (the columns after the
    query's own), computed over the whole candidate block."""
    n = len(items)
    word_block, gram_block, digits = terms.block(items)
    owner, title_words, title_grams = word_block.owner, word_block.counts, gram_block.counts
    flags = word_flags(query, len(terms.vocabulary))[word_block.values]
    shared_words = np.bincount(owner[(flags & WORD) > 0], minlength=n)
    shared_grams = np.bincount(gram_block.owner[contained(gram_block.values, query.grams)], minlength=n)
    numbers = (np.bincount(owner[(flags & NUMBER) > 0], minlength=n) / len(query.numbers) if len(query.numbers)
               else np.full(n, -1.0))
    return np.column_stack([
        title_words, digits,
        shared_words / max(1, len(query.ids)),
        shared_grams / max(1, len(query.grams)),
        shared_grams / np.maximum(1, title_grams),
        numbers,
        [sum(bigram in terms.titles[item] for bigram in query.bigrams) for item in items] if query.bigrams
        else np.zeros(n),
        np.bincount(owner[(flags & LAST) > 0], minlength=n),
        np.bincount(owner[(flags & FIRST) > 0], minlength=n),
        shared_words / np.maximum(1, title_words)])


def candidate_features(query: str, query_vector: np.ndarray, stage: Stage, vectors: np.ndarray,
                       terms: TitleTerms, depth: int) -> tuple[list[int], np.ndarray]:
    """The top ``depth`` fused items and their feature rows (columns as ``FEATURES``), computed per column over
    the candidate block."""
    items = list(stage.fused.ids[:depth])
    if not items:
        return items, np.zeros((0, len(FEATURES)), dtype=np.float32)
    block = np.asarray(items, dtype=np.int64)
    cosines = np.asarray(vectors[block], dtype=np.float32) @ np.asarray(query_vector, dtype=np.float32).reshape(-1)
    words = QueryTerms.of(query, terms.vocabulary)
    rows = np.column_stack([
        np.asarray(stage.fused.scores[:depth], dtype=np.float64), np.arange(len(items)), cosines,
        list_block(stage.dense, block), list_block(stage.words, block), list_block(stage.grams, block),
        np.tile(np.asarray(words.row, dtype=np.float64), (len(items), 1)),
        title_block(words, block, terms)])
    return items, rows.astype(np.float32)


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
    """The published LambdaMART models (one, refit on every train query, since issue 30; the five fold models
    before): a candidate's score is their mean."""

    def __init__(self, models: list, depth: int) -> None:
        self.models = models
        self.depth = depth
        self._predict = [NativePredict.of(model) for model in models]

    @classmethod
    def from_texts(cls, models: list[str], depth: int) -> LearnedRanker:
        """From models as LightGBM text (`fit_ranker`'s output)."""
        lightgbm = import_lightgbm()
        return cls([lightgbm.Booster(model_str=text) for text in models], depth)

    @classmethod
    def load(cls, directory: Path, files: Sequence[str], depth: int) -> LearnedRanker:
        """The published models; one that cannot be read or expects other features is `ArtifactCorrupt`."""
        lightgbm = import_lightgbm()
        models = []
        for name in files:
            path = directory / name
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
        return np.mean([predict(rows) for predict in self._predict], axis=0)


PREDICT_PARAMETERS = b"num_threads=1"  # one query's 50 rows: a second thread costs more than it saves under load
C_API_FLOAT32, C_API_ROW_MAJOR, C_API_PREDICT_NORMAL = 0, 1, 0  # LightGBM's c_api.h constants


@dataclass(frozen=True)
class NativePredict:
    """One LightGBM model's scores through its C API's ``LGBM_BoosterPredictForMat``, called directly on the
    model's handle: the same function `Booster.predict` ends in, without the ~0.1-0.2 ms of Python checks and
    parameter building that call makes first (a fifth of the learned ranker's cost on 50 candidates)."""

    booster: object
    library: object

    @classmethod
    def of(cls, booster) -> NativePredict | BoosterPredict:
        """The direct call where this LightGBM exposes its library and the model's handle, else `Booster.predict`."""
        import lightgbm

        library = getattr(lightgbm.basic, "_LIB", None)
        if library is None or getattr(booster, "_handle", None) is None:
            return BoosterPredict(booster)
        return cls(booster, library)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        import ctypes

        rows = np.ascontiguousarray(rows, dtype=np.float32)
        out, length = np.zeros(len(rows), dtype=np.float64), ctypes.c_int64(0)
        status = self.library.LGBM_BoosterPredictForMat(
            self.booster._handle, rows.ctypes.data_as(ctypes.c_void_p), ctypes.c_int(C_API_FLOAT32),
            ctypes.c_int32(rows.shape[0]), ctypes.c_int32(rows.shape[1]), ctypes.c_int(C_API_ROW_MAJOR),
            ctypes.c_int(C_API_PREDICT_NORMAL), ctypes.c_int(0), ctypes.c_int(-1), ctypes.c_char_p(PREDICT_PARAMETERS),
            ctypes.byref(length), out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)))
        if status != 0 or length.value != len(rows):
            return BoosterPredict(self.booster)(rows)  # let LightGBM's own call raise its own error
        return out


@dataclass(frozen=True)
class BoosterPredict:
    """One LightGBM model's scores through `Booster.predict` (on one thread)."""

    booster: object

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return self.booster.predict(rows, num_threads=1)


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
