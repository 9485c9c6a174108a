"""Streaming readers for Amazon Reviews 2023 files: local JSON Lines (.jsonl, .jsonl.gz), parquet, the Hub."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import socket
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from densesearch.core.errors import BadInput, HubUnreachable, os_reason

HUB_REPO = "McAuley-Lab/Amazon-Reviews-2023"
HUB_HOST = "huggingface.co"
SAMPLE_RESOURCE = "meta_Amazon_Fashion.sample.jsonl.gz"
MAX_REPORTED_BAD_LINES = 5
_NOT_JSONL_AFTER = 20  # this many bad lines with no good one: the file is not JSON Lines


@dataclass
class ReadStats:
    """What a reader saw: lines read, bad lines (first few with reasons), and a content fingerprint."""

    name: str
    lines: int = 0
    bad: int = 0
    bad_examples: list[tuple[int, str]] = field(default_factory=list)
    sha256: str = ""

    def record_bad(self, line: int, reason: str) -> None:
        self.bad += 1
        if len(self.bad_examples) < MAX_REPORTED_BAD_LINES:
            self.bad_examples.append((line, reason))


def hub_url(category: str, kind: str) -> str:
    """hf:// URL of a category's raw metadata or review file."""
    folder = "meta_categories/meta_" if kind == "meta" else "review_categories/"
    return f"hf://datasets/{HUB_REPO}/raw/{folder}{category}.jsonl"


def sample_meta_path() -> Path:
    """The embedded 1,000-row Amazon Fashion metadata sample shipped with the package."""
    return Path(str(resources.files("densesearch") / "data" / SAMPLE_RESOURCE))


def check_hub_reachable(timeout_s: float) -> None:
    """Raise HubUnreachable unless a TCP connection to the Hub opens within ``timeout_s``."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        raise HubUnreachable("HF_HUB_OFFLINE is set")
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            socket.create_connection((HUB_HOST, 443), timeout=timeout_s).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not outcome or outcome[0] is not None:
        reason = outcome[0] if outcome else f"no answer in {timeout_s:.0f} s"
        raise HubUnreachable(f"the Hugging Face Hub ({HUB_HOST}) cannot be reached: {reason}")


def open_input(path: Path, mode: str = "rb", opener=open, **options):
    """An input file opened for reading (by ``opener``: ``open`` or ``gzip.open``); a file the system will not open
    (permissions, a directory, a loop) is one BadInput line naming it."""
    try:
        return opener(path, mode, **options)
    except OSError as exc:
        raise BadInput(f"cannot open: {os_reason(exc)}", str(path),
                       hint="check that the file exists and is readable") from None


def _open_text(path: Path):
    return open_input(path, opener=gzip.open if path.suffix == ".gz" else open)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise BadInput("file not found", str(path), hint="check the path")
    if not path.is_file():
        raise BadInput("not a file", str(path))
    if path.stat().st_size == 0:
        raise BadInput("file is empty", str(path))


def iter_jsonl(path: Path, stats: ReadStats) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each JSON object line; count and skip bad lines."""
    digest = hashlib.sha256()
    good = 0
    with _open_text(path) as handle:
        try:
            for lineno, raw in enumerate(handle, start=1):
                digest.update(raw)
                stats.lines += 1
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    stats.record_bad(lineno, f"not JSON ({exc.msg if hasattr(exc, 'msg') else exc})")
                    if good == 0 and stats.bad >= _NOT_JSONL_AFTER:
                        break
                    continue
                if not isinstance(obj, dict):
                    stats.record_bad(lineno, f"a JSON {type(obj).__name__}, not an object")
                    continue
                good += 1
                yield lineno, obj
        except (OSError, EOFError, zlib.error) as exc:  # truncated or corrupt gzip, a failing disk
            raise BadInput(f"cannot be read ({exc.__class__.__name__}: {exc})", str(path),
                           hint="check the file: a .gz must be a whole gzip stream") from exc
    if good == 0:
        first = stats.bad_examples[0] if stats.bad_examples else (1, "no JSON object found")
        raise BadInput(f"not a JSON Lines file ({first[1]})", str(path), first[0],
                       hint="expected one JSON object per line, .jsonl/.jsonl.gz, or a .parquet file")
    stats.sha256 = digest.hexdigest()


def iter_parquet(path: Path, stats: ReadStats) -> Iterator[tuple[int, dict]]:
    """Yield (row number, dict) from a parquet file, batch by batch."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a non-parquet file
        raise BadInput(f"not a parquet file ({exc})", str(path),
                       hint="expected .jsonl, .jsonl.gz or .parquet") from exc
    digest = hashlib.sha256()
    row = 0
    for batch in parquet.iter_batches(batch_size=8192):
        for obj in batch.to_pylist():
            row += 1
            stats.lines += 1
            digest.update(json.dumps(obj, sort_keys=True, default=str).encode())
            yield row, obj
    stats.sha256 = digest.hexdigest()


def iter_records(path: Path, stats: ReadStats) -> Iterator[tuple[int, dict]]:
    """Dispatch on the file name: .parquet, else JSON Lines (optionally gzipped)."""
    _check_file(path)
    if path.suffix == ".parquet":
        return iter_parquet(path, stats)
    return iter_jsonl(path, stats)


def iter_hub(url: str, stats: ReadStats) -> Iterator[tuple[int, dict]]:
    """Stream a raw Amazon Reviews 2023 file from the Hub with ``datasets`` (no full download)."""
    from datasets import load_dataset

    dataset = load_dataset("json", data_files=url, split="train", streaming=True)
    digest = hashlib.sha256()
    for row, obj in enumerate(dataset, start=1):
        stats.lines += 1
        digest.update(json.dumps(obj, sort_keys=True, default=str).encode())
        yield row, obj
    stats.sha256 = digest.hexdigest()
