import math

import numpy as np
import pytest

from densesearch.eval.metrics import (
    bootstrap_ci,
    collapse,
    graded_query_metrics,
    mrr_at,
    ndcg_at,
    per_query_metrics,
    recall_at,
    write_trec_qrels,
    write_trec_run,
)
from densesearch.retrieval.fusion import rrf_fuse


def test_hand_computed_cases():
    ranked = ["a", "b", "c", "d"]
    assert recall_at(ranked, {"c"}, 2) == 0.0 and recall_at(ranked, {"c"}, 3) == 1.0
    assert recall_at(ranked, {"a", "z"}, 10) == 0.5            # k larger than the ranking
    assert mrr_at(ranked, {"c"}, 10) == pytest.approx(1 / 3)
    assert ndcg_at(ranked, {"b"}, 10) == pytest.approx(1 / math.log2(3))
    assert ndcg_at(ranked, {"a", "b"}, 10) == pytest.approx(1.0)
    assert recall_at(ranked, set(), 10) == mrr_at(ranked, set(), 10) == ndcg_at(ranked, set(), 10) == 0.0
    assert mrr_at([], {"a"}, 10) == 0.0


def test_ties_are_broken_deterministically_in_fusion():
    fused = rrf_fuse([[1, 2, 3], [3, 1, 4]], 60, 10)
    assert fused.ids == [1, 3, 2, 4]
    assert rrf_fuse([[5], [7]], 60, 10) == ([5, 7], [1 / 61, 1 / 61])  # equal scores: lower id first


def test_variant_collapse_keeps_first_of_each_group():
    assert collapse(["a1", "a2", "b1", "a3", "c"], {"a1": "A", "a2": "A", "a3": "A", "b1": "B"}) == ["A", "B", "c"]


def test_bootstrap_ci_contains_the_mean():
    values = np.random.default_rng(0).binomial(1, 0.6, size=300).astype(float)
    lo, hi = bootstrap_ci(values, 500, seed=1)
    assert lo <= values.mean() <= hi and hi - lo < 0.2


def test_agrees_with_ranx_on_real_bm25_runs(workspace):
    ranx = pytest.importorskip("ranx")
    from densesearch.core.config import PrepareConfig
    from densesearch.data.prepare import run_prepare
    from densesearch.data.readers import load_catalog, load_pairs
    from densesearch.retrieval.sparse import Bm25Index

    run_prepare(PrepareConfig(source="sample"), workspace)
    catalog, test = load_catalog(workspace), load_pairs(workspace, "test")
    hits = Bm25Index.build(catalog.texts).search([p.query for p in test], 100)
    rankings = [[catalog.ids[i] for i in found] for found, _ in hits]
    ours = per_query_metrics(rankings, [{p.item_id} for p in test], ks=(1, 10, 100))
    qrels = ranx.Qrels({p.query_id: {p.item_id: 1} for p in test})
    run = ranx.Run({p.query_id: {doc: float(100 - r) for r, doc in enumerate(ranking)}
                    for p, ranking in zip(test, rankings, strict=True)})
    theirs = ranx.evaluate(qrels, run, ["recall@1", "recall@10", "recall@100", "mrr@10", "ndcg@10"])
    for name, value in theirs.items():
        assert ours[name].mean() == pytest.approx(value, abs=1e-9), name


def test_trec_run_format(tmp_path):
    path = tmp_path / "run.trec"
    write_trec_run(path, ["q1"], [["b", "a", "c"]], [[1.0, 1.0, 0.9999995]], "tag")
    # in the order given (as served); ties at the written precision are written 1e-6 apart, in rank order
    assert path.read_text().splitlines() == ["q1 Q0 b 1 1.000000 tag", "q1 Q0 a 2 0.999999 tag",
                                             "q1 Q0 c 3 0.999998 tag"]


def test_ranx_reads_a_run_of_tied_scores_in_the_order_we_scored(tmp_path):
    ranx = pytest.importorskip("ranx")
    ids = [f"d{n:03d}" for n in range(100)]  # 100 ties: ranx's sort of equal scores is not stable
    relevant = {"q": {ids[3]: 2, ids[8]: 1, ids[60]: 2}}
    path = tmp_path / "run.trec"
    write_trec_run(path, ["q"], [ids], [[0.5] * 100], "tag")
    write_trec_qrels(tmp_path / "qrels.txt", relevant)
    ours = graded_query_metrics([ids], [relevant["q"]], 1, ks=(10,))
    qrels = ranx.Qrels.from_file(str(tmp_path / "qrels.txt"), kind="trec")
    run = ranx.Run.from_file(str(path), kind="trec")
    assert ranx.evaluate(qrels, run, "mrr@10") == pytest.approx(1 / 4) == ours["mrr@10"][0]
    assert ranx.evaluate(qrels, run, "ndcg@10") == pytest.approx(float(ours["ndcg@10"][0]))
    assert 0 < ours["ndcg@10"][0] < 1


def test_interleaved_timing_takes_turns_in_blocks_over_the_inputs_in_order():
    from densesearch.eval.timing import time_interleaved

    seen = []
    samples = time_interleaved({"a": lambda x: seen.append(("a", x)), "b": lambda x: seen.append(("b", x))},
                               [1, 2, 3], runs=5, warmup=1, block=2)
    assert seen == [("a", 1), ("b", 1),  # warm-up
                    ("a", 1), ("a", 2), ("b", 1), ("b", 2), ("a", 3), ("a", 1), ("b", 3), ("b", 1), ("a", 2), ("b", 2)]
    assert {name: len(values) for name, values in samples.items()} == {"a": 5, "b": 5}
    assert all(value >= 0 for values in samples.values() for value in values)
