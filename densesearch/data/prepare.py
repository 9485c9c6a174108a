"""`prepare`: catalog, query/positive pairs and a leak-free train/dev/test split from Amazon Reviews 2023."""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from densesearch.core.artifacts import CATALOG_FILE
from densesearch.core.config import PrepareConfig
from densesearch.core.errors import BadInput, HubUnreachable
from densesearch.core.manifest import Manifest, write_manifest
from densesearch.core.paths import Workspace, publish, writes_workspace
from densesearch.data.itemtext import ItemFields, clean_text, normalise
from densesearch.data.readers import SPLITS, Pair
from densesearch.data.sources import ReadStats, check_hub_reachable, hub_url, iter_hub, iter_records, sample_meta_path

ProgressFn = Callable[[str, int, int | None], None]
SUBSTRING_CHECK_MAX_ITEMS = 50_000  # above this the exact-sentence uniqueness rule alone guards leaks
OFFLINE_ALTERNATIVES = ("use `densesearch prepare --sample` (embedded 1,000-item sample) or "
                        "`densesearch prepare --meta meta.jsonl[.gz|.parquet] --reviews reviews.jsonl`")




@dataclass
class SourcePlan:
    """Where metadata and reviews come from, as a description and two record streams."""

    label: str
    meta: Callable[[ReadStats], Iterator[tuple[int, dict]]]
    reviews: Callable[[ReadStats], Iterator[tuple[int, dict]]] | None
    inputs: dict[str, str]
    notes: list[str] = field(default_factory=list)


@dataclass
class PrepareResult:
    """What `prepare` built and saw."""

    path: Path
    manifest: Manifest
    meta_stats: ReadStats
    review_stats: ReadStats | None
    query_source: str
    items: int
    groups: int
    pairs: int
    splits: dict[str, int]
    reviews_without_item: int
    seconds: float
    notes: list[str]


def plan_sources(cfg: PrepareConfig) -> SourcePlan:
    """Resolve the configured source; a bare run falls back to the sample when the Hub is unreachable."""
    if cfg.reviews_path is not None and cfg.meta_path is None:
        raise BadInput("--reviews needs --meta (reviews are joined to item metadata on parent_asin)")
    if cfg.meta_path is not None:
        return _file_plan(cfg)
    if cfg.source == "sample":
        return _sample_plan()
    try:
        check_hub_reachable(cfg.hub_timeout_s)
    except HubUnreachable as exc:
        if cfg.source == "hub":
            raise HubUnreachable(f"{exc.message}", hint=OFFLINE_ALTERNATIVES) from exc
        plan = _sample_plan()
        plan.notes.append(f"{exc.message}; using the embedded sample instead")
        return plan
    meta_url, reviews_url = hub_url(cfg.category, "meta"), hub_url(cfg.category, "reviews")
    return SourcePlan(
        label=f"hub:{cfg.category}",
        meta=lambda stats: iter_hub(meta_url, stats),
        reviews=lambda stats: iter_hub(reviews_url, stats),
        inputs={"meta": meta_url, "reviews": reviews_url},
    )


def _sample_plan() -> SourcePlan:
    path = sample_meta_path()
    return SourcePlan(label="sample:Amazon_Fashion (1,000 real items, no reviews)",
                      meta=lambda stats: iter_records(path, stats), reviews=None,
                      inputs={"meta": f"embedded:{path.name}"})


def _file_plan(cfg: PrepareConfig) -> SourcePlan:
    meta_path, reviews_path = Path(cfg.meta_path), cfg.reviews_path
    inputs = {"meta": str(meta_path.resolve())}
    if reviews_path is not None:
        inputs["reviews"] = str(Path(reviews_path).resolve())
    return SourcePlan(
        label=f"files:{meta_path.name}" + (f" + {Path(reviews_path).name}" if reviews_path else ""),
        meta=lambda stats: iter_records(meta_path, stats),
        reviews=(lambda stats: iter_records(Path(reviews_path), stats)) if reviews_path else None,
        inputs=inputs,
    )


