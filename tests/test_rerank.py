"""`finetune --reranker` and `query --mode rerank`: interpolation, training rows, the dev choice, end to end."""

from dataclasses import replace

import numpy as np
import pytest

from densesearch.build.reranker import (
    Batch,
    QueryGroup,
    capped_groups,
    choose_interpolation,
    cross_encoder_loss,
    cross_parity,
    grouped_batches,
    scales_for,
    spearman,
    top10_overlap,
    training_groups,
    training_rows,
)
from densesearch.cli.app import run_cli
from densesearch.core.artifacts import open_artifact
from densesearch.core.config import BenchConfig, IndexConfig, PrepareConfig, QueryConfig, RerankConfig, TrainConfig
from densesearch.core.errors import MissingArtifact
from densesearch.data.prepare import run_prepare
from densesearch.data.readers import Judgments
from densesearch.retrieval.crossencoder import Interpolation, interpolate, reranked, sigmoid
from densesearch.retrieval.fusion import Fusion
from tests.test_beir import make_beir


def test_interpolation_scales_each_list_and_breaks_ties_by_first_stage_order():
    # first [3, 2, 1] -> [1, .5, 0]; cross [0, 10, 5] -> [0, 1, .5]; weight 1: [1, 1.5, .5]
    assert interpolate([3, 2, 1], [0, 10, 5], 1.0) == ([1, 0, 2], [1.5, 1.0, 0.5])
    assert interpolate([3, 2, 1], [0, 10, 5], 0.0)[0] == [0, 1, 2]  # weight 0: the first stage's order
    assert interpolate([2, 2], [1, 1], 1.0)[0] == [0, 1]            # all equal: order kept


def test_calibrated_interpolation_keeps_a_clear_first_stage_against_an_unsure_cross_encoder():
    first, unsure = [0.8, 0.3], [0.1, 0.3]  # hybrid scores in [0, 1]; two logits the cross-encoder barely separates
    assert interpolate(first, unsure, 2.0)[0] == [1, 0]  # min-max stretches 0.1 vs 0.3 into 0 vs 1
    order, scores = interpolate(first, unsure, 2.0, "calibrated")
    assert order == [0, 1] and scores[0] == pytest.approx(0.8 + 2 * sigmoid(0.1))
    assert interpolate(first, [-4.0, 4.0], 1.0, "calibrated")[0] == [1, 0]  # a sure one still overrides
    assert sigmoid(-1000.0) == 0.0 and sigmoid(1000.0) == 1.0 and sigmoid(0.0) == 0.5


def test_only_the_head_is_rescored_and_the_tail_stays_below_it():
    items, first = ["a", "b", "c", "d"], [4.0, 3.0, 2.0, 1.0]
    order, scores = reranked(items, first, np.array([0.0, 9.0]), Interpolation(depth=2, weight=2.0))
    assert order == ["b", "a", "c", "d"]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 4


def test_training_rows_label_by_grade_and_add_only_unjudged_first_stage_hits():
    text_of = {"p": "drill 20v", "low": "drill bits", "u1": "hammer", "u2": "drill 20v", "u3": "saw"}
    judged = Judgments(query_ids=["q"], queries=["cordless drill"], qrels={"q": {"p": 6, "low": 1, "gone": 5}},
                       min_relevance=5, graded=True)
    rows = training_rows(judged, {"q": ["p", "u1", "u2", "u3", "missing"]}, text_of, unjudged=5, seed=1)
    labels = {text: label for _, text, label in rows}
    assert labels["drill 20v"] == 1.0 and labels["drill bits"] == pytest.approx(1 / 6)
    assert labels["hammer"] == 0.0 and labels["saw"] == 0.0
    # u2 copies a judged item's text and "gone" / "missing" are not in the catalog: never rows
    assert len(rows) == 4


def test_training_groups_hold_a_querys_judged_items_and_unjudged_hits_and_skip_queries_without_a_positive():
    text_of = {"p": "drill 20v", "low": "drill bits", "mid": "drill case", "u1": "hammer", "u2": "drill 20v",
               "u3": "saw", "z": "rake"}
    judged = Judgments(query_ids=["q", "none"], queries=["cordless drill", "garden rake"],
                       qrels={"q": {"p": 6, "low": 1, "mid": 3, "gone": 5}, "none": {"z": 0}},
                       min_relevance=5, graded=True)
    mined = {"q": ["p", "u1", "u2", "u3", "missing"], "none": ["u1"]}
    [group] = training_groups(judged, mined, text_of, unjudged=5, max_judged=16, seed=1)
    labels = dict(zip(group.texts, group.labels, strict=True))
    assert group.query == "cordless drill"
    assert labels == {"drill 20v": 1.0, "drill bits": pytest.approx(1 / 6), "drill case": 0.5, "hammer": 0.0,
                      "saw": 0.0}  # u2 copies a judged text; "gone" and "missing" are not in the catalog
    [capped] = training_groups(judged, mined, text_of, unjudged=1, max_judged=2, seed=1)
    assert sum(label > 0 for label in capped.labels) == 2 and len(capped.texts) == 3


