"""Domain errors: each carries a one-line message that names the fix."""

from __future__ import annotations

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
