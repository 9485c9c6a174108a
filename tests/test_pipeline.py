"""finetune -> quantize -> index -> query -> bench on 150 real items with the real MiniLM model.

The workspace is built once per session by the ``built`` fixture in conftest.py.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import PIPELINE_TRAIN
from typer.testing import CliRunner

from densesearch.cli.app import app
from densesearch.core.config import BenchConfig, QuantizeConfig, QueryConfig
from densesearch.core.errors import ArtifactMismatch
from densesearch.core.manifest import read_manifest
from densesearch.core.paths import Workspace
from densesearch.data.readers import load_catalog, load_pairs
from densesearch.eval.evaluation import exact_topk
from densesearch.eval.metrics import ann_recall
from densesearch.retrieval.encoders import load_onnx_encoder, load_torch_encoder
from densesearch.retrieval.searcher import Searcher

runner = CliRunner()


def cli(built, *args, input=None):
    return runner.invoke(app, [*args, "--home", str(built["ws"].home)], input=input)


def test_finetune_writes_a_loadable_model_and_manifest(built):
    ws, result = built["ws"], built["train"]
    manifest = read_manifest(ws.artifact("model"), "model")
    assert manifest.counts["train_pairs"] == result.pairs_used > 0
    assert manifest.upstream["data"] == read_manifest(ws.artifact("data"), "data").fingerprint
    assert set(result.dev_finetuned) == {"recall@1", "recall@10", "mrr@10", "ndcg@10"}
    encoder = load_torch_encoder(str(ws.artifact("model")), manifest.fingerprint)
    vectors = encoder.encode(["summer dress", "leather wallet"])
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert not ws.checkpoints.exists()


def test_no_duplicates_sampler_never_repeats_an_item_in_a_batch():
    from datasets import Dataset
    from sentence_transformers.sampler import NoDuplicatesBatchSampler

    items = [f"item text {i % 7}" for i in range(60)]  # heavy repetition of positives
    dataset = Dataset.from_dict({"anchor": [f"query {i}" for i in range(60)], "positive": items})
    sampler = NoDuplicatesBatchSampler(dataset, batch_size=5, drop_last=False, seed=3)
    batches = list(sampler)
    assert batches
    for batch in batches:
        positives = [items[i] for i in batch]
        assert len(positives) == len(set(positives))


def test_onnx_fp32_matches_torch_and_int8_parity_is_computed(built):
    ws, quant = built["ws"], built["quant"]
    catalog = load_catalog(ws)
    texts = catalog.texts[:40] + [p.query for p in load_pairs(ws, "train")[:20]]
    torch_vectors = load_torch_encoder(str(ws.artifact("model")), "").encode(texts)
    onnx_vectors = load_onnx_encoder(ws.artifact("onnx"), False, "").encode(texts, batch_size=7)
    assert np.min(np.sum(torch_vectors * onnx_vectors, axis=1)) >= 1 - 1e-4
    int8 = load_onnx_encoder(ws.artifact("onnx"), True, "").encode(texts)
    assert 0.9 < float(np.mean(np.sum(int8 * onnx_vectors, axis=1))) <= 1.0001
    assert quant.cosine_min <= quant.cosine_mean and set(quant.recall_at_10) == {"onnx", "onnx-int8"}
    assert quant.passed and quant.top10_overlap >= 0.8
    served = [a for a in quant.attempts if a.passed and a.top10_overlap == quant.top10_overlap]
    assert served, "the reported parity is that of a passed attempt (one runtime, or the catalog/query pair)"
    if quant.query_runtime != quant.runtime:
        assert served[-1].recipe == f"catalog {quant.runtime}, queries {quant.query_runtime}"
    assert quant.int8_bytes < 0.3 * quant.fp32_bytes


def test_parity_gate_refuses_to_publish(built):
    from densesearch.build.export import run_quantize
    from densesearch.core.errors import DensesearchError

    ws = built["ws"]
    before = read_manifest(ws.artifact("onnx"), "onnx").fingerprint
    with pytest.raises(DensesearchError, match="parity gate failed"):
        run_quantize(QuantizeConfig(parity_queries=16, min_mean_cosine=1.01, runtime="onnxruntime"), ws)  # bar: 1.01
    assert read_manifest(ws.artifact("onnx"), "onnx").fingerprint == before


def test_interrupted_training_keeps_the_previous_model(built):
    from densesearch.build.train import run_finetune

    ws = built["ws"]
    before = read_manifest(ws.artifact("model"), "model").fingerprint

    def press_ctrl_c(description, done, total, extra=""):
        if description == "fine-tuning" and done >= 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_finetune(PIPELINE_TRAIN, ws, press_ctrl_c)
    assert read_manifest(ws.artifact("model"), "model").fingerprint == before
    assert not [p for p in ws.artifact_home("model").iterdir() if ".tmp-" in p.name]


def test_onnx_query_path_imports_neither_torch_nor_sentence_transformers_nor_bm25s(built):
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from densesearch.core.paths import Workspace
        from densesearch.retrieval.searcher import Searcher
        from densesearch.core.config import QueryConfig
        answer = Searcher(Workspace(Path({str(built['ws'].home)!r}))).ask("summer dress", QueryConfig(mode="hybrid"))
        assert answer.hits, "no hits"
        heavy = ("torch", "sentence_transformers", "transformers", "bm25s", "scipy", "numba")
        bad = [m for m in heavy if m in sys.modules]
        assert not bad, bad
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


def test_hnsw_recall_vs_exact_on_real_vectors(built):
    import faiss

    ws = built["ws"]
    vectors = np.load(ws.artifact("index") / "vectors.npy")
    index = faiss.read_index(str(ws.artifact("index") / "dense.faiss"))
    index.hnsw.efSearch = built["index"].search_param["efSearch"]
    queries = vectors[::3] + np.random.default_rng(0).normal(0, 0.02, vectors[::3].shape).astype(np.float32)
    exact, _ = exact_topk(queries, vectors, 10)
    _, approx = index.search(queries, 10)
    assert ann_recall(approx, exact, 10) >= 0.99


def test_a_searcher_leaves_the_process_openmp_setting_as_it_found_it(built):
    """FAISS and torch share OpenMP's thread count: one-thread query search must not leave it at one."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(3)
    try:
        searcher = Searcher(built["ws"])
        for mode in ("dense", "hybrid"):
            searcher.ask("leather wallet", QueryConfig(k=5, mode=mode))
        searcher.first_stage.dense.ids(searcher.encoder.encode_queries(["hat", "scarf"]), 5)
        assert faiss.omp_get_max_threads() == 3
    finally:
        faiss.omp_set_num_threads(before)


