"""Pack a prepared BEIR workspace into one file for `recipe_sweep.py` on another machine.

The bundle holds the catalog texts, the queries, the graded qrels of every split and the product's own
BM25 top-100 for every judged query, so the sweep needs only torch and transformers where it runs.
It is a development aid: the bundle is data, keep it out of the repository (.git/info/exclude).

    python scripts/make_sweep_bundle.py --home HOME --out .sweep/bundle.json.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

from densesearch.artifacts import open_artifact
from densesearch.paths import Workspace, resolve_home
from densesearch.sparse import Bm25Index

DEPTH = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--workspace", default="default")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    data = open_artifact(Workspace(resolve_home(args.home), args.workspace), "data")
    catalog = list(data.iter_jsonl("catalog.jsonl"))
    texts = [row["text"] for row in catalog]
    row_of = {row["item_id"]: i for i, row in enumerate(catalog)}
    queries = {row["_id"]: row["text"] for row in data.iter_jsonl("queries.jsonl")}
    qrels: dict[str, dict[str, dict[str, int]]] = {}
    for split in ("train", "dev", "test"):
        graded: dict[str, dict[str, int]] = {}
        for line in (data.path / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]:
            qid, item, grade = line.split("\t")
            graded.setdefault(qid, {})[item] = int(grade)
        qrels[split] = graded
    judged = sorted({q for split in qrels.values() for q in split})
    bm25 = Bm25Index.build(texts, backend="bm25s")
    hits = bm25.search([queries[q] for q in judged], k=DEPTH)
    runs = {q: [[int(i), round(float(s), 4)] for i, s in zip(ids, scores, strict=True)]
            for q, (ids, scores) in zip(judged, hits, strict=True)}
    bundle = {"item_ids": [row["item_id"] for row in catalog], "texts": texts, "row_of": row_of,
              "queries": {q: queries[q] for q in judged}, "qrels": qrels, "bm25": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(args.out, "wt") as handle:
        json.dump(bundle, handle)
    print(f"{len(texts):,} items, {len(judged):,} judged queries -> {args.out} ({args.out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
