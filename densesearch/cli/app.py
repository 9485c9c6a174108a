"""The Typer layer: parses options, calls the core, renders results. No pipeline logic lives here."""

import functools
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from typer.core import TyperCommand, TyperGroup

from densesearch import __version__
from densesearch.cli.output import Output
from densesearch.core.config import (
    Bm25Backend,
    Device,
    DistillLoss,
    Engine,
    HardNegatives,
    IndexKind,
    Isa,
    Loss,
    Mode,
    RankerMode,
    RerankLoss,
    Runtime,
    TeacherPrecision,
)
from densesearch.core.errors import BadInput, DensesearchError
from densesearch.core.paths import DEFAULT_WORKSPACE, Workspace, resolve_home

DEBUG_ENV = "DENSESEARCH_DEBUG"
MAX_LATENCY_BATCH = 4096  # `bench --batch-size`: queries encoded at once (beyond it, a batch only measures memory)


class _QuietHelp:
    """`--help` without a `<bool>` type column entry, like every other flag here."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class Command(_QuietHelp, TyperCommand):
    pass


class Group(_QuietHelp, TyperGroup):
    pass


app = typer.Typer(name="densesearch", no_args_is_help=True, add_completion=False, cls=Group,
                  pretty_exceptions_enable=False,
                  help="Domain-adapted dense retrieval for e-commerce catalogs: "
                       "prepare -> finetune -> quantize -> index -> query -> bench.")

def Flag(*declarations: str, **options: Any):  # noqa: N802 (reads like typer.Option)
    """A boolean option shown in --help without a type column entry (no `<bool>` noise)."""
    return typer.Option(*declarations, metavar="", **options)


HomeOpt = Annotated[str | None, typer.Option("--home", help="Artifact root (overrides $DENSESEARCH_HOME).",
                                             show_default=False)]
WorkspaceOpt = Annotated[str, typer.Option("--workspace", "-w", help="Named workspace inside the root.")]
JsonOpt = Annotated[bool, Flag("--json", help="Machine-readable output on stdout.")]


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def handles_errors(command):
    """Turn domain errors into one line on stderr and exit code 1 (a traceback only in debug mode)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except DensesearchError as exc:
            if _debug():
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: nothing was published", err=True)
            raise typer.Exit(code=130) from None
        except OSError as exc:  # a full disk, a read-only home, a closed pipe: one line, not a traceback
            if _debug():
                raise
            raise typer.Exit(code=_report_os_error(exc)) from None

    return wrapper


def _report_os_error(exc: OSError) -> int:
    """One line for an operating-system error (nothing for a reader that went away); the exit code."""
    from densesearch.cli.streams import BROKEN_PIPE_EXIT, is_broken_pipe, output_failed
    from densesearch.core.errors import os_failure

    if exc.filename is None:  # a write to stdout failed: do not let the exit flush fail again
        return output_failed(exc)
    if is_broken_pipe(exc):
        return BROKEN_PIPE_EXIT
    typer.echo(f"error: {os_failure(exc)}", err=True)
    return 1