def read_items(records: Iterator[tuple[int, dict]], stats: ReadStats,
               progress: ProgressFn | None = None) -> dict[str, ItemFields]:
    """Parse metadata rows into items keyed by parent_asin; bad and duplicate rows are counted."""
    items: dict[str, ItemFields] = {}
    for lineno, record in records:
        try:
            item = ItemFields.from_record(record)
        except ValueError as exc:
            stats.record_bad(lineno, str(exc))
            continue
        if item.item_id in items:
            stats.record_bad(lineno, f"duplicate parent_asin {item.item_id}")
            continue
        items[item.item_id] = item
        if progress and len(items) % 1000 == 0:
            progress("metadata rows", stats.lines, None)
    return items


def _review_query(record: dict) -> str:
    title, text = clean_text(record.get("title")), clean_text(record.get("text"))
    if title and text and not title.endswith((".", "!", "?")):
        title += "."
    return f"{title} {text}".strip()


def read_review_pairs(records: Iterator[tuple[int, dict]], stats: ReadStats, items: dict[str, ItemFields],
                      groups: dict[str, str], cfg: PrepareConfig,
                      progress: ProgressFn | None = None) -> tuple[list[Pair], int]:
    """Stream reviews into pairs: rating >= min, enough words, latest review per (user, item).

    Returns the pairs and the number of reviews whose item has no metadata.
    """
    latest: dict[tuple[str, str], tuple[int, str]] = {}
    without_item = 0
    for lineno, record in records:
        item_id, user_id = record.get("parent_asin"), record.get("user_id")
        rating = record.get("rating")
        if not isinstance(item_id, str) or not isinstance(user_id, str):
            stats.record_bad(lineno, "missing parent_asin or user_id")
            continue
        if isinstance(rating, bool) or not isinstance(rating, (int, float)):
            stats.record_bad(lineno, "rating is not a number")
            continue
        if progress and stats.lines % 20000 == 0:
            progress("review rows", stats.lines, None)
        if item_id not in items:
            without_item += 1
            continue
        if rating < cfg.min_rating:
            continue
        query = _review_query(record)[: cfg.max_query_chars]
        if len(query.split()) < cfg.min_query_words:
            continue
        timestamp = record.get("timestamp") if isinstance(record.get("timestamp"), int) else 0
        key = (user_id, item_id)
        if key not in latest or timestamp >= latest[key][0]:
            latest[key] = (timestamp, query)
    pairs = [Pair(query_id=hashlib.sha1(f"{u}|{i}".encode()).hexdigest()[:16], query=q, item_id=i,
                  group_id=groups[i], user_id=u, timestamp=t)
             for (u, i), (t, q) in latest.items()]
    return pairs, without_item


def hold_out_listing_queries(items: dict[str, ItemFields], groups: dict[str, str],
                             cfg: PrepareConfig) -> tuple[list[Pair], dict[str, frozenset[str]]]:
    """Pick real listing sentences as pseudo-queries and the sentences to drop from each item's text.

    A candidate sentence is length-filtered and occurs in exactly one item's listing (so a held-out
    sentence appears nowhere in the catalog); each item keeps at least one of its candidate sentences.
    """
    frequency = Counter(normalise(s) for item in items.values() for s in set(item.sentences))
    pairs: list[Pair] = []
    held_out: dict[str, frozenset[str]] = {}
    for item_id, item in items.items():
        candidates = [s for s in dict.fromkeys(item.sentences)
                      if cfg.listing_min_words <= len(s.split()) <= cfg.listing_max_words
                      and frequency[normalise(s)] == 1 and normalise(s) != normalise(item.title)]
        take = min(cfg.listing_queries_per_item, len(candidates) - 1)
        if take <= 0:
            continue
        chosen = random.Random(f"{cfg.seed}:{item_id}").sample(candidates, take)
        held_out[item_id] = frozenset(chosen)
        pairs.extend(Pair(query_id=f"{item_id}:{n}", query=s, item_id=item_id, group_id=groups[item_id])
                     for n, s in enumerate(chosen))
    return pairs, held_out


def drop_leaking_queries(pairs: list[Pair], catalog_texts: list[str]) -> tuple[list[Pair], int]:
    """Remove listing queries whose normalised text still occurs inside some catalog text."""
    if len(catalog_texts) > SUBSTRING_CHECK_MAX_ITEMS:
        return pairs, 0
    haystack = "\n".join(normalise(t) for t in catalog_texts)
    kept = [p for p in pairs if normalise(p.query) not in haystack]
    return kept, len(pairs) - len(kept)


