import json
import time

import pytest
from conftest import TEST_REVIEWS, read_jsonl
from typer.testing import CliRunner

from densesearch.cli.app import app
from densesearch.core.config import PrepareConfig
from densesearch.data import prepare as prepare_module
from densesearch.data.itemtext import normalise
from densesearch.data.prepare import run_prepare
from densesearch.data.readers import load_catalog, load_pairs

runner = CliRunner()


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_listing_queries_are_leak_free(workspace):
    result = run_prepare(PrepareConfig(source="sample"), workspace)
    assert result.query_source == "listing" and result.items == 1000
    catalog = load_catalog(workspace)
    train, dev, test = (load_pairs(workspace, s) for s in ("train", "dev", "test"))
    assert len(test) == round(result.pairs * 0.2) and dev and train
    haystack = "\n".join(normalise(t) for t in catalog.texts)
    train_queries = {normalise(p.query) for p in train}
    ids = set(catalog.ids)
    for pair in test + dev:
        assert normalise(pair.query) not in haystack
        assert normalise(pair.query) not in train_queries
        assert pair.item_id in ids
    assert len({p.query_id for p in train + dev + test}) == result.pairs


def test_review_pairs_split_by_user_latest_review_kept(workspace, sample_meta):
    result = run_prepare(PrepareConfig(meta_path=sample_meta, reviews_path=TEST_REVIEWS), workspace)
    assert result.query_source == "reviews"
    assert result.reviews_without_item == 1
    splits = {s: load_pairs(workspace, s) for s in ("train", "dev", "test")}
    users = {s: {p.user_id for p in pairs} for s, pairs in splits.items()}
    assert not users["train"] & users["test"] and not users["train"] & users["dev"]
    assert not users["dev"] & users["test"]
    everything = [p for pairs in splits.values() for p in pairs]
    keys = [(p.user_id, p.item_id) for p in everything]
    assert len(keys) == len(set(keys))
    duplicate = [p for p in everything if p.user_id == "UDUPLICATE"]
    assert len(duplicate) == 1 and duplicate[0].query.startswith("Newer review")
    ratings = {(r["user_id"], r["parent_asin"], r["text"]): r["rating"] for r in read_jsonl(TEST_REVIEWS)}
    for pair in everything:
        rating = next(v for (u, i, text), v in ratings.items()
                      if (u, i) == (pair.user_id, pair.item_id) and pair.query.endswith(text))
        assert rating >= 4
    catalog_ids = set(load_catalog(workspace).ids)
    assert all(p.item_id in catalog_ids for p in splits["test"])


def test_second_run_is_idempotent(workspace, sample_meta):
    cfg = PrepareConfig(meta_path=sample_meta, reviews_path=TEST_REVIEWS)
    first = run_prepare(cfg, workspace).manifest.fingerprint
    assert run_prepare(cfg, workspace).manifest.fingerprint == first


def test_listing_mode_can_be_forced_with_reviews(workspace, small_meta):
    result = run_prepare(PrepareConfig(meta_path=small_meta, reviews_path=TEST_REVIEWS, queries="listing"),
                         workspace)
    assert result.query_source == "listing" and result.review_stats is None