def test_grouped_loss_is_softmax_cross_entropy_plus_bce_per_query_and_pointwise_is_bce():
    torch = pytest.importorskip("torch")

    def bce(x, y):
        return float(np.mean(np.logaddexp(0, x) - y * x))

    logits, labels = np.array([2.0, 0.0, -1.0, 0.5, 0.5]), [1.0, 0.5, 0.0, 1.0, 0.0]
    batch = Batch(["q1"] * 3 + ["q2"] * 2, ["a", "b", "c", "d", "e"], labels, (3, 2))
    expected = []
    for part, target in ((logits[:3], np.array(labels[:3])), (logits[3:], np.array(labels[3:]))):
        log_softmax = part - np.log(np.exp(part).sum())
        expected.append(-(target / target.sum() * log_softmax).sum() + bce(part, target))
    loss = cross_encoder_loss(torch.tensor(logits), batch)
    assert float(loss) == pytest.approx(np.mean(expected), rel=1e-6)
    pointwise = cross_encoder_loss(torch.tensor(logits), Batch(batch.queries, batch.texts, labels))
    assert float(pointwise) == pytest.approx(bce(logits, np.array(labels)), rel=1e-6)
    better = torch.tensor([2.0, 0.0, -3.0, 0.5, 0.5])  # q1's unjudged item scored lower: a lower loss
    assert float(cross_encoder_loss(better, batch)) < float(loss)


def test_grouped_batches_and_the_pair_cap_never_split_a_query():
    groups = [QueryGroup(f"q{n}", [f"t{n}.{m}" for m in range(n + 1)], [1.0] + [0.0] * n) for n in range(7)]
    batches = grouped_batches(groups, queries_per_step=3, seed=5)
    assert [len(b.sizes) for b in batches] == [3, 3, 1]
    for b in batches:
        assert sum(b.sizes) == len(b.texts) == len(b.queries) == len(b.labels)
        starts = np.cumsum((0,) + b.sizes[:-1])
        assert all(len({b.queries[s + k] for k in range(size)}) == 1 for s, size in zip(starts, b.sizes, strict=True))
    assert sorted(q for b in batches for q in set(b.queries)) == sorted(g.query for g in groups)
    kept = capped_groups(groups, pairs=10, seed=5)
    assert sum(len(g.texts) for g in kept) <= 10 and all(g in groups for g in kept) and kept


def test_dev_choice_takes_the_best_setting_or_keeps_the_first_stage():
    items = [["x", "rel"], ["y", "rel2"]]
    first = [[2.0, 1.0], [2.0, 1.0]]
    qrels = [{"rel": 6}, {"rel2": 6}]
    helpful = [np.array([0.0, 5.0]), np.array([0.0, 5.0])]
    chosen, base, grid = choose_interpolation(items, first, helpful, qrels, 5, (1, 2), (0.5, 2.0))
    assert chosen == Interpolation(2, 2.0) and base < max(row["ndcg@10"] for row in grid)
    harmful = [np.array([5.0, 0.0]), np.array([5.0, 0.0])]
    chosen, _, _ = choose_interpolation([["rel", "x"]] * 2, first, harmful, [{"rel": 6}] * 2, 5, (2,), (1.0,))
    assert chosen.weight == 0.0  # nothing beat the first stage: its order is kept


def test_an_rrf_first_stage_keeps_min_max_interpolation_only():
    both = ("min-max", "calibrated")
    assert scales_for(Fusion("wsum", w_bm25=0.3, w_ngram=0.4), both) == (both, None)
    scales, note = scales_for(Fusion("rrf", rrf_k=60), both)
    assert scales == ("min-max",) and "RRF" in note
    assert scales_for(Fusion("rrf"), ("min-max",)) == (("min-max",), None)


def test_dev_choice_takes_the_calibrated_form_where_min_max_cannot_serve_both_queries():
    # query 1: the hybrid is sure and right, the cross-encoder unsure and slightly wrong;
    # query 2: the hybrid is unsure and wrong, the cross-encoder sure and right
    items, qrels = [["rel", "x"], ["y", "rel2"]], [{"rel": 6}, {"rel2": 6}]
    first, cross = [[0.9, 0.1], [0.5, 0.45]], [np.array([0.1, 0.2]), np.array([-4.0, 4.0])]
    weights = (0.5, 1.0, 2.0)
    only_min_max, _, grid = choose_interpolation(items, first, cross, qrels, 5, (2,), weights)
    assert {row["scale"] for row in grid} == {"min-max"} and max(row["ndcg@10"] for row in grid) < 1.0
    chosen, _, grid = choose_interpolation(items, first, cross, qrels, 5, (2,), weights, ("min-max", "calibrated"))
    assert chosen == Interpolation(2, 0.5, "calibrated") and len(grid) == 6  # every calibrated weight ties: lightest
    assert "calibrated" in chosen.label


