"""The learned ranker: its features, its LambdaMART training (real LightGBM), the re-ordering and the artifact."""

import json

import numpy as np
import pytest
from conftest import read_jsonl, write_first_rows

from densesearch.build.ranker import fit_ranker, save_models
from densesearch.core.config import RankerConfig
from densesearch.core.errors import ArtifactCorrupt
from densesearch.retrieval.fusion import EMPTY, RankedList, Stage
from densesearch.retrieval.ranker import (
    FEATURES,
    MISSING_RANK,
    BoosterPredict,
    LearnedRanker,
    NativePredict,
    TitleTerms,
    candidate_features,
    reorder,
    trigrams_of,
    words_of,
)

TITLES = ["Simpson Strong-Tie 12-Gauge Angle", "BEHR Premium Deck Stain 1-gal. Cedar", "Angle Grinder 4-1/2 in.",
          "Cedar Fence Picket 6 ft."]


def column(rows: np.ndarray, name: str) -> np.ndarray:
    return rows[:, FEATURES.index(name)]


def test_trigrams_pad_each_word():
    assert trigrams_of(["saw"]) == {"#sa", "saw", "aw#"}
    assert trigrams_of(["a"]) == {"#a#"}


def test_features_describe_each_candidate_of_the_three_lists_and_the_words():
    terms = TitleTerms.of(TITLES)
    vectors = np.eye(4, dtype=np.float32)
    fused = RankedList([0, 2, 3], [0.8, 0.4, 0.1])
    stage = Stage(dense=RankedList([2, 0], [0.9, 0.5]), words=RankedList([0], [7.0]),
                  grams=RankedList([0, 3, 2], [5.0, 3.0, 1.0]), fused=fused, ordered=fused)
    items, rows = candidate_features("12 gauge angle", np.array([1, 0, 0.5, 0], dtype=np.float32), stage, vectors,
                                     terms, depth=2)
    assert items == [0, 2] and rows.shape == (2, len(FEATURES))
    assert column(rows, "fused_rank").tolist() == [0, 1]
    assert column(rows, "dense_cosine").tolist() == [1.0, 0.5]
    assert column(rows, "dense_rank").tolist() == [1, 0] and column(rows, "dense_scaled").tolist() == [0.0, 1.0]
    assert column(rows, "bm25_rank").tolist() == [0, MISSING_RANK] and column(rows, "bm25_score").tolist() == [7, 0]
    assert column(rows, "query_words_in_title").tolist() == [1.0, pytest.approx(1 / 3)]
    assert column(rows, "query_numbers_in_title").tolist() == [1.0, 0.0]
    assert column(rows, "query_bigrams_in_title").tolist() == [1, 0]  # "gauge angle"; the title has "12-gauge"
    assert column(rows, "last_query_word_in_title").tolist() == [1.0, 1.0]
    assert column(rows, "first_query_word_in_title").tolist() == [1.0, 0.0]
    _, typo = candidate_features("angel grindr", np.zeros(4, dtype=np.float32), stage, vectors, terms, depth=1)
    assert column(typo, "query_unknown_words")[0] == 2 and column(typo, "query_numbers_in_title")[0] == -1
    assert 0 < column(typo, "query_trigrams_in_title")[0] < 1  # 3-grams still match a misspelt word


def per_candidate_row(query: str, qv: np.ndarray, stage: Stage, vectors: np.ndarray, titles: list[str],
                      vocabulary, rank: int) -> list[float]:
    """One candidate's features, written out plainly with Python sets: the definition the block code must meet."""
    item, title = stage.fused.ids[rank], titles[stage.fused.ids[rank]].lower()
    words, title_words = words_of(query), set(words_of(title))
    query_set, grams, title_grams = set(words), trigrams_of(words), trigrams_of(words_of(title))
    numbers = {w for w in query_set if any(c.isdigit() for c in w)}
    cosines = vectors[np.asarray(stage.fused.ids[:20])] @ qv  # one product over the block, as served
    row = [stage.fused.scores[rank], rank, float(cosines[rank])]
    for ranked in (stage.dense, stage.words, stage.grams):
        ids, scores = ranked or EMPTY
        low, high = (min(scores), max(scores)) if scores else (0, 0)
        place = {i: n for n, i in enumerate(ids)}.get(item)
        row += ([MISSING_RANK, 0.0, 0.0] if place is None else
                [place, scores[place], (scores[place] - low) / (high - low) if high > low else 1.0])
    shared = len(grams & title_grams)
    return row + [len(query_set), len(query), sum(c.isdigit() for c in query),
                  sum(w not in vocabulary for w in query_set), len(title_words), sum(c.isdigit() for c in title),
                  len(query_set & title_words) / max(1, len(query_set)),
                  shared / max(1, len(grams)), shared / max(1, len(title_grams)),
                  len(numbers & title_words) / len(numbers) if numbers else -1.0,
                  sum(f"{a} {b}" in title for a, b in zip(words, words[1:], strict=False)),
                  float(bool(words) and words[-1] in title_words), float(bool(words) and words[0] in title_words),
                  len(title_words & query_set) / max(1, len(title_words))]