def test_parquet_metadata_is_read(workspace, small_meta, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = read_jsonl(small_meta)
    for row in rows:  # keep the schema simple for arrow: nested dicts of varying keys as JSON strings
        row["details"] = json.dumps(row["details"])
        row.pop("images"), row.pop("videos"), row.pop("bought_together")
    path = tmp_path / "meta.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    result = run_prepare(PrepareConfig(meta_path=path), workspace)
    assert result.items == 150 and result.meta_stats.lines == 150


def test_bad_lines_are_counted_with_line_numbers(workspace, small_meta, tmp_path):
    lines = open(small_meta).read().splitlines()
    lines.insert(3, "{not json")
    lines.insert(7, "[1, 2]")
    lines.insert(9, json.dumps({"title": "no id"}))
    path = tmp_path / "meta.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = run_prepare(PrepareConfig(meta_path=path), workspace)
    assert result.items == 150 and result.meta_stats.bad == 3
    assert [line for line, _ in result.meta_stats.bad_examples] == [4, 8, 10]


@pytest.mark.parametrize("content, message", [
    (None, "file not found"),
    ("", "file is empty"),
    ("hello\nworld\n", "not a JSON Lines file"),
    ('{"title": "x"}\n', "no usable item metadata"),
])
def test_bad_metadata_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "meta.jsonl"
    if content is not None:
        path.write_text(content)
    line = one_line_error(runner.invoke(app, ["prepare", "--meta", str(path)]))
    assert message in line


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "meta.parquet"
    path.write_text("not parquet at all")
    assert "not a parquet file" in one_line_error(runner.invoke(app, ["prepare", "--meta", str(path)]))


def test_reviews_without_any_catalog_item(tmp_path, small_meta):
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text(json.dumps({"rating": 5.0, "title": "t", "text": "a fine review of a missing item",
                                   "parent_asin": "NOPE", "user_id": "U1", "timestamp": 1}) + "\n")
    line = one_line_error(runner.invoke(app, ["prepare", "--meta", str(small_meta), "--reviews", str(reviews)]))
    assert "no query/positive pairs" in line


def test_interrupted_write_leaves_no_artifact(workspace, monkeypatch):
    calls = {"n": 0}
    real_write = prepare_module._write_jsonl

    def write_then_fail(path, rows):
        calls["n"] += 1
        real_write(path, rows)
        if calls["n"] == 2:
            raise KeyboardInterrupt  # Ctrl-C after the catalog and one split were written

    monkeypatch.setattr(prepare_module, "_write_jsonl", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(PrepareConfig(source="sample"), workspace)
    assert not workspace.artifact("data").exists()
    assert not [p for p in workspace.artifact_home("data").iterdir() if p.name != ".lock"]


def test_unreachable_hub_fails_fast_naming_offline_alternatives(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    started = time.monotonic()
    line = one_line_error(runner.invoke(app, ["prepare", "--category", "Amazon_Fashion"]))
    assert time.monotonic() - started < 30
    assert "--sample" in line and "--meta" in line


def test_bare_prepare_falls_back_to_sample_saying_so():
    result = runner.invoke(app, ["prepare"])
    assert result.exit_code == 0, result.output
    assert "embedded sample" in result.stderr
    assert "listing" in result.stdout


def test_json_output_and_status(isolated_home):
    result = runner.invoke(app, ["prepare", "--sample", "--json"])
    payload = json.loads(result.stdout)
    assert payload["items"] == 1000 and payload["query_source"] == "listing"
    result = runner.invoke(app, ["status", "--json"])
    assert result.exit_code == 1  # not every artifact is ok yet
    status = json.loads(result.stdout)
    kinds = {row["kind"]: row["state"] for row in status["artifacts"]}
    assert kinds == {"data": "ok", "model": "missing", "onnx": "skipped", "index": "missing"}
    paths = runner.invoke(app, ["status", "--paths"]).stdout
    assert "workspaces" in paths


def test_home_flag_and_workspace_override_env(tmp_path):
    home = tmp_path / "elsewhere"
    result = runner.invoke(app, ["prepare", "--sample", "--home", str(home), "--workspace", "w2"])
    assert result.exit_code == 0
    assert (home / "workspaces" / "w2" / "data" / "CURRENT").is_file()


def test_version_and_help():
    assert runner.invoke(app, ["--version"]).stdout.startswith("densesearch ")
    assert "prepare" in runner.invoke(app, ["--help"]).stdout


@pytest.mark.parametrize("command", [[], ["query"], ["serve"], ["index"], ["finetune"]])
def test_help_shows_no_bool_type_noise(command):
    """Flags, --help included, show no `<bool>` in the type column; typed options still show theirs."""
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0 and "--help" in result.stdout
    assert "<bool>" not in result.stdout
    assert not command or "<int" in result.stdout or "<str>" in result.stdout
