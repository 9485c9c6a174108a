"""scripts/pool_bias.py: nDCG@10 by query class and the word-coverage re-ordering, on hand-made runs."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_beir import make_beir

from densesearch.core.config import PrepareConfig
from densesearch.core.paths import Workspace
from densesearch.data.prepare import run_prepare
from densesearch.data.readers import load_judgments
from densesearch.eval.metrics import graded_ndcg_at, write_trec_qrels, write_trec_run

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pool_bias.py"


@pytest.fixture(scope="module")
def pool_bias():
    spec = importlib.util.spec_from_file_location("pool_bias", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_query_classes(pool_bias):
    vocabulary = {"angle", "bracket", "12", "gauge", "deck", "stain"}
    assert pool_bias.query_classes("angle bracket", vocabulary) == [
        "no number", "every word in the catalog", "2 words"]
    assert pool_bias.query_classes("12 gauge angle brackt", vocabulary) == [
        "has a number", "a word no title has", "4+ words"]
    assert pool_bias.query_classes("deck", vocabulary)[2] == "1 word"


def test_trec_reader_keeps_rank_order_and_names_a_bad_line(pool_bias, tmp_path):
    path = tmp_path / "run.trec"
    path.write_text("q1 Q0 b 2 0.5 x\nq1 Q0 a 1 0.9 x\n\nq2 Q0 c 1 0.1 x\n")
    assert pool_bias.read_trec_run(path) == {"q1": [("a", 0.9), ("b", 0.5)], "q2": [("c", 0.1)]}
    path.write_text("q1 Q0 a 1 0.9 x\nq1 Q0 b two 0.5 x\n")
    with pytest.raises(SystemExit, match=r"run.trec:2: rank and score"):
        pool_bias.read_trec_run(path)
    path.write_text("q1 Q0 a 1\n")
    with pytest.raises(SystemExit, match=r"run.trec:1: expected 6 columns"):
        pool_bias.read_trec_run(path)


def test_ndcg_by_class_averages_the_bench_metric_over_each_class(pool_bias):
    qrels = {"q1": {"a": 6, "b": 2}, "q2": {"c": 5}}
    run = {"q1": [("b", 0.9), ("a", 0.8)], "q2": [("x", 0.9), ("c", 0.5)]}
    classes = pool_bias.ndcg_by_class({"dense": run}, ["q1", "q2"], ["angle bracket", "deck stain 5 gal"],
                                      qrels, {"angle", "bracket", "deck", "stain", "5", "gal"}, min_relevance=5)
    first, second = graded_ndcg_at(["b", "a"], qrels["q1"], 10), graded_ndcg_at(["x", "c"], qrels["q2"], 10)
    assert 0 < first < 1 and 0 < second < 1
    assert classes["all"] == {"queries": 2, "dense": pytest.approx((first + second) / 2)}
    assert classes["no number"] == {"queries": 1, "dense": pytest.approx(first)}
    assert classes["has a number"] == {"queries": 1, "dense": pytest.approx(second)}
    assert classes["4+ words"]["queries"] == 1


def test_coverage_reorder_lifts_the_title_that_holds_the_query_words(pool_bias):
    titles = {"a": "Oak Shelving Board", "b": "Unfinished Pantry Cabinet", "c": "Oak Base Cabinet"}
    qrels = {"q1": {"a": 6}}
    run = {"q1": [("b", 0.80), ("c", 0.79), ("a", 0.70)]}
    rows = pool_bias.coverage_reorder(run, ["q1"], ["oak shelving boards"], qrels, titles, 5, weights=(0.0, 0.3))
    assert rows[0]["ndcg@10"] == pytest.approx(graded_ndcg_at(["b", "c", "a"], qrels["q1"], 10))
    assert rows[1]["ndcg@10"] == pytest.approx(1.0)  # "a" holds all three words (stemmed): 0.70 + 0.3 > 0.80
    assert rows[0]["judged@10"] == rows[1]["judged@10"] == pytest.approx(1 / 3)  # one judged of the three returned


def test_script_end_to_end_on_a_prepared_beir_workspace(tmp_path):
    root = make_beir(tmp_path / "b")
    workspace_home = tmp_path / "home"
    workspace = Workspace(workspace_home)
    run_prepare(PrepareConfig(beir_path=root, min_relevance=5), workspace)
    split = load_judgments(workspace, "test")  # two queries (carved from train)
    trec = tmp_path / "trec"
    trec.mkdir()
    write_trec_qrels(trec / "qrels.txt", split.qrels)
    rankings = [sorted(split.qrels[q], key=lambda d: -split.qrels[q][d]) for q in split.query_ids]
    for name in ("bm25", "finetuned-int8"):
        write_trec_run(trec / f"{name}.trec", split.query_ids, rankings,
                       [[1.0 - 0.1 * r for r in range(len(row))] for row in rankings], name)
    done = subprocess.run([sys.executable, str(SCRIPT), "--trec", str(trec), "--home", str(workspace_home),
                           "--json"], capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    assert report["classes"]["all"]["queries"] == len(split.query_ids)
    assert report["classes"]["all"]["bm25"] == pytest.approx(1.0)  # the ideal order for every query
    assert [row["weight"] for row in report["coverage"]] == [0.0, 0.1, 0.3, 0.8]
    assert report["queries"] == len(split.query_ids)  # the split was found from qrels.txt's queries

    def fails(*extra: str) -> str:
        done = subprocess.run([sys.executable, str(SCRIPT), "--trec", str(trec), "--home", str(workspace_home),
                               *extra], capture_output=True, text=True)
        assert done.returncode != 0
        return done.stderr

    assert "no hybrid.trec" in fails("--run", "hybrid")
    assert "its queries are not the dev split" in fails("--split", "dev")
    first = split.query_ids[0]
    write_trec_qrels(trec / "qrels.txt", {first: split.qrels[first]})  # as `bench --queries 1` writes it
    done = subprocess.run([sys.executable, str(SCRIPT), "--trec", str(trec), "--home", str(workspace_home),
                           "--json"], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout)["classes"]["all"] == {"queries": 1, "bm25": 1.0, "finetuned-int8": 1.0}
    (trec / "qrels.txt").unlink()
    assert "no qrels.txt" in fails()