def finite(value: float | None) -> float | None:
    """Option callback: refuse NaN and infinities, which compare false with every bound."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


Threads = Annotated[int, typer.Option(min=0, max=1024, help="Threads (0: all cores).")]
WhereOpt = Annotated[list[str] | None, typer.Option(
    "--where", help="Only items that match, e.g. 'price < 30 and rating >= 4' or 'store in [\"A\", \"B\"]' "
                    "(repeatable: all must hold; README: Filters).", show_default=False)]


def workspace_of(home: str | None, workspace: str) -> Workspace:
    return Workspace(resolve_home(home), workspace)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"densesearch {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: Annotated[bool, Flag("--version", callback=_version, is_eager=True,
                                               help="Show the version and exit.")] = False) -> None:
    """densesearch command line."""


@app.command(cls=Command)
@handles_errors
def prepare(
    meta: Annotated[Path | None, typer.Option("--meta", help="Item metadata: .jsonl, .jsonl.gz or .parquet.")] = None,
    reviews: Annotated[Path | None, typer.Option("--reviews", help="Reviews in the same formats.")] = None,
    sample: Annotated[bool, Flag("--sample", help="Use the embedded 1,000-item sample.")] = False,
    beir: Annotated[Path | None, typer.Option("--beir", exists=True, file_okay=False,
                                              help="A BEIR folder of judged queries (corpus, queries, qrels/).")
                    ] = None,
    min_relevance: Annotated[int, typer.Option(min=0, max=1000, help="With --beir: the grade from which a judged "
                                                                      "item counts as relevant.")] = 1,
    category: Annotated[str | None, typer.Option("--category", help="Amazon Reviews 2023 category on the Hub.")] = None,
    queries: Annotated[Literal["reviews", "listing"] | None, typer.Option(
        "--queries", help="reviews | listing (default: reviews when given).")] = None,
    min_rating: Annotated[float, typer.Option(min=0, max=5, callback=finite,
                                              help="Keep reviews rated at least this.")] = 4.0,
    test_size: Annotated[int, typer.Option(min=1, max=10_000_000, help="Test queries (at most 20% of all).")] = 2000,
    seed: Annotated[int, typer.Option(min=0, help="Seed for query choice and split.")] = 13,
    home: HomeOpt = None, workspace: WorkspaceOpt = DEFAULT_WORKSPACE, json: JsonOpt = False,
) -> None:
    """Build the catalog, query/positive pairs and a leak-free train/dev/test split."""
    from densesearch.cli.render import prepare_table
    from densesearch.core.config import DEFAULT_CATEGORY, PrepareConfig
    from densesearch.data.prepare import run_prepare

    source = "sample" if sample else "hub" if category else "auto"
    cfg = PrepareConfig(source=source, category=category or DEFAULT_CATEGORY, meta_path=meta,
                        reviews_path=reviews, beir_path=beir, min_relevance=min_relevance, queries=queries,
                        min_rating=min_rating, test_size=test_size, seed=seed)
    out = Output(json)
    with out.progress() as progress:
        result = run_prepare(cfg, workspace_of(home, workspace), progress)
    _report(out, result, [prepare_table(result)], out.note)


@app.command(cls=Command)
@handles_errors
def status(
    paths: Annotated[bool, Flag("--paths", help="Show where each artifact lives.")] = False,
    home: HomeOpt = None, workspace: WorkspaceOpt = DEFAULT_WORKSPACE, json: JsonOpt = False,
) -> None:
    """Show the workspace's artifacts."""
    from densesearch.cli.render import status_table
    from densesearch.core.status import all_ok, problems, workspace_status

    ws = workspace_of(home, workspace)
    rows = workspace_status(ws)
    out = Output(json)
    out.line(f"workspace {ws.name} at {ws.root}")
    out.table(status_table(rows, paths))
    out.data({"home": ws.home, "workspace": ws.name, "root": ws.root, "ok": all_ok(rows), "artifacts": rows})
    if not all_ok(rows):
        bad = problems(rows)
        first = bad[0]
        typer.echo(f"error: {len(bad)} of {len(rows)} artifacts not ok; first: {first['kind']} is {first['state']}: "
                   f"{' '.join(str(first.get('problem', '')).split())}", err=True)
        raise typer.Exit(code=1)


