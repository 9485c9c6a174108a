"""The one door to artifacts: open a published artifact verified, read its files, or report its health.

``open_artifact`` checks the manifest (parses, schema, kind), that every recorded file is present with
its recorded size, and that the upstream artifacts it was built from are still the served ones. Every
reader below turns a damaged file into one ``ArtifactCorrupt`` line naming the file and the command
that rebuilds it. Commands, the server and the bench all go through here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from densesearch.core.errors import (
    PRODUCER,
    ArtifactCorrupt,
    ArtifactMismatch,
    ArtifactStale,
    DensesearchError,
    MissingArtifact,
)
from densesearch.core.manifest import MANIFEST_NAME, Manifest, fingerprint_files, parse_info, read_manifest
from densesearch.core.paths import ARTIFACT_KINDS, POINTER, Workspace

# File layout of each artifact kind (the builders write these names, readers open them through here).
CATALOG_FILE = "catalog.jsonl"
VECTORS_FILE, DENSE_FILE, ITEMS_FILE, BM25_DIR = "vectors.npy", "dense.faiss", "items.jsonl", "bm25"
LIVE_FILE = "live.npy"  # after `index --delete / --upsert`: which rows are live (absent: all)
NGRAM_DIR = "bm25-ngrams"  # BM25 over character 3-grams (typos, split words); indexes before it lack it


@dataclass(frozen=True)
class Artifact:
    """One verified, published artifact: its version directory and manifest."""

    kind: str
    path: Path
    manifest: Manifest
    info: Any = None  # the kind's typed record (`manifest.INFO_TYPES`), parsed when the artifact is opened
    mapped: bool = True  # arrays memory-mapped (False: read into memory, so a file damaged later cannot SIGBUS us)

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    def file(self, name: str) -> Path:
        return self.path / name

    def corrupt(self, name: str, reason: str) -> ArtifactCorrupt:
        return ArtifactCorrupt(self.kind, name, reason)

    def read_json(self, name: str) -> Any:
        try:
            return json.loads(self.file(name).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise self.corrupt(name, "is missing") from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self.corrupt(name, "is not valid JSON") from exc

    def iter_jsonl(self, name: str) -> Iterator[dict]:
        """Rows of a JSON-lines file; a damaged line is named by its number."""
        try:
            handle = open(self.file(name), "rb")
        except FileNotFoundError as exc:
            raise self.corrupt(name, "is missing") from exc
        with handle:
            for lineno, raw in enumerate(handle, start=1):
                try:
                    row = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, ValueError) as exc:
                    raise self.corrupt(f"{name}:{lineno}", "is not valid JSON (truncated or overwritten?)") from exc
                if not isinstance(row, dict):
                    raise self.corrupt(f"{name}:{lineno}", "is not a JSON object")
                yield row

    def load_npy(self, name: str, mmap: bool | None = None) -> np.ndarray:
        """A saved array, memory-mapped read-only when the artifact was opened ``mapped`` (or ``mmap`` says so) and
        returned as a plain ndarray view of the map (a ``np.memmap`` pays Python overhead on every slice: 0.1 ms of
        each 3-gram BM25 query).

        A map is the fast way to start (a one-shot query reads only the pages it touches) and the unsafe way to
        keep running: a mapped file truncated under a process kills it with SIGBUS on its next touch. Long-lived
        readers (the server, bench) therefore open artifacts unmapped."""
        mmap = self.mapped if mmap is None else mmap
        try:
            array = np.load(self.file(name), mmap_mode="r" if mmap else None, allow_pickle=False)
            return array.view(np.ndarray) if isinstance(array, np.memmap) else array
        except FileNotFoundError as exc:
            raise self.corrupt(name, "is missing") from exc
        except (ValueError, OSError, EOFError) as exc:
            raise self.corrupt(name, f"cannot be read as a numpy array ({exc.__class__.__name__})") from exc

    def load_faiss(self, name: str = DENSE_FILE):
        import faiss

        if not self.file(name).is_file():
            raise self.corrupt(name, "is missing")
        try:
            return faiss.read_index(str(self.file(name)))
        except RuntimeError as exc:
            raise self.corrupt(name, "cannot be read by FAISS") from exc


def check_files(path: Path, manifest: Manifest) -> None:
    """Every file the manifest records is present with its recorded size."""
    for name, size in manifest.files.items():
        file = path / name
        if not file.is_file():
            raise ArtifactCorrupt(manifest.kind, name, "is missing")
        actual = file.stat().st_size
        if actual != size:
            raise ArtifactCorrupt(manifest.kind, name,
                                  f"has {actual:,} bytes where {size:,} were written (truncated or replaced)")


def served_manifest(workspace: Workspace, kind: str) -> Manifest:
    """The manifest of the served version of ``kind`` (MissingArtifact when none is published)."""
    path = workspace.artifact(kind)
    if not path.is_dir():
        home = workspace.artifact_home(kind)
        if (home / POINTER).is_file():
            raise ArtifactCorrupt(kind, POINTER, "does not name a published version")
        if (home / MANIFEST_NAME).is_file():
            raise ArtifactMismatch(f"the {kind} artifact was written by an older densesearch (unversioned layout)",
                                   hint=f"run `densesearch {PRODUCER[kind]}` again")
        raise MissingArtifact(kind, PRODUCER[kind])
    return read_manifest(path, kind)


def check_upstream(workspace: Workspace, manifest: Manifest) -> None:
    """Each workspace artifact this one was built from is still the served version."""
    for kind, fingerprint in manifest.upstream.items():
        if kind not in ARTIFACT_KINDS:
            continue
        try:
            current = served_manifest(workspace, kind).fingerprint
        except MissingArtifact:
            current = None
        if current != fingerprint:
            now = f"now {current[:12]}" if current else "now missing"
            raise ArtifactStale(f"the {manifest.kind} artifact was built from another {kind} artifact "
                                f"({fingerprint[:12]}, {now})", hint=f"run `densesearch {PRODUCER[manifest.kind]}` "
                                                                      "again")


def open_artifact(workspace: Workspace, kind: str, upstream: bool = True, mapped: bool = True) -> Artifact:
    """The served version of ``kind``, verified (manifest, file sizes and, by default, upstream fingerprints);
    ``mapped``: its arrays are memory-mapped (see `Artifact.load_npy`)."""
    manifest = served_manifest(workspace, kind)
    path = workspace.artifact(kind)
    check_files(path, manifest)
    if upstream:
        check_upstream(workspace, manifest)
    return Artifact(kind=kind, path=path, manifest=manifest, info=parse_info(manifest), mapped=mapped)


def has_artifact(workspace: Workspace, kind: str) -> bool:
    return (workspace.artifact(kind) / MANIFEST_NAME).is_file()


def artifact_health(workspace: Workspace, kind: str, deep: bool = True) -> dict[str, Any]:
    """ok / stale / corrupt / missing (and why) for one artifact kind; ``deep`` re-hashes its files."""
    row: dict[str, Any] = {"kind": kind, "path": str(workspace.artifact(kind))}
    try:
        artifact = open_artifact(workspace, kind, upstream=False)
        manifest = artifact.manifest
        row.update(fingerprint=manifest.fingerprint, created=manifest.created, upstream=manifest.upstream,
                   manifest=manifest)
        if deep and fingerprint_files(artifact.path) != manifest.fingerprint:
            raise ArtifactCorrupt(kind, "(contents)", "no longer match the manifest's fingerprint")
        check_upstream(workspace, manifest)
    except MissingArtifact:
        row.update(state="missing", problem=f"run `densesearch {PRODUCER[kind]}`")
    except ArtifactStale as exc:
        row.update(state="stale", problem=str(exc))
    except DensesearchError as exc:  # damaged files, unreadable or foreign manifests
        row.update(state="corrupt", problem=str(exc))
    else:
        row.update(state="ok")
    return row
