"""Artifact manifests: what made an artifact, from which inputs, with which settings and versions."""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from densesearch import __version__
from densesearch.errors import PRODUCER, ArtifactCorrupt, ArtifactMismatch, MissingArtifact, rebuild_hint

MANIFEST_NAME = "manifest.json"
# 2: versioned artifact directories, a size per file, upstream by artifact kind, no absolute workspace paths.
SCHEMA_VERSION = 2
TRACKED_PACKAGES = ("numpy", "torch", "sentence-transformers", "transformers", "onnxruntime", "optimum-onnx",
                    "faiss-cpu", "bm25s", "rank-bm25", "tokenizers", "datasets", "lightgbm")
__all__ = ["PRODUCER", "Manifest", "read_manifest", "write_manifest", "fingerprint_files", "fingerprint_path"]


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    """Installed versions of the libraries that shape an artifact (absent ones are skipped)."""
    versions = {"densesearch": __version__, "python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _artifact_files(directory: Path, exclude: tuple[str, ...]) -> list[tuple[str, Path]]:
    return [(rel, path) for rel, path in sorted((p.relative_to(directory).as_posix(), p)
                                                for p in directory.rglob("*") if p.is_file())
            if rel not in exclude]


def fingerprint_files(directory: Path, exclude: tuple[str, ...] = (MANIFEST_NAME,)) -> str:
    """sha256 over the relative paths and bytes of every file in ``directory``: equal content, equal print."""
    digest = hashlib.sha256()
    for rel, path in _artifact_files(directory, exclude):
        digest.update(rel.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def fingerprint_path(path: Path) -> str:
    """sha256 of one input file (streamed) or of a directory tree."""
    if path.is_dir():
        return fingerprint_files(path, exclude=())
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Manifest:
    """The record written beside every artifact as ``manifest.json``.

    ``upstream`` maps the artifact kinds (and external inputs) it was built from to their fingerprints;
    ``files`` maps each file (relative path) to its size in bytes, checked whenever the artifact is opened.
    """

    kind: str
    settings: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)
    upstream: dict[str, str] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    files: dict[str, int] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    versions: dict[str, str] = field(default_factory=package_versions)
    schema: int = SCHEMA_VERSION

    @property
    def short(self) -> str:
        return self.fingerprint[:12]


def write_manifest(directory: Path, manifest: Manifest) -> Manifest:
    """Fingerprint the artifact's files, record their sizes and write the manifest beside them."""
    manifest.fingerprint = fingerprint_files(directory)
    manifest.files = {rel: path.stat().st_size for rel, path in _artifact_files(directory, (MANIFEST_NAME,))}
    manifest.schema = SCHEMA_VERSION
    (directory / MANIFEST_NAME).write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n")
    return manifest


_FIELD_TYPES = {"kind": str, "settings": dict, "inputs": dict, "upstream": dict, "counts": dict, "extra": dict,
                "fingerprint": str, "files": dict, "created": str, "versions": dict}


def read_manifest(directory: Path, kind: str) -> Manifest:
    """Read and check an artifact's manifest: a missing, unreadable, foreign or other-schema one is one line."""
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise MissingArtifact(kind, PRODUCER.get(kind, kind))
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactCorrupt(kind, MANIFEST_NAME, f"is not valid JSON ({exc.__class__.__name__})") from exc
    if not isinstance(raw, dict):
        raise ArtifactCorrupt(kind, MANIFEST_NAME, "is not a JSON object")
    schema = raw.get("schema")
    if not isinstance(schema, int):
        raise ArtifactCorrupt(kind, MANIFEST_NAME, "has no schema version")
    if schema > SCHEMA_VERSION:
        raise ArtifactMismatch(f"the {kind} artifact was written by a newer densesearch (manifest schema {schema}, "
                               f"this version reads {SCHEMA_VERSION})",
                               hint=f"upgrade densesearch, or {rebuild_hint(kind)}")
    if schema < SCHEMA_VERSION:
        raise ArtifactMismatch(f"the {kind} artifact was written by an older densesearch (manifest schema {schema})",
                               hint=rebuild_hint(kind))
    if raw.get("kind") != kind:
        raise ArtifactMismatch(f"{directory} holds a {raw.get('kind')!r} artifact, expected {kind!r}",
                               hint=rebuild_hint(kind))
    for name, expected in _FIELD_TYPES.items():
        if name in raw and not isinstance(raw[name], expected):
            raise ArtifactCorrupt(kind, MANIFEST_NAME, f"has a malformed {name!r} field")
    if not raw.get("fingerprint") or "settings" not in raw:
        raise ArtifactCorrupt(kind, MANIFEST_NAME, "lacks its fingerprint or settings")
    known = {f.name for f in fields(Manifest)}
    return Manifest(**{key: value for key, value in raw.items() if key in known})  # unknown keys: a newer writer