def _quiet_libraries() -> None:
    """Silence library chatter (transformers warnings, tokenizer fork notes) for a clean terminal."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("transformers", "sentence_transformers", "optimum", "datasets", "bm25s"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:
        pass


@app.command(cls=Command)
@handles_errors
def finetune(
    samples: Annotated[int | None, typer.Option(
        min=1, help="Training pairs to sample (seeded; default 50,000, with --reranker 100,000).")] = None,
    base_model: Annotated[str, typer.Option(help="sentence-transformers id or local path.")] =
        "sentence-transformers/all-MiniLM-L6-v2",
    max_seq_length: Annotated[int | None, typer.Option(
        min=8, max=8192, help="Max tokens per text (default: what 99% of the data needs, at most 500; capped at "
                              "the model's limit).")] = None,
    batch_size: Annotated[int | None, typer.Option(
        min=2, max=65536, help="Pairs per batch (in-batch negatives; default: 256 for judged data, 64 for "
                               "review pairs). With --reranker: pairs (pointwise, 32) or queries (grouped, 4) "
                               "per step.")] = None,
    epochs: Annotated[int, typer.Option(min=1, max=1000)] = 1,
    lr: Annotated[float | None, typer.Option(
        min=1e-9, max=1.0, callback=finite, help="Peak learning rate (default: 1e-4 judged data, 5e-5 pairs).")] = None,
    warmup_ratio: Annotated[float, typer.Option(min=0.0, max=1.0, callback=finite)] = 0.1,
    seed: Annotated[int, typer.Option(min=0)] = 13,
    device: Annotated[Device, typer.Option(help="Where training runs.")] = Device.AUTO,
    loss: Annotated[Loss, typer.Option(help="The training loss.")] = Loss.MNRL,
    mini_batch_size: Annotated[int, typer.Option(min=1, max=65536, help="GradCache mini-batch for cached-mnrl.")] = 16,
    hard_negatives: Annotated[HardNegatives, typer.Option(
        help="One hard negative per pair: judged (low grades), bm25 (mined, guarded), mixed (both), none. "
             "auto: bm25 for judged data (measured best on Home Depot dev), none for pairs.")] = HardNegatives.AUTO,
    positive_grade: Annotated[int | None, typer.Option(
        min=0, help="Judged data: items graded at least this are positives (default: min relevance - 1).")] = None,
    low_grade: Annotated[int, typer.Option(
        min=0, help="Judged data: items graded at most this are hard negatives; the guard keeps items graded "
                    "above it out of the negatives.")] = 1,
    resume: Annotated[bool, Flag("--resume", help="Continue from the last checkpoint.")] = False,
    group_by_length: Annotated[bool, Flag(help="Batch texts of similar length (less padding, faster); "
                                                       "off: random no-duplicate batches.")] = True,
    reranker: Annotated[bool, Flag("--reranker", help="Train the cross-encoder reranker instead (needs an index: "
                                                      "it learns from the served first stage's hits; served "
                                                      "in INT8 ONNX when it passes the parity gate; then "
                                                      "`query --mode rerank`).")] = False,
    reranker_loss: Annotated[RerankLoss | None, typer.Option(
        help="With --reranker: pointwise (BCE per pair; the default) or grouped (per query, a softmax over its "
             "items plus the BCE; equal on Home Depot dev, 1.25x the training time).")] = None,
    teacher: Annotated[str | None, typer.Option(
        help="Distill a larger sentence-transformers model (id or directory, e.g. EmbeddingGemma) into this one: "
             "MNRL plus a term that matches the teacher's in-batch similarities; `reranker`: the workspace's "
             "cross-encoder (`finetune --reranker`), whose pair scores the student learns. Teacher outputs are "
             "cached, so another recipe costs no teacher time.")] = None,
    distill_loss: Annotated[DistillLoss, typer.Option(
        help="With --teacher: kl (softmax over the batch's items), margin-mse (positive-minus-negative "
             "margins) or auto (kl; margin-mse from the cross-encoder).")] = DistillLoss.AUTO,
    distill_weight: Annotated[float, typer.Option(
        min=0.0, max=1000.0, callback=finite, help="With --teacher: MNRL + this x the distillation term.")] = 1.0,
    teacher_precision: Annotated[TeacherPrecision, typer.Option(
        help="With --teacher: its number format (auto: bf16 on a GPU or a CPU with AVX-512 BF16 or AMX).")]
        = TeacherPrecision.AUTO,
    home: HomeOpt = None, workspace: WorkspaceOpt = DEFAULT_WORKSPACE, json: JsonOpt = False,
) -> None:
    """Fine-tune a shared-weight bi-encoder with Multiple Negatives Ranking Loss (or, with --reranker, a
    cross-encoder that re-scores the first stage's top hits)."""
    _quiet_libraries()
    if reranker and teacher:
        raise BadInput("--teacher distills into the bi-encoder", hint="drop --reranker, or drop --teacher")
    if reranker:
        _finetune_reranker(base_model, reranker_loss, epochs, lr, batch_size, seed, device, samples, home,
                           workspace, json)
        return
    if reranker_loss:
        raise BadInput("--reranker-loss trains the cross-encoder", hint="add --reranker, or drop --reranker-loss")
    from densesearch.build.train import run_finetune
    from densesearch.cli.render import finetune_tables
    from densesearch.core.config import TrainConfig

    cfg = TrainConfig(base_model=base_model, samples=samples or TrainConfig.samples, max_seq_length=max_seq_length,
                      batch_size=batch_size, epochs=epochs, lr=lr, warmup_ratio=warmup_ratio, seed=seed,
                      device=device, loss=loss, mini_batch_size=mini_batch_size, hard_negatives=hard_negatives,
                      positive_grade=positive_grade, low_grade=low_grade, resume=resume,
                      group_by_length=group_by_length, teacher=teacher, distill_loss=distill_loss,
                      distill_weight=distill_weight, teacher_precision=teacher_precision)
    out = Output(json)
    with out.progress() as progress:
        result = run_finetune(cfg, workspace_of(home, workspace), progress)
    for note in result.notes:
        out.warn(note)
    for table in finetune_tables(result):
        out.table(table)
    out.data(result)


def _finetune_reranker(base_model: str, loss: str | None, epochs: int, lr: float | None, batch_size: int | None,
                       seed: int, device: str, samples: int | None, home: str | None, workspace: str,
                       json: bool) -> None:
    from densesearch.build.reranker import run_train_reranker
    from densesearch.cli.render import reranker_table
    from densesearch.core.config import RerankConfig

    defaults = RerankConfig()
    cfg = RerankConfig(base_model=base_model, loss=loss or defaults.loss, epochs=epochs, lr=lr or defaults.lr,
                       batch_size=batch_size, seed=seed, device=device, samples=samples or defaults.samples)
    out = Output(json)
    with out.progress() as progress:
        result = run_train_reranker(cfg, workspace_of(home, workspace), progress)
    _report(out, result, [reranker_table(result)], out.warn)


def _report(out: Output, result: Any, tables: list, say) -> None:
    """A stage's notes (``say``: out.note or out.warn), its tables, and its result for --json."""
    for note in result.notes:
        say(note)
    for table in tables:
        out.table(table)
    out.data(result)


@app.command(cls=Command)
@handles_errors
def quantize(
    model: Annotated[str, typer.Option(help="finetuned | base | PATH")] = "finetuned",
    isa: Annotated[Isa, typer.Option(
        help="CPU to quantize for (auto: this one).")] = Isa.AUTO,
    force: Annotated[bool, Flag("--force", help="Publish INT8 even if the parity gate fails.")] = False,
    fallback_fp32: Annotated[bool, Flag("--fallback-fp32",
                                                help="When no INT8 recipe passes, serve FP32 ONNX.")] = False,
    runtime: Annotated[Runtime, typer.Option(
        help="INT8 runtime (auto: race ONNX Runtime and OpenVINO on this CPU, serve the faster that passes).")
    ] = Runtime.AUTO,
    threads: Threads = 0,
    home: HomeOpt = None, workspace: WorkspaceOpt = DEFAULT_WORKSPACE, json: JsonOpt = False,
) -> None:
    """Export to ONNX, quantize to INT8, and check parity before publishing."""
    _quiet_libraries()
    from densesearch.build.export import run_quantize
    from densesearch.cli.render import quantize_tables
    from densesearch.core.config import QuantizeConfig

    out = Output(json)
    with out.progress() as progress:
        result = run_quantize(QuantizeConfig(model=model, isa=isa, force=force, fallback_fp32=fallback_fp32,
                                             threads=threads, runtime=runtime),
                              workspace_of(home, workspace), progress)
    for table in quantize_tables(result):
        out.table(table)
    out.data(result)


@app.command(cls=Command)
@handles_errors
def index(
    model: Annotated[str | None, typer.Option(help="int8 | onnx | finetuned | base | PATH (default: best)")] = None,
    kind: Annotated[IndexKind, typer.Option(
        help="The FAISS structure (ivf-hnsw: IVF lists, HNSW over the centroids).")] = IndexKind.HNSW,
    m: Annotated[int, typer.Option("--m", min=2, max=256, help="HNSW neighbours per node.")] = 32,
    ef_construction: Annotated[int | None, typer.Option(
        min=8, max=4096, help="HNSW build beam width (default: 200; 48 above 200,000 items).")] = None,
    bm25: Annotated[Bm25Backend, typer.Option(help="The BM25 implementation.")] = Bm25Backend.BM25S,
    add: Annotated[Path | None, typer.Option("--add", exists=True, dir_okay=False, readable=True,
                                             help="Append items (.jsonl metadata) to the index.")] = None,
    upsert: Annotated[Path | None, typer.Option(
        "--upsert", exists=True, dir_okay=False, readable=True,
        help="New or changed items (Amazon metadata or BEIR corpus JSON lines): only new texts are encoded.")] = None,
    delete: Annotated[Path | None, typer.Option(
        "--delete", exists=True, dir_okay=False, readable=True,
        help="Delete the item ids listed in this file (one per line) from every mode.")] = None,
    compact: Annotated[bool, Flag("--compact", help="Drop deleted rows and rebuild the FAISS structure from the "
                                                    "stored vectors (`status` says when it is due).")] = False,
    device: Annotated[Device, typer.Option(
        help="Where a torch encoder (--model finetuned|base) encodes the catalog; FP16 on a GPU.")] = Device.AUTO,
    engine: Annotated[Engine, typer.Option(
        help="ray: encode the catalog with Ray Data actors (pip install 'densesearch\\[ray]').")] = Engine.LOCAL,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: a local Ray).")] = None,
    workers: Annotated[int | None, typer.Option(min=1, max=4096, help="With --engine ray: encoder actors "
                                                                      "(default 2).")] = None,
    batch_size: Annotated[int | None, typer.Option(
        min=1, max=4096, help="Catalog texts per encoder batch (default: 16 on a CPU, 256 on a GPU).")] = None,
    reencode: Annotated[bool, Flag("--reencode", help="Encode the catalog even when the published index's "
                                                      "vectors could be copied.")] = False,
    ranker: Annotated[RankerMode, typer.Option(
        help="Learned ranker (LambdaMART) over hybrid's top 50, trained on the train judgments. auto: on graded "
             "data, kept when dev nDCG@10 beats the fusion significantly; on: kept regardless.")] = RankerMode.AUTO,
    threads: Threads = 0,
    home: HomeOpt = None, workspace: WorkspaceOpt = DEFAULT_WORKSPACE, json: JsonOpt = False,
) -> None:
    """Encode the catalog and build the FAISS and BM25 indexes."""
    _quiet_libraries()
    from densesearch.build.indexer import run_add, run_index
    from densesearch.cli.render import index_tables
    from densesearch.core.config import IndexConfig, RankerConfig

    cfg = IndexConfig(model=model, kind=kind, hnsw_m=m, ef_construction=ef_construction, bm25=bm25,
                      threads=threads, add_path=add, upsert_path=upsert, delete_path=delete, compact=compact,
                      device=device, engine=engine, batch_size=batch_size,
                      reencode=reencode, ranker=RankerConfig(mode=ranker),
                      ray_address=address, ray_workers=workers)
    out = Output(json)
    if cfg.change in ("upsert", "delete", "compact"):
        _change_index(cfg, workspace_of(home, workspace), out)
        return
    with out.progress() as progress:
        ws = workspace_of(home, workspace)
        result = run_add(cfg, ws, progress) if add else run_index(cfg, ws, progress)
    out.note(f"encoder: {result.encoder.label} ({result.encoder.backend})")
    _report(out, result, index_tables(result), out.note)


