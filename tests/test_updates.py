"""`index --upsert / --delete / --compact`: a catalog that changes, checked against a brute-force model of it."""

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from densesearch.bench.bench import live_exact_topk
from densesearch.build.indexer import run_index
from densesearch.build.updates import run_compact, run_delete, run_upsert
from densesearch.cli.app import run_cli
from densesearch.core.artifacts import open_artifact
from densesearch.core.config import IndexConfig, QueryConfig
from densesearch.core.errors import BadInput
from densesearch.core.paths import Workspace
from densesearch.core.status import workspace_status
from densesearch.retrieval.searcher import Searcher
from densesearch.retrieval.sparse import Bm25Index
from densesearch.serve.app import SearchService, create_app

QUERIES = ["comfy summer dress for beach", "black leather wallet", "waterproof hiking poncho"]
NEW_TITLES = ["Neon green waterproof hiking poncho", "Black leather bifold wallet for men",
              "Linen summer beach dress with pockets", "Wool winter beanie hat", "Canvas crossbody phone purse",
              "Silver hoop earrings for women"]


@pytest.fixture(scope="module")
def flat_home(built, tmp_path_factory):
    """The built workspace re-indexed with exact (flat) search, so every result has one right answer."""
    root = tmp_path_factory.mktemp("updates")
    ws = Workspace(root / "home", "flat")
    shutil.copytree(built["ws"].root, ws.root, ignore=shutil.ignore_patterns(".lock*"))
    run_index(IndexConfig(kind="flat"), ws)
    return ws


def fresh_copy(source: Workspace, root, name: str) -> Workspace:
    ws = Workspace(root, name)
    shutil.rmtree(ws.root, ignore_errors=True)
    shutil.copytree(source.root, ws.root, ignore=shutil.ignore_patterns(".lock*"))
    return ws


def amazon_row(item_id: str, title: str, price: float) -> dict:
    return {"parent_asin": item_id, "title": title, "store": "Testshop", "price": price, "average_rating": 4.2,
            "features": [f"{title}, made to last."]}


class CatalogModel:
    """What the index should hold: item id -> (text, price), from the published rows and the changes applied."""

    def __init__(self, searcher: Searcher) -> None:
        self.items = {row["item_id"]: (row["text"], row.get("price")) for row in searcher.items}

    def upsert(self, searcher_after: Searcher, ids: list[str]) -> None:
        for item_id in ids:
            row = searcher_after.items[searcher_after.row_of[item_id]]
            self.items[item_id] = (row["text"], row.get("price"))

    def delete(self, ids: list[str]) -> None:
        for item_id in ids:
            self.items.pop(item_id, None)


def check_against_model(searcher: Searcher, model: CatalogModel) -> None:
    """Every mode returns live items only; dense and BM25 return exactly what brute force over the model's
    catalog returns (exact inner product over its texts' vectors; BM25 built from its texts alone)."""
    assert set(searcher.row_of) == set(model.items)
    ids = sorted(model.items)
    vectors = searcher.encoder.encode([model.items[i][0] for i in ids], batch_size=16)
    stored = np.asarray(searcher.dense.vectors)[[searcher.row_of[i] for i in ids]]
    assert np.allclose(stored, vectors, atol=0.05)  # each live row holds its current text's vector
    fresh = Bm25Index.build([model.items[i][0] for i in ids], searcher.words.backend)
    for query in QUERIES:
        dense = searcher.ask(query, QueryConfig(k=10, mode="dense")).hits
        exact = np.sort(stored @ searcher.encoder.encode_queries([query])[0])[::-1][:10]
        assert [h.item_id in model.items for h in dense] == [True] * 10
        assert np.allclose([h.score for h in dense], exact, atol=1e-5)  # the exact top 10, whatever the ties
        bm25 = searcher.ask(query, QueryConfig(k=10, mode="bm25")).hits
        scores = dict(zip(ids, fresh.engine.get_scores(fresh.tokenizer(query)), strict=True))
        best = sorted((s for s in scores.values() if s > 0), reverse=True)[:10]
        assert np.allclose([h.score for h in bm25], best, rtol=1e-5)  # the statistics of the live catalog only
        assert all(np.isclose(scores[h.item_id], h.score, rtol=1e-5) for h in bm25)
        hybrid = searcher.ask(query, QueryConfig(k=10, mode="hybrid")).hits
        assert len(hybrid) == 10 and all(h.item_id in model.items for h in hybrid)


