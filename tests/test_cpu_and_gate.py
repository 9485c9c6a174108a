"""INT8 recipe choice per CPU (from fake cpuinfo files) and the parity gate on real and damaged models."""

import json
import shutil

import numpy as np
import pytest

from densesearch.build.export import parity_check, parity_sample, recipe_ladder, set_int8_file
from densesearch.core.config import QuantizeConfig
from densesearch.core.cpu import read_cpu
from densesearch.data.readers import load_catalog, load_pairs
from densesearch.retrieval.encoders import load_onnx_encoder

CPUS = {
    # name: (cpuinfo text, uname -m, expected label, first recipe)
    "intel-sapphire-rapids": ("model name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: fpu sse2 avx avx2 avx512f "
                              "avx512bw avx512_vnni amx_tile amx_int8 amx_bf16\n", "x86_64", "amx", "u8s8"),
    "intel-cascade-lake": ("model name\t: Intel(R) Xeon(R) Gold 6248\nflags\t\t: avx avx2 avx512f avx512bw "
                           "avx512_vnni\n", "x86_64", "avx512_vnni", "u8s8"),
    "intel-skylake-sp": ("model name\t: Intel(R) Xeon(R) Gold 6148\nflags\t\t: avx avx2 avx512f avx512bw\n",
                         "x86_64", "avx512", "u8s8-7bit"),
    "intel-alder-lake": ("model name\t: 12th Gen Intel(R) Core(TM) i7-1265U\nflags\t\t: avx avx2 avx_vnni\n",
                         "x86_64", "avx_vnni", "u8s8"),
    "amd-zen3": ("model name\t: AMD EPYC 7B13\nflags\t\t: sse2 avx avx2 fma\n", "x86_64", "avx2", "u8s8-7bit"),
    "amd-zen4": ("model name\t: AMD EPYC 9B14\nflags\t\t: avx2 avx512f avx512bw avx512_vnni\n", "x86_64",
                 "avx512_vnni", "u8s8"),
    "old-x86": ("model name\t: Intel(R) Atom(TM)\nflags\t\t: sse2 sse4_2\n", "x86_64", "x86", "u8s8-7bit"),
    "graviton3": ("processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32 asimddp sve i8mm\n", "aarch64", "arm64",
                  "u8s8"),
    "apple-m2": ("", "arm64", "arm64", "u8s8"),
}


@pytest.mark.parametrize("name", sorted(CPUS))
def test_isa_and_first_recipe_per_cpu(tmp_path, name):
    text, machine, isa, first = CPUS[name]
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    cpu = read_cpu(path, machine)
    assert cpu.isa == isa
    ladder = [r.name for r in recipe_ladder(cpu)]
    assert ladder[0] == first and ladder[-1] == "u8u8"  # u8u8 is exact on every kernel: the last INT8 try


def test_unreadable_cpuinfo_still_gives_a_safe_recipe(tmp_path):
    cpu = read_cpu(tmp_path / "absent", "x86_64")
    assert cpu.isa == "x86" and recipe_ladder(cpu)[0].reduce_range