def _change_index(cfg, ws, out: Output) -> None:
    """`index --upsert / --delete / --compact`: one change to the published index, published atomically."""
    from densesearch.build.updates import run_compact, run_delete, run_upsert
    from densesearch.cli.render import change_table

    run = {"upsert": run_upsert, "delete": run_delete, "compact": run_compact}[cfg.change]
    with out.progress() as progress:
        result = run(cfg, ws, progress)
    _report(out, result, [change_table(result)], out.note)


@app.command(cls=Command)
@handles_errors
def query(
    text: Annotated[str | None, typer.Argument(help="The query; none opens a prompt (or reads piped stdin).")] = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, max=100_000, help="Items to return.")] = 10,
    mode: Annotated[Mode | None, typer.Option(
        help="dense | bm25 | hybrid | rerank (hybrid re-scored by the cross-encoder; default: best on dev).")] = None,
    rerank: Annotated[int | None, typer.Option(
        min=1, max=1000, help="Re-score this many hybrid hits with the cross-encoder (implies --mode rerank; "
                              "default depth: the one chosen on dev).")] = None,
    rrf_k: Annotated[int | None, typer.Option(min=1, max=100_000, help="Hybrid by RRF with this constant "
                                              "(default: the fusion `index` chose on dev).")] = None,
    collapse_variants: Annotated[bool, Flag("--collapse-variants", help="One row per variant group.")] = False,
    ef_search: Annotated[int | None, typer.Option(min=1, max=100_000, help="Override the tuned efSearch.")] = None,
    model: Annotated[str | None, typer.Option(help="Check the index was built with this encoder.")] = None,
    threads: Threads = 0,
    wide: Annotated[bool, Flag("--wide", help="Full titles, item ids and snippets.")] = False,
    no_ranker: Annotated[bool, Flag("--no-ranker", help="Hybrid in the fusion's order, without the index's "
                                                        "learned ranker.")] = False,
    where: WhereOpt = None,
    home: HomeOpt = None, workspace: WorkspaceOpt = DEFAULT_WORKSPACE, json: JsonOpt = False,
) -> None:
    """Search the catalog."""
    from densesearch.cli.output import show_answer
    from densesearch.core.config import QueryConfig
    from densesearch.retrieval.searcher import Searcher

    cfg = QueryConfig(k=k, mode="rerank" if rerank else mode, rrf_k=rrf_k, collapse_variants=collapse_variants,
                      ef_search=ef_search, threads=threads, rerank=rerank, ranker=not no_ranker,
                      where=tuple(where or ()))
    searcher = Searcher(workspace_of(home, workspace), threads=threads, model=model, mapped=text is not None)
    searcher.start_loading(cfg.mode)
    out = Output(json)
    for note in searcher.notes:
        out.note(note)

    def answer(line: str, config: QueryConfig) -> None:
        result = searcher.ask(line, config)
        if json and text is None:
            import json as jsonlib

            from densesearch.cli.output import to_jsonable

            for note in result.notes:
                out.note(note)
            sys.stdout.write(jsonlib.dumps(to_jsonable(result), ensure_ascii=False) + "\n")
        else:
            show_answer(out, result, wide)

    from densesearch.cli.repl import prompt_lines, read_stdin_queries, session

    if text is not None:
        answer(text, cfg)
    elif not sys.stdin.isatty():
        session(answer, cfg, out, read_stdin_queries(), interactive=False)
    else:
        session(answer, cfg, out, prompt_lines(out), interactive=True)