CHANGES = st.lists(st.one_of(
    st.tuples(st.just("upsert-new"), st.lists(st.integers(0, len(NEW_TITLES) - 1), min_size=1, max_size=3)),
    st.tuples(st.just("upsert-text"), st.lists(st.integers(0, 149), min_size=1, max_size=3)),
    st.tuples(st.just("upsert-price"), st.lists(st.integers(0, 149), min_size=1, max_size=3)),
    st.tuples(st.just("delete"), st.lists(st.integers(0, 149), min_size=1, max_size=8)),
    st.tuples(st.just("compact"), st.just([]))), min_size=2, max_size=4)


def test_random_upserts_deletes_and_compactions_match_a_brute_force_model(flat_home, tmp_path_factory):
    root, counter = tmp_path_factory.mktemp("model"), [0]

    @settings(max_examples=4, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(changes=CHANGES)
    def run(changes):
        counter[0] += 1
        ws = fresh_copy(flat_home, root / "home", f"run{counter[0]}")
        model = CatalogModel(Searcher(ws))
        for step, (action, picks) in enumerate(changes):
            apply(ws, model, action, picks, root / f"change-{counter[0]}-{step}")
            check_against_model(Searcher(ws), model)

    run()


def apply(ws: Workspace, model: CatalogModel, action: str, picks: list[int], path) -> None:
    live = sorted(model.items)
    if action == "compact":
        if len(Searcher(ws).items) > len(model.items):
            run_compact(IndexConfig(compact=True), ws)
            assert len(Searcher(ws).items) == len(model.items)
        return
    if action == "delete":
        ids = [live[p % len(live)] for p in picks]
        path.write_text("\n".join(ids) + "\n")
        run_delete(IndexConfig(delete_path=path), ws)
        model.delete(ids)
        return
    if action == "upsert-new":
        rows = [amazon_row(f"NEW{p}", NEW_TITLES[p], 10.0 + p) for p in picks]
    elif action == "upsert-text":
        rows = [amazon_row(live[p % len(live)], f"Changed item {p} {NEW_TITLES[p % len(NEW_TITLES)]}", 5.0 + p)
                for p in picks]
    else:  # the same text as indexed, in a BEIR line with new metadata: updated in place, nothing re-encoded
        rows = [same_text(Searcher(ws), live[p % len(live)], 1.0 + p) for p in picks]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = run_upsert(IndexConfig(upsert_path=path), ws)
    if action == "upsert-price":
        assert result.encoded == 0
    model.upsert(Searcher(ws), [row.get("parent_asin") or row["_id"] for row in rows])


def same_text(searcher: Searcher, item_id: str, price: float) -> dict:
    """A BEIR corpus line re-stating the item's indexed text, with a price in its metadata."""
    return {"_id": item_id, "title": "", "text": searcher.items[searcher.row_of[item_id]]["text"],
            "metadata": {"price": price}}


def test_upsert_replaces_changed_items_and_updates_attributes_in_place(flat_home, tmp_path):
    ws = fresh_copy(flat_home, tmp_path / "home", "attrs")
    before = Searcher(ws)
    first, second = before.items[0], before.items[1]
    upsert = tmp_path / "up.jsonl"
    upsert.write_text(json.dumps({**{k: v for k, v in first.items() if k != "text"}}) + "\n")
    with pytest.raises(BadInput, match="no items to upsert|missing parent_asin"):
        run_upsert(IndexConfig(upsert_path=upsert), ws)  # an items.jsonl row is not an input format
    upsert.write_text(json.dumps(amazon_row(second["item_id"], "Zorblax glow galoshes", 3.0)) + "\n")
    result = run_upsert(IndexConfig(upsert_path=upsert), ws)
    assert (result.encoded, result.deleted, result.live, result.dead) == (1, 1, 150, 1)
    after = Searcher(ws)
    hits = after.ask("zorblax galoshes", QueryConfig(k=1, mode="bm25")).hits
    assert hits[0].item_id == second["item_id"] and hits[0].price == 3.0
    assert [h.item_id for h in after.ask("galoshes", QueryConfig(k=5, mode="dense", where=("price = 3",))).hits] \
        == [second["item_id"]]
    summary = next(row for row in workspace_status(ws) if row["kind"] == "index")["summary"]
    assert "150 live items (1 deleted or replaced rows; compaction not due)" in summary


def test_deletes_leave_every_mode_and_a_compaction_falls_due(flat_home, tmp_path, capsys):
    ws = fresh_copy(flat_home, tmp_path / "home", "deletes")
    searcher = Searcher(ws)
    doomed = [row["item_id"] for row in searcher.items[:40]]
    ids = tmp_path / "ids.txt"
    ids.write_text("# withdrawn listings\n" + "\n".join(doomed) + "\n\nUNKNOWN-ID\n")
    home = ["--home", str(ws.home), "-w", ws.name]
    assert run_cli(["index", "--delete", str(ids), *home]) == 0
    assert "1 ids are not in the index: skipped" in capsys.readouterr().err
    after = Searcher(ws)
    for mode in ("dense", "bm25", "hybrid"):
        for query in QUERIES + [searcher.items[0]["title"]]:
            assert not {h.item_id for h in after.ask(query, QueryConfig(k=50, mode=mode)).hits} & set(doomed)
    assert after.size == 110 and doomed[0] not in after.row_of
    doomed_rows = set(range(40))  # bench's exact reference runs skip them too (their own vectors as queries)
    found, _ = live_exact_topk(after, np.asarray(after.dense.vectors[:40]), after.dense.vectors, 10)
    assert not set(found.ravel().tolist()) & doomed_rows
    summary = next(row for row in workspace_status(ws) if row["kind"] == "index")["summary"]
    assert "110 live items (40 deleted or replaced rows; compaction due" in summary
    assert run_cli(["index", "--delete", str(ids), *home]) == 0  # deleting again: idempotent, nothing published
    assert "40 items were already deleted" in capsys.readouterr().err
    assert open_artifact(ws, "index").fingerprint == after.artifact.fingerprint
    ids.write_text("NOT-AN-ITEM\n")
    assert run_cli(["index", "--delete", str(ids), *home]) == 1  # a file naming nothing the index held: refused
    assert "none of the 1 ids is an item of the index" in capsys.readouterr().err
    assert run_cli(["index", "--compact", *home]) == 0
    capsys.readouterr()
    compacted = Searcher(ws)
    assert len(compacted.items) == 110 and compacted.live is None
    assert run_cli(["index", "--compact", *home]) == 1
    assert "no deleted or replaced rows" in capsys.readouterr().err
    assert run_cli(["index", "--compact", "--delete", str(ids), *home]) == 1
    assert "are separate changes" in capsys.readouterr().err


def test_a_running_server_follows_deletes_and_upserts(flat_home, tmp_path):
    ws = fresh_copy(flat_home, tmp_path / "home", "served")
    client = TestClient(create_app(SearchService(ws, check_seconds=0)))
    victim = Searcher(ws).items[5]
    assert client.get(f"/items/{victim['item_id']}").status_code == 200
    ids = tmp_path / "ids.txt"
    ids.write_text(victim["item_id"] + "\n")
    run_delete(IndexConfig(delete_path=ids), ws)
    deadline = time.monotonic() + 30
    while client.get(f"/items/{victim['item_id']}").status_code != 404 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.get(f"/items/{victim['item_id']}").status_code == 404
    hits = client.get("/search", params={"q": victim["title"], "k": 50, "mode": "bm25"}).json()["hits"]
    assert victim["item_id"] not in {h["item_id"] for h in hits}
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps(amazon_row("BRANDNEW1", "Zorblax glow galoshes", 9.0)) + "\n")
    run_upsert(IndexConfig(upsert_path=new), ws)
    while client.get("/items/BRANDNEW1").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.get("/search", params={"q": "zorblax", "k": 1}).json()["hits"][0]["item_id"] == "BRANDNEW1"


