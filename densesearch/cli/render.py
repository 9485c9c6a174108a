"""Terminal tables: each command's result drawn with rich (`cli.output` decides whether anything is drawn)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:  # the result types of each stage, for annotations only (rendering imports no stage)
    from densesearch.bench.bench import BenchReport
    from densesearch.bench.scale import DenseScaleResult, ScaleReport
    from densesearch.build.export import QuantizeResult
    from densesearch.build.indexer import IndexResult
    from densesearch.build.ranker import RankerReport
    from densesearch.build.reranker import RerankerResult
    from densesearch.build.train import TrainResult
    from densesearch.build.updates import ChangeResult
    from densesearch.data.prepare import PrepareResult
    from densesearch.data.sources import ReadStats
    from densesearch.retrieval.searcher import Answer

BEST = "bold green"


def kv_table(title: str, rows: Sequence[tuple[str, Any]]) -> Table:
    """A two-column table of labelled values."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, fmt(value))
    return table


def fmt(value: Any, digits: int = 4) -> str:
    """A value as table text: floats rounded, ints with separators, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def seconds(value: float) -> str:
    """Seconds for people: 0.13 s, 4.2 s, 95 s, 12 min 5 s."""
    if value < 10:
        return f"{value:.2f} s" if value < 1 else f"{value:.1f} s"
    if value < 600:
        return f"{value:.0f} s"
    return f"{int(value // 60)} min {value % 60:.0f} s"


def rate(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}" if value >= 10 else f"{value:.2f} {unit}"


def prepare_table(result: PrepareResult) -> Table:
    """Summary of a `prepare` run."""
    rows: list[tuple[str, Any]] = [("source", result.manifest.extra["source"]),
                                   ("metadata lines read", result.meta_stats.lines),
                                   ("metadata bad lines", _bad(result.meta_stats))]
    if result.review_stats:
        rows += [("review lines read", result.review_stats.lines),
                 ("review bad lines", _bad(result.review_stats)),
                 ("reviews without item metadata", result.reviews_without_item)]
    rows += [("items", result.items), ("variant groups", result.groups),
             ("query source", result.query_source), ("query/positive pairs", result.pairs),
             ("split train / dev / test",
              " / ".join(f"{result.splits[s]:,}" for s in ("train", "dev", "test"))),
             ("fingerprint", result.manifest.short), ("time", seconds(result.seconds)),
             ("written to", str(result.path))]
    return kv_table("densesearch prepare", rows)


def _bad(stats: ReadStats) -> str:
    if not stats.bad:
        return "0"
    examples = ", ".join(f"line {line}: {reason}" for line, reason in stats.bad_examples[:3])
    return f"{stats.bad:,} (first: {examples})"


def status_table(rows: Sequence[dict[str, Any]], show_paths: bool) -> Table:
    """The workspace's artifacts."""
    table = Table(title="densesearch status", title_justify="left")
    for column in ("artifact", "state", "fingerprint", "created", "summary"):
        table.add_column(column)
    if show_paths:
        table.add_column("path")
    colours = {"ok": "green", "stale": "yellow", "corrupt": "red", "missing": "dim", "skipped": "dim"}
    for row in rows:
        cells = [row["kind"], Text(row["state"], style=colours.get(row["state"], "")), row.get("fingerprint", "")[:12],
                 row.get("created", ""), row.get("problem") or row.get("summary", "")]
        if show_paths:
            cells.append(row["path"])
        table.add_row(*cells)
    return table


def metrics_table(title: str, rows: dict[str, dict[str, float]], columns: Sequence[str]) -> Table:
    """Systems as rows, metrics as columns, the best value per column in bold green."""
    table = Table(title=title, title_justify="left")
    table.add_column("system")
    for column in columns:
        table.add_column(column, justify="right")
    best = {c: max((r.get(c, float("-inf")) for r in rows.values()), default=None) for c in columns}
    for name, values in rows.items():
        cells = []
        for column in columns:
            value = values.get(column)
            text = fmt(value)
            cells.append(Text(text, style=BEST) if value is not None and value == best[column]
                         and len(rows) > 1 else text)
        table.add_row(name, *cells)
    return table


