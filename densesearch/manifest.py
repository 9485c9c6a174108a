"""Artifact manifests: what made an artifact, from which inputs, with which settings and versions."""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from densesearch import __version__
from densesearch.errors import ArtifactMismatch, MissingArtifact

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
TRACKED_PACKAGES = ("numpy", "torch", "sentence-transformers", "transformers", "onnxruntime", "optimum-onnx",
                    "faiss-cpu", "bm25s", "rank-bm25", "tokenizers", "datasets")
# Which command builds each artifact kind (named in "missing artifact" errors).
PRODUCER = {"data": "prepare", "model": "finetune", "onnx": "quantize", "index": "index"}


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    """Installed versions of the libraries that shape an artifact (absent ones are skipped)."""
    versions = {"densesearch": __version__, "python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def fingerprint_files(directory: Path, exclude: tuple[str, ...] = (MANIFEST_NAME,)) -> str:
    """sha256 over the relative paths and bytes of every file in ``directory``: equal content, equal print."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel in exclude:
            continue
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
    """The record written beside every artifact as ``manifest.json``."""

    kind: str
    settings: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)
    upstream: dict[str, str] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    versions: dict[str, str] = field(default_factory=package_versions)
    schema: int = SCHEMA_VERSION

    @property
    def short(self) -> str:
        return self.fingerprint[:12]


def write_manifest(directory: Path, manifest: Manifest) -> Manifest:
    """Fingerprint the artifact's files and write the manifest beside them."""
    manifest.fingerprint = fingerprint_files(directory)
    (directory / MANIFEST_NAME).write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(directory: Path, kind: str) -> Manifest:
    """Read an artifact's manifest; a missing one names the command that builds it."""
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise MissingArtifact(kind, PRODUCER.get(kind, kind))
    raw = json.loads(path.read_text())
    if raw.get("kind") != kind:
        raise ArtifactMismatch(f"{directory} holds a {raw.get('kind')!r} artifact, expected {kind!r}",
                               hint=f"run `densesearch {PRODUCER.get(kind, kind)}` again")
    return Manifest(**raw)


def require_upstream(manifest: Manifest, kind: str, current: Manifest) -> None:
    """Fail when ``manifest`` was built from another version of an upstream artifact than ``current``."""
    recorded = manifest.upstream.get(kind)
    if recorded and recorded != current.fingerprint:
        raise ArtifactMismatch(
            f"the {manifest.kind} artifact was built from another {kind} artifact "
            f"({recorded[:12]} != {current.short})",
            hint=f"run `densesearch {PRODUCER[manifest.kind]}` again")
