"""`index --engine ray` in local mode (2 actors) against the local engine, on the real INT8 encoder.

In the slow tier (about 30 s of Ray start-up and actors): `.ci/run` installs the ray extra and runs it.
"""

import tempfile
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'densesearch[ray]')")

from densesearch.build.distributed import RayPlan, encode_with_ray  # noqa: E402
from densesearch.build.indexer import encode_to_memmap  # noqa: E402
from densesearch.core.artifacts import VECTORS_FILE, open_artifact  # noqa: E402
from densesearch.core.config import IndexConfig  # noqa: E402
from densesearch.data.readers import load_catalog, load_pairs  # noqa: E402
from densesearch.eval.evaluation import exact_topk  # noqa: E402
from densesearch.retrieval.encoders import choose_encoder  # noqa: E402


def test_ray_actors_encode_what_the_local_engine_encodes(built, tmp_path):
    ws = built["ws"]
    spec = choose_encoder(None, ws)
    encoder = spec.load(ws, 1)
    texts = load_catalog(ws).texts
    local = encode_to_memmap(encoder, texts, tmp_path / "local.npy", batch_size=64)
    out = np.zeros_like(np.asarray(local))
    directory = open_artifact(ws, spec.artifact).path
    # chunks of 40 rows: four tasks over two actors, each chunk batched as the local engine batches it
    chunk = 40
    expected = np.concatenate([encoder.encode(texts[s:s + chunk], batch_size=64) for s in range(0, len(texts), chunk)])
    scratch = set(Path(tempfile.gettempdir()).glob("densesearch-encoder-*"))
    report = encode_with_ray(spec, directory, texts, out, chunk=chunk, batch_size=64, plan=RayPlan(workers=2))
    assert set(Path(tempfile.gettempdir()).glob("densesearch-encoder-*")) == scratch  # actors leave no copies
    assert report["workers"] == 2 and not ray.is_initialized()  # 4 chunks, 2 actors; its local Ray is shut down
    assert np.abs(out - expected).max() < 1e-5  # same batch-mates, same vectors
    queries = encoder.encode([p.query for p in load_pairs(ws, "dev")], batch_size=64)
    ours, _ = exact_topk(queries, out, 10)
    same_batching, _ = exact_topk(queries, expected, 10)
    assert (ours == same_batching).all()
    # against 4,096-row chunks, the INT8 vectors move with their batch-mates (per-batch activation scales)
    theirs, _ = exact_topk(queries, np.asarray(local), 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ours, theirs, strict=True)])
    assert overlap >= 0.85


def test_index_with_the_ray_engine_publishes_the_same_index(built, tmp_path):
    import shutil

    from densesearch.build.indexer import run_index
    from densesearch.core.paths import Workspace

    shutil.copytree(built["ws"].home, tmp_path / "home")  # a copy: the session's workspace stays as built
    ws = Workspace(tmp_path / "home", built["ws"].name)
    before = np.array(open_artifact(ws, "index").load_npy(VECTORS_FILE))
    result = run_index(IndexConfig(engine="ray", ray_workers=2, reencode=True), ws)  # really encode, with Ray
    after = open_artifact(ws, "index").load_npy(VECTORS_FILE)
    assert result.manifest.settings["engine"] == "ray"
    assert np.abs(np.asarray(after) - before).max() < 1e-5  # one chunk at this size: identical batching
    assert result.mode.dev_ndcg == pytest.approx(built["index"].mode.dev_ndcg, abs=1e-6)