@app.command(cls=Command)
@handles_errors
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    threads: Annotated[int, typer.Option(min=0, max=1024, help="Encoder threads per request (1: best under "
                                                                "concurrent load, one request per core).")] = 1,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Server processes sharing the port, each answering "
                                                              "on its own core (more QPS under concurrent load; "
                                                              "each loads the index; /metrics is per process).")] = 1,
    request_timeout: Annotated[float, typer.Option(min=0.1, max=3600, help="Seconds a client has to send a "
                                                                            "whole request; slower: cut off.")] = 10.0,
    keep_alive: Annotated[float, typer.Option(min=0.1, max=3600, help="Seconds an idle keep-alive connection "
                                                                       "stays open.")] = 5.0,
    max_connections: Annotated[int, typer.Option(min=1, max=1_000_000, help="Connections and requests in flight "
                                                                            "per process; above it: HTTP 503.")] = 512,
    home: HomeOpt = None, workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
) -> None:
    """Serve search over HTTP: a search page at /, /search, /items/ID, /health, /metrics, /docs."""
    from densesearch.serve.app import serve as run_server
    from densesearch.serve.limits import ServerLimits

    ws = workspace_of(home, workspace)
    typer.echo(f"serving workspace {ws.name} on http://{host}:{port}/ (API docs at /docs; Ctrl-C stops)", err=True)
    run_server(ws, host, port, threads, workers, ServerLimits(request_timeout, keep_alive, max_connections))


