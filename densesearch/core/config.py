"""Settings for every stage, as frozen dataclasses: every default lives here."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from densesearch.core.errors import BadInput


class Mode(StrEnum):
    """How a query is answered."""

    DENSE = "dense"
    BM25 = "bm25"
    HYBRID = "hybrid"
    RERANK = "rerank"  # hybrid, its top N re-scored by the cross-encoder


class IndexKind(StrEnum):
    """The dense index's FAISS structure."""

    HNSW = "hnsw"
    FLAT = "flat"
    HNSW_SQ8 = "hnsw-sq8"
    IVFPQ = "ivfpq"
    IVF_HNSW = "ivf-hnsw"


class Runtime(StrEnum):
    """Which INT8 runtime `quantize` builds and races."""

    AUTO = "auto"
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"


class Isa(StrEnum):
    """The instruction set an ONNX Runtime INT8 recipe targets (auto: this CPU's)."""

    AUTO = "auto"
    AMX = "amx"
    AVX512_VNNI = "avx512_vnni"
    AVX_VNNI = "avx_vnni"
    AVX512 = "avx512"
    AVX2 = "avx2"
    X86 = "x86"
    ARM64 = "arm64"


class Device(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Loss(StrEnum):
    """The bi-encoder's training loss."""

    MNRL = "mnrl"
    CACHED_MNRL = "cached-mnrl"


class RerankLoss(StrEnum):
    """The cross-encoder's training loss (see `build.reranker`)."""

    POINTWISE = "pointwise"
    GROUPED = "grouped"


class DistillLoss(StrEnum):
    """`finetune --teacher`: the distillation term added to MNRL."""

    AUTO = "auto"              # kl for a bi-encoder teacher, margin-mse for the cross-encoder (it scores pairs)
    KL = "kl"                  # KL between the teacher's and the student's softmax over the in-batch items
    MARGIN_MSE = "margin-mse"  # MSE between their positive-minus-negative score margins


class TeacherPrecision(StrEnum):
    """The teacher's number format: auto is bf16 where the hardware computes it (GPU, AVX-512 BF16, AMX)."""

    AUTO = "auto"
    BF16 = "bf16"
    FP32 = "fp32"


class HardNegatives(StrEnum):
    AUTO = "auto"
    NONE = "none"
    JUDGED = "judged"
    BM25 = "bm25"
    MIXED = "mixed"


class Bm25Backend(StrEnum):
    BM25S = "bm25s"
    RANK_BM25 = "rank-bm25"


class Engine(StrEnum):
    """Where `index` encodes the catalog."""

    LOCAL = "local"
    RAY = "ray"


class RankerMode(StrEnum):
    """auto: train on judged (graded) data and keep it when dev says so; on: keep it; off: skip it."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


class Split(StrEnum):
    TRAIN = "train"
    DEV = "dev"
    TEST = "test"

DEFAULT_CATEGORY = "Amazon_Fashion"
DEFAULT_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_QUERY = "comfy summer dress for beach"


GPU_ENCODE_BATCH = 256
ENCODE_BATCH = 16  # catalog texts per batch: measured fastest for MiniLM INT8 on 2 cores (64 was 0.8x)


RAY_WORKERS = 2  # `index --engine ray` encoder actors by default


COMPACT_SHARE = 0.2  # an index is due a compaction once this share of its rows is dead (deleted or replaced)


def compaction_due(live: int, dead: int) -> bool:
    """Whether dead rows are enough of the index that `index --compact` should drop them."""
    return dead > 0 and dead >= COMPACT_SHARE * (live + dead)


def refuse_unused(options: dict[str, bool], combination: str, hint: str) -> None:
    """One BadInput line naming the given options that do nothing in this ``combination`` (none: nothing)."""
    given = [name for name, used in options.items() if used]
    if given:
        one = len(given) == 1
        raise BadInput(f"{' and '.join(given)} {'does' if one else 'do'} nothing {combination}",
                       hint=hint.format(them="it" if one else "them"))


@dataclass(frozen=True)
class PrepareConfig:
    """How `prepare` reads its sources and builds catalog, pairs and split."""

    source: str = "auto"                  # auto | hub | files | sample
    category: str = DEFAULT_CATEGORY
    meta_path: Path | None = None
    reviews_path: Path | None = None
    beir_path: Path | None = None         # a BEIR folder: judged queries (graded qrels) instead of Amazon data
    min_relevance: int = 1                # BEIR: a judged item is relevant from this grade (the BEIR convention: 1)
    queries: str | None = None            # reviews | listing; None: reviews when reviews are given
    min_rating: float = 4.0
    min_query_words: int = 5
    max_query_chars: int = 2000
    max_text_chars: int = 2000
    listing_queries_per_item: int = 3
    listing_min_words: int = 6
    listing_max_words: int = 40
    test_size: int = 2000
    test_fraction: float = 0.2
    dev_size: int = 1000
    dev_fraction: float = 0.1
    seed: int = 13
    hub_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.beir_path is not None:
            refuse_unused({"--meta": self.meta_path is not None, "--reviews": self.reviews_path is not None,
                           "--sample": self.source == "sample", "--category": self.source == "hub"},
                          "with --beir (the folder is the whole input)", "leave {them} out, or prepare without --beir")


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning hyperparameters (MNRL bi-encoder with shared towers)."""

    base_model: str = DEFAULT_BASE_MODEL
    samples: int = 50000
    max_seq_length: int | None = None     # None: what 99% of the data's texts need (at most 500)
    batch_size: int | None = None         # None: 256 for judged data, 64 for review pairs (measured)
    epochs: int = 1
    lr: float | None = None               # None: 1e-4 for judged data, 5e-5 for review pairs
    warmup_ratio: float = 0.1
    seed: int = 13
    device: Device = Device.AUTO
    loss: Loss = Loss.MNRL
    mini_batch_size: int = 16
    hard_negatives: HardNegatives = HardNegatives.AUTO  # auto: bm25 for judged data, none for pairs
    positive_grade: int | None = None     # judged data: positives from this grade (None: min relevance - 1)
    low_grade: int = 1                    # judged data: items at or below this grade are hard negatives
    bm25_from_rank: int = 10              # BM25 negatives come from ranks [from, to): the very top is often a
    bm25_to_rank: int = 50                #   relevant item nobody judged
    group_by_length: bool = True          # batches of similar-length texts (far less padding), no duplicates
    save_steps: int = 50
    resume: bool = False
    eval_queries: int = 1000
    eval_items: int = 5000                # dev metrics over every judged item plus a sample, up to this many
    teacher: str | None = None            # a sentence-transformers model whose similarities the student learns
    distill_loss: DistillLoss = DistillLoss.AUTO
    distill_weight: float = 1.0           # MNRL + weight x the distillation term
    distill_temperature: float = 0.05     # both softmaxes' temperature (kl); MNRL's own is 0.05
    teacher_max_seq_length: int = 128
    teacher_precision: TeacherPrecision = TeacherPrecision.AUTO


@dataclass(frozen=True)
class RerankConfig:
    """`finetune --reranker`: a cross-encoder trained on the graded pairs (see `rerank` for the two losses)."""

    base_model: str = DEFAULT_BASE_MODEL
    loss: RerankLoss = RerankLoss.POINTWISE  # grouped: per query, softmax over its items + BCE
    samples: int = 100_000                # training pairs at most (judged pairs + unjudged first-stage hits)
    unjudged: int | None = None           # unjudged first-stage hits per train query, label 0 (None: the loss's)
    unjudged_depth: int | None = None     #   drawn from the first stage's top this many (None: the loss's)
    max_judged: int = 16                  # grouped: judged items per query at most (one group stays one step's size)
    epochs: int = 1
    batch_size: int | None = None         # pairs per step (pointwise) or queries per step (grouped); None: the loss's
    lr: float = 5e-5
    warmup_ratio: float = 0.1
    max_length: int = 64                  # query + title tokens
    seed: int = 13
    device: Device = Device.AUTO
    eval_queries: int = 600               # dev queries that choose the form, depth and weight
    depths: tuple[int, ...] = (10, 20, 30)
    weights: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
    scales: tuple[str, ...] = ("min-max", "calibrated")  # how hybrid and cross-encoder scores meet (chosen on
    #                                                    dev; calibrated needs a score-fusion hybrid)
    int8: bool = True                     # serve INT8 ONNX when it passes the gate (else FP32 ONNX)
    per_channel: bool = True
    min_top10_overlap: float = 0.80       # served top 10, INT8 against FP32 ONNX, over the dev lists
    max_ndcg_drop: float = 0.005          # dev nDCG@10 INT8 may lose against FP32 ONNX

    def resolved(self) -> RerankConfig:
        """The settings with each None filled by its loss's measured default (docs/results.md, sessions 10-13)."""
        if self.loss not in RERANK_LOSS_DEFAULTS:
            raise ValueError(f"unknown reranker loss {self.loss!r}: use one of {', '.join(RERANK_LOSS_DEFAULTS)}")
        defaults = RERANK_LOSS_DEFAULTS[self.loss]
        return replace(self, **{name: value for name, value in defaults.items() if getattr(self, name) is None})


# Per loss: (unjudged hits, drawn from the first stage's top N, batch). Pointwise: 32 pairs a step, 4 unjudged
# hits from the top 20 (session 10). Grouped: 4 queries a step (about 57 pairs), 8 unjudged from the top 30
# (session 11). On Home Depot dev the two are equal within the spread between training draws (session 13), and
# pointwise trains in 80% of the time and 55% of the memory, so it is the default.
RERANK_LOSS_DEFAULTS: dict[str, dict[str, int]] = {
    "pointwise": {"unjudged": 4, "unjudged_depth": 20, "batch_size": 32},
    "grouped": {"unjudged": 8, "unjudged_depth": 30, "batch_size": 4},
}


@dataclass(frozen=True)
class QuantizeConfig:
    """ONNX export and INT8 dynamic quantization with a parity gate."""

    model: str = "finetuned"              # finetuned | base | PATH
    isa: Isa = Isa.AUTO
    per_channel: bool = True
    parity_items: int = 2000              # catalog texts the gate encodes (every one is also a probe query)
    parity_queries: int = 1000            # dev queries the gate encodes, one at a time as served
    min_mean_cosine: float = 0.98         # good INT8 MiniLM: ~0.99; one zeroed layer: <= 0.97
    min_top10_overlap: float = 0.80       # good INT8 MiniLM: ~0.87; one zeroed layer: <= 0.74
    min_cosine: float = 0.90              # every vector; good INT8 MiniLM: ~0.98; AMX bf16 kernel bug: 0.77
    max_recall_drop: float = 0.02         # fails only when also significant (paired bootstrap)
    bootstrap: int = 2000
    seed: int = 13
    force: bool = False
    fallback_fp32: bool = False           # when no INT8 recipe passes, publish FP32 ONNX instead of failing
    threads: int = 0
    runtime: Runtime = Runtime.AUTO      # auto: race ONNX Runtime and OpenVINO on this CPU
    calibration_texts: int = 300          # OpenVINO static INT8: catalog texts and training queries for scales
    speed_items: int = 512                # catalog texts each runtime encodes in the speed race
    encode_batch: int = ENCODE_BATCH


@dataclass(frozen=True)
class RankerConfig:
    """`index`: the learned ranker (LambdaMART over hybrid's fused candidates; see `ltr`), measured on Home Depot
    train and checked on dev (docs/results.md, session 14)."""

    mode: RankerMode = RankerMode.AUTO
    depth: int = 50               # fused candidates the ranker re-orders
    folds: int = 5                # the train queries' folds: each fold's model early-stops on its held-out fold
    refit: int = 1                # models refit on every train query at the folds' mean rounds, without bagging or
                                  # feature sampling, and served instead of the fold models (0: serve the folds);
                                  # issue 30: dev nDCG@10 within 0.0012 of the folds' at a fifth of the trees
    learning_rate: float = 0.05
    leaves: int = 15
    min_data_in_leaf: int = 100
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    max_rounds: int = 2000
    early_stopping: int = 100
    min_queries: int = 200        # train queries needed to train at all
    seed: int = 13


@dataclass(frozen=True)
class IndexConfig:
    """Dense (FAISS) and sparse (BM25) index settings."""

    model: str | None = None              # None: best available; int8 | onnx | finetuned | base | PATH
    kind: IndexKind = IndexKind.HNSW
    hnsw_m: int = 32
    ef_construction: int | None = None    # None: 200 up to 200,000 items, 48 above (measured)
    target_recall: float = 0.99
    bm25: Bm25Backend = Bm25Backend.BM25S
    batch_size: int | None = None         # None: ENCODE_BATCH on a CPU, GPU_ENCODE_BATCH on a GPU
    threads: int = 0
    add_path: Path | None = None
    upsert_path: Path | None = None       # new or changed items (JSON lines): re-encode only those
    delete_path: Path | None = None       # item ids to delete, one per line
    compact: bool = False                 # drop deleted rows, rebuild the FAISS structure from stored vectors
    device: Device = Device.AUTO         # where a torch encoder runs (FP16 on a GPU)
    reencode: bool = False                # encode even when the published index's vectors could be copied
    engine: Engine = Engine.LOCAL         # ray: encode the catalog on a Ray cluster or a local Ray
    ray_address: str | None = None        # None: start a local Ray for this command
    ray_workers: int | None = None        # encoder actors (one model load each); None: RAY_WORKERS
    ranker: RankerConfig = field(default_factory=RankerConfig)  # the learned ranker over hybrid's candidates

    def __post_init__(self) -> None:
        if self.engine != Engine.RAY:
            refuse_unused({"--address": self.ray_address is not None, "--workers": self.ray_workers is not None},
                          "without --engine ray", "add --engine ray, or leave {them} out")
        changes = [name for name, given in (("--add", self.add_path), ("--upsert", self.upsert_path),
                                            ("--delete", self.delete_path), ("--compact", self.compact)) if given]
        if len(changes) > 1:
            raise BadInput(f"{' and '.join(changes)} are separate changes", hint="run them one at a time")

    @property
    def change(self) -> str | None:
        """The change to the published index this run makes (add, upsert, delete, compact), None for a build."""
        return next((name for name, given in (("add", self.add_path), ("upsert", self.upsert_path),
                                              ("delete", self.delete_path), ("compact", self.compact)) if given),
                    None)


@dataclass(frozen=True)
class QueryConfig:
    """How `query` retrieves."""

    k: int = 10
    mode: Mode | None = None              # None: the index's recommended mode
    rrf_k: int | None = None              # None: the fusion `index` chose on dev; a number: RRF with it
    collapse_variants: bool = False
    ef_search: int | None = None
    threads: int = 0
    candidates: int = 100
    rerank: int | None = None             # rerank mode: re-score this many first-stage hits (None: as trained)
    ranker: bool = True                   # hybrid: re-order by the index's learned ranker when it has one
    where: tuple[str, ...] = ()           # filter expressions (retrieval/filters.py), all must hold


@dataclass(frozen=True)
class BenchConfig:
    """What `bench` measures."""

    split: Split = Split.TEST
    queries: int | None = None
    batch_sizes: tuple[int, ...] = (1,)
    latency_runs: int = 200
    warmup_runs: int = 20
    threads: int = 0
    bootstrap: int = 1000
    trec_path: Path | None = None
    seed: int = 13
    ks: tuple[int, ...] = (1, 5, 10, 50, 100)


@dataclass(frozen=True)
class ScaleConfig:
    """What `bench --scale N` measures: index kinds at N synthetic vectors, BM25 at N synthetic documents."""

    vectors: int = 826_402
    documents: int = 826_402              # 0: skip the BM25 part
    kinds: tuple[IndexKind, ...] = (IndexKind.FLAT, IndexKind.HNSW, IndexKind.HNSW_SQ8, IndexKind.IVFPQ,
                                    IndexKind.IVF_HNSW)
    queries: int = 1000                   # real prepared queries used for recall and latency
    sweep_queries: int = 300
    latency_queries: int = 300
    bm25_queries: int = 50
    target_recall: float = 0.99
    hnsw_m: int = 32
    ef_construction: int | None = None    # None: 200 up to 200,000 items, 48 above (measured)
    threads: int = 0
    seed: int = 7
