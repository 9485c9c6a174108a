"""Where a command's output goes: data on stdout, diagnostics on stderr. rich is imported only when something is
drawn for a person (a table or a colour on a terminal); a pipe gets plain lines and a one-shot query never loads it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from densesearch.retrieval.searcher import Answer


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

    @cached_property
    def out(self) -> Console:
        from rich.console import Console

        # markup off: a query, a title or a path holding "[/bold]" is shown as typed, never parsed
        return Console(soft_wrap=False, markup=False, highlight=False)

    @cached_property
    def err(self) -> Console:
        from rich.console import Console

        return Console(stderr=True, markup=False, highlight=False)

    @property
    def terminal(self) -> bool:
        """Whether stdout is a person's terminal (tables) rather than a pipe or a file (plain lines)."""
        return sys.stdout.isatty()

    def table(self, table: Any) -> None:
        if not self.json_mode:
            self.out.print(table)

    def line(self, text: str) -> None:
        if not self.json_mode:
            self.out.print(text)

    def note(self, text: str) -> None:
        if sys.stderr.isatty():
            self.err.print(text, style="dim")
        else:
            sys.stderr.write(text + "\n")

    def warn(self, text: str) -> None:
        if sys.stderr.isatty():
            from rich.text import Text

            self.err.print(Text.assemble(("warning: ", "yellow"), text))
        else:
            sys.stderr.write(f"warning: {text}\n")

    def data(self, payload: Any) -> None:
        if self.json_mode:
            sys.stdout.write(json.dumps(to_jsonable(payload), indent=2, ensure_ascii=False) + "\n")

    @contextlib.contextmanager
    def progress(self) -> Iterator[Any]:
        """A progress callback ``(description, completed, total)`` drawn on stderr."""
        from rich.progress import (  # 9 ms of imports that a one-shot query never draws
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

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


FLAT = str.maketrans("\t\r\n", "   ")  # a field's own tabs and line breaks would shift the columns after it


def show_answer(out: Output, answer: Answer, wide: bool = False) -> None:
    """An answer of `query`, `similar` or `recommend`: its notes, then its JSON (--json), its table (a terminal)
    or its tab-separated rows (a pipe or a file)."""
    for note in answer.notes:
        out.note(note)
    if out.json_mode:
        out.data(answer)
    elif out.terminal:
        from densesearch.cli.render import answer_table

        out.table(answer_table(answer, wide=wide))
    else:
        sys.stdout.write("".join(answer_lines(answer, wide)))


def answer_lines(answer: Answer, wide: bool = False) -> list[str]:
    """One tab-separated line per hit, for `cut`, `awk` and spreadsheets: query, rank, score, item id, title,
    store, price (empty when unknown); ``wide`` adds rating and snippet. Tabs and line breaks inside a field
    become spaces, so every line has the same columns."""
    lines = []
    for hit in answer.hits:
        fields = [answer.query, str(hit.rank), f"{hit.score:.4f}", hit.item_id, hit.title, hit.store,
                  "" if hit.price is None else f"{hit.price:.2f}"]
        if wide:
            fields += ["" if hit.rating is None else f"{hit.rating:.1f}", hit.snippet]
        lines.append("\t".join(field.translate(FLAT) for field in fields) + "\n")
    return lines
