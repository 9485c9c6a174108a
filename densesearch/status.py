"""`status`: what artifacts a workspace holds and whether they still agree with each other."""

from __future__ import annotations

from typing import Any

from densesearch.errors import DensesearchError
from densesearch.manifest import PRODUCER, read_manifest
from densesearch.paths import ARTIFACT_KINDS, Workspace


def _summary(kind: str, counts: dict[str, Any], extra: dict[str, Any]) -> str:
    if kind == "data":
        return (f"{counts.get('items', 0):,} items, {counts.get('pairs', 0):,} pairs "
                f"({extra.get('query_source', '?')} queries)")
    if kind == "model":
        return f"{extra.get('base_model', '?')} fine-tuned on {counts.get('train_pairs', 0):,} pairs"
    if kind == "onnx":
        return f"INT8 {extra.get('isa', '?')}, {extra.get('size_ratio', 0):.2f}x of FP32"
    if kind == "index":
        encoder = extra.get("encoder", {}).get("label", "?")
        return f"{extra.get('kind', '?')} over {counts.get('vectors', 0):,} vectors, encoder {encoder}"
    return ""


def workspace_status(workspace: Workspace) -> list[dict[str, Any]]:
    """One row per artifact kind: present/missing/broken, fingerprint, creation time, a summary."""
    rows = []
    for kind in ARTIFACT_KINDS:
        path = workspace.artifact(kind)
        row: dict[str, Any] = {"kind": kind, "path": str(path)}
        if not path.exists():
            row.update(state="missing", summary=f"run `densesearch {PRODUCER[kind]}`")
        else:
            try:
                manifest = read_manifest(path, kind)
            except DensesearchError as exc:
                row.update(state="broken", summary=str(exc))
            else:
                row.update(state="ready", fingerprint=manifest.fingerprint, created=manifest.created,
                           summary=_summary(kind, manifest.counts, manifest.extra),
                           upstream=manifest.upstream)
        rows.append(row)
    return rows