def test_block_features_equal_each_candidates_features_written_out(tmp_path):
    """The features computed over the candidate block equal, to the float32 bit, the per-candidate definition, on
    real titles, random lists (with FAISS's -1 padding) and queries with numbers, repeats and unknown words."""
    titles = [row["title"] for row in read_jsonl(write_first_rows(tmp_path / "items.jsonl", 300))]
    terms, rng = TitleTerms.of(titles), np.random.default_rng(7)
    vectors = rng.normal(size=(len(titles), 8)).astype(np.float32)
    queries = ["12 pack cotton socks socks", "zzqx unknown 2-pack", "women's summer dress", "a", "!!", titles[5]]
    for query in queries:
        def random_list():
            ids = rng.choice(len(titles), size=int(rng.integers(0, 40)), replace=False).tolist() + [-1]
            return RankedList(ids, sorted(rng.random(len(ids)).tolist(), reverse=True))
        dense, words, grams = random_list(), random_list(), random_list()
        fused = RankedList(rng.choice(len(titles), size=30, replace=False).tolist(),
                           sorted(rng.random(30).tolist(), reverse=True))
        stage = Stage(dense, words, grams if len(query) % 2 else None, fused, fused)
        qv = rng.normal(size=8).astype(np.float32)
        items, rows = candidate_features(query, qv, stage, vectors, terms, depth=20)
        expected = np.asarray([per_candidate_row(query, qv, stage, vectors, titles, terms.vocabulary, r)
                               for r in range(20)], dtype=np.float32)
        assert items == fused.ids[:20]
        np.testing.assert_array_equal(rows, expected)


def test_reorder_ranks_the_top_by_learned_score_and_keeps_the_tail_below_in_fused_order():
    fused = RankedList([5, 6, 7, 8, 9], [0.9, 0.8, 0.7, 0.6, 0.5])
    stage = Stage(EMPTY, EMPTY, EMPTY, fused, fused)
    merged = reorder(stage, [5, 6, 7], np.array([0.1, 2.0, 0.1]))
    assert merged.ids == [6, 5, 7, 8, 9]  # ties keep the fused order
    scores = merged.scores
    assert all(a >= b for a, b in zip(scores, scores[1:], strict=False)) and scores[3] < min(0.1, 2.0) - 1
    assert reorder(stage, [], np.zeros(0)) == stage.fused


def synthetic_queries(rng, queries: int, candidates: int = 20):
    """Candidates whose grade follows one word feature; the list features are noise."""
    features, labels = [], []
    for _ in range(queries):
        rows = rng.random((candidates, len(FEATURES))).astype(np.float32)
        overlap = rng.integers(0, 4, candidates) / 3
        rows[:, FEATURES.index("query_words_in_title")] = overlap
        features.append(rows)
        labels.append((overlap * 6).round().astype(np.float32))
    return features, labels


def test_lambdamart_learns_the_feature_that_decides_the_grade_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    features, labels = synthetic_queries(rng, 200)
    fresh, grades = synthetic_queries(rng, 20)
    for refit in (1, 0):  # one model refit on every query at the folds' mean rounds, or the fold models
        cfg = RankerConfig(folds=2, min_data_in_leaf=20, max_rounds=60, early_stopping=20, refit=refit,
                           feature_fraction=1.0)  # a one-tree fold model must see the one feature that decides
        models, rounds = fit_ranker(features, labels, cfg)
        assert len(rounds) == 2 and all(r >= 1 for r in rounds) and len(models) == (1 if refit else 2)
        files = save_models(tmp_path / f"ranker-{refit}", models)
        ranker = LearnedRanker.load(tmp_path / f"ranker-{refit}", files, depth=50)
        if refit:
            assert ranker.models[0].num_trees() == round(np.mean(rounds))
        for rows, grade in zip(fresh, grades, strict=True):
            ranked = grade[np.argsort(-ranker.score(rows), kind="stable")]
            assert (np.diff(ranked) <= 0).all()  # the learned order sorts the candidates by grade
        assert_direct_calls_score_as_lightgbm(ranker, fresh)