KOpt = Annotated[int, typer.Option("-k", "--k", min=1, max=1000, help="Items to return.")]
WideOpt = Annotated[bool, Flag("--wide", help="Full titles, item ids and snippets.")]


@app.command(cls=Command)
@handles_errors
def similar(
    item_id: Annotated[str, typer.Argument(help="An item id, as `query --wide` shows it.", show_default=False)],
    k: KOpt = 10, threads: Threads = 0, wide: WideOpt = False, where: WhereOpt = None,
    home: HomeOpt = None, workspace: WorkspaceOpt = DEFAULT_WORKSPACE, json: JsonOpt = False,
) -> None:
    """Items like one item: nearest to its stored vector, without the item and its variant group."""
    from densesearch.cli.output import show_answer
    from densesearch.retrieval.recommend import similar_items
    from densesearch.retrieval.searcher import Searcher

    searcher = Searcher(workspace_of(home, workspace), threads=threads, mapped=True)
    show_answer(Output(json), similar_items(searcher, item_id, k, tuple(where or ())), wide)


@app.command(cls=Command)
@handles_errors
def recommend(
    history: Annotated[Path, typer.Option("--history", exists=True, dir_okay=False, show_default=False, help=(
        'A shopper\'s history, oldest first: JSON lines {"text": review or query} and/or {"item_id": ...}, '
        'optional "rating" (below 4: skipped).'))],
    k: KOpt = 10, threads: Threads = 0, wide: WideOpt = False, where: WhereOpt = None,
    home: HomeOpt = None, workspace: WorkspaceOpt = DEFAULT_WORKSPACE, json: JsonOpt = False,
) -> None:
    """Items for a shopper: their last 5 positive texts joined and their items, without what they have seen."""
    from densesearch.cli.output import show_answer
    from densesearch.retrieval.recommend import History
    from densesearch.retrieval.recommend import recommend as recommend_items
    from densesearch.retrieval.searcher import Searcher

    searcher = Searcher(workspace_of(home, workspace), threads=threads, mapped=True)
    show_answer(Output(json), recommend_items(searcher, History.from_jsonl(history), k, tuple(where or ())), wide)


