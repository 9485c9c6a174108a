"""The query prompt and piped queries: one answer per line, `:k N` and `:mode M` change settings."""

from __future__ import annotations

import sys

from densesearch.cli.output import Output
from densesearch.core.errors import BadInput, DensesearchError


def read_stdin_queries():
    """Piped queries, one per line; invalid UTF-8 is named by line number."""
    for lineno, raw in enumerate(sys.stdin.buffer, start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise BadInput("query is not valid UTF-8", "<stdin>", lineno) from exc
        if line.strip():
            yield line


def prompt_lines(out: Output):
    """Lines typed at a prompt with history (readline)."""
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    out.note("type a query; :k N, :mode dense|bm25|hybrid, :quit")
    while True:
        try:
            yield input("densesearch> ")
        except EOFError:
            return


def session(answer, cfg, out: Output, lines, interactive: bool) -> None:
    """Answer lines one by one; `:k 20`, `:mode bm25` change settings, `:quit` ends.

    At a prompt a bad query prints its error and the prompt goes on; piped input stops at the first error.
    """
    import dataclasses

    from densesearch.core.errors import BadInput

    for line in lines:
        command = line.strip()
        if command in (":quit", ":q", ":exit"):
            return
        try:
            if command.startswith(":k "):
                try:
                    cfg = dataclasses.replace(cfg, k=int(command[3:]))
                except ValueError as exc:
                    raise BadInput(f"{command!r}: k must be an integer", hint="e.g. :k 20") from exc
            elif command.startswith(":mode "):
                cfg = dataclasses.replace(cfg, mode=command[6:].strip())
            elif command:
                answer(command, cfg)
        except DensesearchError as exc:
            if not interactive:
                raise
            out.err.print(f"error: {exc}")
