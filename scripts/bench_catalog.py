"""Filtered search and catalog changes, measured on a copy of a built workspace (optionally grown to N items).

    python scripts/bench_catalog.py --home ~/.cache/densesearch --items 0          # the catalog as built
    python scripts/bench_catalog.py --home ~/.cache/densesearch --items 826402     # grown to 826,402 items

The copy gets a synthetic ``price`` (uniform 0-100, so ``price < 100 s`` keeps a share ``s``); with ``--items`` above
the catalog's size, the extra items repeat its texts under new ids with synthetic vectors (real vectors plus
covariance-shaped noise, as `bench --scale`) and the index is rebuilt over all of them. It then measures, through
the served code (`Searcher.ask` with ``--where``):

- per selectivity (50%, 10%, 1%, 0.1%) and mode (dense, hybrid): p50 / p99 of the search (filter included), recall@10
  against exact filtered search (dense: exact inner product over the kept rows; hybrid: the same fusion and ranker
  over exact dense lists), and what post-filtering the unfiltered top 10 / top 100 leaves (what a user would write);
- `index --delete` of ``--changes`` ids, `index --upsert` of as many new items, `index --compact`, end to end.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from densesearch.bench.scale import VectorSynthesizer
from densesearch.build.indexer import _write_items, add_in_chunks, copy_ranker, new_faiss_index, new_vectors_file
from densesearch.build.updates import Published, run_compact, run_delete, run_upsert, write_lexical
from densesearch.core.artifacts import DENSE_FILE, ITEMS_FILE, VECTORS_FILE, open_artifact
from densesearch.core.config import IndexConfig, QueryConfig
from densesearch.core.manifest import write_manifest
from densesearch.core.paths import Workspace, publish
from densesearch.data.readers import load_pairs
from densesearch.retrieval import dense as dense_module
from densesearch.retrieval.searcher import Searcher

SHARES = (0.5, 0.1, 0.01, 0.001)


def grow(ws: Workspace, items: int, seed: int = 7) -> None:
    """Publish the workspace's index with a synthetic price on every item and, beyond its size, more items."""
    import faiss

    published = Published.load(ws)
    rng = np.random.default_rng(seed)
    base, old = published.rows, published.artifact.load_npy(VECTORS_FILE)
    n = max(items, len(base))
    rows = [dict(base[i % len(base)]) for i in range(n)]
    for number, row in enumerate(rows):
        row["price"] = round(float(rng.uniform(0, 100)), 2)
        if number >= len(base):
            row["item_id"] = row["group_id"] = f"{row['item_id']}~{number // len(base)}"
    with publish(ws, "index") as tmp:
        vectors = new_vectors_file(tmp / VECTORS_FILE, n, old.shape[1])
        vectors[: len(old)] = old
        if n > len(old):
            synth = VectorSynthesizer.fit(old[rng.permutation(len(old))[:20000]])
            synth.calibrate(0.9, rng)
            for start in range(len(old), n, 65536):
                stop = min(start + 65536, n)
                vectors[start:stop] = synth.sample(rng, stop - start)[0]
            kind, settings = published.manifest.extra["kind"], published.manifest.settings
            cfg = IndexConfig(kind=kind, hnsw_m=int(settings.get("hnsw_m", 32)))
            index = new_faiss_index(kind, old.shape[1], n, cfg)
            add_in_chunks(index, vectors)
            faiss.write_index(index, str(tmp / DENSE_FILE))
        else:
            shutil.copy2(published.artifact.path / DENSE_FILE, tmp / DENSE_FILE)
        vectors.flush()
        write_lexical(rows, np.ones(n, dtype=bool), published.manifest.extra["bm25"], tmp)
        copy_ranker(published.artifact.path, tmp, rows)
        _write_items(tmp / ITEMS_FILE, rows)
        manifest = published.manifest
        manifest.counts = {**manifest.counts, "vectors": n}
        if n > len(old):  # efSearch tuned on the grown graph, as `index` tunes it (dev queries, target recall)
            manifest.extra["search_param"] = {"efSearch": retuned(ws, index, vectors, manifest)}
        write_manifest(tmp, manifest)


def retuned(ws: Workspace, index, vectors: np.ndarray, manifest) -> int:
    """The efSearch `index` would choose for the grown graph: the smallest reaching its target recall vs exact."""
    from densesearch.build.tuning import sweep_search_param
    from densesearch.eval.evaluation import exact_topk
    from densesearch.retrieval.dense import DenseIndex
    from densesearch.retrieval.encoders import EncoderSpec

    spec = EncoderSpec.from_record(open_artifact(ws, "index").info.encoder)
    queries = spec.load(ws, 1).encode_queries([pair.query for pair in load_pairs(ws, "dev")[:500]])
    exact, _ = exact_topk(queries, vectors, 10)
    dense = DenseIndex(index, manifest.extra["kind"], vectors, 0, 1)
    _, param = sweep_search_param(dense, queries, exact, float(manifest.settings.get("target_recall", 0.99)))
    print(json.dumps({"efSearch": param}), flush=True)
    return param


