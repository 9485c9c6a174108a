"""Where a dense run loses to BM25 on pooled judgments: nDCG@10 by query class, and a word-coverage ceiling.

Usage: python scripts/pool_bias.py --trec DIR [--home PATH] [-w NAME] [--split dev|test] [--run finetuned-int8]
       [--json]

DIR is what `densesearch bench --split SPLIT --trec DIR` wrote on a prepared workspace of judged data
(qrels.txt and one .trec file per system). The queries are those of qrels.txt, and their texts come from
the workspace split that holds them all (``--split`` to name it). Two tables come out:

1. Every run's mean nDCG@10 (grades as gains, unjudged = 0, the bench metric) by query class: with or
   without a number; every word found in some catalog title or not (typos, joined words); 1, 2, 3 or
   4+ words.
2. ``--run``'s top 100 re-ordered by ``score + weight x coverage``, where coverage is the share of the
   query's (stemmed, stopword-free) words that the title holds. nDCG@10 and judged@10 (the share of the
   top 10 that carries any judgment) per weight.

When the judgments were pooled from a lexical engine, the items that engine could not return carry no
judgment and count as 0. A dense run that ranks the judged items better (judged-only nDCG) can still
score lower on the pooled metric, and table 2 shows how far a word-match re-ordering of the very same
candidates moves it. The re-ordering reads the titles' words, so it is a hybrid, not a dense system.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Container, Sequence
from dataclasses import replace
from pathlib import Path

from densesearch.core.paths import Workspace, resolve_home
from densesearch.data.readers import Judgments, load_catalog, load_judgments
from densesearch.eval.metrics import graded_query_metrics
from densesearch.retrieval.ranker import TitleTerms, words_of
from densesearch.retrieval.sparse import Tokenizer

WEIGHTS = (0.0, 0.1, 0.3, 0.8)
DEPTH = 100


def read_trec_run(path: Path) -> dict[str, list[tuple[str, float]]]:
    """query id -> [(item id, score)] in the file's rank order; a malformed line names its number."""
    runs: dict[str, list[tuple[str, int, float]]] = defaultdict(list)
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise SystemExit(f"{path}:{number}: expected 6 columns (qid Q0 docid rank score tag), "
                                 f"got {len(parts)}")
            try:
                runs[parts[0]].append((parts[2], int(parts[3]), float(parts[4])))
            except ValueError:
                raise SystemExit(f"{path}:{number}: rank and score must be numbers") from None
    return {q: [(item, score) for item, _, score in sorted(rows, key=lambda r: r[1])] for q, rows in runs.items()}


def trec_query_ids(directory: Path) -> list[str]:
    """The query ids of ``directory/qrels.txt`` in file order."""
    path = directory / "qrels.txt"
    if not path.is_file():
        raise SystemExit(f"{directory}: no qrels.txt; run `densesearch bench --trec {directory}`")
    with open(path, encoding="utf-8") as handle:
        return list(dict.fromkeys(line.split()[0] for line in handle if line.strip()))


def judgments_for(workspace: Workspace, query_ids: list[str], split: str | None, directory: Path) -> Judgments:
    """The split's judgments cut to ``query_ids`` (bench --queries N scores the first N); the split is the one
    holding every id when ``split`` is None."""
    for name in [split] if split else ["dev", "test"]:
        judgments = load_judgments(workspace, name)
        text_of = dict(zip(judgments.query_ids, judgments.queries, strict=True))
        if query_ids and all(q in text_of for q in query_ids):
            return replace(judgments, query_ids=query_ids, queries=[text_of[q] for q in query_ids],
                           qrels={q: judgments.qrels[q] for q in query_ids})
    where = f"the {split} split" if split else "the dev or test split"
    raise SystemExit(f"{directory}/qrels.txt: its queries are not {where} of this workspace; pass the --split, "
                     "--home and -w that `bench` ran with")


def query_classes(query: str, vocabulary: Container[str]) -> list[str]:
    """The classes a query falls in: number or not, all words known to the catalog or not, its length."""
    words = words_of(query)  # the learned ranker's words: the class matches its query_unknown_words feature
    return ["has a number" if any(c.isdigit() for c in query) else "no number",
            "every word in the catalog" if all(w in vocabulary for w in words) else "a word no title has",
            f"{min(len(words), 4)}{'+' if len(words) >= 4 else ''} word{'s' if len(words) != 1 else ''}"]


