import pytest

from densesearch.errors import ArtifactMismatch, BadInput, MissingArtifact
from densesearch.manifest import Manifest, read_manifest, require_upstream, write_manifest
from densesearch.paths import HOME_ENV, Workspace, atomic_dir, resolve_home


def test_home_precedence_flag_then_env_then_platformdirs(tmp_path):
    flag, env = tmp_path / "flag", tmp_path / "env"
    assert resolve_home(flag, {HOME_ENV: str(env)}) == flag.resolve()
    assert resolve_home(None, {HOME_ENV: str(env)}) == env.resolve()
    default = resolve_home(None, {})
    assert default.name == "densesearch" and default != env.resolve()


def test_workspaces_are_separate_and_names_checked(tmp_path):
    a, b = Workspace(tmp_path, "a"), Workspace(tmp_path, "b")
    assert a.artifact("index") != b.artifact("index")
    assert a.artifact("data").parent == a.root
    with pytest.raises(BadInput):
        Workspace(tmp_path, "../escape")


def test_atomic_dir_publishes_only_on_success(tmp_path):
    final = tmp_path / "artifact"
    with atomic_dir(final) as tmp:
        (tmp / "f.txt").write_text("v1")
    assert (final / "f.txt").read_text() == "v1"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "f.txt").write_text("half")
            raise RuntimeError("interrupted mid-way")
    assert (final / "f.txt").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]


def test_interrupted_first_write_leaves_nothing(tmp_path):
    final = tmp_path / "artifact"
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(final) as tmp:
            (tmp / "x").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_manifest_round_trip_and_content_fingerprint(tmp_path):
    d = tmp_path / "a"
    d.mkdir()
    (d / "x.txt").write_text("hello")
    m = write_manifest(d, Manifest(kind="data", settings={"seed": 1}))
    back = read_manifest(d, "data")
    assert back.fingerprint == m.fingerprint and back.settings == {"seed": 1}
    assert "densesearch" in back.versions and "numpy" in back.versions
    (d / "x.txt").write_text("changed")
    assert write_manifest(d, Manifest(kind="data", settings={})).fingerprint != m.fingerprint


def test_missing_and_wrong_kind_manifests(tmp_path):
    with pytest.raises(MissingArtifact, match="densesearch index"):
        read_manifest(tmp_path / "nothing", "index")
    d = tmp_path / "d"
    d.mkdir()
    write_manifest(d, Manifest(kind="data", settings={}))
    with pytest.raises(ArtifactMismatch):
        read_manifest(d, "index")


def test_upstream_mismatch_is_detected(tmp_path):
    data = Manifest(kind="data", settings={}, fingerprint="a" * 64)
    index = Manifest(kind="index", settings={}, upstream={"data": "b" * 64})
    with pytest.raises(ArtifactMismatch, match="densesearch index"):
        require_upstream(index, "data", data)
    require_upstream(Manifest(kind="index", settings={}, upstream={"data": "a" * 64}), "data", data)
