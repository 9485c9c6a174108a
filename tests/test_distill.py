"""finetune --teacher: the teacher's vector cache, the distillation losses, and a distilled model end to end
(the real MiniLM as both teacher and student: the only model here offline)."""

from dataclasses import replace

import numpy as np
import pytest
from conftest import PIPELINE_TRAIN, prepared_workspace

from densesearch.build.distill import (
    Teacher,
    TeacherCache,
    TeacherScores,
    TeacherVectors,
    distill_kind,
    distillation_loss,
    teacher_precision,
)
from densesearch.build.train import run_finetune
from densesearch.core.config import DistillLoss, TeacherPrecision
from densesearch.core.errors import BadInput
from densesearch.core.manifest import read_manifest
from densesearch.retrieval.encoders import Prompts, load_torch_encoder, resolve_base_model

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def fake_teacher(precision: str = "fp32") -> Teacher:
    return Teacher(source="t", path="t", fingerprint="f" * 64, precision=precision)


def counting_encoder(calls: list[list[str]]):
    def encode(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)
    return encode


def test_teacher_cache_encodes_each_text_once_and_keeps_the_order(tmp_path):
    calls: list[list[str]] = []
    cache = TeacherCache(tmp_path, fake_teacher(), 128)
    first = cache.vectors(["ab", "c", "ab", "dddd"], "query", counting_encoder(calls))
    assert calls == [["ab", "c", "dddd"]]  # duplicates encoded once
    assert first[:, 0].tolist() == [2, 1, 2, 4]
    again = TeacherCache(tmp_path, fake_teacher(), 128).vectors(["dddd", "c", "new"], "query",
                                                                counting_encoder(calls))
    assert calls[1:] == [["new"]] and again[:, 0].tolist() == [4, 1, 3]
    other_role = cache.vectors(["c"], "document", counting_encoder(calls))
    assert calls[2:] == [["c"]] and other_role.shape == (1, 2)


def test_teacher_cache_is_per_teacher_and_precision_and_a_damaged_shard_is_encoded_again(tmp_path):
    calls: list[list[str]] = []
    TeacherCache(tmp_path, fake_teacher(), 128).vectors(["a", "b"], "query", counting_encoder(calls))
    TeacherCache(tmp_path, fake_teacher("bf16"), 128).vectors(["a"], "query", counting_encoder(calls))
    assert calls == [["a", "b"], ["a"]]
    cache = TeacherCache(tmp_path, fake_teacher(), 128)
    for shard in cache.directory.glob("query-*.npz"):
        shard.write_bytes(b"not a numpy file")
    cache.vectors(["a", "b"], "query", counting_encoder(calls))
    assert calls[2:] == [["a", "b"]]
    assert not list(cache.directory.glob("*.tmp"))


def test_precision_is_bf16_only_where_the_hardware_computes_it(tmp_path):
    from densesearch.core.cpu import native_bf16

    assert teacher_precision(TeacherPrecision.AUTO, "cpu", True) == "bf16"
    assert teacher_precision(TeacherPrecision.AUTO, "cpu", False) == "fp32"
    assert teacher_precision(TeacherPrecision.AUTO, "cuda", False) == "bf16"
    assert teacher_precision(TeacherPrecision.FP32, "cuda", True) == "fp32"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_bf16\n")
    assert native_bf16(cpuinfo)
    cpuinfo.write_text("processor : 0\nflags : fpu avx2 avx512_vnni\n")
    assert not native_bf16(cpuinfo)
    assert not native_bf16(tmp_path / "missing")


@pytest.fixture(scope="module")
def student():
    return load_torch_encoder(resolve_base_model(MINILM), "")


def batch_features(model, texts: list[str]):
    return model.tokenize(texts)


@pytest.mark.parametrize("kind", [DistillLoss.KL, DistillLoss.MARGIN_MSE])
def test_a_teacher_equal_to_the_student_adds_nothing_and_a_different_one_does(student, kind):
    import torch

    model = student.model
    queries, positives, negatives = ["red dress", "steel bolt"], ["red summer dress", "hex bolt"], \
        ["blue jeans", "wood screw"]
    vectors = [student.encode_queries(queries), student.encode(positives), student.encode(negatives)]
    same = TeacherVectors(vectors[0], np.concatenate(vectors[1:]), np.array([[0, 0, 2], [1, 1, 3]]))
    features = [batch_features(model, texts) for texts in (queries, positives, negatives)]
    labels = torch.tensor(same.rows, dtype=torch.float32)
    mnrl_only = distillation_loss(model, kind, 0.0, 0.05, same)
    with torch.no_grad():
        base = mnrl_only(features, labels).item()
        equal = distillation_loss(model, kind, 1.0, 0.05, same)(features, labels).item()
        swapped = TeacherVectors(same.queries, same.items[[2, 3, 0, 1]], same.rows)
        differs = distillation_loss(model, kind, 1.0, 0.05, swapped)(features, labels).item()
    assert equal == pytest.approx(base, abs=1e-4)
    assert differs > base + 1e-3


