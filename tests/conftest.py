"""Shared fixtures: every test gets its own artifact root and no network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from densesearch.core.config import IndexConfig, PrepareConfig, QuantizeConfig, TrainConfig
from densesearch.core.paths import Workspace
from densesearch.data.sources import sample_meta_path

DATA = Path(__file__).parent / "data"
TEST_REVIEWS = DATA / "reviews_Amazon_Fashion.test.jsonl"
PIPELINE_TRAIN = TrainConfig(samples=48, batch_size=16, max_seq_length=64, save_steps=2, eval_queries=20)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch) -> Path:
    """Point DENSESEARCH_HOME at a temporary directory and keep the Hub offline."""
    home = tmp_path / "home"
    monkeypatch.setenv("DENSESEARCH_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv("DENSESEARCH_DEBUG", raising=False)
    return home


@pytest.fixture
def workspace(isolated_home) -> Workspace:
    return Workspace(isolated_home, "default")


@pytest.fixture
def sample_meta() -> Path:
    return sample_meta_path()


def write_first_rows(path: Path, rows: int = 150) -> Path:
    """The first ``rows`` real sample rows as a plain .jsonl file."""
    import gzip

    with gzip.open(sample_meta_path(), "rt", encoding="utf-8") as src:
        path.write_text("".join(line for _, line in zip(range(rows), src, strict=False)), encoding="utf-8")
    return path


def prepared_workspace(root: Path) -> Workspace:
    """A workspace under ``root`` prepared from the first 150 real sample rows."""
    from densesearch.data.prepare import run_prepare

    ws = Workspace(root / "home")
    run_prepare(PrepareConfig(meta_path=write_first_rows(root / "meta.jsonl")), ws)
    return ws


@pytest.fixture
def small_meta(tmp_path) -> Path:
    """The first 150 real sample rows as a plain .jsonl file."""
    return write_first_rows(tmp_path / "meta150.jsonl")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """One workspace built once per test session: 150 real items, the real MiniLM (about a minute)."""
    from densesearch.build.export import run_quantize
    from densesearch.build.indexer import run_index
    from densesearch.build.train import run_finetune

    root = tmp_path_factory.mktemp("pipeline")
    ws = prepared_workspace(root)
    train = run_finetune(PIPELINE_TRAIN, ws)
    quant = run_quantize(QuantizeConfig(parity_queries=64, calibration_texts=100), ws)  # the real gate and race
    index = run_index(IndexConfig(), ws)
    return {"ws": ws, "train": train, "quant": quant, "index": index, "root": root}
