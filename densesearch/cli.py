"""The Typer layer: parses options, calls the core, renders results. No pipeline logic lives here."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from densesearch import __version__
from densesearch.errors import DensesearchError
from densesearch.paths import DEFAULT_WORKSPACE, Workspace, resolve_home
from densesearch.render import Output

DEBUG_ENV = "DENSESEARCH_DEBUG"

app = typer.Typer(name="densesearch", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
                  help="Domain-adapted dense retrieval for e-commerce catalogs: "
                       "prepare -> finetune -> quantize -> index -> query -> bench.")

HomeOpt = Annotated[Path | None, typer.Option("--home", help="Artifact root (overrides $DENSESEARCH_HOME).",
                                              show_default=False)]
WorkspaceOpt = Annotated[str, typer.Option("--workspace", "-w", help="Named workspace inside the root.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


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

    return wrapper


def workspace_of(home: Path | None, workspace: str) -> Workspace:
    return Workspace(resolve_home(home), workspace)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"densesearch {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Show the version and exit.")] = False) -> None:
    """densesearch command line."""


@app.command()
@handles_errors
def prepare(
    meta: Annotated[Path | None, typer.Option("--meta", help="Item metadata: .jsonl, .jsonl.gz or .parquet.")] = None,
    reviews: Annotated[Path | None, typer.Option("--reviews", help="Reviews in the same formats.")] = None,
    sample: Annotated[bool, typer.Option("--sample", help="Use the embedded 1,000-item sample.")] = False,
    category: Annotated[str | None, typer.Option("--category", help="Amazon Reviews 2023 category on the Hub.")] = None,
    queries: Annotated[str | None, typer.Option("--queries", help="reviews | listing (default: reviews when given).")] = None,
    min_rating: Annotated[float, typer.Option(help="Keep reviews rated at least this.")] = 4.0,
    test_size: Annotated[int, typer.Option(help="Test queries (at most 20% of all).")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed for query choice and split.")] = 13,
    home: HomeOpt = None, workspace: WorkspaceOpt = DEFAULT_WORKSPACE, json: JsonOpt = False,
) -> None:
    """Build the catalog, query/positive pairs and a leak-free train/dev/test split."""
    from densesearch.config import DEFAULT_CATEGORY, PrepareConfig
    from densesearch.prepare import run_prepare
    from densesearch.render import prepare_table

    source = "sample" if sample else "hub" if category else "auto"
    cfg = PrepareConfig(source=source, category=category or DEFAULT_CATEGORY, meta_path=meta,
                        reviews_path=reviews, queries=queries, min_rating=min_rating,
                        test_size=test_size, seed=seed)
    out = Output(json)
    with out.progress() as progress:
        result = run_prepare(cfg, workspace_of(home, workspace), progress)
    for note in result.notes:
        out.note(note)
    out.table(prepare_table(result))
    out.data(result)


@app.command()
@handles_errors
def status(
    paths: Annotated[bool, typer.Option("--paths", help="Show where each artifact lives.")] = False,
    home: HomeOpt = None, workspace: WorkspaceOpt = DEFAULT_WORKSPACE, json: JsonOpt = False,
) -> None:
    """Show the workspace's artifacts."""
    from densesearch.render import status_table
    from densesearch.status import workspace_status

    ws = workspace_of(home, workspace)
    rows = workspace_status(ws)
    out = Output(json)
    out.line(f"workspace [bold]{ws.name}[/bold] at {ws.root}")
    out.table(status_table(rows, paths))
    out.data({"home": ws.home, "workspace": ws.name, "root": ws.root, "artifacts": rows})


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except DensesearchError as exc:  # raised outside a command (e.g. option parsing helpers)
        if _debug():
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
