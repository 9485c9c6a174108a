"""INT8 runtimes: OpenVINO's static INT8 next to ONNX Runtime's dynamic INT8, the race between them, and the
throughput accounting `index` prints (real models, real runtimes)."""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from densesearch.build.export import (
    OPENVINO_FILE,
    RuntimeTrial,
    calibration_texts,
    fastest,
    quantize_openvino,
    quickest,
    runtimes_to_try,
    set_int8_file,
)
from densesearch.cli.render import encode_speed
from densesearch.core.config import QuantizeConfig
from densesearch.core.cpu import INT8_OPS_PER_CYCLE, CpuInfo, int8_peak_ops, read_cpu
from densesearch.core.errors import BadInput
from densesearch.data.readers import load_catalog
from densesearch.retrieval.encoders import OpenVinoEncoder, load_onnx_encoder, ops_per_token


@pytest.fixture(scope="module")
def openvino_dir(built, tmp_path_factory):
    """The built workspace's ONNX artifact, copied, with an OpenVINO static INT8 model as its served INT8."""
    ws = built["ws"]
    directory = tmp_path_factory.mktemp("openvino") / "onnx"
    shutil.copytree(ws.artifact("onnx"), directory)
    if not (directory / OPENVINO_FILE).is_file():  # quantize served ONNX Runtime here: build the other one
        quantize_openvino(directory, calibration_texts(load_catalog(ws), ws, 60, 13),
                          load_onnx_encoder(directory, int8=False, fingerprint=""))
    set_int8_file(directory, OPENVINO_FILE, "openvino")
    return directory


def test_openvino_int8_follows_fp32_and_ignores_batch_mates(built, openvino_dir):
    texts = load_catalog(built["ws"]).texts[:48]
    encoder = load_onnx_encoder(openvino_dir, int8=True, fingerprint="")
    assert isinstance(encoder, OpenVinoEncoder) and encoder.runtime == "openvino"
    batched = encoder.encode(texts, batch_size=16)
    alone = np.stack([encoder.encode([t])[0] for t in texts])
    # static scales: a text's vector is the same whatever shares its batch (ONNX Runtime's dynamic INT8: ~0.988)
    assert float(np.min(np.sum(batched * alone, axis=1))) > 0.999
    fp32 = load_onnx_encoder(openvino_dir, int8=False, fingerprint="").encode(texts, batch_size=16)
    cosines = np.sum(batched * fp32, axis=1)
    assert cosines.mean() > 0.99 and cosines.min() > 0.97
    assert encoder.tokens_encoded == sum(len(encoder.tokenizer.encode(t).ids) for t in texts) * 2


