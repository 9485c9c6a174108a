"""Choices `index` makes on dev: efSearch / nprobe, the hybrid fusion and the default mode."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property

import numpy as np

from densesearch.core.config import IndexKind
from densesearch.core.paths import Workspace
from densesearch.data.readers import Judgments, load_judgments
from densesearch.eval.metrics import ann_recall, graded_query_metrics, paired_randomization_p
from densesearch.retrieval.dense import IVF_KINDS, DenseIndex
from densesearch.retrieval.encoders import Encoder
from densesearch.retrieval.firststage import FUSION_DEPTH, FirstStage
from densesearch.retrieval.fusion import Fusion, Stage, fuse
from densesearch.retrieval.ranker import TitleTerms

EF_CANDIDATES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
NPROBE_CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
MODE_QUERIES = 2000                           # dev queries that choose the default mode and the fusion


RRF_CONSTANTS = (10, 30, 60, 100)
BM25_WEIGHTS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
# three-list score fusion (dense, BM25, 3-gram BM25): (w_bm25, w_ngram), dense keeps at least 0.2
THREE_WAY_WEIGHTS = tuple((b / 10, n / 10) for n in range(1, 7) for b in range(0, 6) if b + n <= 8)
MODE_SIGNIFICANCE = 0.05


def sweep_search_param(dense: DenseIndex, queries: np.ndarray, exact: np.ndarray, target: float,
                       k: int = 10) -> tuple[list[dict[str, float]], int]:
    """Recall vs exact and ms/query for each efSearch (or nprobe), searched as served; the smallest value reaching
    ``target`` (also left set on ``dense``)."""
    if dense.kind == IndexKind.FLAT:
        return [], 0
    if dense.kind in IVF_KINDS:
        candidates = tuple(p for p in NPROBE_CANDIDATES if p <= faiss_nlist(dense.index))
    else:
        candidates = tuple(dict.fromkeys(max(value, k) for value in EF_CANDIDATES))
    sweep, chosen = [], candidates[-1]
    for value in candidates:
        started = time.perf_counter()
        for row in queries:
            dense.search(row[None, :], k, value)
        ms = (time.perf_counter() - started) * 1000 / max(len(queries), 1)
        recall = ann_recall(dense.ids(queries, k, value), exact, k)
        sweep.append({"value": value, "recall_vs_exact": recall, "ms_per_query": ms})
        if recall >= target:
            chosen = value
            break
    dense.param = chosen
    return sweep, chosen


def faiss_nlist(index) -> int:
    """The number of inverted lists of an IVF index (however FAISS wrapped it)."""
    import faiss

    return faiss.extract_index_ivf(index).nlist


@dataclass
class ModeChoice:
    """The default query mode and hybrid fusion, chosen on dev by nDCG@10 (graded where judgments are)."""

    recommended: str
    fusion: Fusion
    dev_ndcg: dict[str, float]            # dense, bm25, hybrid (the chosen fusion)
    candidates: dict[str, float]          # every fusion tried
    p_vs_hybrid: dict[str, float]         # paired randomization test of dense and bm25 against hybrid
    queries: int

    def to_manifest(self) -> dict:
        return {"recommended_mode": self.recommended, "fusion": asdict(self.fusion),
                "dev_ndcg_at_10": self.dev_ndcg, "fusion_candidates": self.candidates,
                "mode_p_vs_hybrid": self.p_vs_hybrid, "mode_queries": self.queries}

    @classmethod
    def from_manifest(cls, extra: dict) -> ModeChoice:
        return cls(recommended=extra["recommended_mode"], fusion=Fusion.from_manifest(extra),
                   dev_ndcg=extra.get("dev_ndcg_at_10", {}), candidates=extra.get("fusion_candidates", {}),
                   p_vs_hybrid=extra.get("mode_p_vs_hybrid", {}), queries=int(extra.get("mode_queries", 0)))


def fusion_candidates() -> list[Fusion]:
    return ([Fusion("rrf", rrf_k=k) for k in RRF_CONSTANTS]
            + [Fusion("wsum", w_bm25=w) for w in BM25_WEIGHTS]
            + [Fusion("wsum", w_bm25=b, w_ngram=n) for b, n in THREE_WAY_WEIGHTS])


def choose_mode(stages: list[Stage], qrels: list[dict[str, int]], ids: list[str], min_relevance: int) -> ModeChoice:
    """Pick the fusion best on dev, then hybrid as the default mode unless dense or BM25 is significantly better.

    Ties go to the earlier candidate (RRF first: it needs no score scale). A single mode beats hybrid only
    when its dev nDCG@10 is higher and a paired randomization test gives p < ``MODE_SIGNIFICANCE``.
    """
    def ndcg(rows: list[list[int]]) -> np.ndarray:
        return graded_query_metrics([[ids[i] for i in row] for row in rows], qrels, min_relevance,
                                    ks=(10,))["ndcg@10"]

    per_query = {"dense": ndcg([s.dense.ids for s in stages]), "bm25": ndcg([s.words.ids for s in stages])}
    has_grams = bool(stages) and stages[0].grams is not None
    candidates: dict[str, float] = {}
    best, best_scores = None, None
    for fusion in fusion_candidates():
        if fusion.uses_ngrams and not has_grams:
            continue
        scores = ndcg([fuse(s.dense, s.words, fusion, FUSION_DEPTH, s.grams).ids for s in stages])
        candidates[fusion.label] = round(float(scores.mean()), 6)
        if best_scores is None or scores.mean() > best_scores.mean() + 1e-12:
            best, best_scores = fusion, scores
    per_query["hybrid"] = best_scores
    recommended, p_values = recommended_mode(per_query)
    return ModeChoice(recommended=recommended, fusion=best,
                      dev_ndcg={mode: float(values.mean()) for mode, values in per_query.items()},
                      candidates=candidates, p_vs_hybrid=p_values, queries=len(qrels))


def recommended_mode(per_query: dict[str, np.ndarray]) -> tuple[str, dict[str, float]]:
    """hybrid, unless dense or BM25 has a higher mean and a paired randomization p < ``MODE_SIGNIFICANCE``."""
    means = {mode: float(values.mean()) for mode, values in per_query.items()}
    p_values = {mode: paired_randomization_p(per_query[mode], per_query["hybrid"]) for mode in ("dense", "bm25")}
    better = [m for m in ("dense", "bm25") if means[m] > means["hybrid"] and p_values[m] < MODE_SIGNIFICANCE]
    return (max(better, key=lambda m: means[m]) if better else "hybrid"), p_values


def encode_each_query_once(encoder: Encoder, texts: list[str], cache: dict[str, np.ndarray]) -> np.ndarray:
    """Query vectors as served (one request each), every distinct text encoded once: ``cache`` keeps them
    between the efSearch sweep and the mode choice, which share most of their dev queries."""
    missing = [text for text in dict.fromkeys(texts) if text not in cache]
    if missing:
        cache.update(zip(missing, encoder.encode_queries(missing), strict=True))
    return np.stack([cache[text] for text in texts]) if texts else np.zeros((0, encoder.dim), dtype=np.float32)


@dataclass
class Tuning:
    """What `index` tunes with: the workspace, the encoder, the new first stage (as it will be served), the catalog's
    item ids, and the query vectors encoded so far (each distinct dev or train query is encoded once)."""

    workspace: Workspace
    encoder: Encoder
    first_stage: FirstStage
    ids: list[str]
    titles: list[str]  # the catalog's titles, which the learned ranker's word-match features read
    encoded: dict[str, np.ndarray] = field(default_factory=dict)

    @cached_property
    def terms(self) -> TitleTerms:
        """The titles' terms, computed when a ranker is trained (not for an index without one)."""
        return TitleTerms.of(self.titles)

    def vectors(self, texts: list[str]) -> np.ndarray:
        return encode_each_query_once(self.encoder, texts, self.encoded)

    def stages(self, texts: list[str], fusion: Fusion | None = None) -> list[Stage]:
        """Each query's lists (and, given ``fusion``, their fusion) exactly as `query` serves them, without the
        learned ranker (the one being chosen or trained)."""
        vectors = self.vectors(texts)
        if fusion is None:
            return self.first_stage.lists(texts, vectors, FUSION_DEPTH)
        return self.first_stage.run(texts, vectors, FUSION_DEPTH, fusion, learned=False, grams=True)


def pick_mode(tuning: Tuning) -> ModeChoice:
    """Search dev queries as served and choose the mode and fusion from their lists."""
    judgments = dev_judgments(tuning.workspace)
    if not judgments.query_ids:  # nothing to choose with: RRF k=60 and hybrid, the usual defaults
        return ModeChoice(recommended="hybrid", fusion=Fusion(), dev_ndcg={}, candidates={}, p_vs_hybrid={},
                          queries=0)
    return choose_mode(tuning.stages(judgments.queries), [judgments.qrels[q] for q in judgments.query_ids],
                       tuning.ids, judgments.min_relevance)


def dev_judgments(workspace: Workspace) -> Judgments:
    """Dev judgments for picking the mode (train when dev is empty), at most ``MODE_QUERIES`` queries."""
    judgments = load_judgments(workspace, "dev")
    if not judgments.query_ids:
        judgments = load_judgments(workspace, "train")
    return first_queries(judgments, MODE_QUERIES)


def first_queries(judgments: Judgments, count: int) -> Judgments:
    """The judgments of the first ``count`` queries."""
    keep = judgments.query_ids[:count]
    return replace(judgments, query_ids=keep, queries=judgments.queries[:count],
                   qrels={q: judgments.qrels[q] for q in keep})