def finetune_tables(result: TrainResult) -> list[Table]:
    summary = kv_table("densesearch finetune", [
        ("base model", result.base_model), ("training pairs used", result.pairs_used),
        ("steps", result.steps), ("device", result.device), ("max sequence length", result.max_seq_length),
        ("training data", training_data_label(result.recipe)),
        ("training speed", rate(result.pairs_per_second, "pairs/s")), ("time", seconds(result.seconds)),
        ("fingerprint", result.manifest.short), ("written to", str(result.path))])
    columns = ["recall@1", "recall@10", "mrr@10", "ndcg@10"]
    counts = result.manifest.counts
    rows = {"base": result.dev_base}
    if len(result.dev_epochs) > 1:
        rows.update({f"epoch {h['epoch']}": h for h in result.dev_epochs})
    rows["fine-tuned (kept)"] = result.dev_finetuned
    dev = metrics_table(f"dev split ({counts['dev_queries']} queries over {counts.get('dev_items', '?'):,} items, "
                        f"{result.manifest.extra.get('query_source')} queries, exact search)", rows, columns)
    return [summary, dev]


def reranker_table(result: RerankerResult) -> Table:
    """`finetune --reranker`: what was trained, and dev nDCG@10 of the first stage against it re-scored."""
    chosen = result.interpolation
    return kv_table("densesearch finetune --reranker", [
        ("base model", result.base_model), ("loss", result.loss), ("training pairs", result.rows),
        ("steps", result.steps),
        ("device", result.device), ("training speed", rate(result.rows_per_second, "pairs/s")),
        ("served by", result.scorer),
        *((f"parity, {r.precision}", f"{'pass' if r.passed else 'FAIL'}: top-10 overlap {r.top10_overlap:.3f}, "
           f"dev nDCG@10 {r.ndcg:.4f} (FP32 ONNX {r.ndcg_fp32:.4f})") for r in result.parity),
        ("chosen on dev", f"{chosen.label} ({result.dev_queries} queries)"),
        ("dev nDCG@10, hybrid", f"{result.dev_first_stage:.4f}"),
        ("dev nDCG@10, re-scored", f"{result.dev_reranked:.4f}"),
        ("time", seconds(result.seconds)), ("written to", str(result.path))])


def training_data_label(recipe: dict) -> str:
    if recipe.get("source") == "judgments":
        if recipe["negatives"] == "none":
            return f"judged items graded >= {recipe['positive_grade']}; in-batch negatives only"
        return (f"judged items graded >= {recipe['positive_grade']}; negatives: {recipe['negatives']}"
                f" (judged <= {recipe['low_grade']}, BM25 ranks {recipe['bm25_ranks'][0]}-{recipe['bm25_ranks'][1]},"
                " guarded)")
    return f"query/item pairs; negatives: {recipe.get('negatives', 'none')}"


def int8_runtimes(result: QuantizeResult) -> str:
    if not result.runtime:
        return "-"
    text = f"{result.runtime} ({result.recipe})"
    if result.query_runtime and result.query_runtime != result.runtime:
        text = f"catalog: {text}; queries: {result.query_runtime}"
    return text


def served_for(runtime: str, result: QuantizeResult) -> str:
    uses = [use for use, chosen in (("catalog", result.runtime), ("queries", result.query_runtime or result.runtime))
            if chosen == runtime]
    return " + ".join(uses)


