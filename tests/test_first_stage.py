"""One first stage: what `index` tunes on and what `bench` scores are the lists `query` serves, for every kind."""

import shutil

import numpy as np
import pytest

from densesearch.bench.bench import run_bench
from densesearch.build.indexer import run_index
from densesearch.build.tuning import dev_judgments
from densesearch.core.artifacts import open_artifact
from densesearch.core.config import BenchConfig, IndexConfig, IndexKind, QueryConfig, RankerConfig
from densesearch.core.paths import Workspace
from densesearch.eval.metrics import graded_query_metrics
from densesearch.retrieval.searcher import Searcher


def read_trec(path) -> dict[str, list[str]]:
    """A TREC run's item ids per query, in rank order."""
    rows: dict[str, list[tuple[int, str]]] = {}
    for line in path.read_text().splitlines():
        query, _, item, rank, _, _ = line.split()
        rows.setdefault(query, []).append((int(rank), item))
    return {query: [item for _, item in sorted(found)] for query, found in rows.items()}


def served(searcher: Searcher, text: str, mode: str, k: int) -> list[str]:
    return [hit.item_id for hit in searcher.ask(text, QueryConfig(k=k, mode=mode)).hits]


def check_tuned_and_benched_equal_served(ws: Workspace, tmp_path) -> None:
    searcher = Searcher(ws)
    extra = open_artifact(ws, "index").manifest.extra
    # index: the mode was chosen on these dev queries' lists; recomputed from what `query` serves, the numbers agree
    dev = dev_judgments(ws)
    qrels = [dev.qrels[q] for q in dev.query_ids]
    for mode in ("dense", "bm25", "hybrid"):
        lists = [served(searcher, text, mode, 100)[:10] for text in dev.queries]
        ndcg = graded_query_metrics(lists, qrels, dev.min_relevance, ks=(10,))["ndcg@10"].mean()
        assert ndcg == pytest.approx(extra["dev_ndcg_at_10"][mode], abs=1e-9), mode
    # bench: its TREC runs of the served dense index and of hybrid are the served answers, item for item
    trec = tmp_path / "trec"
    run_bench(BenchConfig(split="dev", latency_runs=2, warmup_runs=1, bootstrap=10, trec_path=trec), ws)
    judgments = dict(zip(dev.query_ids, dev.queries, strict=True))
    served_name = "finetuned-int8" if searcher.spec.backend == "onnx-int8" else "served"
    for run, mode in ((served_name, "dense"), ("hybrid", "hybrid"), ("bm25", "bm25")):
        ranked = read_trec(trec / f"{run}.trec")
        for query_id, items in ranked.items():
            if query_id in judgments:
                assert items == served(searcher, judgments[query_id], mode, len(items)), (run, query_id)


@pytest.mark.parametrize("kind", [IndexKind.FLAT, IndexKind.HNSW, IndexKind.HNSW_SQ8, IndexKind.IVF_HNSW])
def test_tuned_benched_and_served_lists_are_one(built, tmp_path, kind):
    """On a copy of the built workspace (its vectors reused: only the structure is rebuilt)."""
    home = tmp_path / "home"
    shutil.copytree(built["ws"].home, home, symlinks=True)
    ws = Workspace(home, built["ws"].name)
    run_index(IndexConfig(kind=kind), ws)
    assert open_artifact(ws, "index").manifest.extra["factory"]
    check_tuned_and_benched_equal_served(ws, tmp_path)


@pytest.mark.slow
def test_ivfpq_tunes_benches_and_serves_the_exactly_rescored_lists(tmp_path, workspace):
    """IVF-PQ needs 9,984 vectors to train its codebooks: a BEIR catalog of 10,000 titles, the base encoder."""
    import json

    from densesearch.core.config import PrepareConfig
    from densesearch.data.prepare import run_prepare

    rng = np.random.default_rng(3)
    nouns = ["drill", "saw", "hammer", "ladder", "paint", "lamp", "faucet", "tile", "fence", "hose"]
    adjectives = ["cordless", "steel", "white", "outdoor", "heavy duty", "compact", "brass", "led", "oak", "vinyl"]
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    with open(beir / "corpus.jsonl", "w") as out:
        for n in range(10_000):
            title = f"{rng.choice(adjectives)} {rng.choice(nouns)} model {n}"
            out.write(json.dumps({"_id": f"d{n}", "title": title, "text": ""}) + "\n")
    queries = [f"{a} {b}" for a in adjectives for b in nouns]
    with open(beir / "queries.jsonl", "w") as out:
        for q, text in enumerate(queries):
            out.write(json.dumps({"_id": f"q{q}", "text": text}) + "\n")
    for split, rows in (("train", range(0, 60)), ("dev", range(60, 100))):
        lines = [f"q{q}\td{(q * 97 + j) % 10_000}\t{1 + j % 2}" for q in rows for j in range(3)]
        (beir / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(lines) + "\n")
    run_prepare(PrepareConfig(beir_path=beir), workspace)
    run_index(IndexConfig(kind=IndexKind.IVFPQ, model="base", ranker=RankerConfig(mode="off")), workspace)
    check_tuned_and_benched_equal_served(workspace, tmp_path)
