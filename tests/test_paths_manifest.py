import json
import os

import pytest

from densesearch.core.artifacts import artifact_health, open_artifact
from densesearch.core.errors import ArtifactCorrupt, ArtifactMismatch, ArtifactStale, BadInput, MissingArtifact
from densesearch.core.manifest import SCHEMA_VERSION, Manifest, read_manifest, write_manifest
from densesearch.core.paths import (
    HOME_ENV,
    POINTER,
    Workspace,
    WorkspaceBusy,
    atomic_dir,
    clean_artifact_home,
    new_run_id,
    publish,
    resolve_home,
)


def test_home_precedence_flag_then_env_then_platformdirs(tmp_path):
    flag, env = tmp_path / "flag", tmp_path / "env"
    assert resolve_home(flag, {HOME_ENV: str(env)}) == flag.resolve()
    assert resolve_home(None, {HOME_ENV: str(env)}) == env.resolve()
    default = resolve_home(None, {})
    assert default.name == "densesearch" and default != env.resolve()
    assert resolve_home(None, {HOME_ENV: ""}) == default  # an empty variable counts as unset
    with pytest.raises(BadInput, match="--home is empty"):
        resolve_home("", {})


@pytest.mark.parametrize("name", ["../escape", "evil\n", "a/b", ".", "..", "", "-x", "x" * 65, "tab\tname"])
def test_unsafe_workspace_names_are_refused(tmp_path, name):
    with pytest.raises(BadInput, match="invalid workspace name"):
        Workspace(tmp_path, name)


def test_workspaces_are_separate(tmp_path):
    a, b = Workspace(tmp_path, "a"), Workspace(tmp_path, "b")
    assert a.artifact("index") != b.artifact("index")
    assert a.artifact_home("data").parent == a.root


def _publish(ws: Workspace, kind: str, text: str, upstream: dict | None = None) -> Manifest:
    with publish(ws, kind) as tmp:
        (tmp / "f.txt").write_text(text)
        return write_manifest(tmp, Manifest(kind=kind, settings={}, upstream=upstream or {}))


def test_publish_replaces_the_served_version_and_keeps_one_previous(tmp_path):
    ws = Workspace(tmp_path)
    first = _publish(ws, "data", "v1")
    assert open_artifact(ws, "data").fingerprint == first.fingerprint
    old_path = ws.artifact("data")
    second = _publish(ws, "data", "v2")
    assert (ws.artifact("data") / "f.txt").read_text() == "v2" and second.fingerprint != first.fingerprint
    assert old_path.is_dir()  # a reader that opened v1 a moment ago still finds its files
    _publish(ws, "data", "v3")
    assert not old_path.exists()  # two publishes later it is gone
    versions = [p for p in ws.artifact_home("data").iterdir() if p.is_dir()]
    assert len(versions) == 2


def test_failed_publish_keeps_the_old_version_and_leaves_no_temporary(tmp_path):
    ws = Workspace(tmp_path)
    _publish(ws, "data", "v1")
    with pytest.raises(KeyboardInterrupt):
        with publish(ws, "data") as tmp:
            (tmp / "f.txt").write_text("half")
            raise KeyboardInterrupt
    assert (ws.artifact("data") / "f.txt").read_text() == "v1"
    assert not [p for p in ws.artifact_home("data").iterdir() if ".tmp-" in p.name]


def test_leftovers_of_a_killed_write_are_cleaned_by_the_next_write(tmp_path):
    ws = Workspace(tmp_path)
    _publish(ws, "data", "v1")
    home = ws.artifact_home("data")
    (home / ".v0000000000000000001-deadbeef.tmp-1234abcd").mkdir()  # killed while writing
    (home / "v9999999999999999999-deadbeef").mkdir()  # killed between its rename and the pointer swap
    (home / f".{POINTER}.tmp-00000000").write_text("x")
    removed = clean_artifact_home(home)
    assert len(removed) == 3 and (ws.artifact("data") / "f.txt").read_text() == "v1"


def test_second_writer_is_refused_with_the_holders_pid(tmp_path):
    ws = Workspace(tmp_path)
    with ws.writing():
        with pytest.raises(WorkspaceBusy, match=f"pid {os.getpid()}"):
            with ws.writing():
                pass
    with ws.writing():  # released
        pass


def test_atomic_dir_publishes_only_on_success(tmp_path):
    final = tmp_path / "report"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "f.txt").write_text("half")
            raise RuntimeError("interrupted mid-way")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(final) as tmp:
        (tmp / "f.txt").write_text("v1")
    assert (final / "f.txt").read_text() == "v1"


def test_run_ids_are_unique_within_one_second():
    ids = [new_run_id() for _ in range(200)]
    assert len(set(ids)) == 200 and ids == sorted(ids)


def test_manifest_round_trip_sizes_and_content_fingerprint(tmp_path):
    d = tmp_path / "a"
    d.mkdir()
    (d / "x.txt").write_text("hello")
    m = write_manifest(d, Manifest(kind="data", settings={"seed": 1}))
    back = read_manifest(d, "data")
    assert back.fingerprint == m.fingerprint and back.settings == {"seed": 1} and back.files == {"x.txt": 5}
    assert "densesearch" in back.versions and "numpy" in back.versions and back.schema == SCHEMA_VERSION
    (d / "x.txt").write_text("changed")
    assert write_manifest(d, Manifest(kind="data", settings={})).fingerprint != m.fingerprint