def split_sizes(total: int, cfg: PrepareConfig) -> tuple[int, int]:
    """Test and dev sizes: the configured count or the configured fraction, whichever is smaller."""
    n_test = min(cfg.test_size, round(total * cfg.test_fraction))
    n_dev = min(cfg.dev_size, round(total * cfg.dev_fraction))
    return n_test, n_dev


def split_pairs(pairs: list[Pair], cfg: PrepareConfig, by_user: bool) -> dict[str, list[Pair]]:
    """Seeded split into train/dev/test; with reviews whole users go to one side only."""
    n_test, n_dev = split_sizes(len(pairs), cfg)
    rng = random.Random(cfg.seed)
    units: list[list[Pair]]
    if by_user:
        by_key: dict[str, list[Pair]] = defaultdict(list)
        for pair in pairs:
            by_key[pair.user_id].append(pair)
        units = [by_key[u] for u in sorted(by_key)]
    else:
        units = [[p] for p in sorted(pairs, key=lambda p: p.query_id)]
    rng.shuffle(units)
    splits: dict[str, list[Pair]] = {name: [] for name in SPLITS}
    for unit in units:
        target = ("test" if len(splits["test"]) < n_test else
                  "dev" if len(splits["dev"]) < n_dev else "train")
        splits[target].extend(unit)
    return splits


def _write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def catalog_rows(items: dict[str, ItemFields], groups: dict[str, str],
                 held_out: dict[str, frozenset[str]], cfg: PrepareConfig) -> list[dict]:
    """One row per item: id, variant group, indexed text and display fields."""
    return [{"item_id": item_id, "group_id": groups[item_id], **item.display_fields(),
             "text": item.text(cfg.max_text_chars, held_out.get(item_id, frozenset()))}
            for item_id, item in items.items()]


def _settings(cfg: PrepareConfig, query_source: str) -> dict:
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    settings["query_source"] = query_source
    settings["split_rule"] = (
        "reviews: users shuffled (seed) and assigned whole to test, then dev, then train; "
        "one pair per (user, item), latest review kept"
        if query_source == "reviews" else
        "listing: each held-out sentence occurs in exactly one listing and is removed from it; "
        "queries still found inside any catalog text are dropped; queries shuffled (seed) into test/dev/train")
    return settings


@dataclass
class BuiltPairs:
    """Catalog rows and query pairs from Amazon metadata, with how they were read."""

    query_source: str
    rows: list[dict]
    pairs: list[Pair]
    groups: dict[str, str]
    meta_stats: ReadStats
    review_stats: ReadStats | None = None
    without_item: int = 0
    dropped: int = 0
    notes: list[str] = field(default_factory=list)


def check_query_source(cfg: PrepareConfig, plan: SourcePlan) -> None:
    if cfg.queries not in (None, "reviews", "listing"):
        raise BadInput(f"unknown query source {cfg.queries!r}", hint="use --queries reviews or listing")
    if cfg.queries == "reviews" and plan.reviews is None:
        raise BadInput("--queries reviews needs a reviews file", hint="pass --reviews PATH or use --queries listing")


def build_pairs(cfg: PrepareConfig, plan: SourcePlan, progress: ProgressFn | None) -> BuiltPairs:
    """Items from the metadata, then query pairs from the reviews or from held-out listing sentences."""
    meta_stats = ReadStats("metadata")
    items = read_items(plan.meta(meta_stats), meta_stats, progress)
    if not items:
        raise BadInput("no usable item metadata", plan.inputs["meta"],
                       hint="each line needs parent_asin and a title or features")
    groups = {item_id: item.group_key() for item_id, item in items.items()}
    if plan.reviews is not None and cfg.queries != "listing":
        review_stats = ReadStats("reviews")
        pairs, without_item = read_review_pairs(plan.reviews(review_stats), review_stats, items, groups,
                                                cfg, progress)
        return BuiltPairs("reviews", catalog_rows(items, groups, {}, cfg), pairs, groups, meta_stats, review_stats,
                          without_item, notes=list(plan.notes))
    pairs, held_out = hold_out_listing_queries(items, groups, cfg)
    rows = catalog_rows(items, groups, held_out, cfg)
    pairs, dropped = drop_leaking_queries(pairs, [r["text"] for r in rows])
    return BuiltPairs("listing", rows, pairs, groups, meta_stats, dropped=dropped,
                      notes=[*plan.notes, "queries are held-out listing sentences (a proxy), not customer reviews"])


