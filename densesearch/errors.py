"""Domain errors: each carries a one-line message that names the fix."""

from __future__ import annotations


class DensesearchError(Exception):
    """An expected failure shown to the user as one line on stderr (exit code 1)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class MissingArtifact(DensesearchError):
    """A stage needs an artifact that has not been built yet."""

    def __init__(self, kind: str, command: str) -> None:
        super().__init__(f"no {kind} artifact in this workspace", f"run `densesearch {command}` first")
        self.kind = kind


class ArtifactMismatch(DensesearchError):
    """An artifact was built from inputs other than the ones it is served with."""


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