def quantize_tables(result: QuantizeResult) -> list[Table]:
    int8 = (f"{result.int8_bytes / 2**20:.1f} MiB ({result.size_ratio:.1%} of FP32)" if not result.fell_back_to_fp32
            else "none: no recipe passed, FP32 ONNX is served")
    gate = ("passed" if result.passed else "FAILED (published with --force)" if result.forced
            else "failed: fell back to FP32 ONNX")
    sizes = kv_table("densesearch quantize", [
        ("source model", result.source_model), ("CPU instruction set", result.isa),
        ("INT8 runtime (recipe)", int8_runtimes(result)),
        ("FP32 ONNX size", f"{result.fp32_bytes / 2**20:.1f} MiB"), ("INT8 model size", int8),
        ("parity gate", gate), ("fingerprint", result.manifest.short)])
    gate_table = Table(title="parity gate: INT8 vs FP32 ONNX (cosine, top-10 neighbour overlap, dev Recall@10)",
                       title_justify="left")
    for column in ("recipe", "cos mean", "cos min", "overlap", "R@10 fp32", "R@10 int8", "drop 95% CI", "verdict"):
        gate_table.add_column(column, justify="left" if column in ("recipe", "verdict") else "right")
    for a in result.attempts:
        gate_table.add_row(a.recipe, f"{a.cosine_mean:.4f}", f"{a.cosine_min:.4f}", f"{a.top10_overlap:.3f}",
                           f"{a.recall_fp32:.3f}", f"{a.recall_int8:.3f}", f"{a.drop_ci[0]:+.2f}..{a.drop_ci[1]:+.2f}",
                           Text("pass", style="green") if a.passed else Text("; ".join(a.reasons), style="red"))
    latency = Table(title="median encode ms per dev query, one at a time", title_justify="left")
    for column in ("backend", "ms p50"):
        latency.add_column(column, justify="right" if column != "backend" else "left")
    for name, value in result.latency_ms_p50.items():
        latency.add_row(name, f"{value:.2f}")
    tables = [sizes, gate_table, latency]
    if result.trials:
        race = Table(title="INT8 runtimes that passed the gate, raced on this CPU: the fastest in batches encodes the "
                           "catalog, the fastest per query answers queries",
                     title_justify="left")
        for column in ("runtime", "catalog items/s", "tokens/s", "ms per query (one at a time)",
                       "alone vs batched: cos min / dev R@10 change",
                       "served"):
            race.add_column(column, justify="left" if column in ("runtime", "served") else "right")
        for t in result.trials:
            race.add_row(f"{t.runtime} ({t.recipe})", f"{t.items_per_second:,.0f}", f"{t.tokens_per_second:,.0f}",
                         f"{t.batch1_ms:.2f}", f"{t.batch_cosine_min:.4f} / {t.batch_recall_delta:+.3f}",
                         served_for(t.runtime, result))
        tables.append(race)
    return tables


def encode_speed(result: IndexResult) -> str:
    """Items/s, with real tokens/s and the share of the CPU's rough INT8 peak where known."""
    if not result.items_per_second:
        return "no encode: the published index's vectors were copied"
    text = rate(result.items_per_second, "items/s")
    throughput = result.throughput
    if throughput is None or throughput.tokens_per_second is None:
        return text
    text += f", {rate(throughput.tokens_per_second, 'tokens/s')} ({throughput.runtime}"
    if throughput.peak_share is not None:
        text += f", {throughput.peak_share:.0%} of a rough INT8 peak"
    return text + ")"


def ranker_summary(report: RankerReport | None) -> str:
    """`index`'s learned ranker in one line: kept or not, why, and dev nDCG@10 against the fusion alone."""
    if report is None:
        return "-"
    line = f"{'kept' if report.kept else 'not kept'}: {report.reason}"
    if report.dev_ndcg_ranker is not None:
        line += (f" (dev nDCG@10 {report.dev_ndcg_ranker:.4f} vs {report.dev_ndcg_fusion:.4f}, "
                 f"p {report.p_vs_fusion:.4f}; {report.train_queries:,} train queries, {seconds(report.seconds)})")
    return line