def test_parity_gate_fails_an_export_that_changes_the_served_top_10_or_loses_dev_ndcg():
    reference = [np.array([3.0, 2.0, 1.0, 0.0]), np.array([1.0, 5.0, 2.0])]
    assert spearman(reference[0], reference[0] * 2 + 1) == pytest.approx(1.0)
    assert spearman(reference[0], -reference[0]) == pytest.approx(-1.0)
    assert top10_overlap([["a", "b"], ["c"]], [["b", "a"], ["d"]]) == pytest.approx(0.5)
    cfg = RerankConfig(min_top10_overlap=0.8, max_ndcg_drop=0.005)
    close = [r + 0.01 for r in reference]
    passed = cross_parity("int8", reference, close, 0.9, 0.40, 0.398, cfg)
    assert passed.passed and passed.spearman == pytest.approx(1.0)
    lost = cross_parity("int8", reference, close, 0.9, 0.40, 0.39, cfg)
    assert not lost.passed and "nDCG" in lost.reasons[0]
    moved = cross_parity("int8", reference, [r[::-1].copy() for r in reference], 0.7, 0.40, 0.40, cfg)
    assert not moved.passed and "overlap" in moved.reasons[0] and moved.spearman < 0  # reported, not gated


def test_onnx_export_of_a_cross_encoder_reproduces_torch(tmp_path):
    """The real MiniLM with a relevance head: optimum's FP32 export and an INT8 copy, scored with segment ids."""
    from densesearch.build.export import U8U8, export_onnx, quantize_int8
    from densesearch.retrieval.crossencoder import OnnxCrossScorer, TorchCrossScorer, load_cross_encoder
    from densesearch.retrieval.encoders import FP32_FILE, resolve_base_model

    model = load_cross_encoder(resolve_base_model("sentence-transformers/all-MiniLM-L6-v2"), 64, "cpu")
    model.save(str(tmp_path))
    (tmp_path / "onnx").mkdir()
    export_onnx(str(tmp_path), tmp_path / "onnx", cross_encoder=True)
    query = "cordless drill 20v"
    texts = ["DEWALT 20-Volt MAX Cordless Drill/Driver Kit", "Ceiling tile", "drill " * 80]  # the last truncates
    torch_scores = TorchCrossScorer(model).score(query, texts)
    fp32 = OnnxCrossScorer(tmp_path / "onnx" / FP32_FILE, tmp_path / "tokenizer.json", 64)
    np.testing.assert_allclose(fp32.score(query, texts, batch_size=2), torch_scores, atol=1e-4)
    int8 = OnnxCrossScorer(tmp_path / "onnx" / quantize_int8(tmp_path / "onnx", U8U8, True),
                           tmp_path / "tokenizer.json", 64)
    assert np.max(np.abs(int8.score(query, texts) - torch_scores)) < 0.5  # close, not equal
    assert fp32.score(query, []).shape == (0,)


