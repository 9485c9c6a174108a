"""Judged queries in the BEIR layout: a corpus, queries and graded qrels per split.

``corpus.jsonl[.gz]`` holds ``{"_id", "title", "text", ...}`` (extra fields are kept as item
metadata), ``queries.jsonl[.gz]`` holds ``{"_id", "text"}``, and ``qrels/{train,dev,test}.tsv``
holds ``query-id corpus-id score`` lines (a header line is optional; a score is a whole number).
Any subset of the splits may be present: a missing dev or test split is carved from train (else
from the split present) by query, deterministically (a hash of the query id); the donor gives those
queries up, and the carving is reported. Bad lines, duplicate ids, empty texts and judgments that
name an unknown query or document are counted and reported; only what nothing usable remains of is
an error.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from densesearch.core.errors import BadInput
from densesearch.data.itemtext import MAX_TITLE_CHARS, cap, clean_text
from densesearch.data.sources import ReadStats, iter_jsonl, open_input

SPLITS = ("train", "dev", "test")
MAX_META_CHARS = 2000
MAX_GRADE = 1000  # beyond any graded scale in use (TREC, BEIR: 0-4); larger values are damaged lines


@dataclass
class BeirStats:
    """What the reader saw and skipped."""

    corpus: ReadStats = field(default_factory=lambda: ReadStats("corpus"))
    queries: ReadStats = field(default_factory=lambda: ReadStats("queries"))
    qrels_lines: dict[str, int] = field(default_factory=dict)
    qrels_bad: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    qrels_bad_examples: list[str] = field(default_factory=list)
    duplicate_docs: int = 0
    duplicate_queries: int = 0
    empty_docs: int = 0
    empty_queries: int = 0
    dangling_judgments: int = 0
    duplicate_judgments: int = 0
    carved: dict[str, str] = field(default_factory=dict)


@dataclass
class BeirData:
    """A BEIR folder read into memory: documents, queries and graded judgments per split."""

    docs: dict[str, dict]
    queries: dict[str, str]
    qrels: dict[str, dict[str, dict[str, int]]]   # split -> query id -> doc id -> grade
    stats: BeirStats
    fingerprints: dict[str, str]


def find_file(directory: Path, stem: str) -> Path:
    """``stem.jsonl`` or ``stem.jsonl.gz`` inside ``directory``."""
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
        if (directory / name).is_file():
            return directory / name
    raise BadInput(f"no {stem}.jsonl or {stem}.jsonl.gz", str(directory), hint="expected the BEIR layout")


def read_docs(path: Path, stats: BeirStats) -> dict[str, dict]:
    docs: dict[str, dict] = {}
    for lineno, record in iter_jsonl(path, stats.corpus):
        doc_id = record.get("_id")
        if not isinstance(doc_id, (str, int)) or not str(doc_id).strip():
            stats.corpus.record_bad(lineno, "no _id")
            continue
        doc_id = str(doc_id).strip()
        title, text = clean_text(record.get("title")), clean_text(record.get("text"))
        if not title and not text:
            stats.empty_docs += 1
            continue
        if doc_id in docs:
            stats.duplicate_docs += 1
            continue
        extra = {k: v for k, v in record.items() if k not in ("_id", "title", "text")}
        meta = json.dumps(extra, ensure_ascii=False, default=str)
        docs[doc_id] = {"title": cap(title, MAX_TITLE_CHARS), "text": text,
                        "meta": extra if len(meta) <= MAX_META_CHARS else {}}
    return docs


def read_queries(path: Path, stats: BeirStats) -> dict[str, str]:
    queries: dict[str, str] = {}
    for lineno, record in iter_jsonl(path, stats.queries):
        query_id, text = record.get("_id"), clean_text(record.get("text"))
        if not isinstance(query_id, (str, int)) or not str(query_id).strip():
            stats.queries.record_bad(lineno, "no _id")
            continue
        query_id = str(query_id).strip()
        if not text:
            stats.empty_queries += 1
            continue
        if query_id in queries:
            stats.duplicate_queries += 1
            continue
        queries[query_id] = text
    return queries


def iter_qrels(path: Path, split: str, stats: BeirStats) -> Iterator[tuple[str, str, int]]:
    """(query id, doc id, grade) per line; a header and malformed lines are skipped (and counted)."""
    stats.qrels_lines[split] = 0
    with open_input(path, "r", encoding="utf-8", errors="replace") as handle:
        for lineno, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts:
                continue
            stats.qrels_lines[split] += 1
            if lineno == 1 and parts[:1] == ["query-id"]:
                continue
            if len(parts) == 4:  # TREC qrels: qid iteration docid grade
                parts = [parts[0], parts[2], parts[3]]
            grade = whole_grade(parts[2]) if len(parts) >= 3 else None
            if grade is None:  # too few fields, or a grade that is not a whole number (2.7, inf, nan, "high")
                stats.qrels_bad[split] += 1
                if len(stats.qrels_bad_examples) < 5:
                    stats.qrels_bad_examples.append(f"qrels/{split}.tsv:{lineno}: {line.strip()[:60]!r}")
                continue
            yield parts[0], parts[1], grade


def whole_grade(text: str) -> int | None:
    """A relevance grade written as a whole number ("2", "2.0", "-1"); None for anything else (2.7 is not floored:
    a grade scale is the collection's, and guessing it would change every gain)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() and abs(value) <= MAX_GRADE else None


def read_qrels(directory: Path, docs: dict[str, dict], queries: dict[str, str],
               stats: BeirStats) -> dict[str, dict[str, dict[str, int]]]:
    qrels: dict[str, dict[str, dict[str, int]]] = {}
    seen: set[tuple[str, str]] = set()
    for split in SPLITS:
        path = directory / "qrels" / f"{split}.tsv"
        if not path.is_file():
            continue
        judged: dict[str, dict[str, int]] = defaultdict(dict)
        for query_id, doc_id, grade in iter_qrels(path, split, stats):
            if query_id not in queries or doc_id not in docs:
                stats.dangling_judgments += 1
                continue
            if (query_id, doc_id) in seen:
                stats.duplicate_judgments += 1
                continue
            seen.add((query_id, doc_id))
            judged[query_id][doc_id] = grade
        qrels[split] = dict(judged)
    return qrels


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by ``key`` (the same on every machine and run)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / 16 ** 12


def carve_missing_splits(qrels: dict[str, dict[str, dict[str, int]]], dev_fraction: float, test_fraction: float,
                         stats: BeirStats) -> dict[str, dict[str, dict[str, int]]]:
    """Give every split judgments: a missing dev or test split takes queries from a donor split (train, else the
    first one present) by a hash of their id, and the donor gives them up, so no query is in two splits."""
    if not qrels:
        raise BadInput("no qrels/train.tsv, qrels/dev.tsv or qrels/test.tsv with usable judgments",
                       hint="expected `query-id corpus-id score` lines whose ids are in queries and corpus")
    out = {split: dict(qrels.get(split, {})) for split in SPLITS}
    donor = next((split for split in SPLITS if out[split]), None)
    if donor is None:  # files, but no judgment names a known query and document: the caller says so
        return out
    bands = {"test": (0.0, test_fraction), "dev": (test_fraction, test_fraction + dev_fraction)}
    for split, (low, high) in bands.items():
        if out[split] or split == donor:
            continue
        moved = {q: judged for q, judged in out[donor].items() if low <= stable_fraction(q) < high}
        out[split] = moved
        for query_id in moved:
            del out[donor][query_id]
        stats.carved[split] = (f"{len(moved):,} queries carved from {donor} by a hash of the query id "
                               f"({donor} keeps {len(out[donor]):,})")
    if not out["train"]:
        stats.carved["train"] = ("empty: the folder judges no training queries (qrels/train.tsv), so `finetune` has "
                                 "nothing to learn from; add one, or serve BM25 and the base model")
    return out


def read_beir(directory: Path, dev_fraction: float = 0.1, test_fraction: float = 0.2) -> BeirData:
    """Read a BEIR folder; the corpus, the queries and at least one split of judgments must be usable."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BadInput("not a directory", str(directory), hint="pass a BEIR folder (corpus, queries, qrels/)")
    stats = BeirStats()
    corpus_path, queries_path = find_file(directory, "corpus"), find_file(directory, "queries")
    docs = read_docs(corpus_path, stats)
    if not docs:
        raise BadInput("no usable documents (each needs an _id and a title or text)", str(corpus_path))
    queries = read_queries(queries_path, stats)
    if not queries:
        raise BadInput("no usable queries (each needs an _id and a text)", str(queries_path))
    qrels = carve_missing_splits(read_qrels(directory, docs, queries, stats), dev_fraction, test_fraction, stats)
    if not any(qrels.values()):
        raise BadInput("no judgment names a known query and document", str(directory / "qrels"))
    fingerprints = {"corpus": stats.corpus.sha256, "queries": stats.queries.sha256}
    for split in SPLITS:
        path = directory / "qrels" / f"{split}.tsv"
        if path.is_file():
            with open_input(path) as handle:
                fingerprints[f"qrels/{split}"] = hashlib.sha256(handle.read()).hexdigest()
    return BeirData(docs=docs, queries=queries, qrels=qrels, stats=stats, fingerprints=fingerprints)