def exact_lists(searcher: Searcher, run):
    """``run()`` with every filtered dense search scored exactly (the reference a filtered search is held to)."""
    saved = dense_module.EXACT_ROWS
    dense_module.EXACT_ROWS = 1 << 62
    try:
        return run()
    finally:
        dense_module.EXACT_ROWS = saved


def measure_filters(searcher: Searcher, queries: list[str]) -> list[dict]:
    searcher.allowed(("price < 1",))  # the price column is built once, on the first filter: not timed
    for mode in ("dense", "hybrid"):
        searcher.ask(queries[0], QueryConfig(k=10, mode=mode))
    rows = []
    for share in SHARES:
        where = (f"price < {100 * share:g}",)
        for mode in ("dense", "hybrid"):
            times, recall, post10, post100 = [], [], [], []
            for text in queries:
                answer = searcher.ask(text, QueryConfig(k=10, mode=mode, where=where))
                times.append(answer.search_ms)
                config = QueryConfig(k=10, mode=mode, where=where)
                truth = exact_lists(searcher, lambda t=text, c=config: searcher.ask(t, c))
                expected = {hit.item_id for hit in truth.hits}
                recall.append(len({hit.item_id for hit in answer.hits} & expected) / max(len(expected), 1))
                unfiltered = searcher.ask(text, QueryConfig(k=100, mode=mode)).hits
                kept = [hit for hit in unfiltered if hit.price is not None and hit.price < 100 * share]
                post10.append(sum(1 for hit in kept if hit.rank <= 10))
                post100.append(min(len(kept), 10))
            rows.append({"share": share, "mode": mode, "kept": int(searcher.allowed(where).count),
                         "p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
                         "recall_at_10": float(np.mean(recall)), "post_filter_top10_hits": float(np.mean(post10)),
                         "post_filter_top100_hits": float(np.mean(post100))})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def measure_changes(ws: Workspace, changes: int, scratch: Path) -> dict:
    searcher = Searcher(ws)
    rng = np.random.default_rng(11)
    doomed = [searcher.items[i]["item_id"] for i in rng.choice(len(searcher.items), changes, replace=False)]
    (scratch / "delete.txt").write_text("\n".join(doomed) + "\n")
    lines = [{"_id": f"UPSERT{n}", "title": f"{searcher.items[i]['title']} (new edition {n})", "text": ""}
             for n, i in enumerate(rng.choice(len(searcher.items), changes, replace=False))]
    (scratch / "upsert.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = {"items": len(searcher.items), "changes": changes}
    for action, cfg in (("delete", IndexConfig(delete_path=scratch / "delete.txt")),
                        ("upsert", IndexConfig(upsert_path=scratch / "upsert.jsonl")),
                        ("compact", IndexConfig(compact=True))):
        started = time.perf_counter()
        result = {"delete": run_delete, "upsert": run_upsert, "compact": run_compact}[action](cfg, ws)
        out[f"{action}_seconds"] = time.perf_counter() - started
        out[f"{action}_encoded"] = result.encoded
        print(json.dumps({action: out[f"{action}_seconds"]}), flush=True)
    out["upsert_items_per_second"] = changes / out["upsert_seconds"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--workspace", default="default")
    parser.add_argument("--items", type=int, default=0, help="grow the catalog to this many items (0: as built)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--changes", type=int, default=1000, help="items deleted, then upserted (0: skip)")
    parser.add_argument("--scratch", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-catalog-", dir=args.scratch))
    try:
        source = Workspace(args.home, args.workspace)
        ws = Workspace(scratch / "home", args.workspace)
        shutil.copytree(source.root, ws.root, ignore=shutil.ignore_patterns(".lock*", "bench", "cache"))
        started = time.perf_counter()
        grow(ws, args.items)
        print(json.dumps({"grown_seconds": time.perf_counter() - started}), flush=True)
        searcher = Searcher(ws, threads=1)
        _ = searcher.items, searcher.first_stage
        gc.collect()
        gc.freeze()  # as `serve` does: a full collection over a large catalog's rows is a latency spike
        pairs = load_pairs(ws, "dev")[: args.queries]
        report = {"workspace": str(source.root), "items": len(searcher.items),
                  "filters": measure_filters(searcher, [pair.query for pair in pairs]),
                  "changes": measure_changes(ws, args.changes, scratch) if args.changes else None}
        text = json.dumps(report, indent=2)
        (args.out.write_text(text + "\n") if args.out else sys.stdout.write(text + "\n"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
