"""Base models side by side on a prepared workspace's judged queries: quality and CPU latency per query.

Usage: python scripts/compare_bases.py MODEL [MODEL ...] [--home PATH] [-w NAME] [--split dev]
       [--items 15000] [--max-seq-length 48] [--json]

Each MODEL is a sentence-transformers directory (or Hub id), e.g. the offline all-MiniLM-L6-v2, a
larger base such as all-mpnet-base-v2, or a fine-tuned `model` artifact. Every model encodes the same
catalog rows (torch, FP32, this CPU) and the split's queries one at a time, and is scored by exact
search with the product's graded metrics (nDCG@10 with grades as gains, judged-only nDCG@10, Recall@10
at the workspace's relevance bar). A catalog larger than ``--items`` is cut to every item judged for
the split plus a seeded sample of the rest, so the numbers compare models with each other on that
subset, not with `bench` over the full catalog. Latency is the median ms to encode one query (batch 1).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from densesearch.core.paths import Workspace, resolve_home
from densesearch.data.readers import load_catalog, load_judgments
from densesearch.eval.evaluation import eval_catalog, exact_topk
from densesearch.eval.metrics import graded_query_metrics
from densesearch.retrieval.encoders import load_torch_encoder, resolve_base_model

LATENCY_QUERIES = 100


def score_model(model: str, item_ids: list[str], texts: list[str], queries: list[str],
                qrels: list[dict[str, int]], min_relevance: int, max_seq_length: int) -> dict:
    encoder = load_torch_encoder(resolve_base_model(model), fingerprint="", max_seq_length=max_seq_length)
    started = time.perf_counter()
    items = encoder.encode(texts, batch_size=64)
    items_per_second = len(texts) / (time.perf_counter() - started)
    query_vectors = encoder.encode(queries, batch_size=64)
    top, _ = exact_topk(query_vectors, items, 100)
    per_query = graded_query_metrics([[item_ids[i] for i in row] for row in top], qrels, min_relevance, ks=(10, 100))
    latencies = []
    for query in queries[:LATENCY_QUERIES]:
        started = time.perf_counter()
        encoder.encode([query], batch_size=1)
        latencies.append((time.perf_counter() - started) * 1000)
    return {"model": model, "ndcg@10": float(per_query["ndcg@10"].mean()),
            "judged_ndcg@10": float(per_query["judged_ndcg@10"].mean()),
            "recall@10": float(per_query["recall@10"].mean()), "recall@100": float(per_query["recall@100"].mean()),
            "query_ms_p50": statistics.median(latencies), "catalog_items_per_second": items_per_second}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--home", default=None)
    parser.add_argument("-w", "--workspace", default="default")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--items", type=int, default=15_000, help="catalog rows to score on (judged + sample)")
    parser.add_argument("--max-seq-length", type=int, default=48)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    workspace = Workspace(resolve_home(args.home), args.workspace)
    catalog = load_catalog(workspace)
    judgments = load_judgments(workspace, args.split)
    rows = eval_catalog(catalog.ids, judgments.qrels, args.items, args.seed)
    item_ids = [catalog.ids[i] for i in rows]
    texts = [catalog.texts[i] for i in rows]
    qrels = [judgments.qrels[q] for q in judgments.query_ids]
    results = [score_model(model, item_ids, texts, judgments.queries, qrels, judgments.min_relevance,
                           args.max_seq_length) for model in args.models]
    if args.json:
        print(json.dumps({"items": len(rows), "queries": len(qrels), "split": args.split, "results": results},
                         indent=2))
        return
    print(f"{len(rows):,} catalog rows (every judged item + a seeded sample), {len(qrels):,} {args.split} queries, "
          f"max_seq_length {args.max_seq_length}, torch FP32 on this CPU")
    print(f"{'model':44} {'nDCG@10':>8} {'judged':>7} {'R@10':>6} {'R@100':>6} {'ms/query':>9} {'items/s':>8}")
    for row in results:
        print(f"{Path(row['model']).name[:44]:44} {row['ndcg@10']:>8.3f} {row['judged_ndcg@10']:>7.3f} "
              f"{row['recall@10']:>6.3f} {row['recall@100']:>6.3f} {row['query_ms_p50']:>9.2f} "
              f"{row['catalog_items_per_second']:>8.0f}")


if __name__ == "__main__":
    main()
