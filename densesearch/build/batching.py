"""Training batches for in-batch-negative losses: no repeated text in a batch, rows of similar length together.

A batch is padded to its longest text. On the Fashion sample, random batches of 64 item texts pad to
about 455 tokens while the mean text has 99, so most of the encoder's work is padding. Grouping rows
of similar length (within pools of a few dozen batches, then shuffling the batch order) removes most
of it, the way `group_by_length` does in transformers; the no-duplicates rule of
sentence-transformers' NoDuplicatesBatchSampler is kept so that no in-batch negative is a copy of a
positive.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

POOL_BATCHES = 32
LENGTH_BUCKET_CHARS = 64


def pack_sorted(rows: Sequence[int], keys: Sequence[frozenset[str]], batch_size: int
                ) -> tuple[list[list[int]], list[int]]:
    """Cut length-sorted rows into consecutive batches; a row whose text is already in its batch steps back.

    Copies of one item have equal lengths and sit side by side. When a row repeats a text of its
    batch, the next row that does not is pulled forward in its place, and everything between moves
    one place later, so the order stays nearly sorted. Returns the full batches and the rows left
    over (the remainder, or rows that cannot fill a batch without a duplicate).
    """
    order = list(rows)
    batches: list[list[int]] = []
    start = 0
    while len(order) - start >= batch_size:
        seen: set[str] = set()
        for position in range(start, start + batch_size):
            if not seen.isdisjoint(keys[order[position]]):
                fits = next((j for j in range(position + 1, len(order)) if seen.isdisjoint(keys[order[j]])), None)
                if fits is None:
                    return batches, order[start:]
                order.insert(position, order.pop(fits))
            seen.update(keys[order[position]])
        batches.append(order[start:start + batch_size])
        start += batch_size
    return batches, order[start:]


def length_grouped_batches(keys: Sequence[frozenset[str]], sort_keys: Sequence[tuple[int, int]], batch_size: int,
                           seed: int, drop_last: bool, pool_batches: int = POOL_BATCHES) -> list[list[int]]:
    """Shuffle, cut into pools, sort each pool by length, pack it without duplicates, shuffle the batches.

    Rows that do not fit in their pool move on to the next one; the last leftovers form final
    batches (dropped when ``drop_last``).
    """
    rng = random.Random(seed)
    order = list(range(len(keys)))
    rng.shuffle(order)
    span = batch_size * pool_batches
    batches: list[list[int]] = []
    carried: list[int] = []
    for start in range(0, len(order), span):
        pool = sorted(carried + order[start:start + span], key=lambda row: sort_keys[row])
        full, carried = pack_sorted(pool, keys, batch_size)
        batches.extend(full)
    while carried:
        full, rest = pack_sorted(carried, keys, batch_size)
        if not full:  # fewer distinct rows than a batch: one partial batch
            batch, seen, rest = [], set(), []
            for row in carried:
                if seen.isdisjoint(keys[row]):
                    batch.append(row)
                    seen.update(keys[row])
                else:
                    rest.append(row)
            full = [] if drop_last else [batch]
        batches.extend(full)
        carried = rest
    rng.shuffle(batches)
    return batches


def row_sort_key(anchor: str, positive: str) -> tuple[int, int]:
    """Similar item-text length first, then similar query length."""
    return len(positive) // LENGTH_BUCKET_CHARS, len(anchor)


class LengthGroupedBatchSampler:
    """A DataLoader batch sampler over a sentence-transformers dataset (anchor, positive[, negative]).

    Deterministic for a given seed and epoch, so `finetune --resume` skips exactly the batches done.
    """

    def __init__(self, dataset, batch_size: int, drop_last: bool, seed: int = 0, **_: object) -> None:
        columns = [c for c in ("anchor", "positive", "negative") if c in dataset.column_names]
        values = [dataset[c] for c in columns]
        self.keys = [frozenset(row) for row in zip(*values, strict=True)]
        self.sort_keys = [row_sort_key(a, p) for a, p in zip(values[0], values[1], strict=True)]
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, length_grouped_batches(self.keys, self.sort_keys, self.batch_size,
                                                              self.seed + self.epoch, self.drop_last))
        return self._cache[1]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
