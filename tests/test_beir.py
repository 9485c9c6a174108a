"""`prepare --beir`: judged queries in the BEIR layout, graded evaluation, TREC files that ranx scores alike."""

import gzip
import json

import pytest

from densesearch.cli.app import run_cli
from densesearch.core.config import BenchConfig, IndexConfig, PrepareConfig
from densesearch.core.errors import BadInput
from densesearch.data.beir import read_beir, stable_fraction
from densesearch.data.prepare import run_prepare
from densesearch.data.readers import load_catalog, load_judgments, load_pairs
from densesearch.eval.metrics import graded_query_metrics

PRODUCTS = [
    "cordless drill 20V with two batteries", "hammer drill masonry bits set", "impact driver kit brushless",
    "interior wall paint eggshell white gallon", "exterior deck stain cedar", "paint roller cover 9 inch",
    "ceiling fan with light kit 52 inch", "LED flush mount ceiling light", "smart light switch wifi",
    "garden hose 50 ft kink free", "hose nozzle 8 pattern", "lawn sprinkler oscillating",
    "kitchen faucet pull down stainless", "shower head rain 12 inch", "toilet flapper universal",
    "angle bracket galvanized steel", "wood screws 2 inch box", "drywall anchors kit",
    "laminate flooring oak plank", "tile spacers 1/8 inch", "grout sealer spray",
]
QUERIES = {"q1": "cordless drill", "q2": "white paint", "q3": "ceiling lamp", "q4": "garden hose",
           "q5": "kitchen faucet", "q6": "angle bracket", "q7": "floor planks", "q8": "saww horse",
           "q9": "light switch", "q10": "deck stain"}
JUDGED = {"q1": {"d0": 6, "d1": 3, "d2": 5}, "q2": {"d3": 6, "d4": 1, "d5": 2}, "q3": {"d6": 5, "d7": 6, "d8": 2},
          "q4": {"d9": 6, "d10": 4}, "q5": {"d12": 6, "d13": 2}, "q6": {"d15": 6, "d16": 1},
          "q7": {"d18": 6, "d19": 0}, "q8": {"d17": 0}, "q9": {"d8": 6, "d7": 2}, "q10": {"d4": 6, "d3": 1}}


