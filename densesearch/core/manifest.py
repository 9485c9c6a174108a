"""Artifact manifests: what made an artifact, from which inputs, with which settings and versions."""

from __future__ import annotations

import enum
import hashlib
import json
import platform
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from densesearch import __version__
from densesearch.core.config import IndexKind
from densesearch.core.errors import PRODUCER, ArtifactCorrupt, ArtifactMismatch, MissingArtifact, rebuild_hint

MANIFEST_NAME = "manifest.json"
# 2: versioned artifact directories, a size per file, upstream by artifact kind, no absolute workspace paths.
SCHEMA_VERSION = 2
ENCODER_KINDS = ("", "model", "onnx")  # where an index's encoder lives: an outside path, or one of these artifacts
TRACKED_PACKAGES = ("numpy", "torch", "sentence-transformers", "transformers", "onnxruntime", "optimum-onnx",
                    "faiss-cpu", "bm25s", "rank-bm25", "tokenizers", "datasets", "lightgbm")
__all__ = ["PRODUCER", "Manifest", "read_manifest", "write_manifest", "fingerprint_files", "fingerprint_path"]


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    """Installed versions of the libraries that shape an artifact (absent ones are skipped)."""
    from importlib import metadata  # 13 ms of imports: paid by writers, not by a query that only reads

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


def model_fingerprint(path_or_id: str) -> str:
    """A model's identity: the sha256 of its local directory, else its Hub id (resolved by the Hub's revision)."""
    return fingerprint_path(Path(path_or_id)) if Path(path_or_id).exists() else path_or_id


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
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
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


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


# What each entry of the manifest's mappings holds: file sizes and counts, fingerprints and sources as text.
_ENTRY_CHECKS = {"files": _is_size, "counts": _is_size, "upstream": _is_text, "inputs": _is_text}


def load_manifest_json(path: Path, kind: str) -> dict:
    """The manifest file as a JSON object (MissingArtifact when absent, ArtifactCorrupt when unreadable)."""
    if not path.is_file():
        raise MissingArtifact(kind, PRODUCER.get(kind, kind))
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactCorrupt(kind, MANIFEST_NAME, f"is not valid JSON ({exc.__class__.__name__})") from exc
    if not isinstance(raw, dict):
        raise ArtifactCorrupt(kind, MANIFEST_NAME, "is not a JSON object")
    return raw


def check_schema(raw: dict, kind: str) -> None:
    """The manifest was written by this schema version (a newer or older writer is named with the fix)."""
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


def read_manifest(directory: Path, kind: str) -> Manifest:
    """Read and check an artifact's manifest: a missing, unreadable, foreign or other-schema one is one line."""
    raw = load_manifest_json(directory / MANIFEST_NAME, kind)
    check_schema(raw, kind)
    if raw.get("kind") != kind:
        raise ArtifactMismatch(f"{directory} holds a {raw.get('kind')!r} artifact, expected {kind!r}",
                               hint=rebuild_hint(kind))
    for name, expected in _FIELD_TYPES.items():
        if name in raw and not isinstance(raw[name], expected):
            raise ArtifactCorrupt(kind, MANIFEST_NAME, f"has a malformed {name!r} field")
    for name, fits in _ENTRY_CHECKS.items():
        if not all(isinstance(key, str) and fits(value) for key, value in raw.get(name, {}).items()):
            raise ArtifactCorrupt(kind, MANIFEST_NAME, f"has a malformed entry in its {name!r} field")
    if not raw.get("fingerprint") or "settings" not in raw:
        raise ArtifactCorrupt(kind, MANIFEST_NAME, "lacks its fingerprint or settings")
    known = {f.name for f in fields(Manifest)}
    return Manifest(**{key: value for key, value in raw.items() if key in known})  # unknown keys: a newer writer


# ---- typed views of each artifact kind's record, parsed once at the artifact door ---------------------------


@dataclass(frozen=True)
class DataInfo:
    """What a data artifact records beyond its counts."""

    source: str = "?"
    query_source: str = "?"
    graded: bool = False
    min_relevance: int = 1


@dataclass(frozen=True)
class ModelInfo:
    base_model: str = "?"
    dim: int = 0


@dataclass(frozen=True)
class OnnxInfo:
    """The exported encoder: which INT8 file each runtime serves (None: FP32 ONNX serves), and for which CPU."""

    int8_file: str | None = None
    int8_runtime: str | None = None
    query_int8_file: str | None = None
    query_int8_runtime: str | None = None
    isa: str = "?"
    cpu: dict = field(default_factory=dict)
    recipe: str | None = None
    fp32_bytes: int = 0
    int8_bytes: int = 0
    size_ratio: float = 1.0
    fell_back_to_fp32: bool = False
    dim: int = 0