def _parse_batch_sizes(text: str) -> tuple[int, ...]:
    from densesearch.core.errors import BadInput

    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise BadInput(f"--batch-size {text!r} is not a list of integers", hint="e.g. --batch-size 1,8,32") from exc
    if not sizes or min(sizes) <= 0 or max(sizes) > MAX_LATENCY_BATCH:
        raise BadInput(f"--batch-size needs integers from 1 to {MAX_LATENCY_BATCH}", hint="e.g. --batch-size 1,8,32")
    return sizes


@app.command(cls=Command)
@handles_errors
def bench(
    batch_size: Annotated[str, typer.Option("--batch-size", help="Latency batch sizes, e.g. 1,8,32.")] = "1",
    split: Annotated[Literal["test", "dev"], typer.Option(help="test | dev")] = "test",
    queries: Annotated[int | None, typer.Option(min=1, help="Evaluate at most N queries.")] = None,
    runs: Annotated[int, typer.Option(min=1, max=1_000_000, help="Timed runs per latency measurement.")] = 200,
    threads: Threads = 0,
    compare: Annotated[str | None, typer.Option(help="Earlier run id, 'latest' or report.json path.")] = None,
    trec: Annotated[Path | None, typer.Option(help="Directory for qrels.txt and one TREC run per system "
                                                   "(bm25, base, finetuned-fp32, finetuned-int8, hybrid).")] = None,
    scale: Annotated[int | None, typer.Option(min=1000, max=1_000_000_000,
                                              help="Instead: serving cost at N synthetic vectors and documents "
                                                   "(e.g. 826402, the full Fashion catalog).")] = None,
    kinds: Annotated[str, typer.Option(help="With --scale: index kinds to build.")
                     ] = "flat,hnsw,hnsw-sq8,ivfpq,ivf-hnsw",
    documents: Annotated[int | None, typer.Option(min=0, max=1_000_000_000,
                                                  help="With --scale: BM25 documents (default N; 0 skips).")] = None,
    m: Annotated[int, typer.Option("--m", min=2, max=256, help="With --scale: HNSW neighbours per node.")] = 32,
    ef_construction: Annotated[int | None, typer.Option(
        min=8, max=4096, help="With --scale: HNSW build beam (default: as `index` picks).")] = None,
    home: HomeOpt = None, workspace: WorkspaceOpt = DEFAULT_WORKSPACE, json: JsonOpt = False,
) -> None:
    """Measure retrieval quality and latency of BM25, base, fine-tuned, INT8 and hybrid."""
    _quiet_libraries()
    if scale is not None:
        from densesearch.core.config import ScaleConfig

        cfg = ScaleConfig(vectors=scale, documents=scale if documents is None else documents,
                          kinds=tuple(k.strip() for k in kinds.split(",") if k.strip()), threads=threads,
                          hnsw_m=m, ef_construction=ef_construction)
        _bench_scale(cfg, workspace_of(home, workspace), Output(json))
        return
    from densesearch.bench.bench import TrecNotWritten, compare_reports, load_report, run_bench, save_report
    from densesearch.cli.output import to_jsonable
    from densesearch.cli.render import (
        bench_histograms,
        bench_latency_table,
        bench_markdown,
        bench_quality_table,
        compare_table,
    )
    from densesearch.core.config import BenchConfig

    ws = workspace_of(home, workspace)
    earlier = load_report(ws, compare) if compare else None
    cfg = BenchConfig(split=split, queries=queries, batch_sizes=_parse_batch_sizes(batch_size), latency_runs=runs,
                      threads=threads, trec_path=trec)
    out = Output(json)
    try:
        with out.progress() as progress:
            report = run_bench(cfg, ws, progress)
    except TrecNotWritten as exc:  # the measurement is kept: saved, and named in the one line
        saved = save_report(exc.report, ws, bench_markdown(exc.report))
        raise DensesearchError(f"{exc.message}; the report was saved to {saved}", hint=exc.hint) from None
    saved = save_report(report, ws, bench_markdown(report))
    out.table(bench_quality_table(report))
    out.table(bench_latency_table(report))
    for panel in bench_histograms(report):
        if not json:
            out.out.print(panel)
    payload = {"report": report, "saved_to": saved}
    if earlier:
        rows = compare_reports(to_jsonable(report), earlier)
        out.table(compare_table(rows, earlier["run_id"]))
        payload["compare"] = rows
    out.note(f"saved to {saved} (report.json, report.md, latency.png)")
    out.data(payload)


