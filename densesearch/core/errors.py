"""Domain errors: each carries a one-line message that names the fix."""

from __future__ import annotations

import errno

# Which command builds each artifact kind (named in every "missing", "stale" or "damaged" error).
PRODUCER = {"data": "prepare", "model": "finetune", "onnx": "quantize", "index": "index",
            "reranker": "finetune --reranker"}


class DensesearchError(Exception):
    """An expected failure shown to the user as one line on stderr (exit code 1)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.message} ({self.hint})" if self.hint else self.message
        return " ".join(text.split())  # one line, whatever a path or a library message held


def rebuild_hint(kind: str) -> str:
    return f"run `densesearch {PRODUCER.get(kind, kind)}` again"


class MissingArtifact(DensesearchError):
    """A stage needs an artifact that has not been built yet."""

    def __init__(self, kind: str, command: str) -> None:
        super().__init__(f"no {kind} artifact in this workspace", f"run `densesearch {command}` first")
        self.kind = kind


class ArtifactMismatch(DensesearchError):
    """An artifact was built from inputs other than the ones it is served with."""


class ArtifactStale(ArtifactMismatch):
    """An artifact was built from an upstream artifact that has since been replaced."""


class ArtifactCorrupt(DensesearchError):
    """An artifact's file is missing, truncated or unreadable."""

    def __init__(self, kind: str, file: str, reason: str) -> None:
        super().__init__(f"the {kind} artifact is damaged: {file} {reason}", rebuild_hint(kind))
        self.kind = kind
        self.file = file


class BadInput(DensesearchError):
    """Input data or arguments that cannot be used."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 hint: str | None = None) -> None:
        where = f"{path}:{line}: " if path and line else (f"{path}: " if path else "")
        super().__init__(f"{where}{message}", hint)
        self.path = path
        self.line = line


class HubUnreachable(DensesearchError):
    """The Hugging Face Hub could not be reached."""


class SystemFailure(DensesearchError):
    """The operating system refused a file operation (full disk, permissions, a file where a directory belongs)."""


# What to do about each operating-system error a user can cause or fix.
_OS_HINTS = {
    errno.ENOSPC: "free disk space, or point --home at a larger disk",
    errno.EDQUOT: "free disk space within your quota, or point --home at another disk",
    errno.EACCES: "check the permissions, or point --home at a directory you can write",
    errno.EPERM: "check the permissions, or point --home at a directory you can write",
    errno.EROFS: "the file system is read-only: point --home at a writable directory",
    errno.ENOTDIR: "a component of this path is a file where a directory belongs",
    errno.EISDIR: "a directory stands where a file belongs",
    errno.ELOOP: "a symbolic link on this path points back to itself: fix or remove it",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.EMFILE: "raise the open-file limit (ulimit -n)",
    errno.ENOMEM: "free memory, or use smaller settings",
}


def os_reason(exc: OSError) -> str:
    """What the system said, in the words every one-line error uses ("no space left on device")."""
    return (exc.strerror or str(exc) or exc.__class__.__name__).lower()


def os_failure(exc: OSError, doing: str = "") -> SystemFailure:
    """One line for an OSError: what failed, on which path, and the fix (``doing`` names the operation)."""
    reason = os_reason(exc)
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    head = f"{doing}: " if doing else ""
    return SystemFailure(f"{head}{reason}{f': {paths}' if paths else ''}", hint=_OS_HINTS.get(exc.errno or 0))