def assert_direct_calls_score_as_lightgbm(ranker: LearnedRanker, blocks: list[np.ndarray]) -> None:
    """The ranker calls LightGBM's C API directly, with the scores of `Booster.predict`, to the bit."""
    assert all(isinstance(predict, NativePredict) for predict in ranker._predict)
    for rows in blocks:
        expected = np.mean([model.predict(rows, num_threads=1) for model in ranker.models], axis=0)
        assert np.array_equal(ranker.score(rows), expected)
        assert np.array_equal(ranker.score(rows.astype(np.float64)[::-1]), expected[::-1])  # any dtype and layout
    assert np.array_equal(BoosterPredict(ranker.models[0])(blocks[0]), ranker._predict[0](blocks[0]))


def test_a_damaged_or_foreign_ranker_file_is_one_clear_error(tmp_path):
    rng = np.random.default_rng(1)
    features, labels = synthetic_queries(rng, 40)
    models, _ = fit_ranker(features, labels, RankerConfig(folds=2, min_data_in_leaf=5, max_rounds=5, refit=0))
    files = save_models(tmp_path / "ranker", models)
    (tmp_path / "ranker" / "model-1.txt").write_text("tree\nnot a model", encoding="utf-8")
    with pytest.raises(ArtifactCorrupt, match="model-1.txt"):
        LearnedRanker.load(tmp_path / "ranker", files, depth=50)
    (tmp_path / "ranker" / "model-1.txt").unlink()
    with pytest.raises(ArtifactCorrupt, match="model-1.txt"):
        LearnedRanker.load(tmp_path / "ranker", files, depth=50)


def test_a_model_trained_on_other_features_is_refused(tmp_path):
    import lightgbm

    rng = np.random.default_rng(3)
    other = lightgbm.train({"objective": "lambdarank", "verbose": -1, "min_data_in_leaf": 2},
                           lightgbm.Dataset(rng.random((40, 3)), rng.integers(0, 3, 40), group=[10] * 4), 3)
    files = save_models(tmp_path / "ranker", [other.model_to_string()])
    with pytest.raises(ArtifactCorrupt, match="expects 3 features, not 26"):
        LearnedRanker.load(tmp_path / "ranker", files, depth=50)


def test_too_few_queries_to_train_is_an_error_not_a_model():
    features, labels = synthetic_queries(np.random.default_rng(2), 1)
    with pytest.raises(ValueError, match="at least 5 queries"):
        fit_ranker(features, labels, RankerConfig())


def test_auto_leaves_pair_data_without_a_ranker(built):
    report = built["index"].ranker
    assert report is not None and not report.kept and "graded" in report.reason
    manifest = json.loads((built["index"].path / "manifest.json").read_text())
    assert manifest["extra"]["ranker"]["kept"] is False
    assert not (built["index"].path / "ranker").exists()


