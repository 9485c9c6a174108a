"""Reading a prepared data artifact: the catalog, the query pairs and the graded judgments of each split."""

from __future__ import annotations

from dataclasses import dataclass

from densesearch.core.artifacts import CATALOG_FILE, open_artifact
from densesearch.core.errors import BadInput
from densesearch.core.manifest import Manifest
from densesearch.core.paths import Workspace

SPLITS = ("train", "dev", "test")


@dataclass
class Pair:
    """One query and the item it should retrieve."""

    query_id: str
    query: str
    item_id: str
    group_id: str
    user_id: str = ""
    timestamp: int = 0


@dataclass
class Catalog:
    """The prepared catalog, in index order."""

    ids: list[str]
    texts: list[str]
    groups: list[str]
    rows: list[dict]

    def __len__(self) -> int:
        return len(self.ids)


def load_data_manifest(workspace: Workspace) -> Manifest:
    return open_artifact(workspace, "data").manifest


def load_catalog(workspace: Workspace) -> Catalog:
    """Read the catalog of the workspace's data artifact."""
    artifact = open_artifact(workspace, "data")
    try:
        rows = list(artifact.iter_jsonl(CATALOG_FILE))
        return Catalog(ids=[r["item_id"] for r in rows], texts=[r["text"] for r in rows],
                       groups=[r["group_id"] for r in rows], rows=rows)
    except KeyError as exc:
        raise artifact.corrupt(CATALOG_FILE, f"has a row without {exc}") from exc


def load_pairs(workspace: Workspace, split: str) -> list[Pair]:
    """Read one split of query/positive pairs."""
    if split not in SPLITS:
        raise BadInput(f"unknown split {split!r}", hint="use train, dev or test")
    artifact = open_artifact(workspace, "data")
    try:
        return [Pair(**row) for row in artifact.iter_jsonl(f"{split}.jsonl")]
    except TypeError as exc:
        raise artifact.corrupt(f"{split}.jsonl", "has a row that is not a query/item pair") from exc


@dataclass
class Judgments:
    """One split's evaluation queries with graded judgments (Amazon pairs become grade-1 judgments)."""

    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]
    min_relevance: int
    graded: bool


def load_judgments(workspace: Workspace, split: str) -> Judgments:
    """The split's queries and judgments: graded qrels where the data has them, else its pairs."""
    artifact = open_artifact(workspace, "data")
    if not artifact.info.graded:
        pairs = load_pairs(workspace, split)
        return Judgments(query_ids=[p.query_id for p in pairs], queries=[p.query for p in pairs],
                         qrels={p.query_id: {p.item_id: 1} for p in pairs}, min_relevance=1, graded=False)
    texts = {row["_id"]: row["text"] for row in artifact.iter_jsonl("queries.jsonl")}
    qrels: dict[str, dict[str, int]] = {}
    name = f"qrels/{split}.tsv"
    try:
        lines = artifact.file(name).read_text(encoding="utf-8").splitlines()[1:]
        for line in lines:
            query_id, doc_id, grade = line.split("\t")
            qrels.setdefault(query_id, {})[doc_id] = int(grade)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise artifact.corrupt(name, "is not a qrels file") from exc
    minimum = artifact.info.min_relevance
    # every query with a positive grade is evaluated (as trec_eval and ranx do); recall and MRR count grades
    # >= min_relevance, so a query judged only below it scores 0 there but still counts for graded nDCG
    ids = [q for q in sorted(qrels) if q in texts and any(g > 0 for g in qrels[q].values())]
    return Judgments(query_ids=ids, queries=[texts[q] for q in ids], qrels={q: qrels[q] for q in ids},
                     min_relevance=minimum, graded=True)