def test_a_cross_encoder_teacher_is_matched_on_margins_and_kl_from_it_is_refused(student):
    """The student's cosine margin against the cross-encoder's logit margin: a teacher whose margins are the
    student's own adds nothing, reversed margins add a positive term."""
    import torch

    assert distill_kind(DistillLoss.AUTO, cross_encoder=True) == DistillLoss.MARGIN_MSE
    assert distill_kind(DistillLoss.AUTO, cross_encoder=False) == DistillLoss.KL
    with pytest.raises(BadInput, match="margin-mse"):
        distill_kind(DistillLoss.KL, cross_encoder=True)
    model = student.model
    queries, positives, negatives = ["red dress", "steel bolt"], ["red summer dress", "hex bolt"], \
        ["blue jeans", "wood screw"]
    q, p, n = student.encode_queries(queries), student.encode(positives), student.encode(negatives)
    own = np.stack([np.sum(q * p, axis=1), np.sum(q * n, axis=1)], axis=1)
    features = [batch_features(model, texts) for texts in (queries, positives, negatives)]
    labels = torch.tensor([[0.0], [1.0]])
    with torch.no_grad():
        base = distillation_loss(model, DistillLoss.MARGIN_MSE, 0.0, 0.05, TeacherScores(own))(features, labels)
        equal = distillation_loss(model, DistillLoss.MARGIN_MSE, 1.0, 0.05, TeacherScores(own))(features, labels)
        reversed_ = distillation_loss(model, DistillLoss.MARGIN_MSE, 1.0, 0.05,
                                      TeacherScores(own[:, ::-1].copy()))(features, labels)
    assert equal.item() == pytest.approx(base.item(), abs=1e-3)
    assert reversed_.item() > base.item() + 1e-3


def test_prompts_are_read_from_the_model_and_empty_for_minilm(student):
    assert Prompts.of({"query": "q: ", "document": "d: ", "STS": "x"}) == Prompts("q: ", "d: ")
    assert Prompts.of(student.model.prompts) == Prompts("", "")


@pytest.mark.slow  # two fine-tunes (about 40 s)
def test_distilled_finetune_records_its_teacher_and_a_second_run_reuses_the_cache(tmp_path):
    ws = prepared_workspace(tmp_path)
    cfg = replace(PIPELINE_TRAIN, samples=32, hard_negatives="bm25", teacher=MINILM)
    result = run_finetune(cfg, ws)
    manifest = read_manifest(ws.artifact("model"), "model")
    assert manifest.settings["teacher"] == MINILM and manifest.settings["distill_loss"] == "auto"
    assert result.recipe["distill_loss"] == "kl"  # auto, for a bi-encoder teacher
    assert "all-MiniLM-L6-v2" in result.recipe["teacher"] and result.recipe["teacher_dim"] == 384
    shards = sorted(p.name for p in ws.teacher_cache.rglob("*.npz"))
    assert shards and any(s.startswith("query-") for s in shards) and any(s.startswith("document-") for s in shards)
    rerun = run_finetune(replace(cfg, distill_loss=DistillLoss.MARGIN_MSE, distill_weight=2.0), ws)
    assert sorted(p.name for p in ws.teacher_cache.rglob("*.npz")) == shards  # nothing encoded again
    assert rerun.steps >= 1
    assert load_torch_encoder(str(ws.artifact("model")), "").encode(["linen shirt"]).shape == (1, 384)


@pytest.fixture(scope="module")
def prompted_head_model(tmp_path_factory):
    """MiniLM with task prompts and a Dense 384 -> 256 tanh head: the shape of EmbeddingGemma, offline."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense

    model = SentenceTransformer(resolve_base_model(MINILM), device="cpu")
    torch.manual_seed(0)
    model.append(Dense(384, 256, activation_function=torch.nn.Tanh()))
    model.prompts = {"query": "query: ", "document": "passage: "}
    path = tmp_path_factory.mktemp("prompted") / "model"
    model.save(str(path))
    return path


def test_onnx_export_applies_prompts_and_dense_heads_like_sentence_transformers(prompted_head_model, tmp_path):
    from densesearch.build.export import export_onnx, write_encoder_files
    from densesearch.retrieval.encoders import OnnxEncoder

    torch_encoder = load_torch_encoder(str(prompted_head_model), "")
    assert model_prompts_of(torch_encoder) == Prompts("query: ", "passage: ")
    export_onnx(str(prompted_head_model), tmp_path)
    write_encoder_files(str(prompted_head_model), tmp_path, None, torch_encoder, "test")
    onnx = OnnxEncoder(tmp_path, int8=False, fingerprint="")
    texts = ["linen summer dress", "stainless steel hex bolt 1/4 in."]
    assert onnx.dim == 256
    for batch in (1, 2):
        queries = onnx.encode_queries(texts, batch)
        assert np.min(np.sum(queries * torch_encoder.encode_queries(texts), axis=1)) > 0.9999
    documents = onnx.encode(texts)
    assert np.min(np.sum(documents * torch_encoder.encode(texts), axis=1)) > 0.9999
    assert np.max(np.sum(queries * documents, axis=1)) < 0.9999  # the prompts make them differ


def model_prompts_of(encoder) -> Prompts:
    from densesearch.retrieval.encoders import model_prompts

    return model_prompts(encoder.model)