@dataclass(frozen=True)
class EncoderRecord:
    """Which encoder built an index (``retrieval.encoders.EncoderSpec`` loads it): enough to load it again and to
    detect a mismatch. ``artifact`` names a workspace artifact kind (model or onnx); ``path`` an outside model."""

    backend: str
    artifact: str
    path: str
    fingerprint: str
    dim: int
    label: str

    def __post_init__(self) -> None:
        if self.artifact not in ENCODER_KINDS:  # a workspace path is built from it: nothing else may stand there
            raise ArtifactCorrupt("index", MANIFEST_NAME, "has a malformed 'encoder.artifact' field")


@dataclass(frozen=True)
class IndexInfo:
    """The served index: its FAISS structure and encoder, its tuned search parameter and every dev choice."""

    kind: IndexKind
    encoder: EncoderRecord
    dim: int = 0
    factory: str = ""
    search_param: dict = field(default_factory=dict)
    fusion: dict = field(default_factory=dict)
    recommended_mode: str = "dense"
    ranker: dict = field(default_factory=dict)
    bm25: str = "bm25s"
    device: str = "cpu"
    encode_batch: int | None = None
    sweep: list = field(default_factory=list)

    @property
    def param(self) -> int:
        """The tuned efSearch / nprobe (0: exact search)."""
        return int(next(iter(self.search_param.values()), 0))

    @property
    def has_ranker(self) -> bool:
        return bool(self.ranker.get("kept"))


@dataclass(frozen=True)
class RerankerInfo:
    """The published cross-encoder: its interpolation with the first stage and the file that serves it."""

    depth: int
    weight: float
    scale: str = "min-max"  # rerankers published before the calibrated form
    max_length: int = 64
    scorer_file: str | None = None  # None: torch (published before the ONNX export)
    scorer: str = "torch fp32"


INFO_TYPES: dict[str, type] = {"data": DataInfo, "model": ModelInfo, "onnx": OnnxInfo, "index": IndexInfo,
                               "reranker": RerankerInfo}


def _fits_one(value: Any, option: Any) -> bool:
    """Whether a JSON value fits one type: int for float, a member's value for an enum, never bool for a number."""
    base = typing.get_origin(option) or option
    if option is type(None):
        return value is None
    if not isinstance(base, type):
        return False
    if issubclass(base, enum.Enum):
        return isinstance(value, str | int) and value in {member.value for member in base}
    if base in (int, float) and isinstance(value, bool):
        return False
    if base is float:
        return isinstance(value, int | float)
    return isinstance(value, base)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field's type (any member of a union)."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return any(_fits_one(value, option) for option in options)


def parse_info(manifest: Manifest) -> Any:
    """The typed view of ``manifest.extra`` for its kind; a missing required or wrong-typed field is one
    ArtifactCorrupt line naming the field and the command that rebuilds the artifact."""
    cls = INFO_TYPES.get(manifest.kind)
    return None if cls is None else parse_record(cls, manifest.extra, manifest.kind)


def parse_record(cls: type, record: Any, kind: str, where: str = "") -> Any:
    """A dataclass of type ``cls`` from one JSON object of a ``kind`` manifest (``where`` names the object inside
    it); a missing required or wrong-typed field is one ArtifactCorrupt line naming it."""
    if not isinstance(record, dict):
        raise ArtifactCorrupt(kind, MANIFEST_NAME, f"has a malformed {where!r} field")
    hints = typing.get_type_hints(cls)
    values = {}
    for spec in fields(cls):
        name = f"{where}.{spec.name}" if where else spec.name
        if spec.name not in record:
            if spec.default is MISSING and spec.default_factory is MISSING:
                raise ArtifactCorrupt(kind, MANIFEST_NAME, f"lacks its {name!r} field")
            continue
        value, hint = record[spec.name], hints[spec.name]
        if not is_dataclass(hint) and not _fits(value, hint):
            raise ArtifactCorrupt(kind, MANIFEST_NAME, f"has a malformed {name!r} field")
        values[spec.name] = _typed(value, hint, kind, name)
    return cls(**values)


def _typed(value: Any, hint: Any, kind: str, name: str) -> Any:
    """A checked JSON value as its field's type: an enum member, a nested record, or the value itself."""
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)
    if is_dataclass(hint):
        return parse_record(hint, value, kind, name)
    return value
