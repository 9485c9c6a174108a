"""`status`: each artifact's health (ok / stale / corrupt / missing) and what it holds."""

from __future__ import annotations

from typing import Any

from densesearch.core.artifacts import artifact_health
from densesearch.core.config import compaction_due
from densesearch.core.paths import ARTIFACT_KINDS, OPTIONAL_KINDS, Workspace


def _summary(kind: str, counts: dict[str, Any], extra: dict[str, Any]) -> str:
    if kind == "data":
        return (f"{counts.get('items', 0):,} items, {counts.get('pairs', 0):,} pairs "
                f"({extra.get('query_source', '?')} queries)")
    if kind == "model":
        return f"{extra.get('base_model', '?')} fine-tuned on {counts.get('train_pairs', 0):,} pairs"
    if kind == "onnx":
        if not extra.get("int8_file"):
            return "FP32 ONNX only (no INT8 recipe passed the parity gate)"
        runtime = extra.get("int8_runtime") or "onnxruntime"
        queries = extra.get("query_int8_runtime") or runtime
        return (f"INT8 {extra.get('recipe', '?')} ({runtime})"
                f"{f', queries on {queries}' if queries != runtime else ''} for {extra.get('isa', '?')}, "
                f"{extra.get('size_ratio', 0):.2f}x of FP32")
    if kind == "index":
        encoder = extra.get("encoder", {}).get("label", "?")
        ranker = ", hybrid re-ordered by a learned ranker" if (extra.get("ranker") or {}).get("kept") else ""
        return f"{extra.get('kind', '?')} over {_live(counts)}, encoder {encoder}{ranker}"
    if kind == "reranker":
        return (f"cross-encoder on {counts.get('train_rows', 0):,} rows, re-scores the top {extra.get('depth', '?')} "
                f"(weight {extra.get('weight', '?')}), served by {extra.get('scorer', 'torch fp32')}")
    return ""


def _live(counts: dict[str, Any]) -> str:
    """The index's live items, and its dead rows (deleted or replaced) with whether a compaction is due."""
    rows, dead = counts.get("vectors", 0), counts.get("dead", 0)
    if not dead:
        return f"{rows:,} vectors"
    due = "compaction due: `densesearch index --compact`" if compaction_due(rows - dead, dead) else \
        "compaction not due"
    return f"{rows - dead:,} live items ({dead:,} deleted or replaced rows; {due})"


# Steps a working pipeline may skip: shown as "skipped" with what they would add, never as a failure (an index that
# was built from one of them names it as its missing upstream: "stale").
SKIPPABLE = {"onnx": "optional: `densesearch quantize` makes the INT8 encoder; until then the index serves the "
                     "fine-tuned model in FP32"}
SEVERITY = ("corrupt", "stale", "missing")  # the order problems are named in: the damaged artifact first


def workspace_status(workspace: Workspace, deep: bool = True) -> list[dict[str, Any]]:
    """One row per artifact kind: state, the problem when not ok, fingerprint, creation time, a summary."""
    rows = []
    for kind in ARTIFACT_KINDS:
        row = artifact_health(workspace, kind, deep=deep)
        if kind in OPTIONAL_KINDS and row["state"] == "missing":
            continue
        if kind in SKIPPABLE and row["state"] == "missing":
            row.update(state="skipped", problem=SKIPPABLE[kind])
        manifest = row.pop("manifest", None)
        if manifest is not None:
            row["summary"] = _summary(kind, manifest.counts, manifest.extra)
        rows.append(row)
    return rows


def problems(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows that are not usable, the most severe first (damaged, then stale, then missing)."""
    bad = [row for row in rows if row["state"] in SEVERITY]
    return sorted(bad, key=lambda row: SEVERITY.index(row["state"]))


def all_ok(rows: list[dict[str, Any]]) -> bool:
    return not problems(rows)