def _edit_manifest(directory, **changes):
    path = directory / "manifest.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def test_manifest_versions_and_unknown_keys(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    write_manifest(d, Manifest(kind="data", settings={}))
    _edit_manifest(d, added_by_a_newer_version={"x": 1})
    assert read_manifest(d, "data").kind == "data"  # unknown keys are ignored
    _edit_manifest(d, schema=SCHEMA_VERSION + 1)
    with pytest.raises(ArtifactMismatch, match="newer densesearch"):
        read_manifest(d, "data")
    _edit_manifest(d, schema=1)
    with pytest.raises(ArtifactMismatch, match="older densesearch"):
        read_manifest(d, "data")
    _edit_manifest(d, schema="two")
    with pytest.raises(ArtifactCorrupt, match="schema"):
        read_manifest(d, "data")
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactCorrupt, match="manifest.json is not valid JSON"):
        read_manifest(d, "data")


def test_missing_and_wrong_kind_manifests(tmp_path):
    with pytest.raises(MissingArtifact, match="densesearch index"):
        read_manifest(tmp_path / "nothing", "index")
    d = tmp_path / "d"
    d.mkdir()
    write_manifest(d, Manifest(kind="data", settings={}))
    with pytest.raises(ArtifactMismatch):
        read_manifest(d, "index")


def test_truncated_file_and_stale_upstream_are_detected(tmp_path):
    ws = Workspace(tmp_path)
    data = _publish(ws, "data", "v1")
    _publish(ws, "model", "weights", upstream={"data": data.fingerprint})
    assert artifact_health(ws, "model")["state"] == "ok"
    (ws.artifact("model") / "f.txt").write_text("w")
    with pytest.raises(ArtifactCorrupt, match="f.txt has 1 bytes"):
        open_artifact(ws, "model")
    assert artifact_health(ws, "model")["state"] == "corrupt"
    (ws.artifact("model") / "f.txt").write_text("WEIGHTS")  # same size, other bytes: only the deep check sees it
    assert artifact_health(ws, "model")["state"] == "corrupt"
    assert artifact_health(ws, "model", deep=False)["state"] == "ok"
    (ws.artifact("model") / "f.txt").write_text("weights")
    _publish(ws, "data", "v2")
    with pytest.raises(ArtifactStale, match="densesearch finetune"):
        open_artifact(ws, "model")
    assert artifact_health(ws, "model")["state"] == "stale"


def test_legacy_unversioned_artifact_names_the_command(tmp_path):
    ws = Workspace(tmp_path)
    legacy = ws.artifact_home("index")
    legacy.mkdir(parents=True)
    (legacy / "manifest.json").write_text(json.dumps({"kind": "index", "schema": 1}))
    with pytest.raises(ArtifactMismatch, match="older densesearch.*densesearch index"):
        open_artifact(ws, "index")


def test_each_artifact_kind_is_read_into_its_typed_record_and_a_wrong_field_is_one_corrupt_line():
    from densesearch.core.config import IndexKind
    from densesearch.core.errors import ArtifactCorrupt
    from densesearch.core.manifest import EncoderRecord, IndexInfo, Manifest, RerankerInfo, parse_info

    encoder = {"backend": "onnx-int8", "artifact": "onnx", "path": "", "fingerprint": "ab", "dim": 384, "label": "x"}
    index = parse_info(Manifest(kind="index", settings={}, extra={
        "kind": "hnsw-sq8", "encoder": encoder, "search_param": {"efSearch": 96},
        "ranker": {"kept": True}, "unknown": 1}))
    assert isinstance(index, IndexInfo) and index.kind is IndexKind.HNSW_SQ8 and index.param == 96
    assert isinstance(index.encoder, EncoderRecord) and index.encoder.dim == 384
    assert index.has_ranker and index.recommended_mode == "dense"  # absent fields take their defaults
    reranker = parse_info(Manifest(kind="reranker", settings={}, extra={"depth": 30, "weight": 1}))
    assert reranker == RerankerInfo(depth=30, weight=1)  # an int is a fine float
    bad = [("index", {"kind": "hnsw", "encoder": "x"}, "'encoder'"),
           ("index", {"kind": "annoy", "encoder": encoder}, "'kind'"),
           ("index", {"encoder": encoder}, "lacks its 'kind'"),
           ("index", {"kind": "hnsw", "encoder": {**encoder, "dim": "384"}}, "'encoder.dim'"),
           ("index", {"kind": "hnsw", "encoder": {**encoder, "fingerprint": None}}, "'encoder.fingerprint'"),
           ("index", {"kind": "hnsw", "encoder": {"backend": "onnx-int8"}}, "lacks its 'encoder.artifact'"),
           ("reranker", {"depth": "30", "weight": 1.0}, "'depth'"),
           ("reranker", {"depth": True, "weight": 1.0}, "'depth'"),
           ("onnx", {"int8_file": 3}, "'int8_file'"),
           ("data", {"min_relevance": 1.5}, "'min_relevance'")]
    for kind, extra, field in bad:
        with pytest.raises(ArtifactCorrupt, match=field) as caught:
            parse_info(Manifest(kind=kind, settings={}, extra=extra))
        assert "densesearch" in str(caught.value) and "\n" not in str(caught.value)
