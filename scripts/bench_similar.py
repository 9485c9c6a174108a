"""Latency of `similar` and `recommend` over a workspace's served index: p50/p99 over random catalog items.

    python scripts/bench_similar.py --home DIR [--items 300]
"""

import argparse
import time
from pathlib import Path

import numpy as np

from densesearch.core.paths import Workspace
from densesearch.retrieval.recommend import History, recommend, similar_items
from densesearch.retrieval.searcher import Searcher

TEXTS = ["cordless drill with battery", "white interior paint", "ceiling fan light kit", "garden hose 50 ft",
         "kitchen faucet"]


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--workspace", default="default")
    parser.add_argument("--items", type=int, default=300)
    args = parser.parse_args()
    searcher = Searcher(Workspace(args.home, args.workspace))
    rows = np.random.default_rng(0).integers(0, len(searcher.items), args.items)
    ids = [searcher.items[row]["item_id"] for row in rows]
    calls = {"similar, k=10": lambda n: similar_items(searcher, ids[n], 10),
             "recommend, 3 items": lambda n: recommend(searcher, History(item_ids=[ids[n], ids[n - 1], ids[n - 2]])),
             "recommend, 5 texts + 1 item": lambda n: recommend(searcher, History(texts=TEXTS, item_ids=[ids[n]]))}
    for call in calls.values():  # warm caches
        for n in range(min(20, len(ids))):
            call(n)
    samples = {name: [] for name in calls}
    for n in range(len(ids)):  # the calls take turns, so a drifting machine moves them alike
        for name, call in calls.items():
            samples[name].append(timed(lambda call=call, n=n: call(n)))
    for name, values in samples.items():
        print(f"{name}: p50 {np.percentile(values, 50):.2f} ms, p99 {np.percentile(values, 99):.2f} ms")


if __name__ == "__main__":
    main()