def _zero_one_layer(source, target, layer: int = 2) -> int:
    """Copy an INT8 ONNX model with every weight matrix of one encoder layer set to its zero point."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    initializers = {i.name: i for i in model.graph.initializer}
    zeroed = 0
    for node in model.graph.node:
        if node.op_type == "MatMulInteger" and f"/layer.{layer}/" in node.name and node.input[1] in initializers:
            weight = initializers[node.input[1]]
            values = numpy_helper.to_array(weight)
            zero_point = numpy_helper.to_array(initializers[node.input[3]]) if node.input[3] in initializers else 0
            weight.CopyFrom(numpy_helper.from_array(
                np.broadcast_to(zero_point, values.shape).astype(values.dtype).copy(), weight.name))
            zeroed += 1
    onnx.save(model, str(target))
    return zeroed


def test_gate_passes_the_real_int8_model_and_refuses_a_damaged_one(built, tmp_path):
    ws = built["ws"]
    onnx_dir = tmp_path / "onnx"
    shutil.copytree(ws.artifact("onnx"), onnx_dir)
    ort = [t for t in built["quant"].trials if t.runtime == "onnxruntime"]
    assert ort, "the ONNX Runtime recipe passed the gate and stays in the artifact even when OpenVINO is served"
    set_int8_file(onnx_dir, ort[0].file, "onnxruntime")  # the ONNX graph this test knows how to damage,
    config = json.loads((onnx_dir / "encoder.json").read_text())
    config["optimized"] = {}  # served as it is, not through the optimized copy `quantize` saved beside it
    (onnx_dir / "encoder.json").write_text(json.dumps(config))
    cfg = QuantizeConfig(parity_queries=64, bootstrap=500)
    sample = parity_sample(load_catalog(ws), load_pairs(ws, "dev"), cfg.parity_items, cfg.parity_queries, cfg.seed)
    fp32 = load_onnx_encoder(onnx_dir, int8=False, fingerprint="")
    good = parity_check(fp32, load_onnx_encoder(onnx_dir, int8=True, fingerprint=""), sample, cfg, "as built")
    assert good.passed, good.reasons
    assert good.overlap_probes >= len(sample.corpus) and good.cosine_mean > 0.98
    int8_file = ort[0].file
    assert _zero_one_layer(onnx_dir / int8_file, onnx_dir / int8_file) == 6
    damaged = parity_check(fp32, load_onnx_encoder(onnx_dir, int8=True, fingerprint=""), sample, cfg, "damaged")
    assert not damaged.passed
    assert any("overlap" in reason for reason in damaged.reasons)


class SpoilsSomeShapes:
    """The real INT8 encoder, but texts of a few token lengths come out bent, as OpenVINO's bf16 kernels did on an
    Intel Xeon with AMX for 31-32-token texts (cosine 0.77 to FP32 on those rows, the mean still 0.999)."""

    def __init__(self, encoder, lengths: set[int]) -> None:
        self.encoder, self.lengths = encoder, lengths

    def _bend(self, texts, vectors):
        for row, text in enumerate(texts):
            if len(self.encoder.tokenizer.encode(text).ids) in self.lengths:
                bent = vectors[row] + np.roll(vectors[row], 7)
                vectors[row] = bent / np.linalg.norm(bent)
        return vectors

    def encode(self, texts, batch_size=32, progress=None):
        return self._bend(texts, self.encoder.encode(texts, batch_size=batch_size))

    def encode_queries(self, texts, batch_size=1):
        return self._bend(texts, self.encoder.encode_queries(texts, batch_size=batch_size))


def test_gate_refuses_an_encoder_that_bends_a_few_rows(built):
    ws = built["ws"]
    cfg = QuantizeConfig(parity_queries=64, bootstrap=500)
    sample = parity_sample(load_catalog(ws), load_pairs(ws, "dev"), cfg.parity_items, cfg.parity_queries, cfg.seed)
    directory = ws.artifact("onnx")
    fp32, int8 = (load_onnx_encoder(directory, int8=flag, fingerprint="") for flag in (False, True))
    lengths = [len(int8.tokenizer.encode(text).ids) for text in sample.corpus]
    rare = sorted(n for n in set(lengths) if lengths.count(n) == 1)[:2]  # two shapes, one text each
    report = parity_check(fp32, SpoilsSomeShapes(int8, set(rare)), sample, cfg, "bent")
    assert report.cosine_mean > cfg.min_mean_cosine and report.top10_overlap > cfg.min_top10_overlap  # averages hide it
    assert not report.passed and report.reasons == [f"min cosine {report.cosine_min:.4f} < {cfg.min_cosine}"]


def test_serving_on_another_cpu_says_so_once_and_serves(built):
    import json

    from densesearch.core.config import QueryConfig
    from densesearch.retrieval.searcher import Searcher

    ws = built["ws"]
    path = ws.artifact("onnx") / "manifest.json"
    backup = path.read_text()
    raw = json.loads(backup)
    raw["extra"]["cpu"]["isa"] = "some-other-cpu"  # manifest.json is outside the fingerprint: still the same model
    try:
        raw["extra"]["int8_runtime"] = "onnxruntime"  # its kernels were chosen for the CPU it was quantized on
        path.write_text(json.dumps(raw))
        searcher = Searcher(ws)
        assert len(searcher.notes) == 1 and "some-other-cpu" in searcher.notes[0]
        assert "densesearch quantize" in searcher.notes[0]
        assert searcher.ask("hat", QueryConfig(k=3, mode="dense")).hits
        raw["extra"]["int8_runtime"] = "openvino"  # OpenVINO picks its kernels where it runs: nothing to say
        raw["extra"]["query_int8_runtime"] = "openvino"
        path.write_text(json.dumps(raw))
        assert Searcher(ws).notes == []
        raw["extra"]["query_int8_runtime"] = "onnxruntime"  # ... unless ONNX Runtime answers the queries
        path.write_text(json.dumps(raw))
        assert len(Searcher(ws).notes) == 1
    finally:
        path.write_text(backup)
    assert Searcher(ws).notes == []