def change_table(result: ChangeResult) -> Table:
    """What `index --upsert / --delete / --compact` changed, and what the published index now holds."""
    done = {"upsert": [("items encoded (new or text changed)", result.encoded),
                       ("items updated in place (attributes only)", result.updated),
                       ("items unchanged", result.unchanged)],
            "delete": [("items deleted", result.deleted)],
            "compact": [("dead rows dropped", result.deleted)]}[result.action]
    due = "yes: run `densesearch index --compact`" if result.compaction_due else "no"
    return kv_table(f"densesearch index --{result.action}", [
        *done, ("live items", result.live), ("dead rows (deleted or replaced)", result.dead),
        ("compaction due", due), ("time", seconds(result.seconds)),
        ("size on disk", f"{result.bytes_on_disk / 2**20:.1f} MiB")])


def index_tables(result: IndexResult) -> list[Table]:
    rows = [("encoder", f"{result.encoder.label} ({result.encoder.backend})"), ("index kind", result.kind),
            ("vectors", result.vectors), ("encode speed", encode_speed(result)),
            ("build time", seconds(result.build_seconds)),
            ("search parameter", ", ".join(f"{k}={v}" for k, v in result.search_param.items()) or "exact"),
            ("dev nDCG@10 dense / bm25 / hybrid",
             " / ".join(f"{result.mode.dev_ndcg[m]:.3f}" if m in result.mode.dev_ndcg else "-"
                        for m in ("dense", "bm25", "hybrid"))),
            ("hybrid fusion (best on dev)", result.mode.fusion.label),
            ("learned ranker", ranker_summary(result.ranker)),
            ("default query mode", result.mode.recommended),
            ("size on disk", f"{result.bytes_on_disk / 2**20:.1f} MiB")]
    if result.added:
        rows.insert(3, ("items added", result.added))
    tables = [kv_table("densesearch index", rows)]
    if result.sweep:
        sweep = Table(title="search-parameter sweep on dev queries (recall@10 vs exact)", title_justify="left")
        for column in ("value", "recall vs exact", "ms / query"):
            sweep.add_column(column, justify="right")
        for row in result.sweep:
            sweep.add_row(str(row["value"]), f"{row['recall_vs_exact']:.4f}", f"{row['ms_per_query']:.3f}")
        tables.append(sweep)
    return tables


def answer_table(answer: Answer, wide: bool = False) -> Table:
    """One row per hit: rank, score, title cut to fit, store, price (80 columns); ``wide`` shows everything."""
    from rich import box

    table = Table(title=f"{answer.query!r} ({answer.mode}, top {answer.k})", title_justify="left",
                  caption=f"encode {answer.encode_ms:.2f} ms · search {answer.search_ms:.2f} ms · total "
                          f"{answer.total_ms:.2f} ms · {answer.answered_by}", caption_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, expand=not wide)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    if wide:
        table.add_column("item", no_wrap=True)
    table.add_column("title", ratio=1, no_wrap=not wide, overflow="fold" if wide else "ellipsis", min_width=20)
    table.add_column("store", no_wrap=not wide, overflow="fold" if wide else "ellipsis", max_width=None if wide else 14)
    table.add_column("price", justify="right", no_wrap=True)
    if wide:
        table.add_column("rating", justify="right", no_wrap=True)
        table.add_column("snippet", overflow="fold")
    for hit in answer.hits:
        price = f"${hit.price:,.2f}" if hit.price is not None else "-"
        cells = [str(hit.rank), f"{hit.score:.3f}"]
        if wide:
            cells.append(hit.item_id)
        cells += [hit.title or hit.item_id, hit.store, price]
        if wide:
            cells += [f"{hit.rating:.1f}" if hit.rating is not None else "-", hit.snippet]
        table.add_row(*cells)
    return table


QUALITY_COLUMNS = ("recall@1", "recall@5", "recall@10", "recall@50", "recall@100", "mrr@10", "ndcg@10")


def _source_label(report: BenchReport) -> str:
    return {"reviews": "review -> item queries", "judged": "judged queries (graded relevance)"}.get(
        report.query_source, "LISTING-PROXY queries (held-out listing sentences, not reviews)")




