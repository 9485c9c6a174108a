"""finetune options on the real MiniLM: --resume, cached MNRL (GradCache), BM25 hard negatives."""

import pytest
from conftest import PIPELINE_TRAIN, prepared_workspace

from densesearch.build.train import mine_bm25_negatives, run_finetune
from densesearch.core.manifest import read_manifest
from densesearch.core.paths import Workspace
from densesearch.data.readers import load_catalog, load_pairs
from densesearch.retrieval.encoders import load_torch_encoder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Workspace:
    return prepared_workspace(tmp_path_factory.mktemp("train-options"))


def test_resume_continues_from_the_last_checkpoint(prepared):
    from dataclasses import replace

    cfg = replace(PIPELINE_TRAIN, save_steps=1, batch_size=8)  # 48 pairs: about 5 steps, a checkpoint after each

    def stop_after_first_checkpoint(description, done, total, extra=""):
        if description == "fine-tuning" and done == 2:
            raise KeyboardInterrupt  # step 2 ends before its checkpoint is written: checkpoint-1 survives

    with pytest.raises(KeyboardInterrupt):
        run_finetune(cfg, prepared, stop_after_first_checkpoint)
    assert [p.name for p in prepared.checkpoints.glob("checkpoint-*")] == ["checkpoint-1"]
    assert not (prepared.artifact("model") / "manifest.json").exists()

    steps_seen = []
    result = run_finetune(replace(cfg, resume=True), prepared,
                          lambda d, done, total, extra="": steps_seen.append(done) if d == "fine-tuning" else None)
    assert steps_seen[0] == 2 and result.steps >= 3  # continued, not restarted
    assert read_manifest(prepared.artifact("model"), "model").settings["resume"] is True
    assert not prepared.checkpoints.exists()


def test_resume_without_a_checkpoint_says_so(prepared):
    from dataclasses import replace

    result = run_finetune(replace(PIPELINE_TRAIN, resume=True, samples=16), prepared)
    assert any("no checkpoint" in note for note in result.notes)


def test_bm25_hard_negatives_exclude_the_positive_and_its_variants(prepared):
    catalog = load_catalog(prepared)
    pairs = load_pairs(prepared, "train")
    negatives = mine_bm25_negatives(pairs, catalog, seed=0)
    group_of = dict(zip(catalog.ids, catalog.groups, strict=True))
    assert len(negatives) == len(pairs)
    assert all(group_of[neg] != pair.group_id for neg, pair in zip(negatives, pairs, strict=True))


def test_cached_mnrl_with_hard_negatives_trains_a_loadable_model(prepared):
    from dataclasses import replace

    cfg = replace(PIPELINE_TRAIN, samples=32, loss="cached-mnrl", mini_batch_size=4, hard_negatives="bm25")
    result = run_finetune(cfg, prepared)
    manifest = read_manifest(prepared.artifact("model"), "model")
    assert manifest.settings["loss"] == "cached-mnrl" and manifest.settings["hard_negatives"] == "bm25"
    assert result.steps >= 1 and set(result.dev_finetuned) == {"recall@1", "recall@10", "mrr@10", "ndcg@10"}
    vectors = load_torch_encoder(str(prepared.artifact("model")), manifest.fingerprint).encode(["linen shirt"])
    assert vectors.shape == (1, 384)