def test_index_trains_serves_and_benches_the_learned_ranker_on_judged_queries(tmp_path, workspace):
    """Hand-made BEIR folder, the real MiniLM, real LightGBM: kept (--ranker on), served by hybrid and rerank's
    first stage, benched as its own row beside the fusion alone, carried over by `index --add`."""
    ranx = pytest.importorskip("ranx")
    from densesearch.bench.bench import run_bench
    from densesearch.build.indexer import run_add, run_index
    from densesearch.core.config import BenchConfig, IndexConfig, PrepareConfig, QueryConfig
    from densesearch.data.prepare import run_prepare
    from densesearch.retrieval.searcher import Searcher
    from tests.test_beir import make_beir

    run_prepare(PrepareConfig(beir_path=make_beir(tmp_path / "b", splits=("train", "dev", "test")),
                              min_relevance=5), workspace)
    result = run_index(IndexConfig(ranker=RankerConfig(mode="on", folds=2, min_data_in_leaf=2, max_rounds=20)),
                       workspace)
    assert result.ranker.kept and result.ranker.train_queries == 6 and len(result.ranker.rounds) == 2
    recorded = json.loads((result.path / "manifest.json").read_text())["extra"]["ranker"]
    assert recorded["features"] == list(FEATURES) and recorded["settings"]["folds"] == 2
    assert recorded["model_files"] == ["model-0.txt"]  # one model refit on every train query
    assert "ranker/model-0.txt" in json.loads((result.path / "manifest.json").read_text())["files"]
    assert_stored_terms_are_the_catalogs(workspace)

    searcher = Searcher(workspace)
    learned = searcher.ask("cordless drill", QueryConfig(k=5, mode="hybrid"))
    fusion_only = searcher.ask("cordless drill", QueryConfig(k=5, mode="hybrid", ranker=False))
    assert "learned ranker" in learned.answered_by and "learned ranker" not in fusion_only.answered_by
    assert {h.item_id for h in learned.hits} <= {h.item_id for h in searcher.ask(
        "cordless drill", QueryConfig(k=50, mode="hybrid", ranker=False)).hits}
    assert [h.score for h in learned.hits] == sorted((h.score for h in learned.hits), reverse=True)

    trec = tmp_path / "trec"
    report = run_bench(BenchConfig(split="dev", latency_runs=2, warmup_runs=1, bootstrap=50, trec_path=trec),
                       workspace)
    runs = {q.run: q for q in report.quality}
    assert {"hybrid-fusion", "hybrid"} <= set(runs) and runs["hybrid"].system.endswith("learned ranker")
    qrels = ranx.Qrels.from_file(str(trec / "qrels.txt"), kind="trec")
    for name in ("hybrid-fusion", "hybrid"):
        theirs = ranx.evaluate(qrels, ranx.Run.from_file(str(trec / f"{name}.trec"), kind="trec"), "ndcg@10",
                               make_comparable=True)
        assert theirs == pytest.approx(runs[name].strict["ndcg@10"])

    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"parent_asin": "NEW1", "title": "Zorblax cordless drill 18V brushless"}) + "\n")
    run_add(IndexConfig(add_path=new), workspace)
    answer = Searcher(workspace).ask("zorblax cordless drill", QueryConfig(k=3, mode="hybrid"))
    assert "learned ranker" in answer.answered_by and answer.hits[0].item_id == "NEW1"
    assert_stored_terms_are_the_catalogs(workspace)  # the added item's terms stored with the rest

    model = workspace.artifact("index") / "ranker" / "model-0.txt"
    model.write_text("x" * model.stat().st_size, encoding="utf-8")  # same size: only the parse can tell
    with pytest.raises(ArtifactCorrupt, match="model-0.txt"):
        Searcher(workspace).ask("cordless drill", QueryConfig(mode="hybrid"))


def assert_stored_terms_are_the_catalogs(workspace):
    """The title terms `index` stored beside the ranker are those computed from the served catalog's titles."""
    from densesearch.core.artifacts import open_artifact
    from densesearch.retrieval.ranker import TERMS_DIR, title_texts
    from densesearch.retrieval.searcher import read_items

    artifact = open_artifact(workspace, "index")
    titles = title_texts(read_items(artifact))
    assert_same_terms(TitleTerms.load(artifact, f"ranker/{TERMS_DIR}", titles), TitleTerms.of(titles))


def assert_same_terms(got: TitleTerms, expected: TitleTerms) -> None:
    from densesearch.retrieval.ranker import TERMS_ARRAYS

    assert got.vocabulary == expected.vocabulary and got.titles == expected.titles
    for name in TERMS_ARRAYS:
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))


def test_stored_title_terms_round_trip_and_a_damaged_one_is_named(tmp_path):
    from densesearch.core.artifacts import Artifact

    computed = TitleTerms.of(TITLES)
    computed.save(tmp_path / "terms")
    artifact = Artifact("index", tmp_path, manifest=None)
    assert_same_terms(TitleTerms.load(artifact, "terms", TITLES), computed)
    assert_same_terms(TitleTerms.load(artifact, "absent", TITLES), computed)  # an index built before: computed
    with pytest.raises(ArtifactCorrupt, match="word_ptr.npy"):
        TitleTerms.load(artifact, "terms", TITLES[:-1])  # a catalog the terms were not computed from
    np.save(tmp_path / "terms" / "gram_codes.npy", computed.gram_codes[:-1])
    with pytest.raises(ArtifactCorrupt, match="gram_codes.npy"):
        TitleTerms.load(artifact, "terms", TITLES)


def test_lightgbm_that_cannot_load_is_one_line_naming_the_fix(monkeypatch):
    import sys

    from densesearch.core.errors import BadInput
    from densesearch.retrieval.ranker import import_lightgbm

    monkeypatch.setitem(sys.modules, "lightgbm", None)  # as when its wheel finds no libgomp.so.1
    with pytest.raises(BadInput, match="cannot load") as caught:
        import_lightgbm()
    assert "libgomp1" in caught.value.hint and "--ranker off" in caught.value.hint