def test_bm25s_and_rank_bm25_return_the_same_top10(built):
    from densesearch.retrieval.sparse import Bm25Index

    catalog = load_catalog(built["ws"])
    queries = [p.query for p in load_pairs(built["ws"], "train")][:40]
    fast, reference = (Bm25Index.build(catalog.texts, b).search(queries, 10) for b in ("bm25s", "rank-bm25"))
    assert [list(ids) for ids, _ in fast] == [list(ids) for ids, _ in reference]


def test_query_answers_a_pipe_in_tab_separated_lines_a_terminal_in_a_table_and_json(built, monkeypatch):
    from densesearch.cli.output import Output, answer_lines

    query = "comfy summer dress for beach"
    result = cli(built, "query", query, "-k", "5", "--mode", "dense")
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [len(row) for row in rows] == [7] * 5 and {row[0] for row in rows} == {query}
    assert [row[1] for row in rows] == ["1", "2", "3", "4", "5"]
    assert [float(row[2]) for row in rows] == sorted((float(row[2]) for row in rows), reverse=True)
    served = Searcher(built["ws"]).ask(query, QueryConfig(k=5, mode="dense"))
    assert [row[3] for row in rows] == [hit.item_id for hit in served.hits]
    served.hits[0].title = "a\ttab and a\nline break"
    assert answer_lines(served)[0].split("\t")[4] == "a tab and a line break"
    assert len(answer_lines(served, wide=True)[0].split("\t")) == 9
    monkeypatch.setattr(Output, "terminal", property(lambda self: True))
    table = cli(built, "query", query, "-k", "5", "--mode", "dense").stdout
    assert "encode" in table and "total" in table and "\t" not in table
    payload = json.loads(cli(built, "query", "leather wallet", "-k", "3", "--json").stdout)
    assert len(payload["hits"]) == 3 and payload["mode"] in ("dense", "bm25", "hybrid")
    assert [h["rank"] for h in payload["hits"]] == [1, 2, 3]


