"""Where artifacts live, and how they are published: versioned directories behind an atomic pointer.

Root precedence: ``--home`` flag > ``$DENSESEARCH_HOME`` > platformdirs user cache dir.
Each artifact kind has a home directory ``<workspace>/<kind>/`` holding immutable version directories
and a ``CURRENT`` file naming the served one. Publishing writes a hidden temporary directory, renames
it to a new version and then replaces ``CURRENT`` (one atomic rename), so a reader sees the old
version or the new one and never nothing; a process killed at any instant leaves the old one served.
Writers hold a per-workspace lock; nothing outside this module builds paths.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

from densesearch.core.errors import BadInput, DensesearchError, os_reason

HOME_ENV = "DENSESEARCH_HOME"
APP_NAME = "densesearch"
DEFAULT_WORKSPACE = "default"
ARTIFACT_KINDS = ("data", "model", "onnx", "index", "reranker")
OPTIONAL_KINDS = ("reranker",)  # `status` lists these only once built
POINTER = "CURRENT"
LOCK_FILE = ".lock"
_WORKSPACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_VERSION_RE = re.compile(r"v\d{19}-[0-9a-f]{8}")


class WorkspaceBusy(DensesearchError):
    """Another process is writing to the workspace."""


def resolve_home(flag: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """Return the artifact root: the flag, else the environment variable, else the user cache dir."""
    if flag is not None:
        if not str(flag).strip():
            raise BadInput("--home is empty", hint="give a directory path, or leave --home out for the default")
        return usable_home(Path(flag), "--home")
    value = (os.environ if environ is None else environ).get(HOME_ENV, "")
    if value.strip():
        return usable_home(Path(value), f"${HOME_ENV}")
    import platformdirs

    return usable_home(Path(platformdirs.user_cache_path(APP_NAME)), "the default artifact root")


def usable_home(path: Path, source: str) -> Path:
    """``path`` resolved, refused in one line when it cannot be a directory (a file, a symbolic-link loop)."""
    fix = f"point {source} at a directory; it is created when missing"
    try:
        resolved = path.expanduser().resolve()
    except RuntimeError:  # Python 3.11 reports a symbolic-link loop as RuntimeError, 3.13 as OSError
        raise BadInput(f"{source} {path} is a symbolic-link loop", hint=fix) from None
    except OSError as exc:
        raise BadInput(f"{source} {path} cannot be resolved: {os_reason(exc)}", hint=fix) from None
    if resolved.exists() and not resolved.is_dir():
        raise BadInput(f"{source} {path} is a file, not a directory", hint=fix)
    return resolved


def check_workspace_name(name: str) -> str:
    """A workspace name is one path component of letters, digits, '.', '_' or '-' (no newline, no '..')."""
    if not _WORKSPACE_RE.fullmatch(name) or name in (".", ".."):
        raise BadInput(f"invalid workspace name {name!r}",
                       hint="use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


@dataclass(frozen=True)
class Workspace:
    """A named set of artifacts (one catalog and everything built from it)."""

    home: Path
    name: str = DEFAULT_WORKSPACE

    def __post_init__(self) -> None:
        check_workspace_name(self.name)

    @property
    def root(self) -> Path:
        return self.home / "workspaces" / self.name

    def artifact_home(self, kind: str) -> Path:
        """The directory holding every version of one artifact kind and its ``CURRENT`` pointer."""
        if kind not in ARTIFACT_KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}")
        return self.root / kind

    def artifact(self, kind: str) -> Path:
        """The served version of one artifact kind (a path that does not exist when none is published)."""
        home = self.artifact_home(kind)
        version = read_pointer(home)
        return home / version if version else home / "(none)"


    @property
    def checkpoints(self) -> Path:
        """Training checkpoints kept for ``finetune --resume`` (not an artifact)."""
        return self.root / "checkpoints"

    @property
    def bench_runs(self) -> Path:
        return self.root / "bench"

    @property
    def vector_cache(self) -> Path:
        """Catalog vectors per (encoder, catalog) fingerprint, so `bench` encodes each catalog once (not an
        artifact: a file that is missing or unreadable is encoded again)."""
        return self.root / "cache" / "vectors"

    @property
    def teacher_cache(self) -> Path:
        """`finetune --teacher` vectors per (teacher, precision, text), so another recipe costs no teacher time."""
        return self.root / "cache" / "teacher"

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

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the workspace's writer lock; a second writer fails at once naming the holder's pid."""
        from filelock import FileLock, Timeout

        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.root / LOCK_FILE, timeout=0)
        owner = self.root / f"{LOCK_FILE}.pid"
        try:
            lock.acquire()
        except Timeout:
            pid = owner.read_text().strip() if owner.is_file() else "?"
            raise WorkspaceBusy(f"workspace {self.name!r} is busy (pid {pid} is writing to it)",
                                hint="wait for that command to finish, or use another --workspace") from None
        try:
            owner.write_text(str(os.getpid()))
            yield
        finally:
            lock.release()