@pytest.mark.slow
def test_reranker_trains_is_served_and_benched_with_a_trec_file_ranx_agrees_with(tmp_path, workspace, capsys):
    ranx = pytest.importorskip("ranx")
    from densesearch.bench.bench import run_bench
    from densesearch.build.indexer import run_index
    from densesearch.build.reranker import run_train_reranker
    from densesearch.retrieval.searcher import Searcher

    run_prepare(PrepareConfig(beir_path=make_beir(tmp_path / "b", splits=("train", "dev", "test")),
                              min_relevance=5), workspace)
    with pytest.raises(MissingArtifact):  # the first stage it learns from comes first
        run_train_reranker(RerankConfig(), workspace)
    run_index(IndexConfig(), workspace)
    searcher = Searcher(workspace)
    with pytest.raises(MissingArtifact, match="finetune --reranker"):
        searcher.ask("cordless drill", QueryConfig(mode="rerank"))
    result = run_train_reranker(RerankConfig(batch_size=8), workspace)
    assert result.rows > 0 and result.steps > 0 and result.grid
    assert result.parity and result.scorer.startswith("onnx")  # exported; INT8 when its gate passed
    served = workspace.artifact("reranker")
    onnx_files = sorted(p.name for p in (served / "onnx").glob("*.onnx"))
    assert len(onnx_files) == 1 and (onnx_files[0] != "model.onnx") == result.scorer.startswith("onnx int8")
    assert result.dev_reranked >= result.dev_first_stage
    assert open_artifact(workspace, "reranker").manifest.extra["scale"] in ("min-max", "calibrated")
    served_searcher = Searcher(workspace)
    assert served_searcher._interpolation(QueryConfig(rrf_k=60)).scale == "min-max"  # rank scores: never calibrated
    answer = served_searcher.ask("cordless drill", QueryConfig(k=3, mode="rerank"))
    assert type(served_searcher.reranker.scorer).__name__ == "OnnxCrossScorer"
    assert answer.mode == "rerank" and len(answer.hits) == 3 and "cross-encoder" in answer.answered_by
    assert [h.score for h in answer.hits] == sorted((h.score for h in answer.hits), reverse=True)
    # a server answering rerank queries loads the cross-encoder's scorer, never its trainer or exporter (this
    # workspace serves the base model in torch: nothing was quantized)
    from test_architecture import SERVE_QUERIES, forbidden_in, loaded_modules_after

    code = SERVE_QUERIES.format(home=str(workspace.home), name=workspace.name, modes=["rerank", "hybrid"])
    loaded = loaded_modules_after(code, tmp_path)
    assert "densesearch.retrieval.crossencoder" in loaded and forbidden_in(loaded, torch_served=True) == []
    trec = tmp_path / "trec"
    report = run_bench(BenchConfig(split="dev", latency_runs=2, warmup_runs=1, bootstrap=50, trec_path=trec),
                       workspace)
    rerank = next(q for q in report.quality if q.run == "rerank")
    assert any(s.backend.endswith("rerank") for s in report.latency)
    qrels = ranx.Qrels.from_file(str(trec / "qrels.txt"), kind="trec")
    run = ranx.Run.from_file(str(trec / "rerank.trec"), kind="trec")
    assert ranx.evaluate(qrels, run, "ndcg@10", make_comparable=True) == pytest.approx(rerank.strict["ndcg@10"])
    run_cli(["status"])  # non-zero here: this workspace has no fine-tuned model, only the reranker matters
    assert "reranker" in capsys.readouterr().out
    distilled_from_the_reranker(workspace, served_searcher.reranker)


def distilled_from_the_reranker(workspace, scorer) -> None:
    """`finetune --teacher reranker`: the cross-encoder scores each row's pairs once (cached, equal to what it
    serves), the model records its teacher, and a second recipe scores nothing again."""
    from densesearch.build.distill import reranker_scores
    from densesearch.build.train import run_finetune

    cfg = TrainConfig(samples=24, batch_size=2, max_seq_length=32, hard_negatives="bm25", teacher="reranker",
                      eval_queries=20, eval_items=200)
    result = run_finetune(cfg, workspace)
    assert result.recipe["teacher"].startswith("reranker (") and result.recipe["distill_loss"] == "margin-mse"
    shards = sorted(p.name for p in workspace.teacher_cache.rglob("pair-*.npz"))
    assert shards
    scores, _ = reranker_scores(workspace, ["cordless drill"], [["drill", "hammer"]])
    assert scores.pairs[0] == pytest.approx(scorer.score("cordless drill", ["drill", "hammer"]), abs=1e-5)
    run_finetune(replace(cfg, distill_weight=2.0), workspace)
    assert len(sorted(workspace.teacher_cache.rglob("pair-*.npz"))) == len(shards) + 1  # only the probe's pairs


def test_a_reranker_loss_without_reranker_is_one_line_naming_the_fix(tmp_path, capsys):
    code = run_cli(["finetune", "--reranker-loss", "grouped", "--home", str(tmp_path / "h")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "add --reranker" in err[0]
    assert not any((tmp_path / "h").rglob("manifest.json"))  # nothing trained or published


@pytest.mark.slow
def test_finetune_reranker_trains_the_grouped_loss_from_the_command_line(tmp_path, workspace, capsys):
    import json

    from densesearch.build.indexer import run_index

    run_prepare(PrepareConfig(beir_path=make_beir(tmp_path / "b", splits=("train", "dev")), min_relevance=5),
                workspace)
    run_index(IndexConfig(), workspace)
    capsys.readouterr()
    code = run_cli(["finetune", "--reranker", "--reranker-loss", "grouped", "--batch-size", "2", "--json",
                    "--home", str(workspace.home)])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["loss"] == "grouped" and result["rows"] > 0 and result["steps"] > 0
    settings = open_artifact(workspace, "reranker").manifest.settings
    assert settings["loss"] == "grouped" and settings["batch_size"] == 2
    assert (settings["unjudged"], settings["unjudged_depth"]) == (8, 30)  # the grouped recipe's own defaults
