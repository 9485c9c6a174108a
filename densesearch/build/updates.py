"""`index --upsert / --delete / --compact`: change the published index without re-encoding the catalog.

Rows of the index are never renumbered between compactions, so the FAISS structure stays valid:

- **delete** marks rows dead in ``live.npy``; the vectors and the FAISS file are hard-linked from the previous
  version (nothing is copied or re-encoded);
- **upsert** re-encodes only what is new or whose text changed: such an item gets a new row (its old row, if any,
  dies) that is added to the FAISS structure; an item whose text is unchanged keeps its row and vector, and only its
  attributes (price, rating, ...) are replaced;
- **compact** drops the dead rows and rebuilds the FAISS structure from the stored vectors (no encoding).

Every change rebuilds word and 3-gram BM25 over the live rows only (their statistics then are exactly those of
an index built from the live catalog), and a search never returns a dead row in any mode. Each change is one new
version, published atomically like every artifact: a killed change leaves the previous version served, and a
running server follows the new one without a restart.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from densesearch.build.indexer import (
    _disk_bytes,
    _write_items,
    add_in_chunks,
    append_vectors,
    build_lexical,
    copy_ranker,
    encode_batch_size,
    factory_string,
    new_faiss_index,
    new_vectors_file,
    read_new_items,
    train_if_needed,
)
from densesearch.core.artifacts import (
    DENSE_FILE,
    ITEMS_FILE,
    LIVE_FILE,
    VECTORS_FILE,
    Artifact,
    open_artifact,
)
from densesearch.core.config import IndexConfig, compaction_due
from densesearch.core.errors import BadInput
from densesearch.core.manifest import Manifest, write_manifest
from densesearch.core.paths import Workspace, publish, writes_workspace
from densesearch.data.readers import load_data_manifest
from densesearch.data.sources import ReadStats, iter_records
from densesearch.retrieval.encoders import EncoderSpec
from densesearch.retrieval.searcher import read_items

MAX_TEXT_CHARS = 2000


@dataclass
class ChangeResult:
    """What one change did to the published index."""

    action: str
    path: Path
    manifest: Manifest
    live: int
    dead: int
    encoded: int = 0              # items (re-)encoded
    updated: int = 0              # items whose attributes changed in place (text unchanged: not re-encoded)
    deleted: int = 0
    unchanged: int = 0
    seconds: float = 0.0
    bytes_on_disk: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def compaction_due(self) -> bool:
        return compaction_due(self.live, self.dead)


@dataclass
class Published:
    """The served index, read for a change: its rows, which are live, and its encoder."""

    artifact: Artifact
    rows: list[dict]
    live: np.ndarray

    @classmethod
    def load(cls, workspace: Workspace) -> Published:
        artifact = open_artifact(workspace, "index")
        rows = read_items(artifact)
        live = np.ones(len(rows), dtype=bool)
        if LIVE_FILE in artifact.manifest.files:
            live = np.array(artifact.load_npy(LIVE_FILE), dtype=bool)
            if live.shape != (len(rows),):
                raise artifact.corrupt(LIVE_FILE, f"has {live.size:,} flags for {len(rows):,} rows")
        return cls(artifact, rows, live)

    @property
    def manifest(self) -> Manifest:
        return self.artifact.manifest

    def live_rows(self) -> dict[str, int]:
        return {row["item_id"]: number for number, row in enumerate(self.rows) if self.live[number]}


def read_upserts(path: Path, max_chars: int = MAX_TEXT_CHARS) -> list[dict]:
    """Catalog rows from JSON lines of Amazon metadata (``parent_asin``) or BEIR corpus lines (``_id``); an id met
    twice keeps its last line (a file of changes, in order)."""
    first = next((record for _, record in iter_records(path, ReadStats("upsert"))), None)
    if first is not None and "_id" in first:
        rows = _beir_rows(path, max_chars)
    else:
        rows = read_new_items(path, max_chars)
    latest = {row["item_id"]: row for row in rows}
    if not latest:
        raise BadInput("no items to upsert", str(path),
                       hint="give JSON lines of Amazon metadata (parent_asin, title, ...) or BEIR corpus lines")
    return list(latest.values())


def _beir_rows(path: Path, max_chars: int) -> list[dict]:
    from densesearch.data.beir import BeirStats, read_docs
    from densesearch.data.prepare import beir_catalog_row

    return [beir_catalog_row(doc_id, doc, max_chars) for doc_id, doc in read_docs(path, BeirStats()).items()]


def read_delete_ids(path: Path) -> list[str]:
    """Item ids, one per line (blank lines and lines starting with '#' skipped)."""
    from densesearch.data.sources import open_input

    with open_input(path, "r", encoding="utf-8", errors="strict") as handle:
        try:
            lines = handle.read().splitlines()
        except UnicodeDecodeError as exc:
            raise BadInput("is not UTF-8 text", str(path), hint="one item id per line, UTF-8") from exc
    ids = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not ids:
        raise BadInput("no item ids to delete", str(path), hint="one item id per line")
    return ids


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (published files are never written again), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_lexical(rows: list[dict], live: np.ndarray, backend: str, out: Path) -> None:
    """Word and 3-gram BM25 over the live rows, each document mapped to its row."""
    kept = np.flatnonzero(live)
    build_lexical([rows[row]["text"] for row in kept], backend, out,
                  None if len(kept) == len(rows) else kept.astype(np.int64))


def link_dense(published: Published, out: Path) -> None:
    """The vectors and the FAISS file of a change that adds no vector: linked from the published version."""
    for name in (VECTORS_FILE, DENSE_FILE):
        link_or_copy(published.artifact.path / name, out / name)


def finish_version(tmp: Path, published: Published, rows: list[dict], live: np.ndarray, counts: dict[str, int],
                   input_name: str, input_path: str) -> Manifest:
    """Write what every change rewrites (items, live flags, both BM25 indexes, the ranker's title terms) and the
    manifest."""
    manifest = published.manifest
    write_lexical(rows, live, manifest.extra["bm25"], tmp)
    if not live.all():
        np.save(tmp / LIVE_FILE, live)
    copy_ranker(published.artifact.path, tmp, rows)
    _write_items(tmp / ITEMS_FILE, rows)
    live_count = int(np.count_nonzero(live))
    manifest.counts = {**{k: v for k, v in manifest.counts.items() if k not in ("live", "dead")},
                       **counts, "vectors": len(rows), "live": live_count, "dead": len(rows) - live_count}
    manifest.inputs = {**manifest.inputs, input_name: input_path}
    manifest.created = datetime.now(UTC).isoformat(timespec="seconds")
    return write_manifest(tmp, manifest)


def _result(action: str, workspace: Workspace, manifest: Manifest, started: float, **done) -> ChangeResult:
    directory = workspace.artifact("index")
    return ChangeResult(action=action, path=directory, manifest=manifest, live=manifest.counts["live"],
                        dead=manifest.counts["dead"], seconds=time.perf_counter() - started,
                        bytes_on_disk=_disk_bytes(directory), **done)


@writes_workspace
def run_delete(cfg: IndexConfig, workspace: Workspace, progress=None) -> ChangeResult:
    """Mark the listed items dead: no mode returns them from the published version on. Ids already deleted are
    noted (deleting is idempotent); a file naming no item the index ever held is refused."""
    started = time.perf_counter()
    published = Published.load(workspace)
    ids = set(read_delete_ids(Path(cfg.delete_path)))
    where = published.live_rows()
    found = sorted(where[item_id] for item_id in ids if item_id in where)
    known = {row["item_id"] for row in published.rows}
    if not ids & known:
        raise BadInput(f"none of the {len(ids):,} ids is an item of the index", str(cfg.delete_path),
                       hint="use item ids that `densesearch query --wide` shows")
    notes = [f"{len(ids - known):,} ids are not in the index: skipped"] if ids - known else []
    if len(ids & known) > len(found):
        notes.append(f"{len(ids & known) - len(found):,} items were already deleted")
    if not found:
        return unchanged_result("delete", workspace, published, started, notes)
    live = published.live.copy()
    live[found] = False
    with publish(workspace, "index") as tmp:
        link_dense(published, tmp)
        counts = {"deleted": published.manifest.counts.get("deleted", 0) + len(found)}
        manifest = finish_version(tmp, published, published.rows, live, counts, "delete", str(cfg.delete_path))
    return _result("delete", workspace, manifest, started, deleted=len(found), notes=notes)


def unchanged_result(action: str, workspace: Workspace, published: Published, started: float,
                     notes: list[str], **done) -> ChangeResult:
    """A change that changes nothing publishes nothing (a feed applied twice is not an error)."""
    live = int(np.count_nonzero(published.live))
    return ChangeResult(action=action, path=published.artifact.path, manifest=published.manifest, live=live,
                        dead=len(published.rows) - live, seconds=time.perf_counter() - started,
                        bytes_on_disk=_disk_bytes(published.artifact.path),
                        notes=[*notes, "nothing changed: no new version was published"], **done)


@dataclass
class UpsertPlan:
    """How each upserted row lands: a new row to encode, an in-place attribute update, or nothing."""

    encode: list[dict] = field(default_factory=list)
    retire: list[int] = field(default_factory=list)       # old rows of items whose text changed
    in_place: dict[int, dict] = field(default_factory=dict)
    unchanged: int = 0

    @classmethod
    def of(cls, published: Published, upserts: list[dict]) -> UpsertPlan:
        plan, where = cls(), published.live_rows()
        for row in upserts:
            old = where.get(row["item_id"])
            if old is None:
                plan.encode.append(row)
            elif published.rows[old]["text"] != row["text"]:
                plan.encode.append(row)
                plan.retire.append(old)
            elif published.rows[old] != row:
                plan.in_place[old] = row
            else:
                plan.unchanged += 1
        return plan


@writes_workspace
def run_upsert(cfg: IndexConfig, workspace: Workspace, progress=None) -> ChangeResult:
    """Add new items and replace changed ones, re-encoding only the texts that are new."""
    started = time.perf_counter()
    published = Published.load(workspace)
    max_chars = int(load_data_manifest(workspace).settings.get("max_text_chars") or MAX_TEXT_CHARS)
    plan = UpsertPlan.of(published, read_upserts(Path(cfg.upsert_path), max_chars))
    if not plan.encode and not plan.in_place:
        return unchanged_result("upsert", workspace, published, started,
                                [f"all {plan.unchanged:,} items are already indexed as given"],
                                unchanged=plan.unchanged)
    rows = [plan.in_place.get(number, row) for number, row in enumerate(published.rows)] + plan.encode
    live = np.concatenate([published.live, np.ones(len(plan.encode), dtype=bool)])
    live[plan.retire] = False
    with publish(workspace, "index") as tmp:
        if plan.encode:
            encoder = EncoderSpec.from_record(published.artifact.info.encoder).load(workspace, cfg.threads)
            batch_size = cfg.batch_size or published.manifest.extra.get("encode_batch") or encode_batch_size("cpu")
            append_vectors(published.artifact, encoder, [row["text"] for row in plan.encode], tmp, batch_size,
                           progress)
        else:
            link_dense(published, tmp)
        counts = {"upserted": published.manifest.counts.get("upserted", 0) + len(plan.encode) + len(plan.in_place)}
        manifest = finish_version(tmp, published, rows, live, counts, "upsert", str(cfg.upsert_path))
    return _result("upsert", workspace, manifest, started, encoded=len(plan.encode), updated=len(plan.in_place),
                   unchanged=plan.unchanged, deleted=len(plan.retire))


@writes_workspace
def run_compact(cfg: IndexConfig, workspace: Workspace, progress=None) -> ChangeResult:
    """Drop the dead rows and rebuild the FAISS structure from the stored vectors of the live ones."""
    import faiss

    started = time.perf_counter()
    published = Published.load(workspace)
    dead = int(np.count_nonzero(~published.live))
    if dead == 0:
        raise BadInput("the index has no deleted or replaced rows", hint="nothing to compact")
    kept = np.flatnonzero(published.live)
    if len(kept) == 0:
        raise BadInput("every item of the index is deleted", hint="upsert items, or rebuild with `densesearch index`")
    rows = [published.rows[row] for row in kept]
    settings = published.manifest.settings
    build = IndexConfig(kind=published.manifest.extra["kind"], hnsw_m=int(settings.get("hnsw_m", 32)),
                        ef_construction=settings.get("ef_construction"))
    old = published.artifact.load_npy(VECTORS_FILE)
    with publish(workspace, "index") as tmp:
        vectors = new_vectors_file(tmp / VECTORS_FILE, len(kept), old.shape[1])
        for start in range(0, len(kept), 65536):
            vectors[start:start + 65536] = old[kept[start:start + 65536]]
        vectors.flush()
        index = new_faiss_index(build.kind, old.shape[1], len(kept), build)
        published.manifest.extra["factory"] = factory_string(build.kind, old.shape[1], len(kept), build.hnsw_m)
        train_if_needed(index, vectors)
        add_in_chunks(index, vectors)
        faiss.write_index(index, str(tmp / DENSE_FILE))
        manifest = finish_version(tmp, published, rows, np.ones(len(rows), dtype=bool),
                                  {"compacted": published.manifest.counts.get("compacted", 0) + dead},
                                  "compact", "dead rows dropped")
    return _result("compact", workspace, manifest, started, deleted=dead)
