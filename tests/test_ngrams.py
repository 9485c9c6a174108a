"""BM25 over character 3-grams: what shoppers misspell, and how hybrid search fuses it in."""

import json
import shutil

from densesearch.core.artifacts import NGRAM_DIR, open_artifact
from densesearch.core.config import QueryConfig
from densesearch.core.paths import Workspace
from densesearch.retrieval.searcher import Searcher
from densesearch.retrieval.sparse import NGRAM_B, NGRAM_K1, Bm25Index, NgramTokenizer

TITLES = ["cordless drill 18v with battery", "corded hammer drill", "cordless screwdriver set", "garden hose 50 ft"]


def test_ngrams_mark_word_ends():
    assert NgramTokenizer()("Saw 2x4") == ["#sa", "saw", "aw#", "#2x", "2x4", "x4#"]
    assert NgramTokenizer()("a") == ["#a#"]


def test_a_misspelt_query_finds_by_ngrams_what_word_bm25_cannot():
    words, grams = Bm25Index.build(TITLES), Bm25Index.build_ngrams(TITLES)
    assert words.search(["cordles dril"], 3)[0][0].tolist() == []  # neither stem is in the catalog
    assert grams.search(["cordles dril"], 3)[0][0].tolist()[0] == 0
    assert grams.search(["gardn hoze"], 1)[0][0].tolist() == [3]
    assert (grams.k1, grams.b) == (NGRAM_K1, NGRAM_B)


def test_index_publishes_the_ngram_index_and_hybrid_uses_it_when_its_fusion_says(built, tmp_path):
    shutil.copytree(built["ws"].home, tmp_path / "home")  # a copy: the manifest is edited below
    ws = Workspace(tmp_path / "home", built["ws"].name)
    artifact = open_artifact(ws, "index")
    meta = json.loads((artifact.path / NGRAM_DIR / "bm25.json").read_text())
    assert meta["tokenizer"] == "char-ngrams" and meta["n"] == 3 and meta["k1"] == NGRAM_K1
    searcher = Searcher(ws)
    items = [row["text"] for row in searcher.items]
    # loaded as saved: a title finds itself
    assert searcher.first_stage.grams.search(items[:1], 1)[0][0].tolist() == [0]
    path = artifact.path / "manifest.json"
    raw = json.loads(path.read_text())
    raw["extra"]["fusion"] = {"method": "wsum", "rrf_k": 60, "w_bm25": 0.3, "w_ngram": 0.4}
    path.write_text(json.dumps(raw))  # manifest.json is outside the fingerprint: same files, new fusion
    target = next(n for n, row in enumerate(searcher.items) if max(map(len, row["title"].split()), default=0) >= 9)
    word = max(searcher.items[target]["title"].split(), key=len)
    typo = word[:3] + word[4:]  # one letter dropped, as shoppers type
    fresh = Searcher(ws)
    answer = fresh.ask(typo, QueryConfig(k=10, mode="hybrid", collapse_variants=False))
    assert "3-gram weight 0.4" in answer.answered_by
    found = [hit.item_id for hit in answer.hits]
    assert searcher.items[target]["item_id"] in found
