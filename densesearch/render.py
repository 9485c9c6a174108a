"""Terminal output: rich tables, progress bars, JSON serialisation of result dataclasses."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table


def to_jsonable(value: Any) -> Any:
    """Dataclasses, paths, numpy scalars and arrays as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Output:
    """One sink for everything a command shows: data on stdout, diagnostics on stderr."""

    def __init__(self, json_mode: bool = False) -> None:
        self.json_mode = json_mode
        self.out = Console(soft_wrap=False)
        self.err = Console(stderr=True)

    def table(self, table: Table) -> None:
        if not self.json_mode:
            self.out.print(table)

    def line(self, text: str) -> None:
        if not self.json_mode:
            self.out.print(text)

    def note(self, text: str) -> None:
        self.err.print(f"[dim]{text}[/dim]")

    def warn(self, text: str) -> None:
        self.err.print(f"[yellow]warning:[/yellow] {text}")

    def data(self, payload: Any) -> None:
        if self.json_mode:
            sys.stdout.write(json.dumps(to_jsonable(payload), indent=2, ensure_ascii=False) + "\n")

    @contextlib.contextmanager
    def progress(self) -> Iterator[Any]:
        """A progress callback ``(description, completed, total)`` drawn on stderr."""
        columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[extra]}"), TimeElapsedColumn(), TimeRemainingColumn()]
        bar = Progress(*columns, console=self.err, transient=True, disable=not self.err.is_terminal)
        tasks: dict[str, Any] = {}

        def report(description: str, completed: int, total: int | None, extra: str = "") -> None:
            if description not in tasks:
                tasks[description] = bar.add_task(description, total=total, extra=extra)
            bar.update(tasks[description], completed=completed, total=total, extra=extra)

        with bar:
            yield report


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


def prepare_table(result: Any) -> Table:
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
             ("fingerprint", result.manifest.short), ("seconds", round(result.seconds, 2)),
             ("written to", str(result.path))]
    return kv_table("densesearch prepare", rows)


def _bad(stats: Any) -> str:
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
    for row in rows:
        cells = [row["kind"], row["state"], row.get("fingerprint", "")[:12], row.get("created", ""),
                 row.get("summary", "")]
        if show_paths:
            cells.append(row["path"])
        table.add_row(*cells)
    return table