def ndcg_by_class(runs: dict[str, dict[str, list[tuple[str, float]]]], query_ids: Sequence[str],
                  queries: Sequence[str], qrels: dict[str, dict[str, int]], vocabulary: Container[str],
                  min_relevance: int) -> dict[str, dict[str, float]]:
    """class -> {"queries": n, run name: mean nDCG@10}; the class "all" holds every query."""
    members: dict[str, list[int]] = defaultdict(list)
    for position, query in enumerate(queries):
        for name in ["all", *query_classes(query, vocabulary)]:
            members[name].append(position)
    per_run = {}
    for name, run in runs.items():
        rankings = [[item for item, _ in run.get(q, [])] for q in query_ids]
        per_run[name] = graded_query_metrics(rankings, [qrels[q] for q in query_ids], min_relevance,
                                             ks=(10,))["ndcg@10"]
    return {cls: {"queries": len(rows), **{name: float(values[rows].mean()) for name, values in per_run.items()}}
            for cls, rows in members.items()}


def coverage(query_terms: set[str], title_terms: set[str]) -> float:
    return len(query_terms & title_terms) / len(query_terms) if query_terms else 0.0


def coverage_reorder(run: dict[str, list[tuple[str, float]]], query_ids: Sequence[str], queries: Sequence[str],
                     qrels: dict[str, dict[str, int]], title_of: dict[str, str], min_relevance: int,
                     weights: Sequence[float] = WEIGHTS) -> list[dict[str, float]]:
    """nDCG@10 and judged@10 of the run's top ``DEPTH`` re-ordered by score + weight x coverage, per weight."""
    tokenize = Tokenizer()
    terms: dict[str, set[str]] = {}
    candidates = []  # per query: (item, score, coverage) of its top DEPTH, computed once for every weight
    for query_id, query in zip(query_ids, queries, strict=True):
        wanted = set(tokenize(query))
        hits = run.get(query_id, [])[:DEPTH]
        for item, _ in hits:
            if item not in terms:
                terms[item] = set(tokenize(title_of.get(item, "")))
        candidates.append([(item, score, coverage(wanted, terms[item])) for item, score in hits])
    rows = []
    for weight in weights:
        # sorted() is stable: ties keep the run's order
        rankings = [[item for item, _, _ in sorted(hits, key=lambda h: -(h[1] + weight * h[2]))] for hits in candidates]
        metrics = graded_query_metrics(rankings, [qrels[q] for q in query_ids], min_relevance, ks=(10,))
        rows.append({"weight": weight, "ndcg@10": float(metrics["ndcg@10"].mean()),
                     "judged@10": float(metrics["judged@10"].mean())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trec", required=True, type=Path, help="the directory `bench --trec` wrote")
    parser.add_argument("--home", default=None)
    parser.add_argument("-w", "--workspace", default="default")
    parser.add_argument("--split", choices=("dev", "test"), default=None,
                        help="the split bench scored (default: the one holding qrels.txt's queries)")
    parser.add_argument("--run", default="finetuned-int8", help="the run to re-order by word coverage")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    files = sorted(args.trec.glob("*.trec"))
    if not files:
        raise SystemExit(f"{args.trec}: no .trec files; run `densesearch bench --trec {args.trec}`")
    if args.run not in {f.stem for f in files}:
        raise SystemExit(f"{args.trec}: no {args.run}.trec; pick one of {', '.join(f.stem for f in files)}")
    workspace = Workspace(resolve_home(args.home), args.workspace)
    catalog = load_catalog(workspace)
    judgments = judgments_for(workspace, trec_query_ids(args.trec), args.split, args.trec)
    runs = {f.stem: read_trec_run(f) for f in files}
    vocabulary = TitleTerms.of(catalog.texts).vocabulary
    classes = ndcg_by_class(runs, judgments.query_ids, judgments.queries, judgments.qrels, vocabulary,
                            judgments.min_relevance)
    ceiling = coverage_reorder(runs[args.run], judgments.query_ids, judgments.queries, judgments.qrels,
                               dict(zip(catalog.ids, catalog.texts, strict=True)), judgments.min_relevance)
    if args.json:
        print(json.dumps({"queries": len(judgments.query_ids), "classes": classes, "run": args.run,
                          "coverage": ceiling}, indent=2))
        return
    names = list(runs)
    print(f"nDCG@10 by query class ({len(judgments.query_ids):,} queries of {args.trec}/qrels.txt)")
    print(f"{'class':28} {'queries':>7} " + " ".join(f"{n[:16]:>16}" for n in names))
    for cls, row in sorted(classes.items(), key=lambda kv: (kv[0] != "all", kv[0])):
        print(f"{cls:28} {row['queries']:>7} " + " ".join(f"{row[n]:>16.4f}" for n in names))
    print(f"\n{args.run}: its top {DEPTH} re-ordered by score + weight x query-word coverage of the title")
    print(f"{'weight':>6} {'nDCG@10':>8} {'judged@10':>9}")
    for row in ceiling:
        print(f"{row['weight']:>6} {row['ndcg@10']:>8.4f} {row['judged@10']:>9.4f}")
    bm25 = classes["all"].get("bm25")
    if bm25:
        print(f"(bm25: {bm25:.4f})")


if __name__ == "__main__":
    main()