def _bench_scale(cfg, ws: Workspace, out: Output) -> None:
    if not cfg.kinds:
        from densesearch.core.errors import BadInput

        raise BadInput("--kinds is empty", hint="e.g. --kinds flat,hnsw")
    from densesearch.bench.scale import run_scale, save_scale_report
    from densesearch.cli.render import scale_markdown, scale_tables

    with out.progress() as progress:
        report = run_scale(cfg, ws, progress)
    saved = save_scale_report(report, ws, scale_markdown(report))
    for table in scale_tables(report):
        out.table(table)
    out.note(f"saved to {saved} (report.json, report.md)")
    out.data({"report": report, "saved_to": saved})


@app.command(cls=Command)
@handles_errors
def quickstart(
    samples: Annotated[int, typer.Option(min=1, help="Training pairs.")] = 50000,
    max_seq_length: Annotated[int, typer.Option(min=8, max=8192,
                                                help="Training max tokens (short keeps CPU training fast).")] = 128,
    epochs: Annotated[int, typer.Option(min=1, max=1000)] = 1,
    home: HomeOpt = None, workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
) -> None:
    """prepare -> finetune -> quantize -> index -> bench on the embedded sample, then one example query."""
    from densesearch.cli.quickstart import run_quickstart

    run_quickstart(sys.modules[__name__], samples, max_seq_length, epochs, home, workspace)


def run_cli(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; a bad option is one line on stderr and exit code 2."""
    from typer.exceptions import TyperException

    try:
        code = app(args=argv, standalone_mode=False, prog_name="densesearch")
    except DensesearchError as exc:  # raised outside a command (e.g. option parsing helpers)
        if _debug():
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: nothing was published", file=sys.stderr)
        return 130
    except OSError as exc:
        if _debug():
            raise
        return _report_os_error(exc)
    except TyperException as exc:
        if _debug():
            raise
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if type(exc).__name__ == "Abort":
            print("interrupted: nothing was published", file=sys.stderr)
            return 130
        print(f"error: {' '.join(message.split())} (see `densesearch --help`)", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2) or 2)
    return int(code or 0)


def main() -> None:
    """Console-script entry point: standard streams checked first, the output flushed (or its failure named) last."""
    from densesearch.cli.streams import flush_stdout, guard_standard_streams

    problem = guard_standard_streams()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(1)
    sys.exit(flush_stdout(run_cli()))