def make_beir(root, splits=("train", "dev"), gz=True, header=True, extra_lines=()):
    """A small hand-made BEIR folder: graded qrels 0..6, optional gzip, optional header, injected bad lines."""
    root.mkdir(parents=True)
    corpus = [json.dumps({"_id": f"d{n}", "title": title, "text": "", "brand": "Acme"}) for n, title in
              enumerate(PRODUCTS)]
    corpus += [json.dumps({"_id": "d0", "title": "duplicate id", "text": ""}), json.dumps({"_id": "dx", "title": ""}),
               "{not json"]
    data = "\n".join(corpus) + "\n"
    if gz:
        with gzip.open(root / "corpus.jsonl.gz", "wt") as handle:
            handle.write(data)
    else:
        (root / "corpus.jsonl").write_text(data)
    (root / "queries.jsonl").write_text("\n".join(json.dumps({"_id": q, "text": t}) for q, t in QUERIES.items()))
    (root / "qrels").mkdir()
    order = sorted(QUERIES, key=lambda q: int(q[1:]))
    members = {"train": order[:6], "dev": order[6:8], "test": order[8:]}
    for split in splits:
        lines = ["query-id\tcorpus-id\tscore"] if header else []
        lines += [f"{q}\t{d}\t{g}" for q in members[split] for d, g in JUDGED[q].items()]
        if split == "train":
            lines += ["q1\tNOPE\t5", "qX\td0\t6", "q1\td0\t6", *extra_lines]  # dangling, dangling, duplicate
        (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_reader_counts_what_it_skips_and_carves_missing_splits(tmp_path):
    data = read_beir(make_beir(tmp_path / "b", extra_lines=("q1\td1",)))
    stats = data.stats
    assert len(data.docs) == len(PRODUCTS) and stats.duplicate_docs == 1 and stats.empty_docs == 1
    assert stats.corpus.bad == 1 and stats.dangling_judgments == 2 and stats.duplicate_judgments == 1
    assert stats.qrels_bad["train"] == 1 and "qrels/train.tsv" in stats.qrels_bad_examples[0]
    assert data.qrels["dev"] == {q: JUDGED[q] for q in ("q7", "q8")}  # given: kept as is
    assert "test" in stats.carved and "dev" not in stats.carved  # missing: carved from train by query hash
    carved = set(data.qrels["test"])
    assert carved == {q for q in ("q1", "q2", "q3", "q4", "q5", "q6") if stable_fraction(q) < 0.2}
    assert not carved & set(data.qrels["train"])
    assert data.qrels["train"]["q1"] == {"d0": 6, "d1": 3, "d2": 5}  # graded, the duplicate line ignored
    assert data.docs["d0"]["meta"] == {"brand": "Acme"}


def test_plain_files_without_header_and_a_single_split(tmp_path):
    data = read_beir(make_beir(tmp_path / "b", splits=("train",), gz=False, header=False))
    assert set(data.stats.carved) == {"dev", "test"}
    assert sum(len(data.qrels[s]) for s in ("train", "dev", "test")) == 6


def test_unusable_folders_are_one_line_errors(tmp_path):
    with pytest.raises(BadInput, match="no corpus.jsonl"):
        read_beir(tmp_path)
    root = make_beir(tmp_path / "b")
    for split in ("train", "dev"):
        (root / "qrels" / f"{split}.tsv").write_text("qZ\td0\t6\n")
    with pytest.raises(BadInput, match="no judgment names a known query"):
        read_beir(root)


def test_prepare_beir_writes_catalog_pairs_and_graded_qrels(tmp_path, workspace):
    root = make_beir(tmp_path / "b")
    result = run_prepare(PrepareConfig(beir_path=root, min_relevance=5), workspace)
    assert result.query_source == "judged" and result.items == len(PRODUCTS)
    catalog = load_catalog(workspace)
    assert catalog.ids[0] == "d0" and catalog.texts[0] == PRODUCTS[0]
    train = load_pairs(workspace, "train")
    assert all(JUDGED[p.query_id][p.item_id] >= 5 for p in train)  # pairs: judged at or above --min-relevance
    dev = load_judgments(workspace, "dev")
    assert dev.graded and dev.min_relevance == 5
    assert dev.query_ids == ["q7"]  # q8's only judgment is grade 0: no relevant item, not evaluated
    assert dev.qrels["q7"] == {"d18": 6, "d19": 0}
    assert any("carved" in note for note in result.notes) and any("unknown query" in n for n in result.notes)


def test_prepare_beir_cli_errors(tmp_path, capsys):
    code = run_cli(["prepare", "--beir", str(tmp_path / "missing"), "--home", str(tmp_path / "h")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    root = make_beir(tmp_path / "b")
    code = run_cli(["prepare", "--beir", str(root), "--min-relevance", "7", "--home", str(tmp_path / "h")])
    err = capsys.readouterr().err
    assert code == 1 and "no judgment reaches grade 7" in err


def test_graded_metrics_agree_with_ranx():
    ranx = pytest.importorskip("ranx")
    qrels = {"a": {"d1": 6, "d2": 2, "d3": 5, "d9": 0}, "b": {"d4": 5, "d5": 1}, "c": {"d6": 3}}
    run = {"a": ["d2", "d7", "d1", "d9"], "b": ["d8", "d4"], "c": ["d1"]}
    ours = graded_query_metrics([run[q] for q in qrels], list(qrels.values()), 5, (10,))
    theirs = ranx.evaluate(ranx.Qrels(qrels), ranx.Run({q: {d: 10.0 - r for r, d in enumerate(docs)}
                                                       for q, docs in run.items()}),
                           ["ndcg@10", "recall@10-l5", "mrr@10-l5"], return_mean=False)
    assert ours["ndcg@10"].tolist() == pytest.approx(list(theirs["ndcg@10"]))
    assert ours["recall@10"][:2].tolist() == pytest.approx(list(theirs["recall@10-l5"])[:2])
    assert ours["mrr@10"][:2].tolist() == pytest.approx(list(theirs["mrr@10-l5"])[:2])
    assert ours["judged_ndcg@10"][0] > ours["ndcg@10"][0]  # the unjudged d7 no longer costs a rank
    assert ours["judged@10"].tolist() == pytest.approx([3 / 4, 1 / 2, 0.0])  # d9 (grade 0) is judged


def test_bench_on_judged_queries_writes_trec_files_ranx_agrees_with(tmp_path, workspace):
    ranx = pytest.importorskip("ranx")
    from densesearch.bench.bench import run_bench
    from densesearch.build.indexer import run_index

    run_prepare(PrepareConfig(beir_path=make_beir(tmp_path / "b", splits=("train", "dev", "test")),
                              min_relevance=5), workspace)
    run_index(IndexConfig(), workspace)  # the base model (no fine-tune): a real encoder, seconds at this size
    trec = tmp_path / "trec"
    report = run_bench(BenchConfig(split="dev", latency_runs=2, warmup_runs=1, bootstrap=50, trec_path=trec),
                       workspace)
    assert report.query_source == "judged" and report.notes and "graded" in report.notes[0]
    qrels = ranx.Qrels.from_file(str(trec / "qrels.txt"), kind="trec")
    for q in report.quality:
        assert "judged_ndcg@10" in q.strict and q.strict["judged_ndcg@10"] >= q.strict["ndcg@10"] - 1e-9
        assert 0.0 < q.strict["judged@10"] <= 1.0
        run = ranx.Run.from_file(str(trec / f"{q.run}.trec"), kind="trec")
        theirs = ranx.evaluate(qrels, run, ["ndcg@10", "recall@10-l5", "mrr@10-l5"], make_comparable=True)
        assert theirs["ndcg@10"] == pytest.approx(q.strict["ndcg@10"])
        assert theirs["recall@10-l5"] == pytest.approx(q.strict["recall@10"])
        assert theirs["mrr@10-l5"] == pytest.approx(q.strict["mrr@10"])
    assert all("ndcg@10" in q.p_vs_bm25 for q in report.quality[1:])
