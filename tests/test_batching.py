"""Length-grouped, no-duplicate training batches."""

import random

import numpy as np
from datasets import Dataset

from densesearch.build.batching import LengthGroupedBatchSampler, length_grouped_batches, pack_sorted


def rows(n: int = 2000, items: int = 300, seed: int = 0):
    rng = random.Random(seed)
    item_text = {i: "w " * int(rng.lognormvariate(3.5, 1.0)) + f"item {i}" for i in range(items)}
    positives = [item_text[rng.randrange(items)] for _ in range(n)]
    anchors = [f"query {q} " + "x " * rng.randrange(20) for q in range(n)]
    return anchors, positives


def test_every_row_once_and_no_text_twice_in_a_batch():
    anchors, positives = rows(2000, 1500)  # some items have several pairs
    keys = [frozenset(pair) for pair in zip(anchors, positives, strict=True)]
    batches = length_grouped_batches(keys, [(len(p), len(a)) for a, p in zip(anchors, positives, strict=True)],
                                     64, seed=1, drop_last=False)
    assert sorted(i for b in batches for i in b) == list(range(len(anchors)))
    for batch in batches:
        assert len({positives[i] for i in batch}) == len(batch)
    assert sum(len(b) for b in batches if len(b) < 64) <= 0.05 * len(anchors)  # remainder + copies with no room


def test_grouping_cuts_padding_against_random_batches():
    anchors, positives = rows()
    keys = [frozenset(pair) for pair in zip(anchors, positives, strict=True)]
    grouped = length_grouped_batches(keys, [(len(p), len(a)) for a, p in zip(anchors, positives, strict=True)],
                                     64, seed=1, drop_last=True)
    shuffled = list(range(len(anchors)))
    random.Random(1).shuffle(shuffled)
    plain = [shuffled[i:i + 64] for i in range(0, len(shuffled) - 63, 64)]

    def padded(batches):
        return np.mean([max(len(positives[i]) for i in b) for b in batches])

    assert padded(grouped) < 0.5 * padded(plain)


def test_copies_of_one_item_go_to_different_batches_or_wait():
    keys = [frozenset({"same item", f"q{i}"}) for i in range(5)]
    keys += [frozenset({f"other {i}", f"r{i}"}) for i in range(5)]
    full, left = pack_sorted(list(range(10)), keys, batch_size=2)
    assert all(len({k for i in b for k in keys[i]}) == 4 for b in full)
    assert sorted([i for b in full for i in b] + left) == list(range(10))
    assert sum("same item" in keys[i] for b in full for i in b) == len(full) == 5  # one copy in each batch


def test_sampler_is_deterministic_per_epoch_and_checks_negatives_too():
    anchors, positives = rows(400, 80)
    negatives = positives[1:] + positives[:1]  # a negative is usually another row's positive
    dataset = Dataset.from_dict({"anchor": anchors, "positive": positives, "negative": negatives})
    sampler = LengthGroupedBatchSampler(dataset, batch_size=16, drop_last=True, seed=3, generator=None)
    first = list(sampler)
    assert len(first) == len(sampler) and first == list(sampler)
    for batch in first:
        texts = [t for i in batch for t in {anchors[i], positives[i], negatives[i]}]
        assert len(texts) == len(set(texts))
    sampler.set_epoch(1)
    assert list(sampler) != first