TERMINAL_QUALITY_COLUMNS = ("recall@10", "recall@100", "mrr@10", "ndcg@10")
TERMINAL_NAMES = {"recall@10": "R@10", "recall@100": "R@100", "mrr@10": "MRR", "ndcg@10": "nDCG",
                  "judged_ndcg@10": "J-nDCG", "judged@10": "J@10"}


def _quality_columns(report: BenchReport) -> tuple[str, ...]:
    """The terminal columns: judged-only nDCG and judged@10 too where judgments are graded."""
    from densesearch.eval.metrics import POOL_METRICS  # here, not at import: numpy stays off the CLI's start-up

    pool = tuple(name for name in POOL_METRICS if all(name in q.strict for q in report.quality))
    return (*TERMINAL_QUALITY_COLUMNS, *pool)


def _system_label(system: str) -> str:
    if system.startswith("hybrid"):
        return ("hybrid fusion" if system.endswith("fusion only")
                else "hybrid + ranker" if system.endswith("learned ranker") else "hybrid")
    return system.replace(" ONNX", "").replace(", character 3-grams", " 3-grams")


def bench_quality_table(report: BenchReport) -> Table:
    """The headline metrics, narrow enough for 80 columns (every metric is in report.md and --json).

    Graded reports show judged-only nDCG and judged@10 in the room of the R@10 interval (in report.md).
    """
    from rich import box

    columns = _quality_columns(report)
    graded = columns != TERMINAL_QUALITY_COLUMNS
    table = Table(title=f"retrieval quality: {report.split} split, {report.queries:,} queries, "
                        f"{report.catalog_items:,} items, {_source_label(report)}", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, caption=_quality_caption(graded),
                  caption_justify="left")
    table.add_column("system", no_wrap=True, min_width=15, max_width=17)
    table.add_column("search", no_wrap=True, min_width=5)
    for column in columns:
        table.add_column(TERMINAL_NAMES[column], justify="right", no_wrap=True, min_width=5)
    if not graded:
        table.add_column("R@10 CI", justify="right", no_wrap=True, min_width=9)
    table.add_column("ANN", justify="right", no_wrap=True, min_width=5)
    best = {c: max(q.strict[c] for q in report.quality) for c in columns}
    for q in report.quality:
        cells = [Text(f"{q.strict[c]:.3f}", style=BEST if q.strict[c] == best[c] else "") for c in columns]
        lo, hi = q.strict_ci["recall@10"]
        interval = [] if graded else [f"{lo:.2f}-{hi:.2f}"]
        table.add_row(_system_label(q.system), "index" if q.search == "inverted index" else q.search, *cells,
                      *interval, fmt(q.ann_recall_vs_exact, 3))
    return table


def _quality_caption(graded: bool) -> str:
    columns = ("J-nDCG = nDCG@10 of the judged items only; J@10 = share of the top 10 with a judgment; "
               if graded else "CI = 95% bootstrap interval of R@10; ")
    return ("R = recall of the exact item; MRR, nDCG at 10; " + columns
            + "ANN = the index's recall@10 against exact search; hybrid = the served dense model and BM25, fused as "
              "`index` chose on dev (named in report.md); R@1/5/50 and variant-aware scores: report.md")


def bench_latency_table(report: BenchReport) -> Table:
    table = Table(title=f"latency (ms; {report.machine['threads']} threads; {report.machine['cpu']})",
                  title_justify="left")
    for column in ("stage", "backend", "batch", "p50", "p90", "p99", "mean", "QPS"):
        table.add_column(column, justify="left" if column in ("stage", "backend") else "right")
    for s in report.latency:
        table.add_row(s.stage, s.backend, str(s.batch_size), f"{s.p50_ms:.3f}", f"{s.p90_ms:.3f}",
                      f"{s.p99_ms:.3f}", f"{s.mean_ms:.3f}", f"{s.qps:,.0f}")
    return table