def data_manifest(cfg: PrepareConfig, plan: SourcePlan, built: BuiltPairs, splits: dict[str, list[Pair]]
                  ) -> Manifest:
    meta, reviews = built.meta_stats, built.review_stats
    return Manifest(
        kind="data", settings=_settings(cfg, built.query_source),
        inputs={name: f"{ref} sha256:{stats.sha256}" for (name, ref), stats in
                zip(plan.inputs.items(), [meta, reviews], strict=False) if stats},
        counts={"items": len(built.rows), "groups": len(set(built.groups.values())), "pairs": len(built.pairs),
                **{f"{name}_pairs": len(split) for name, split in splits.items()},
                "metadata_lines": meta.lines, "metadata_bad_lines": meta.bad,
                "review_lines": reviews.lines if reviews else 0, "review_bad_lines": reviews.bad if reviews else 0,
                "reviews_without_item": built.without_item, "leaking_queries_dropped": built.dropped},
        extra={"source": plan.label, "query_source": built.query_source})


@writes_workspace
def run_prepare(cfg: PrepareConfig, workspace: Workspace, progress: ProgressFn | None = None) -> PrepareResult:
    """Read sources, build catalog + pairs + split, and publish the data artifact atomically."""
    started = time.perf_counter()
    if cfg.beir_path is not None:
        return prepare_beir(cfg, workspace, started, progress)
    plan = plan_sources(cfg)
    check_query_source(cfg, plan)
    built = build_pairs(cfg, plan, progress)
    if not built.pairs:
        raise BadInput("no query/positive pairs could be built",
                       plan.inputs.get("reviews", plan.inputs["meta"]),
                       hint="check that reviews reference catalog items (parent_asin) and have text")
    splits = split_pairs(built.pairs, cfg, by_user=built.query_source == "reviews")
    with publish(workspace, "data") as tmp:
        _write_jsonl(tmp / CATALOG_FILE, built.rows)
        for name, split in splits.items():
            _write_jsonl(tmp / f"{name}.jsonl", (asdict(p) for p in split))
        manifest = write_manifest(tmp, data_manifest(cfg, plan, built, splits))
    return PrepareResult(
        path=workspace.artifact("data"), manifest=manifest, meta_stats=built.meta_stats,
        review_stats=built.review_stats, query_source=built.query_source, items=len(built.rows),
        groups=len(set(built.groups.values())), pairs=len(built.pairs),
        splits={name: len(split) for name, split in splits.items()}, reviews_without_item=built.without_item,
        seconds=time.perf_counter() - started, notes=built.notes)


def beir_catalog_row(doc_id: str, doc: dict, max_chars: int) -> dict:
    """A catalog row for one BEIR document: its title for display, title + text to index."""
    from densesearch.data.itemtext import cap

    text = f"{doc['title']}. {doc['text']}" if doc["title"] and doc["text"] else doc["title"] or doc["text"]
    return {"item_id": doc_id, "group_id": doc_id, "title": doc["title"] or cap(doc["text"], 120), "store": "",
            "rating": None, "rating_number": None, "price": None, "image": "", "meta": doc["meta"],
            "text": cap(text, max_chars)}


def judged_pairs(queries: dict[str, str], judged: dict[str, dict[str, int]], min_relevance: int) -> list[Pair]:
    """One training/evaluation pair per (query, item judged at or above ``min_relevance``)."""
    return [Pair(query_id=query_id, query=queries[query_id], item_id=doc_id, group_id=doc_id)
            for query_id in sorted(judged) for doc_id, grade in sorted(judged[query_id].items())
            if grade >= min_relevance]


