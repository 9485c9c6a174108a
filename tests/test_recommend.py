"""`similar` and `recommend`: item-to-item and shopper-history retrieval over the served dense index."""

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from densesearch.cli.app import run_cli
from densesearch.core.errors import BadInput
from densesearch.retrieval.recommend import History, recommend, similar_items
from densesearch.retrieval.searcher import Searcher
from densesearch.serve.app import SearchService, create_app


@pytest.fixture(scope="module")
def searcher(built):
    return Searcher(built["ws"])


def brute_force(searcher: Searcher, vector: np.ndarray, k: int, seen: set[int]) -> list[str]:
    """The exact top k by inner product over every stored vector, outside the seen items' variant groups."""
    items = searcher.items
    groups = {items[row]["group_id"] for row in seen}
    scores = np.asarray(searcher.dense.vectors) @ vector
    order = [int(i) for i in np.argsort(-scores, kind="stable") if items[i]["group_id"] not in groups]
    return [items[i]["item_id"] for i in order[:k]]


def test_similar_items_are_the_nearest_stored_vectors_outside_the_items_group(searcher):
    grouped = searcher.items[11]
    row = searcher.row_of[grouped["item_id"]]
    answer = similar_items(searcher, grouped["item_id"], k=10)
    found = [hit.item_id for hit in answer.hits]
    assert len(found) == 10 and answer.mode == "similar"
    assert all(hit.group_id != grouped["group_id"] for hit in answer.hits)  # neither the item nor its variants
    expected = brute_force(searcher, np.asarray(searcher.dense.vectors[row]), 10, {row})
    assert len(set(found) & set(expected)) >= 9  # HNSW at its tuned efSearch against exact search
    assert [hit.score for hit in answer.hits] == sorted((hit.score for hit in answer.hits), reverse=True)


def test_a_history_of_one_item_recommends_what_is_similar_to_it(searcher):
    item_id = searcher.items[7]["item_id"]
    alike = [hit.item_id for hit in similar_items(searcher, item_id, k=5).hits]
    assert [hit.item_id for hit in recommend(searcher, History(item_ids=[item_id]), k=5).hits] == alike


def test_recommendations_leave_out_what_the_shopper_has_seen_and_skip_negative_texts(searcher, tmp_path):
    seen = [row["item_id"] for row in searcher.items[:3]]
    history = tmp_path / "history.jsonl"
    history.write_text("\n".join(json.dumps(line) for line in [
        {"text": "this hat was awful and cheap", "rating": 1}, *({"item_id": i} for i in seen),
        {"item_id": "WITHDRAWN1"}, *({"text": f"love my summer straw hat {n}", "rating": 5} for n in range(7))]))
    parsed = History.from_jsonl(history)
    assert len(parsed.texts) == 7 and "awful" not in " ".join(parsed.texts)
    answer = recommend(searcher, parsed, k=20)
    groups = {searcher.items[searcher.row_of[i]]["group_id"] for i in seen}
    assert len(answer.hits) == 20 and not {hit.group_id for hit in answer.hits} & groups
    assert any("WITHDRAWN1" in note for note in answer.notes)
    with pytest.raises(BadInput, match="no positive text"):
        recommend(searcher, History(texts=[]), k=5)


def test_bad_ids_and_empty_histories_are_one_line_on_the_command_line(built, tmp_path, capsys):
    home = str(built["ws"].home)
    assert run_cli(["similar", "NOPE", "--home", home]) == 1
    err = capsys.readouterr().err
    assert "no item 'NOPE'" in err and len(err.strip().splitlines()) == 1
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": "meh", "rating": 2}\n')
    assert run_cli(["recommend", "--history", str(empty), "--home", home]) == 1
    assert "no positive text" in capsys.readouterr().err
    broken = tmp_path / "broken.jsonl"
    broken.write_text("not json\n")
    assert run_cli(["recommend", "--history", str(broken), "--home", home]) == 1
    assert "broken.jsonl:1" in capsys.readouterr().err
    item_id = Searcher(built["ws"]).items[0]["item_id"]
    assert run_cli(["similar", item_id, "-k", "3", "--json", "--home", home]) == 0
    assert len(json.loads(capsys.readouterr().out)["hits"]) == 3


def test_similar_and_recommend_over_http(built, searcher):
    client = TestClient(create_app(SearchService(built["ws"])))
    item_id = searcher.items[7]["item_id"]
    similar = client.get(f"/items/{item_id}/similar", params={"k": 4})
    assert similar.status_code == 200
    assert [h["item_id"] for h in similar.json()["hits"]] == [
        h.item_id for h in similar_items(searcher, item_id, k=4).hits]
    assert client.get("/items/NOPE/similar").status_code == 404
    answer = client.post("/recommend", json={"texts": ["straw beach hat"], "item_ids": [item_id], "k": 5})
    assert answer.status_code == 200 and len(answer.json()["hits"]) == 5
    assert item_id not in [h["item_id"] for h in answer.json()["hits"]]
    empty = client.post("/recommend", json={"texts": [], "item_ids": []})
    assert empty.status_code == 400 and "no positive text" in empty.json()["error"]
    assert client.post("/recommend", json={"k": 0}).status_code == 422


def test_variants_of_the_item_are_left_out(searcher, monkeypatch):
    """The nearest item, made a variant of the item: it is no longer shown as similar."""
    first = searcher.items[3]
    nearest = similar_items(searcher, first["item_id"], k=1).hits[0].item_id
    second = searcher.items[searcher.row_of[nearest]]
    monkeypatch.setitem(second, "group_id", first["group_id"])  # the catalog's variant link, made here
    found = {hit.item_id for hit in similar_items(searcher, first["item_id"], k=20).hits}
    assert second["item_id"] not in found and first["item_id"] not in found
