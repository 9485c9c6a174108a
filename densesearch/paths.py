"""Where artifacts live, and how they are written atomically.

Root precedence: ``--home`` flag > ``$DENSESEARCH_HOME`` > platformdirs user cache dir.
Each workspace holds one directory per artifact kind; nothing outside this module builds paths.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "DENSESEARCH_HOME"
APP_NAME = "densesearch"
DEFAULT_WORKSPACE = "default"
ARTIFACT_KINDS = ("data", "model", "onnx", "index")
_WORKSPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def resolve_home(flag: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """Return the artifact root: the flag, else the environment variable, else the user cache dir."""
    if flag is not None:
        return Path(flag).expanduser().resolve()
    env = os.environ if environ is None else environ
    if env.get(HOME_ENV):
        return Path(env[HOME_ENV]).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_cache_path(APP_NAME))


@dataclass(frozen=True)
class Workspace:
    """A named set of artifacts (one catalog and everything built from it)."""

    home: Path
    name: str = DEFAULT_WORKSPACE

    def __post_init__(self) -> None:
        if not _WORKSPACE_RE.match(self.name):
            from densesearch.errors import BadInput

            raise BadInput(f"invalid workspace name {self.name!r}",
                           hint="use letters, digits, '.', '_' or '-'")

    @property
    def root(self) -> Path:
        return self.home / "workspaces" / self.name

    def artifact(self, kind: str) -> Path:
        """Directory of one artifact kind: data, model, onnx or index."""
        if kind not in ARTIFACT_KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}")
        return self.root / kind

    @property
    def checkpoints(self) -> Path:
        """Training checkpoints kept for ``finetune --resume`` (not an artifact)."""
        return self.root / "checkpoints"

    @property
    def bench_runs(self) -> Path:
        return self.root / "bench"

    @property
    def scale_runs(self) -> Path:
        """`bench --scale` reports, apart from bench runs so that `--compare latest` never picks one."""
        return self.root / "bench-scale"

    @property
    def scratch(self) -> Path:
        """Large temporary files (e.g. `bench --scale` vectors); created on demand, emptied by their users."""
        path = self.root / "scratch"
        path.mkdir(parents=True, exist_ok=True)
        return path


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; rename it into place only if the block succeeds.

    On any exception (Ctrl-C included) the temporary directory is removed and ``final`` is untouched.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temporaries(parent: Path) -> None:
    """Delete leftovers of writes killed hard (SIGKILL) before they could clean up."""
    if parent.exists():
        for child in parent.glob(".*.tmp-*"):
            shutil.rmtree(child, ignore_errors=True)