def test_the_cold_query_benchmark_script_finds_what_query_serves(built, tmp_path):
    """scripts/bench_cold_query.py's hand-written reference reads the workspace's own files and returns the
    served dense top 10 (the same items, the same order: the ratio compares equal work)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import bench_cold_query

    ws = built["ws"]
    script = tmp_path / "hand_written.py"
    script.write_text(bench_cold_query.HAND_WRITTEN)
    done = subprocess.run([sys.executable, str(script), *bench_cold_query.hand_written_arguments(ws.home, ws.name)],
                          capture_output=True, text=True, check=True)
    titles = [line.split(" ", 2)[2] for line in done.stdout.splitlines()]
    served = [hit.title for hit in Searcher(ws).ask(bench_cold_query.QUERY, QueryConfig(k=10, mode="dense")).hits]
    config = json.loads((ws.artifact("onnx") / "encoder.json").read_text())
    query_runtime = (config["query_int8_runtime"] if config.get("query_int8_file") else config["int8_runtime"])
    if (query_runtime or "onnxruntime") == "onnxruntime":  # the same model file: the same vectors
        assert titles == served
    else:  # the race gave queries to OpenVINO here: another runtime's INT8, nearly the same list
        assert len(set(titles) & set(served)) >= 8


def test_k_larger_than_catalog_is_clamped(built):
    payload = json.loads(cli(built, "query", "hat", "-k", "100000", "--json", "--mode", "dense").stdout)
    assert len(payload["hits"]) == 150 and payload["notes"]
    bm25 = json.loads(cli(built, "query", "hat", "-k", "100000", "--json", "--mode", "bm25").stdout)
    assert 0 < len(bm25["hits"]) < 150 and all(h["score"] > 0 for h in bm25["hits"])  # only items sharing a term


@pytest.mark.parametrize("args, message, code", [
    (["query", "   "], "query is empty", 1),
    (["query", "hat", "-k", "0"], "'-k'", 2),
    (["query", "x" * 10001], "max 10,000", 1),
    (["query", "hat", "--mode", "fuzzy"], "'--mode'", 2),
])
def test_bad_queries_give_one_line_errors(built, capsys, args, message, code):
    from densesearch.cli.app import run_cli

    assert run_cli([*args, "--home", str(built["ws"].home)]) == code
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_invalid_utf8_on_stdin(built):
    result = cli(built, "query", input=b"good query\n\xff\xfe bad\n")
    assert result.exit_code == 1 and "<stdin>:2" in result.stderr and "UTF-8" in result.stderr


def test_missing_index_names_the_command(tmp_path):
    result = runner.invoke(app, ["query", "hat", "--home", str(tmp_path)])
    assert result.exit_code == 1 and "densesearch index" in result.stderr


def test_encoder_mismatch_is_detected(built):
    result = cli(built, "query", "hat", "--model", "base")
    assert result.exit_code == 1 and "densesearch index --model base" in result.stderr
    manifest_path = built["ws"].artifact("onnx") / "manifest.json"
    original = manifest_path.read_text()
    manifest = json.loads(original)
    manifest["fingerprint"] = "0" * 64  # as if the model were re-quantized after indexing
    manifest_path.write_text(json.dumps(manifest))
    try:
        with pytest.raises(ArtifactMismatch):
            Searcher(built["ws"])
    finally:
        manifest_path.write_text(original)


def test_interactive_session_through_stdin(built):
    lines = "summer dress\n:k 3\n:mode bm25\nbeach hat\n:quit\nnever answered\n"
    result = cli(built, "query", "--json", input=lines)
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == 2
    assert len(answers[0]["hits"]) == 10 and answers[1]["mode"] == "bm25" and len(answers[1]["hits"]) == 3


def test_bench_report_compare_and_trec(built, tmp_path):
    from densesearch.bench.bench import REFERENCE_PATH, compare_reports, load_report, run_bench, save_report
    from densesearch.cli.output import to_jsonable
    from densesearch.cli.render import bench_markdown

    ws = built["ws"]
    cfg = BenchConfig(split="test", batch_sizes=(1, 4), latency_runs=5, warmup_runs=1, bootstrap=100,
                      trec_path=tmp_path / "trec")
    first = run_bench(cfg, ws)
    saved = save_report(first, ws, bench_markdown(first))
    assert {"report.json", "report.md", "latency.png"} <= {p.name for p in saved.iterdir()}
    report = load_report(ws, saved.name)
    assert report["schema"] == 1 and report["query_source"] == "listing"
    assert set(report) >= {"quality", "latency", "sizes", "machine", "artifacts", "notes"}
    assert report["sizes"]["index_dense_faiss_bytes"] > 150 * 384 * 4  # the vectors, plus the HNSW graph
    systems = {q["system"] for q in report["quality"]}
    assert "BM25" in systems and "base" in systems and any(s.startswith("hybrid") for s in systems)
    for q in report["quality"]:
        lo, hi = q["strict_ci"]["recall@10"]
        assert lo <= q["strict"]["recall@10"] <= hi
    assert {s["stage"] for s in report["latency"]} == {"encode", "search", "end-to-end"}
    assert {s["stage"] for s in report["latency"] if s["batch_size"] == 4} == {"encode", "search", "end-to-end"}
    reference = [s for s in report["latency"] if s["backend"] == REFERENCE_PATH]  # the seed's path, in one run
    assert len(reference) == 1 and reference[0]["stage"] == "end-to-end" and reference[0]["p50_ms"] > 0
    rows = compare_reports(to_jsonable(first), report)
    assert rows and all(r["delta"] == 0 for r in rows)
    assert_catalog_vectors_are_cached(ws)
    trec = tmp_path / "trec"
    assert {p.name for p in trec.iterdir()} == {"qrels.txt", "bm25.trec", "bm25-ngrams.trec", "base.trec",
                                               "finetuned-fp32.trec", "finetuned-int8.trec",
                                               "finetuned-int8-exact.trec", "hybrid.trec", "relevance.json"}
    relevance = json.loads((trec / "relevance.json").read_text())
    assert relevance["min_relevance"] == 1 and "-l 1" in relevance["trec_eval"]  # trec_eval's relevance level
    line = (trec / "hybrid.trec").read_text().splitlines()[0].split()
    assert line[1] == "Q0" and line[3] == "1" and line[5] == "hybrid"
    ranx = pytest.importorskip("ranx")
    qrels = ranx.Qrels.from_file(str(trec / "qrels.txt"), kind="trec")
    for q in first.quality:  # every number of the bench table, recomputed by ranx from the files
        run = ranx.Run.from_file(str(trec / f"{q.run}.trec"), kind="trec")
        theirs = ranx.evaluate(qrels, run, ["recall@10", "recall@100", "mrr@10", "ndcg@10"], make_comparable=True)
        for metric, value in theirs.items():
            assert abs(value - q.strict[metric]) < 1e-6, (q.run, metric)
    result = cli(built, "bench", "--batch-size", "1", "--runs", "5", "--compare", "latest")
    assert result.exit_code == 0, result.output
    assert "LISTING-PROXY" in result.stdout and "compared with run" in result.stdout


def test_add_items_then_query_finds_them(built, tmp_path):
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"parent_asin": "BNEWITEM01", "title": "Zorblax glow-in-the-dark galoshes",
                               "store": "Zorblax", "features": ["Rubber rain boots that glow at night"],
                               "description": [], "details": {}}) + "\n")
    ws = Workspace(built["ws"].home, "added")
    import shutil

    shutil.copytree(built["ws"].root, ws.root)
    before = read_manifest(ws.artifact("index"), "index")
    result = runner.invoke(app, ["index", "--add", str(new), "--home", str(ws.home), "--workspace", "added"])
    assert result.exit_code == 0, result.output
    after = read_manifest(ws.artifact("index"), "index")
    assert after.counts["vectors"] == before.counts["vectors"] + 1
    for mode in ("dense", "bm25"):
        answer = Searcher(ws).ask("zorblax galoshes that glow", QueryConfig(k=3, mode=mode))
        assert answer.hits[0].item_id == "BNEWITEM01", mode


def assert_catalog_vectors_are_cached(ws):
    """bench encoded the catalog once per torch encoder; the next read is the cached file, a damaged one is redone."""
    from densesearch.bench.bench import cached_catalog_vectors
    from densesearch.retrieval.encoders import choose_encoder
    from densesearch.retrieval.searcher import Searcher

    cached = sorted(ws.vector_cache.glob("*.npy"))
    assert len(cached) == 2  # base and fine-tuned FP32 (the served encoder reuses the index's vectors)
    spec = choose_encoder("finetuned", ws)
    encoder = spec.load(ws, 0)
    items = Searcher(ws).items
    again = cached_catalog_vectors(ws, spec, encoder, items)
    assert isinstance(again, np.memmap) and again.shape == (len(items), encoder.dim)
    expected = np.array(again)
    del again  # a memmap of a file about to be overwritten
    path = next(p for p in cached if p.name.startswith(f"torch-{spec.fingerprint[:16]}"))
    path.write_bytes(b"damaged")
    redone = cached_catalog_vectors(ws, spec, encoder, items)
    assert not isinstance(redone, np.memmap) and np.allclose(redone, expected, atol=1e-5)
    assert np.load(path).shape == redone.shape


def test_index_on_cuda_without_a_gpu_is_one_clear_line(built, capsys):
    import torch

    from densesearch.cli.app import run_cli

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    ws = built["ws"]
    code = run_cli(["index", "--model", "finetuned", "--device", "cuda", "--home", str(ws.home)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "no CUDA device" in err[0] and "--device cpu" in err[0]


def test_index_records_its_hnsw_build_parameters(built):
    from densesearch.build.indexer import ef_construction
    from densesearch.core.config import IndexConfig

    assert built["index"].manifest.extra["hnsw"] == {"M": 32, "efConstruction": 200}
    assert ef_construction(IndexConfig(), 54_667) == 200 and ef_construction(IndexConfig(), 826_402) == 48
    assert ef_construction(IndexConfig(ef_construction=100), 826_402) == 100