@pytest.mark.slow
def test_kill_9_during_an_upsert_keeps_the_previous_version_and_loses_nothing(flat_home, tmp_path):
    ws = fresh_copy(flat_home, tmp_path / "home", "killed")
    served = open_artifact(ws, "index").fingerprint
    rows = [amazon_row(f"BULK{n}", f"{NEW_TITLES[n % 6]} number {n}", 10.0) for n in range(600)]
    upsert = tmp_path / "bulk.jsonl"
    upsert.write_text("".join(json.dumps(row) + "\n" for row in rows))
    command = [sys.executable, "-m", "densesearch", "index", "--upsert", str(upsert), "--home", str(ws.home),
               "-w", ws.name]
    for delay in (0.5, 1.5, 3.0):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        if process.returncode == 0:  # it finished first: nothing to check at this delay
            continue
        assert open_artifact(ws, "index").fingerprint == served  # the previous version, still served
        assert Searcher(ws).ask("hat", QueryConfig(k=3, mode="hybrid")).hits
        assert all(row["state"] in ("ok", "skipped") for row in workspace_status(ws))
    assert subprocess.run(command, capture_output=True).returncode == 0  # the lock of the killed run is free
    assert Searcher(ws).size == 750 and not [p for p in ws.artifact_home("index").iterdir() if ".tmp-" in p.name]