def histogram_text(samples: Sequence[float], bins: int = 12, width: int = 40) -> str:
    """A horizontal text histogram of latency samples (clipped at p99)."""
    import numpy as np

    values = np.asarray(samples)
    top = float(np.percentile(values, 99))
    counts, edges = np.histogram(np.clip(values, None, top), bins=bins)
    peak = max(int(counts.max()), 1)
    return "\n".join(f"{edges[n]:8.3f} ms │{'█' * round(width * c / peak):<{width}} {c}"
                     for n, c in enumerate(counts))


def bench_histograms(report: BenchReport) -> list[Any]:
    from rich.panel import Panel

    return [Panel(histogram_text(s.samples_ms), title=f"{s.stage} · {s.backend} · batch {s.batch_size}",
                  expand=False)
            for s in report.latency if s.batch_size == 1 and s.stage in ("encode", "end-to-end")]


def bench_markdown(report: BenchReport) -> str:
    from densesearch.eval.metrics import POOL_METRICS

    columns = [c for c in (*QUALITY_COLUMNS, *POOL_METRICS) if all(c in q.strict for q in report.quality)]
    lines = [f"# densesearch bench {report.run_id}", "",
             f"Split **{report.split}**, {report.queries:,} queries over {report.catalog_items:,} items; "
             f"query source: **{_source_label(report)}**.", "",
             "| system | search | " + " | ".join(columns) + " | R@10 95% CI | variant R@10 | p vs BM25 (nDCG@10) |",
             "|---|---|" + "---:|" * (len(columns) + 3)]
    for q in report.quality:
        lo, hi = q.strict_ci["recall@10"]
        p_value = q.p_vs_bm25.get("ndcg@10")
        lines.append(f"| {q.system} | {q.search} | " + " | ".join(f"{q.strict[c]:.4f}" for c in columns)
                     + f" | [{lo:.3f}, {hi:.3f}] | {fmt(q.variant.get('recall@10'))} | "
                     + (f"{p_value:.4f}" if p_value is not None else "-") + " |")
    lines += ["", f"Latency (ms), {report.machine['threads']} threads, {report.machine['cpu']}:", "",
              "| stage | backend | batch | p50 | p90 | p99 | QPS |", "|---|---|---:|---:|---:|---:|---:|"]
    for s in report.latency:
        lines.append(f"| {s.stage} | {s.backend} | {s.batch_size} | {s.p50_ms:.3f} | {s.p90_ms:.3f} | "
                     f"{s.p99_ms:.3f} | {s.qps:,.0f} |")
    lines += ["", "Sizes: " + ", ".join(f"{k} = {v / 2**20:.1f} MiB" for k, v in report.sizes.items()), ""]
    return "\n".join(lines)


def compare_table(rows: Sequence[dict[str, Any]], earlier: str) -> Table:
    table = Table(title=f"compared with run {earlier}", title_justify="left")
    for column in ("system", "search", "metric", "before", "after", "delta"):
        table.add_column(column, justify="right" if column in ("before", "after", "delta") else "left")
    for r in rows:
        colour = "green" if r["delta"] > 0 else "red" if r["delta"] < 0 else "white"
        table.add_row(r["system"], r["search"], r["metric"], f"{r['before']:.4f}", f"{r['after']:.4f}",
                      Text(f"{r['delta']:+.4f}", style=colour))
    return table


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f}"


def _param(result: DenseScaleResult) -> str:
    short = {"efSearch": "ef", "nprobe": "nprobe"}
    return ", ".join(f"{short.get(k, k)}={v}" for k, v in result.search_param.items()) or "exact"


