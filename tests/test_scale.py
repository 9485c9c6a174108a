"""`bench --scale`: synthetic vectors around real embeddings, exact ground truth, every index kind, BM25 at scale."""

import json

import numpy as np
import pytest

from densesearch.bench.scale import (
    VectorSynthesizer,
    exact_ground_truth,
    nearest_neighbour_cosine,
    run_scale,
    save_scale_report,
    synthetic_documents,
)
from densesearch.build.indexer import IVFPQ_MIN_VECTORS, new_faiss_index
from densesearch.cli.render import scale_markdown, scale_tables
from densesearch.core.config import IndexConfig, ScaleConfig
from densesearch.core.errors import BadInput
from densesearch.eval.evaluation import exact_topk
from densesearch.retrieval.dense import rerank_exact
from densesearch.retrieval.sparse import _best_matching


def real_vectors(built) -> np.ndarray:
    return np.load(built["ws"].artifact("index") / "vectors.npy")


def test_synthetic_vectors_are_unit_length_and_calibrated_to_real_neighbours(built):
    synth = VectorSynthesizer.fit(real_vectors(built))
    target = nearest_neighbour_cosine(synth.seeds)
    synth.calibrate(target, np.random.default_rng(0))
    samples, parents = synth.sample(np.random.default_rng(1), 3000)
    assert np.allclose(np.linalg.norm(samples, axis=1), 1.0, atol=1e-5)
    assert abs(float(np.median((samples * synth.seeds[parents]).sum(axis=1))) - target) < 0.02
    assert len(np.unique(samples.round(4), axis=0)) == len(samples)  # no copies of the seeds


def test_chunked_ground_truth_equals_exact_search(monkeypatch):
    import densesearch.bench.scale as scale

    monkeypatch.setattr(scale, "CHUNK", 128)  # several chunks over 1,000 vectors
    rng = np.random.default_rng(0)
    items = rng.standard_normal((1000, 16)).astype(np.float32)
    queries = rng.standard_normal((30, 16)).astype(np.float32)
    assert np.array_equal(exact_ground_truth(items, queries, 10), exact_topk(queries, items, 10)[0])


def test_top_k_selection_keeps_matching_items_and_breaks_ties_by_lower_index():
    rng = np.random.default_rng(0)
    for scores in (rng.integers(-1, 4, 5000).astype(np.float32),  # heavy ties, zeros and negatives
                   rng.random(5000).astype(np.float32), np.zeros(50, dtype=np.float32),
                   np.where(rng.random(5000) < 0.05, rng.integers(1, 3, 5000), 0).astype(np.float32)):  # sparse
        positive = np.flatnonzero(scores > 0)
        for k in (0, 1, 10, 2000, 4999, 5000, 6000):
            expected = positive[np.lexsort((positive, -scores[positive]))][:k]
            found, values = _best_matching(scores, k)
            assert np.array_equal(found, expected) and np.array_equal(values, scores[expected])


def test_rerank_exact_orders_candidates_by_true_score():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((500, 8)).astype(np.float32)
    query = rng.standard_normal(8).astype(np.float32)
    candidates = np.array([5, 17, 17, 300, -1, 42, 499])
    ids, scores = rerank_exact(vectors, query, candidates, 3)
    truth = sorted({5, 17, 300, 42, 499}, key=lambda i: -float(vectors[i] @ query))[:3]
    assert ids.tolist() == truth and np.all(np.diff(scores) <= 0)


def test_ivfpq_refuses_a_catalog_too_small_to_train():
    with pytest.raises(BadInput, match="hnsw-sq8"):
        new_faiss_index("ivfpq", 384, IVFPQ_MIN_VECTORS - 1, IndexConfig())


def test_synthetic_documents_reuse_real_tokens():
    docs = synthetic_documents(["red cotton summer dress with pockets", "leather belt brown"], 50, seed=0)
    assert len(docs) == 50 and all(docs)
    assert {t for d in docs for t in d} <= {"red", "cotton", "summer", "dress", "pocket", "leather", "belt", "brown"}


@pytest.mark.slow
def test_scale_run_measures_every_kind_and_bm25(built):
    cfg = ScaleConfig(vectors=IVFPQ_MIN_VECTORS + 500, documents=3000, kinds=("flat", "hnsw", "ivfpq", "ivf-hnsw"),
                      queries=60,
                      sweep_queries=60, latency_queries=20, bm25_queries=10)
    report = run_scale(cfg, built["ws"])
    by_kind = {r.kind: r for r in report.dense}
    assert set(by_kind) == {"flat", "hnsw", "ivfpq", "ivfpq+rerank", "ivf-hnsw"}
    assert by_kind["ivf-hnsw"].recall_at_10 >= 0.95 and "nprobe" in by_kind["ivf-hnsw"].search_param
    assert by_kind["flat"].recall_at_10 >= 0.99  # exact; float ties at rank 10 may order differently
    assert by_kind["hnsw"].recall_at_10 >= 0.95 and by_kind["hnsw"].sweep
    assert by_kind["ivfpq+rerank"].recall_at_10 >= by_kind["ivfpq"].recall_at_10
    assert by_kind["ivfpq"].index_bytes < by_kind["flat"].index_bytes / 8  # PQ codes, not float32
    assert all(r.p50_ms <= r.p99_ms and r.vectors == cfg.vectors for r in report.dense)
    assert report.sparse.same_top10 == 1.0 and report.sparse.documents == 3000
    assert not list(built["ws"].scratch.iterdir())  # the synthetic vectors are gone
    saved = save_scale_report(report, built["ws"], scale_markdown(report))
    payload = json.loads((saved / "report.json").read_text())
    assert payload["schema"] == 1 and payload["vectors"] == cfg.vectors
    assert "ivfpq+rerank" in (saved / "report.md").read_text() and len(scale_tables(report)) == 3


def test_scale_needs_an_index(workspace):
    from densesearch.core.errors import MissingArtifact

    with pytest.raises(MissingArtifact, match="densesearch index"):
        run_scale(ScaleConfig(vectors=5000), workspace)