def read_pointer(home: Path) -> str | None:
    """The version named by ``home/CURRENT`` (None when nothing was published)."""
    try:
        version = (home / POINTER).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return version if _VERSION_RE.fullmatch(version) else None


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _new_version() -> str:
    return f"v{time.time_ns():019d}-{uuid.uuid4().hex[:8]}"


def _replace_pointer(home: Path, version: str) -> None:
    tmp = home / f".{POINTER}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w") as handle:
        handle.write(version + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, home / POINTER)
    _fsync_dir(home)


def clean_artifact_home(home: Path) -> list[str]:
    """Remove temporaries of killed writes and versions no reader needs (keeps CURRENT and the one before).

    Only called under the workspace lock, so no other writer is using a temporary.
    """
    if not home.is_dir():
        return []
    current = read_pointer(home)
    removed = []
    for child in home.iterdir():
        if child.name.startswith(".") and ".tmp-" in child.name:
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
            removed.append(child.name)
    versions = sorted(c.name for c in home.iterdir() if c.is_dir() and _VERSION_RE.fullmatch(c.name))
    older = [v for v in versions if current and v < current]
    keep = {current, *older[-1:]}  # the previous version: a reader that opened it a moment ago still finds it
    for version in versions:
        if version not in keep:
            shutil.rmtree(home / version, ignore_errors=True)
            removed.append(version)
    return removed


@contextlib.contextmanager
def publish(workspace: Workspace, kind: str) -> Iterator[Path]:
    """Yield an empty directory to write one artifact into; publish it as the served version on success.

    On any exception (Ctrl-C, a full disk) the directory is removed and the served version is untouched.
    """
    home = workspace.artifact_home(kind)
    home.mkdir(parents=True, exist_ok=True)
    clean_artifact_home(home)
    version = _new_version()
    tmp = home / f".{version}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        try:
            yield tmp
            _fsync_tree(tmp)
            tmp.rename(home / version)
            _replace_pointer(home, version)
        except DensesearchError:
            raise
        except Exception as exc:  # a library's own write error (FAISS, numpy) on a full disk is still one line
            error = disk_error(exc, home)
            if error is exc:
                raise
            raise error from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    clean_artifact_home(home)


def disk_error(exc: Exception, where: Path) -> Exception:
    """A full or read-only disk as a one-line error; any other error unchanged."""
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC or (code is None and shutil.disk_usage(where).free < 1 << 20):
        return DensesearchError(f"no space left on the disk holding {where}; nothing was published",
                                hint="free some space (or use --home on a larger disk) and run the command again")
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return DensesearchError(f"cannot write under {where} ({os.strerror(code)})",
                                hint="use --home with a writable directory")
    return exc


def allocate(path: Path, size: int) -> None:
    """Reserve ``size`` bytes for ``path`` now, so a full disk fails here with ENOSPC, not later with SIGBUS."""
    with open(path, "r+b" if path.exists() else "w+b") as handle:
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(handle.fileno(), 0, size)
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
        if shutil.disk_usage(path.parent).free < size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``final`` (a non-artifact output such as a bench report); rename on success.

    ``final`` must not exist yet: reports are never overwritten.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def writes_workspace(run):
    """Run a stage function ``run(cfg, workspace, ...)`` under the workspace's writer lock."""
    import functools

    @functools.wraps(run)
    def locked(cfg, workspace: Workspace, *args, **kwargs):
        with workspace.writing():
            return run(cfg, workspace, *args, **kwargs)

    return locked


def new_run_id() -> str:
    """A report id that sorts by time and is unique even for runs finishing in the same second."""
    from datetime import datetime

    return f"{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}-{uuid.uuid4().hex[:4]}"