def scale_tables(report: ScaleReport) -> list[Table]:
    """Dense kinds at N vectors, their sweeps, and BM25 at N documents."""
    dense = Table(title=f"index kinds at {report.vectors:,} synthetic vectors (dim {report.dim}; recall@10 vs exact "
                        f"over {report.ground_truth_queries:,} real queries)", title_justify="left",
                  caption=f"vectors: {report.seed_items:,} real {report.encoder} item embeddings + covariance-shaped "
                          f"noise (median cosine to parent {report.parent_cosine:.3f}, real nearest neighbour "
                          f"{report.nn_cosine_real:.3f}); latency: one query, one thread", caption_justify="left")
    for column in ("kind", "build s", "RAM MiB", "disk MiB", "param", "R@10", "p50 ms", "p99 ms"):
        dense.add_column(column, justify="left" if column in ("kind", "param") else "right",
                         no_wrap=column in ("kind", "param"))
    for r in report.dense:
        dense.add_row(r.kind, f"{r.build_seconds:,.1f}", _mib(r.ram_bytes), _mib(r.index_bytes), _param(r),
                      f"{r.recall_at_10:.3f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}")
    tables = [dense]
    sweep = Table(title="search-parameter sweeps (recall@10 vs exact, ms / query)", title_justify="left")
    for column in ("kind", "value", "recall vs exact", "ms / query"):
        sweep.add_column(column, justify="left" if column == "kind" else "right")
    for r in report.dense:
        for row in r.sweep:
            sweep.add_row(r.kind, str(row["value"]), f"{row['recall_vs_exact']:.4f}", f"{row['ms_per_query']:.3f}")
    if sweep.row_count:
        tables.append(sweep)
    if report.sparse:
        s = report.sparse
        bm25 = Table(title=f"BM25 at {s.documents:,} synthetic documents ({s.queries} real queries): "
                           f"bm25s is {s.speedup:,.0f}x faster; identical top-10 on {s.same_top10:.0%}",
                     title_justify="left")
        for column in ("backend", "build s", "p50 ms", "QPS"):
            bm25.add_column(column, justify="left" if column == "backend" else "right")
        for backend in s.qps:
            bm25.add_row(backend, f"{s.build_seconds[backend]:,.1f}", f"{s.p50_ms[backend]:,.3f}",
                         f"{s.qps[backend]:,.1f}")
        tables.append(bm25)
    return tables


def scale_markdown(report: ScaleReport) -> str:
    lines = [f"# densesearch bench --scale {report.vectors} ({report.run_id})", "",
             f"{report.vectors:,} synthetic vectors of dim {report.dim}: {report.seed_items:,} real {report.encoder} "
             f"item embeddings plus covariance-shaped noise (median cosine to parent {report.parent_cosine:.3f}; "
             f"real nearest neighbour {report.nn_cosine_real:.3f}). Recall@10 is against exact search over "
             f"{report.ground_truth_queries:,} real queries. Latency: one query at a time, one thread. "
             f"Machine: {report.machine['cpu']}, {report.machine['cores']} cores.", "",
             "| kind | build s | vectors/s | RAM MiB | disk MiB | param | recall@10 | p50 ms | p99 ms |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in report.dense:
        lines.append(f"| {r.kind} | {r.build_seconds:,.1f} | {r.vectors_per_second:,.0f} | {_mib(r.ram_bytes)} | "
                     f"{_mib(r.index_bytes)} | {_param(r)} | {r.recall_at_10:.4f} | {r.p50_ms:.3f} | {r.p99_ms:.3f} |")
    if report.sparse:
        s = report.sparse
        lines += ["", f"BM25 over {s.documents:,} synthetic documents, {s.queries} real queries "
                      f"(identical top-10 on {s.same_top10:.0%}):", "",
                  "| backend | build s | p50 ms | QPS |", "|---|---:|---:|---:|"]
        lines += [f"| {b} | {s.build_seconds[b]:,.1f} | {s.p50_ms[b]:,.3f} | {s.qps[b]:,.1f} |" for b in s.qps]
        lines += ["", f"bm25s / rank-bm25 QPS: **{s.speedup:,.0f}x**"]
    return "\n".join(lines) + "\n"