def beir_notes(data, cfg: PrepareConfig) -> list[str]:
    stats = data.stats
    notes = [f"{split}: {how}" for split, how in stats.carved.items()]
    skipped = {"judgments naming an unknown query or document": stats.dangling_judgments,
               "duplicate judgments": stats.duplicate_judgments, "duplicate document ids": stats.duplicate_docs,
               "duplicate query ids": stats.duplicate_queries, "documents without text": stats.empty_docs,
               "queries without text": stats.empty_queries, "malformed qrels lines": sum(stats.qrels_bad.values())}
    notes += [f"skipped {count:,} {what}" for what, count in skipped.items() if count]
    notes += [f"first malformed qrels line: {stats.qrels_bad_examples[0]}"] if stats.qrels_bad_examples else []
    notes.append(f"judged queries: an item counts as relevant from grade {cfg.min_relevance} (--min-relevance)")
    return notes


def prepare_beir(cfg: PrepareConfig, workspace: Workspace, started: float, progress=None) -> PrepareResult:
    """Catalog, graded qrels and pairs from a BEIR folder, published as the data artifact."""
    from densesearch.data.beir import read_beir

    if progress:
        progress("reading BEIR folder", 0, None)
    data = read_beir(Path(cfg.beir_path))
    rows = [beir_catalog_row(doc_id, doc, cfg.max_text_chars) for doc_id, doc in data.docs.items()]
    splits = {split: judged_pairs(data.queries, data.qrels[split], cfg.min_relevance) for split in SPLITS}
    if not any(splits.values()):
        raise BadInput(f"no judgment reaches grade {cfg.min_relevance}", str(cfg.beir_path),
                       hint="lower --min-relevance")
    judged_queries = sorted({q for split in SPLITS for q in data.qrels[split]})
    with publish(workspace, "data") as tmp:
        _write_jsonl(tmp / CATALOG_FILE, rows)
        _write_jsonl(tmp / "queries.jsonl", ({"_id": q, "text": data.queries[q]} for q in judged_queries))
        (tmp / "qrels").mkdir()
        for name, split in splits.items():
            _write_jsonl(tmp / f"{name}.jsonl", (asdict(p) for p in split))
            write_qrels(tmp / "qrels" / f"{name}.tsv", data.qrels[name])
        manifest = write_manifest(tmp, beir_manifest(cfg, data, rows, splits))
    return PrepareResult(
        path=workspace.artifact("data"), manifest=manifest, meta_stats=data.stats.corpus, review_stats=None,
        query_source="judged", items=len(rows), groups=len(rows), pairs=sum(len(p) for p in splits.values()),
        splits={name: len(p) for name, p in splits.items()}, reviews_without_item=0,
        seconds=time.perf_counter() - started, notes=beir_notes(data, cfg))


def beir_manifest(cfg: PrepareConfig, data, rows: list[dict], splits: dict[str, list[Pair]]) -> Manifest:
    """The data artifact's manifest for a BEIR folder: per split its pairs, queries and judgments."""
    return Manifest(
        kind="data", settings={**_settings(cfg, "judged"), "split_rule": "the folder's qrels splits; a missing "
                               "dev/test split is carved from train (else the split present) by a hash of the "
                               "query id"},
        inputs={name: f"{Path(cfg.beir_path).resolve() / name} sha256:{digest}"
                for name, digest in data.fingerprints.items()},
        counts={"items": len(rows), "groups": len(rows), "pairs": sum(len(p) for p in splits.values()),
                **{f"{name}_pairs": len(p) for name, p in splits.items()},
                **{f"{name}_queries": len(data.qrels[name]) for name in SPLITS},
                **{f"{name}_judgments": sum(len(j) for j in data.qrels[name].values()) for name in SPLITS},
                "metadata_lines": data.stats.corpus.lines, "metadata_bad_lines": data.stats.corpus.bad,
                "dangling_judgments": data.stats.dangling_judgments},
        extra={"source": f"beir:{Path(cfg.beir_path).name}", "query_source": "judged", "graded": True,
               "min_relevance": cfg.min_relevance, "carved": data.stats.carved})


def write_qrels(path: Path, judged: dict[str, dict[str, int]]) -> None:
    """BEIR qrels: a header, then ``query-id corpus-id score`` lines (every grade, zeros included)."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        for query_id in sorted(judged):
            for doc_id, grade in sorted(judged[query_id].items()):
                handle.write(f"{query_id}\t{doc_id}\t{grade}\n")