def test_openvino_encoder_answers_many_threads_at_once(openvino_dir):
    encoder = load_onnx_encoder(openvino_dir, int8=True, fingerprint="", threads=1)
    queries = ["red summer dress", "leather wallet for men", "running shoes", "silver hoop earrings"] * 4
    expected = np.stack([encoder.encode([q])[0] for q in queries])
    with ThreadPoolExecutor(4) as pool:  # one infer request per thread, as the server calls it
        got = np.stack(list(pool.map(lambda q: encoder.encode([q])[0], queries)))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_a_dual_encoder_builds_its_catalog_runtime_only_for_catalog_texts(openvino_dir, tmp_path):
    """OpenVINO for catalog batches, ONNX Runtime for single queries: a process that only answers queries never
    compiles the OpenVINO model (a cold query paid 0.46 s for it)."""
    dual = tmp_path / "onnx"
    shutil.copytree(openvino_dir, dual)
    query_file = next(path.name for path in dual.glob("model_qint8_*.onnx"))
    set_int8_file(dual, OPENVINO_FILE, "openvino", query_file, "onnxruntime")
    encoder = load_onnx_encoder(dual, int8=True, fingerprint="")
    assert (encoder.runtime, encoder.query_runtime) == ("openvino", "onnxruntime")
    query = encoder.encode_queries(["red summer dress"])
    assert "catalog" not in vars(encoder) and encoder.tokens_encoded == 0
    assert query.shape == (1, encoder.dim)
    catalog = encoder.encode(["red summer dress", "leather wallet for men"], batch_size=2)
    assert isinstance(encoder.catalog, OpenVinoEncoder) and encoder.tokens_encoded > 0
    assert float(catalog[0] @ query[0]) > 0.97  # two INT8 models of one FP32 model
    (dual / OPENVINO_FILE).write_text("<net>not a model")  # a damaged catalog model is named when it is needed
    from densesearch.core.errors import ArtifactCorrupt

    with pytest.raises(ArtifactCorrupt, match=OPENVINO_FILE):
        load_onnx_encoder(dual, int8=True, fingerprint="").encode(["a text"])


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_encoders_default_to_the_cores_this_process_may_use(openvino_dir):
    """A container's CPU set, not the host's core count: 16 threads on 2 allowed cores thrash."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        onnx = load_onnx_encoder(openvino_dir, int8=False, fingerprint="")
        openvino = load_onnx_encoder(openvino_dir, int8=True, fingerprint="")
    finally:
        os.sched_setaffinity(0, allowed)
    assert onnx.session.get_session_options().intra_op_num_threads == 1
    assert openvino.compiled.get_property("INFERENCE_NUM_THREADS") == 1


def test_openvino_model_that_cannot_load_is_named(openvino_dir, tmp_path):
    from densesearch.core.errors import ArtifactCorrupt

    broken = tmp_path / "onnx"
    shutil.copytree(openvino_dir, broken)
    (broken / OPENVINO_FILE).write_text("<net>not a model")
    with pytest.raises(ArtifactCorrupt, match=OPENVINO_FILE):
        load_onnx_encoder(broken, int8=True, fingerprint="")


def test_quantize_served_the_fastest_runtime_that_passed(built):
    quant = built["quant"]
    assert quant.passed and quant.trials
    assert {t.runtime for t in quant.trials} <= {"onnxruntime", "openvino"}
    served = fastest(quant.trials)  # the fastest in batches, or within SPEED_TIE of it and closer to FP32
    assert quant.runtime == served.runtime and quant.manifest.extra["int8_file"] == served.file
    config = json.loads((built["ws"].artifact("onnx") / "encoder.json").read_text())
    assert config["int8_runtime"] == served.runtime and config["int8_file"] == served.file
    for trial in quant.trials:
        assert trial.items_per_second > 0 and trial.tokens_per_second > trial.items_per_second
        assert -1 <= trial.batch_recall_delta <= 1 and 0.9 < trial.batch_cosine_min <= 1.0001


def _trial(runtime: str, speed: float, ms: float = 2.0, overlap: float = 0.9) -> RuntimeTrial:
    return RuntimeTrial(runtime, "r", f"{runtime}.onnx", speed, speed * 60, ms, 1.0, 0.0, overlap)


def test_quantize_saves_each_onnxruntime_graph_optimized_and_serves_it_only_to_the_version_that_wrote_it(
        built, tmp_path):
    """A cold query builds its session from the graph `quantize` optimized (optimizer off: about half the build
    time); it encodes exactly as the source model does; another ONNX Runtime version gets the source model."""
    import onnxruntime

    from densesearch.build.export import onnxruntime_files, write_optimized_graphs
    from densesearch.retrieval.encoders import OnnxEncoder

    texts = load_catalog(built["ws"]).texts[:20] + ["comfy summer dress for beach"]
    served = built["ws"].artifact("onnx")
    config = json.loads((served / "encoder.json").read_text())
    assert sorted(config["optimized"]) == sorted(onnxruntime_files(served))
    if not config["optimized"]:  # OpenVINO won both races on this CPU: serve FP32 on ONNX Runtime instead
        served = tmp_path / "fp32"
        shutil.copytree(built["ws"].artifact("onnx"), served)
        set_int8_file(served, None, None)
        write_optimized_graphs(served, texts, 0)
        config = json.loads((served / "encoder.json").read_text())
    assert config["optimized"]
    directory = tmp_path / "onnx"
    shutil.copytree(served, directory)
    for source, saved in config["optimized"].items():
        assert saved["onnxruntime"] == onnxruntime.__version__ and (served / saved["file"]).is_file()
        optimized = OnnxEncoder(served, int8=source != "model.onnx", fingerprint="", model_file=source)
        assert optimized.pre_optimized
        stale = json.loads(json.dumps(config))
        stale["optimized"][source]["onnxruntime"] = "0.0.1"  # an upgraded runtime: its own optimizer runs again
        (directory / "encoder.json").write_text(json.dumps(stale))
        fresh = OnnxEncoder(directory, int8=source != "model.onnx", fingerprint="", model_file=source)
        assert not fresh.pre_optimized
        assert np.array_equal(optimized.encode(texts), fresh.encode(texts))
        assert np.array_equal(optimized.encode_queries(texts[-1:]), fresh.encode_queries(texts[-1:]))


def test_fastest_trial_wins_and_a_near_tie_goes_to_the_closer_to_fp32():
    assert fastest([_trial("onnxruntime", 250), _trial("openvino", 330)]).runtime == "openvino"
    assert fastest([_trial("onnxruntime", 250), _trial("openvino", 200)]).runtime == "onnxruntime"
    assert fastest([_trial("onnxruntime", 250, overlap=0.89), _trial("openvino", 240, overlap=0.94)]
                   ).runtime == "openvino"  # 4% slower is noise on a shared machine; parity is not
    assert fastest([]) is None and quickest([]) is None
    assert quickest([_trial("onnxruntime", 250, ms=1.6), _trial("openvino", 300, ms=3.2)]).runtime == "onnxruntime"
    assert quickest([_trial("onnxruntime", 250, ms=1.6, overlap=0.89),
                     _trial("openvino", 300, ms=1.62, overlap=0.94)]).runtime == "openvino"


def test_runtimes_raced_per_cpu(monkeypatch):
    import densesearch.build.export as export

    monkeypatch.setattr(export, "openvino_available", lambda: True)
    assert runtimes_to_try(QuantizeConfig()) == ("onnxruntime", "openvino")
    assert runtimes_to_try(QuantizeConfig(isa="avx2")) == ("onnxruntime",)  # another CPU: no race here
    assert runtimes_to_try(QuantizeConfig(runtime="openvino")) == ("openvino",)
    monkeypatch.setattr(export, "openvino_available", lambda: False)
    assert runtimes_to_try(QuantizeConfig()) == ("onnxruntime",)
    with pytest.raises(BadInput, match="openvino"):
        runtimes_to_try(QuantizeConfig(runtime="openvino"))


def test_int8_peak_and_model_cost(built):
    cpu = CpuInfo(isa="avx512_vnni", model="x", flags=(), mhz=2600.0)
    assert int8_peak_ops(cpu, 2) == pytest.approx(1.3312e12)  # the rough 2-core figure
    assert int8_peak_ops(CpuInfo(isa="avx2", model="x", flags=()), 2) is None  # clock unknown
    assert set(INT8_OPS_PER_CYCLE) >= {"amx", "avx512_vnni", "avx2", "arm64"}
    ops = ops_per_token(built["ws"].artifact("onnx"), 0)
    assert ops == pytest.approx(2 * 6 * (4 * 384**2 + 2 * 384 * 1536))  # all-MiniLM-L6-v2: ~21 MFLOP per token
    assert read_cpu().mhz >= 0


def test_index_reports_tokens_per_second_and_peak_share(built):
    throughput = built["index"].throughput
    assert throughput.runtime == built["quant"].runtime
    assert throughput.tokens_per_second > throughput.items_per_second > 0
    assert throughput.peak_share is None or 0 < throughput.peak_share < 1
    assert built["index"].manifest.extra["throughput"]["tokens_per_second"] == throughput.tokens_per_second


def test_rebuilding_the_index_reuses_its_vectors_unless_something_changed(built, tmp_path):
    from densesearch.build.indexer import run_index
    from densesearch.core.artifacts import open_artifact
    from densesearch.core.config import IndexConfig
    from densesearch.core.paths import Workspace

    ws = Workspace(tmp_path / "home", "copy")
    shutil.copytree(built["ws"].root, ws.root, ignore=shutil.ignore_patterns(".lock*"))
    before = open_artifact(ws, "index").load_npy("vectors.npy", mmap=False)
    flat = run_index(IndexConfig(kind="flat"), ws)  # another index kind, same encoder and catalog
    assert flat.throughput is None and any("nothing was re-encoded" in n for n in flat.notes)
    assert flat.items_per_second == 0 and "copied" in encode_speed(flat)
    np.testing.assert_array_equal(open_artifact(ws, "index").load_npy("vectors.npy", mmap=False), before)
    manifest = open_artifact(ws, "index").path / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["extra"]["encode_numerics"] = 1  # an older version's vectors (OpenVINO in bf16): never copied
    manifest.write_text(json.dumps(raw))
    older = run_index(IndexConfig(kind="flat"), ws)
    assert older.throughput is not None and not older.notes
    other_batch = run_index(IndexConfig(kind="flat", batch_size=7), ws)  # batching may move INT8 vectors
    assert other_batch.throughput is not None and not other_batch.notes
    with open(open_artifact(ws, "index").file("vectors.npy"), "r+b") as handle:  # damaged vectors: never copied
        handle.seek(-4, 2)
        handle.write(b"\x00\x00\xc0\x7f")
    again = run_index(IndexConfig(kind="flat", batch_size=7), ws)
    assert again.throughput is not None and not again.notes


def test_index_encodes_each_dev_query_once_for_its_sweep_and_mode_choice(built):
    """The efSearch sweep and the mode choice share their dev queries: each distinct text is encoded once,
    one request at a time, and gets the vector the served encoder gives it."""
    from densesearch.build.tuning import encode_each_query_once

    encoder = load_onnx_encoder(built["ws"].artifact("onnx"), int8=True, fingerprint="", threads=1)
    asked: list[str] = []
    real = encoder.encode_queries

    def counted(texts, batch_size=1):
        asked.extend(texts)
        return real(texts, batch_size)

    encoder.encode_queries = counted
    cache: dict[str, np.ndarray] = {}
    first = encode_each_query_once(encoder, ["beach hat", "leather wallet", "beach hat"], cache)
    second = encode_each_query_once(encoder, ["leather wallet", "silver hoop earrings"], cache)
    assert asked == ["beach hat", "leather wallet", "silver hoop earrings"]
    np.testing.assert_array_equal(first[0], first[2])
    np.testing.assert_array_equal(second[0], first[1])
    np.testing.assert_allclose(second[1], real(["silver hoop earrings"])[0], atol=1e-6)
    assert encode_each_query_once(encoder, [], cache).shape == (0, encoder.dim)
