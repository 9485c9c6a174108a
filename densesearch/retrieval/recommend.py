"""Item-to-item "similar items" and recommendations from a shopper's history, over the served dense index.

Both are retrieval with a vector that is not a typed query: an item's own stored catalog vector, or a shopper's
profile. The profile follows the reference system, whose query is a shopper's last five positive reviews joined:
the history's most recent positive texts (at most ``MAX_HISTORY_TEXTS``) are joined and encoded as one query, the
stored vectors of the items the shopper interacted with are added to it, and the mean, normalised, is searched.
What the shopper has already seen (the item, its variant group) is never recommended back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from densesearch.core.errors import BadInput
from densesearch.retrieval.searcher import Answer, Searcher, validate_query

MAX_HISTORY_TEXTS = 5  # the reference system joins a shopper's last five positive reviews
MIN_POSITIVE_RATING = 4.0  # a rated history entry counts from this rating (the reference keeps 4 and 5 stars)
MAX_HISTORY_ITEMS = 1000
OVERFETCH = 4  # neighbours fetched per wanted hit, so that excluded items still leave k


@dataclass
class History:
    """A shopper's recent texts (reviews or queries, oldest first) and the items they interacted with."""

    texts: list[str] = field(default_factory=list)
    item_ids: list[str] = field(default_factory=list)

    @classmethod
    def from_jsonl(cls, path: Path) -> History:
        """One JSON object per line, oldest first: ``{"text": ...}`` and/or ``{"item_id": ...}``, an optional
        ``"rating"`` (entries rated below 4 are not positive and are skipped)."""
        history = cls()
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput(f"cannot read the history ({exc.__class__.__name__})", str(path)) from None
        for lineno, line in enumerate(lines, start=1):
            if line.strip():
                history.add(_entry(line, str(path), lineno))
        return history

    def add(self, entry: dict) -> None:
        rating = entry.get("rating")
        if isinstance(rating, int | float) and not isinstance(rating, bool) and rating < MIN_POSITIVE_RATING:
            return
        if isinstance(entry.get("text"), str) and entry["text"].strip():
            self.texts.append(entry["text"])
        if isinstance(entry.get("item_id"), str) and entry["item_id"].strip():
            self.item_ids.append(entry["item_id"].strip())


def _entry(line: str, path: str, lineno: int) -> dict:
    try:
        entry = json.loads(line)
    except ValueError:
        entry = None
    if not isinstance(entry, dict) or not ({"text", "item_id"} & set(entry)):
        raise BadInput('each line must be a JSON object with "text" and/or "item_id"', path, lineno,
                       hint='e.g. {"text": "love this linen dress", "rating": 5} or {"item_id": "B07..."}')
    return entry


def _nearest(searcher: Searcher, vector: np.ndarray, k: int, seen_rows: set[int],
             where: Sequence[str] = ()) -> tuple[list[int], list[float]]:
    """The ``k`` nearest live items to ``vector`` kept by ``where``, outside the seen items and their groups."""
    items, allowed = searcher.items, searcher.allowed(where)
    seen_groups = {items[row]["group_id"] for row in seen_rows}
    size = allowed.count if allowed is not None else len(items)
    wanted = min(k, size)
    depth = min(size, max(wanted * OVERFETCH, wanted + len(seen_rows) + 10))
    while True:
        ranked = searcher.dense.search(vector[None, :], depth, allowed=allowed)[0]
        kept = [(i, s) for i, s in zip(ranked.ids, ranked.scores, strict=True)
                if i not in seen_rows and items[i]["group_id"] not in seen_groups]
        if len(kept) >= wanted or depth >= size:
            return [i for i, _ in kept[:wanted]], [s for _, s in kept[:wanted]]
        depth = min(size, depth * 4)


def _answer(searcher: Searcher, label: str, mode: str, k: int, found: tuple[list[int], list[float]],
            timings: tuple[float, float, float], notes: list[str]) -> Answer:
    started, encoded, searched = timings
    hits = [searcher.hit(rank, row, score) for rank, (row, score) in enumerate(zip(*found, strict=True), 1)]
    return Answer(query=label, mode=mode, k=k, hits=hits, encode_ms=(encoded - started) * 1000,
                  search_ms=(searched - encoded) * 1000, total_ms=(searched - started) * 1000,
                  answered_by=f"{searcher.spec.label} vectors + {searcher.kind}", notes=notes)


def similar_items(searcher: Searcher, item_id: str, k: int = 10, where: Sequence[str] = ()) -> Answer:
    """The items nearest to ``item_id``'s own stored vector (kept by ``where``), without the item and its variant
    group."""
    if k <= 0:
        raise BadInput(f"k must be positive, got {k}", hint="use -k 10")
    row = searcher.row(item_id)
    _ = searcher.dense  # loaded before the clock starts, as `ask` does
    started = time.perf_counter()
    vector = np.asarray(searcher.dense.vectors[row], dtype=np.float32)
    encoded = time.perf_counter()
    found = _nearest(searcher, vector, k, {row}, where)
    return _answer(searcher, item_id, "similar", k, found, (started, encoded, time.perf_counter()), [])


def profile_vector(searcher: Searcher, history: History) -> tuple[np.ndarray, set[int], list[str]]:
    """The shopper's profile (mean of the joined recent texts' vector and the known items' vectors), the rows
    already seen, and notes on what was skipped."""
    notes, rows = [], []
    for item_id in history.item_ids[-MAX_HISTORY_ITEMS:]:
        row = searcher.row_of.get(item_id)
        if row is None:
            notes.append(f"history item {item_id!r} is not in the index (withdrawn?): skipped")
        else:
            rows.append(row)
    parts = [np.asarray(searcher.dense.vectors[row], dtype=np.float32) for row in rows]
    recent = history.texts[-MAX_HISTORY_TEXTS:]
    if recent:
        text = validate_query(" ".join(" ".join(t.split()) for t in recent)[:10_000])
        parts.append(np.asarray(searcher.encoder.encode_queries([text])[0], dtype=np.float32))
    if not parts:
        raise BadInput("the history holds no positive text and no indexed item",
                       hint='give {"text": ...} lines rated 4 or more, or {"item_id": ...} lines of indexed items')
    profile = np.mean([p / max(float(np.linalg.norm(p)), 1e-12) for p in parts], axis=0)
    return profile / max(float(np.linalg.norm(profile)), 1e-12), set(rows), notes


def recommend(searcher: Searcher, history: History, k: int = 10, where: Sequence[str] = ()) -> Answer:
    """Items for a shopper (kept by ``where``): nearest to their profile, without anything they have already seen
    (or its group)."""
    if k <= 0:
        raise BadInput(f"k must be positive, got {k}", hint="use -k 10")
    if history.texts:
        searcher.load_for("dense")  # the encoder and the index, before the clock starts
    _ = searcher.dense
    started = time.perf_counter()
    profile, seen, notes = profile_vector(searcher, history)
    encoded = time.perf_counter()
    found = _nearest(searcher, profile, k, seen, where)
    label = f"history of {len(history.texts)} texts and {len(history.item_ids)} items"
    return _answer(searcher, label, "recommend", k, found, (started, encoded, time.perf_counter()), notes)
