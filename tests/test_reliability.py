"""Issue 31's hostile and clumsy cases, one test per cause: each fails on the code before its fix.

Every expected failure is one line on stderr and a non-zero exit, never a traceback; nothing is lost.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from densesearch.cli.app import run_cli
from densesearch.core.artifacts import open_artifact
from densesearch.core.config import IndexConfig, QueryConfig
from densesearch.core.errors import BadInput, DensesearchError
from densesearch.core.manifest import MANIFEST_NAME
from densesearch.core.paths import Workspace
from densesearch.core.status import workspace_status
from densesearch.data.beir import read_beir, stable_fraction
from densesearch.retrieval.searcher import Searcher
from tests.test_beir import JUDGED, make_beir


def cli(*argv, preexec=None, stdout=subprocess.PIPE, env=None) -> subprocess.CompletedProcess:
    """densesearch in its own process, as a user runs it (standard streams included)."""
    return subprocess.run([sys.executable, "-m", "densesearch", *map(str, argv)], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, preexec_fn=preexec, env=env or os.environ.copy(),
                          timeout=120)


def assert_one_line(done: subprocess.CompletedProcess, code: int = 1) -> str:
    err = done.stderr.strip()
    assert done.returncode == code, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def copied(built, tmp_path: Path, name: str = "copy") -> Workspace:
    ws = Workspace(tmp_path / "home", name)
    shutil.copytree(built["ws"].root, ws.root, ignore=shutil.ignore_patterns(".lock*"))
    return ws


def edit_manifest(ws: Workspace, kind: str, change) -> None:
    path = ws.artifact(kind) / MANIFEST_NAME
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


# ---- cause 6: fields inside a manifest are validated at the artifact door ---------------------------------


def _first_key(mapping: dict) -> str:
    return sorted(mapping)[0]


MANIFEST_DAMAGE = {
    "a file size as text": lambda m: m["files"].__setitem__(_first_key(m["files"]), ""),
    "a count that is null": lambda m: m["counts"].__setitem__("vectors", None),
    "an upstream fingerprint as a number": lambda m: m["upstream"].__setitem__("onnx", 10 ** 30),
    "an encoder fingerprint as a number": lambda m: m["extra"]["encoder"].__setitem__("fingerprint", 0),
    "an encoder without its dimension": lambda m: m["extra"]["encoder"].pop("dim"),
    "an encoder in no artifact kind": lambda m: m["extra"]["encoder"].__setitem__("artifact", "0"),
}


@pytest.mark.parametrize("damage", sorted(MANIFEST_DAMAGE))
def test_a_wrong_field_inside_a_manifest_is_corrupt_in_status_and_one_line_in_query(built, tmp_path, capsys,
                                                                                     damage):
    ws = copied(built, tmp_path)
    edit_manifest(ws, "index", MANIFEST_DAMAGE[damage])
    index = next(row for row in workspace_status(ws, deep=False) if row["kind"] == "index")
    assert index["state"] == "corrupt" and "manifest.json" in index["problem"]
    code = run_cli(["query", "hat", "--home", str(ws.home), "-w", ws.name])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "densesearch index" in err


def _leaves(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, key)
            yield from _leaves(value, (*path, key))
    elif isinstance(node, list):
        for at, value in enumerate(node):
            yield (*path, at)
            yield from _leaves(value, (*path, at))


JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2, 10 ** 20), st.floats(allow_nan=True),
                        st.text(max_size=5), st.lists(st.integers(), max_size=2),
                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@pytest.fixture(scope="module")
def fuzzed_copy(built, tmp_path_factory):
    ws = copied(built, tmp_path_factory.mktemp("fuzz"))
    path = ws.artifact("index") / MANIFEST_NAME
    return ws, path, path.read_text()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), drop=st.booleans())
def test_any_damaged_index_manifest_field_is_a_one_line_error_or_still_serves(fuzzed_copy, data, drop):
    """The manifest reader and the query path, property-tested: whatever one field of the index manifest holds,
    status and every mode either work or fail with a domain error (one line), never another exception."""
    ws, path, original = fuzzed_copy
    raw = json.loads(original)
    leaf = data.draw(st.sampled_from([p for p in _leaves(raw) if p[0] not in ("versions", "created")]))
    parent = raw
    for key in leaf[:-1]:
        parent = parent[key]
    if drop and isinstance(parent, dict):
        del parent[leaf[-1]]
    else:
        parent[leaf[-1]] = data.draw(JSON_VALUES)
    path.write_text(json.dumps(raw))
    try:
        workspace_status(ws, deep=False)
        searcher = Searcher(ws)
        for mode in ("dense", "bm25", "hybrid"):
            searcher.ask("summer hat", QueryConfig(k=3, mode=mode))
    except DensesearchError as exc:
        assert "\n" not in str(exc)
    finally:
        path.write_text(original)


# ---- causes 7 and 16: an unusable home, closed or failing standard streams ---------------------------------


def test_a_home_that_is_a_file_or_a_link_loop_is_one_line_naming_the_fix(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    for command in ("status", "prepare"):
        err = assert_one_line(cli(command, "--home", afile))
        assert "is a file, not a directory" in err and "run `densesearch prepare`" not in err
    (tmp_path / "loop-a").symlink_to(tmp_path / "loop-b")
    (tmp_path / "loop-b").symlink_to(tmp_path / "loop-a")
    assert "symbolic-link loop" in assert_one_line(cli("status", "--home", tmp_path / "loop-a"))
    err = assert_one_line(cli("prepare", "--sample", "--home", afile / "below"))
    assert "not a directory" in err and str(afile) in err


def test_a_read_only_home_is_one_line(tmp_path):
    if os.access("/sys", os.W_OK) and os.geteuid() != 0:
        pytest.skip("no read-only file system to write to")
    err = assert_one_line(cli("prepare", "--sample", "--home", "/sys/densesearch-home"))
    assert "/sys/densesearch-home" in err and ("permission" in err or "read-only" in err or "not permitted" in err)


def test_a_closed_stdout_is_refused_before_any_work(built):
    done = cli("query", "hat", "--json", "--home", built["ws"].home, preexec=lambda: os.close(1), stdout=None)
    assert "standard output is closed" in assert_one_line(done)


def test_a_full_stdout_is_one_line_and_a_reader_that_goes_away_is_quiet(built):
    with open("/dev/full", "w") as full:
        for extra in ([], ["--json"]):
            done = cli("query", "hat", *extra, "--home", built["ws"].home, stdout=full)
            assert "writing the output failed: no space left on device" in assert_one_line(done)
    reader = subprocess.Popen([sys.executable, "-m", "densesearch", "query", "hat", "-k", "100", "--json",
                               "--home", str(built["ws"].home)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.read(5)
    reader.stdout.close()  # the reader goes away after five bytes, like `| head -c 5`
    err = reader.stderr.read().decode()
    assert reader.wait(60) in (0, 1) and "Traceback" not in err and "Exception ignored" not in err, err


# ---- cause 8: input readers name every unreadable file in one line ----------------------------------------


def test_a_corrupt_gzip_and_an_unopenable_file_are_one_line(tmp_path):
    folder = make_beir(tmp_path / "b", gz=True)
    blob = (folder / "corpus.jsonl.gz").read_bytes()
    (folder / "corpus.jsonl.gz").write_bytes(blob[:20] + bytes(b ^ 0x5A for b in blob[20:60]) + blob[60:])
    with pytest.raises(BadInput, match="corpus.jsonl.gz") as caught:
        read_beir(folder)
    assert "\n" not in str(caught.value)
    from densesearch.data.sources import open_input

    with pytest.raises(BadInput, match="cannot open") as caught:
        open_input(tmp_path)  # a directory where a file belongs: IsADirectoryError, as PermissionError would be
    assert str(tmp_path) in str(caught.value)


# ---- causes 11 and 15: BEIR splits and grades -------------------------------------------------------------


def _qrels(folder: Path, split: str, lines: list[str]) -> None:
    (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")


def test_a_test_only_folder_carves_dev_from_test_without_sharing_queries(tmp_path):
    folder = make_beir(tmp_path / "b", splits=())
    _qrels(folder, "test", [f"{q}\t{d}\t{g}" for q, judged in JUDGED.items() for d, g in judged.items()])
    data = read_beir(folder, dev_fraction=0.5, test_fraction=0.2)
    expected_dev = {q for q in JUDGED if 0.2 <= stable_fraction(q) < 0.7}
    assert expected_dev and set(data.qrels["dev"]) == expected_dev
    assert set(data.qrels["test"]) == set(JUDGED) - expected_dev and not data.qrels["train"]
    assert "carved from test" in data.stats.carved["dev"] and "test keeps" in data.stats.carved["dev"]
    assert "empty" in data.stats.carved["train"]


def test_grades_that_are_not_whole_numbers_are_counted_not_floored(tmp_path):
    folder = make_beir(tmp_path / "b", splits=())
    _qrels(folder, "train", ["q1\td0\t2.7", "q1\td1\tinf", "q1\td2\tnan", "q2\td3\t2.0", "q2\td4\t1", "q2\td5\t-1",
                             "q3\td6\t1e400"])
    data = read_beir(folder)
    judged = {q: j for split in data.qrels.values() for q, j in split.items()}
    assert judged == {"q2": {"d3": 2, "d4": 1, "d5": -1}}
    assert data.stats.qrels_bad["train"] == 4


@pytest.mark.parametrize("argv, named", [
    (["prepare", "--beir", "{beir}", "--sample"], "--sample"),
    (["prepare", "--beir", "{beir}", "--meta", "{meta}"], "--meta"),
    (["index", "--workers", "3"], "--workers"),
    (["index", "--address", "ray://x:10001", "--workers", "2"], "--address and --workers"),
])
def test_options_that_do_nothing_in_a_combination_are_refused(tmp_path, capsys, argv, named):
    folder = make_beir(tmp_path / "b")
    meta = tmp_path / "meta.jsonl"
    meta.write_text("{}\n")
    argv = [a.format(beir=folder, meta=meta) for a in argv] + ["--home", str(tmp_path / "home")]
    assert run_cli(argv) == 1
    err = capsys.readouterr().err
    assert f"{named} do" in err and "nothing" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").rglob("CURRENT"))


# ---- cause 17: --help shows what it says ------------------------------------------------------------------


def test_help_text_keeps_its_square_brackets(capsys):
    assert run_cli(["index", "--help"]) == 0
    assert "densesearch[ray]" in capsys.readouterr().out.replace("\n", "").replace("│", "").replace(" ", "")


# ---- cause 18: status knows which artifacts a working pipeline may skip ------------------------------------


@pytest.fixture(scope="module")
def fp32_served(built, tmp_path_factory):
    """A workspace that skipped `quantize`: its index serves the fine-tuned model in FP32."""
    from densesearch.build.indexer import run_index

    ws = copied(built, tmp_path_factory.mktemp("fp32"), "fp32")
    shutil.rmtree(ws.artifact_home("onnx"))
    run_index(IndexConfig(model="finetuned", reencode=True), ws)
    return ws


def test_status_passes_a_workspace_that_skipped_quantize(fp32_served, capsys):
    assert run_cli(["status", "--json", "--home", str(fp32_served.home), "-w", fp32_served.name]) == 0
    rows = {row["kind"]: row for row in json.loads(capsys.readouterr().out)["artifacts"]}
    assert rows["onnx"]["state"] == "skipped" and "quantize" in rows["onnx"]["problem"]
    assert rows["index"]["state"] == "ok"


def test_status_names_the_damaged_artifact_first(fp32_served, tmp_path, capsys):
    ws = Workspace(tmp_path / "home", "damaged")
    shutil.copytree(fp32_served.root, ws.root, ignore=shutil.ignore_patterns(".lock*"))
    shutil.rmtree(ws.artifact_home("model"))  # missing (listed before the index)
    faiss_file = open_artifact(ws, "index", upstream=False).file("dense.faiss")
    faiss_file.write_bytes(faiss_file.read_bytes()[:100])  # damaged
    assert run_cli(["status", "--home", str(ws.home), "-w", ws.name]) == 1
    err = capsys.readouterr().err
    assert "first: index is corrupt" in err and len(err.strip().splitlines()) == 1, err


# ---- cause 5: the server never maps a file that can be truncated under it ---------------------------------

SERVE_THEN_TRUNCATE = """
import sys
import time
from pathlib import Path
from densesearch.core.paths import Workspace
from densesearch.serve.app import SearchService
service = SearchService(Workspace(Path(sys.argv[1]), sys.argv[2]))
version = service.current.version
for array in sorted(version.rglob("*.npy")):
    array.write_bytes(array.read_bytes()[:200])  # every array of the served version truncated under the server
for mode in ("dense", "bm25", "hybrid"):
    for query in ("summer hat", "leather wallet", "running shoes for women"):
        assert service.search(query, 10, mode)["hits"], mode
print("answered")
"""


def test_truncating_the_served_versions_arrays_does_not_kill_the_server(built, tmp_path):
    ws = copied(built, tmp_path)
    done = subprocess.run([sys.executable, "-c", SERVE_THEN_TRUNCATE, str(ws.home), ws.name], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "answered" in done.stdout, (done.returncode, done.stderr[-2000:])


# ---- cause 12: /health tells the truth about the version serving, mode by mode ----------------------------


def _point(ws: Workspace, kind: str, version: str) -> None:
    (ws.artifact_home(kind) / "CURRENT").write_text(version + "\n")


def _wait_for(predicate, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert predicate()


def test_health_follows_a_broken_publish_and_its_rollback(built, tmp_path):
    from fastapi.testclient import TestClient

    from densesearch.serve.app import SearchService, create_app

    ws = copied(built, tmp_path)
    good = ws.artifact("index").name
    broken = "v0000000000000000001-deadbeef"
    shutil.copytree(ws.artifact("index"), ws.artifact_home("index") / broken)
    faiss_file = ws.artifact_home("index") / broken / "dense.faiss"
    faiss_file.write_bytes(faiss_file.read_bytes()[:-10])
    client = TestClient(create_app(SearchService(ws, check_seconds=0)))
    assert client.get("/health").json()["status"] == "ok"
    _point(ws, "index", broken)
    _wait_for(lambda: client.get("/health").status_code == 503)
    health = client.get("/health").json()
    assert "dense.faiss" in health["reload_error"] and health["index_version"] == good
    assert client.get("/search", params={"q": "summer hat", "k": 3}).status_code == 200  # the old one serves
    _point(ws, "index", good)  # rolled back: the version serving is the published one again
    _wait_for(lambda: client.get("/health").status_code == 200)
    assert client.get("/health").json()["status"] == "ok"


def test_health_names_a_mode_that_cannot_answer_and_its_requests_get_503(built, tmp_path):
    from fastapi.testclient import TestClient

    from densesearch.serve.app import SearchService, create_app

    ws = copied(built, tmp_path)
    damaged = ws.artifact_home("reranker") / "v0000000000000000001-deadbeef"
    damaged.mkdir(parents=True)
    (damaged / MANIFEST_NAME).write_text("{broken")
    _point(ws, "reranker", damaged.name)
    client = TestClient(create_app(SearchService(ws)))
    health = client.get("/health")
    modes = health.json()["modes"]
    assert health.status_code == 200 and health.json()["status"] == "degraded"  # the default mode still answers
    assert modes["hybrid"] == modes["dense"] == modes["bm25"] == "ok" and "reranker" in modes["rerank"]
    refused = client.get("/search", params={"q": "summer hat", "mode": "rerank"})
    assert refused.status_code == 503 and "reranker" in refused.json()["error"]


# ---- cause 13: an item twice in an added file is indexed once ---------------------------------------------


def test_an_item_twice_in_an_added_file_is_indexed_once(built, tmp_path):
    from densesearch.build.indexer import run_add

    ws = copied(built, tmp_path)
    new = tmp_path / "new.jsonl"
    first = {"parent_asin": "BTWICE0001", "title": "Quorvex twin-listed umbrella", "store": "Quorvex"}
    new.write_text("\n".join(json.dumps(row) for row in (first, {**first, "title": "Quorvex umbrella again"})) + "\n")
    before = len(Searcher(ws).items)
    result = run_add(IndexConfig(add_path=new), ws)
    items = Searcher(ws).items
    assert result.added == 1 and len(items) == before + 1
    assert [row["title"] for row in items if row["item_id"] == "BTWICE0001"] == ["Quorvex twin-listed umbrella"]


# ---- cause 14: one rule for text that is not UTF-8, on the command line and over HTTP ----------------------


def test_invalid_utf8_queries_are_refused_alike_by_the_cli_and_the_server(built):
    from fastapi.testclient import TestClient

    from densesearch.serve.app import SearchService, create_app

    cli_refusal = assert_one_line(cli("query", os.fsdecode(b"summer \xff hat"), "--home", built["ws"].home))
    client = TestClient(create_app(SearchService(built["ws"])))
    for raw in (b"q=summer+%FF+hat", b"q=summer%20%C3%28hat&k=3", b"k=3&q=%ED%A0%80"):
        answer = client.get("/search?" + raw.decode("ascii"))
        assert answer.status_code == 400, raw
        assert answer.json()["error"] in cli_refusal
    batch = client.post("/search", content='{"queries": ["summer \\udcff hat"]}',
                        headers={"content-type": "application/json"})
    assert batch.status_code == 400 and batch.json()["error"] in cli_refusal
    assert client.get("/search", params={"q": "été chapeau"}).status_code == 200


# ---- causes 2 and 3: bench's sizes are bounded and its disk and memory checked before anything is allocated --


def test_bench_scale_beyond_the_disk_or_the_memory_is_refused_before_it_starts(built, tmp_path, capsys):
    home = str(built["ws"].home)
    code = run_cli(["bench", "--scale", "1000000000", "--home", home])
    err = capsys.readouterr().err
    assert code == 1 and "GiB of disk" in err and len(err.strip().splitlines()) == 1, err
    code = run_cli(["bench", "--scale", "1000", "--documents", "100000000", "--home", home])
    err = capsys.readouterr().err
    assert code == 1 and "GiB of memory" in err and len(err.strip().splitlines()) == 1, err
    assert not any(built["ws"].scratch.iterdir())


def test_bench_scale_on_a_full_disk_is_one_line_and_leaves_no_scratch_file(built, tmp_path, capsys):
    ws = copied(built, tmp_path)
    if not _mount_tmpfs(ws.root / "scratch", "1m"):
        pytest.skip("needs root and tmpfs to simulate a full disk")
    try:
        code = run_cli(["bench", "--scale", "5000", "--documents", "0", "--home", str(ws.home), "-w", ws.name])
        err = capsys.readouterr().err
        assert code == 1 and "GiB of disk" in err and len(err.strip().splitlines()) == 1, err
        assert not any((ws.root / "scratch").iterdir())
    finally:
        subprocess.run(["umount", "-l", str(ws.root / "scratch")], check=False)


@pytest.mark.parametrize("argv, code", [
    (["bench", "--batch-size", "1,100000"], 1), (["bench", "--scale", "1000", "--documents", "2000000000"], 2),
])
def test_bench_sizes_are_bounded_before_any_work(tmp_path, capsys, argv, code):
    assert run_cli([*argv, "--home", str(tmp_path / "home")]) == code  # refused before the workspace is read
    err = capsys.readouterr().err
    assert argv[-2] in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


# ---- causes 9 and 10: bench --compare reads only bench reports; bench --trec is all or nothing ----------------


@pytest.mark.parametrize("content", ["{broken", '{"run_id": "x"}', '{"run_id": "x", "quality": [{"system": 1}]}',
                                     "[1, 2]", "\udcff"])
def test_compare_with_a_damaged_or_foreign_report_is_refused_before_the_bench_runs(built, tmp_path, capsys,
                                                                                  content):
    report = tmp_path / "report.json"
    report.write_bytes(content.encode("utf-8", "surrogateescape"))
    started = time.monotonic()
    code = run_cli(["bench", "--compare", str(report), "--home", str(built["ws"].home)])
    err = capsys.readouterr().err
    assert code == 1 and "not a densesearch bench report" in err and len(err.strip().splitlines()) == 1, err
    assert time.monotonic() - started < 10  # refused at once, not after the measurement


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.slow  # a whole bench run (13 s)
def test_bench_trec_on_a_full_disk_writes_no_trec_file_and_keeps_the_report(built, tmp_path, capsys):
    ws = copied(built, tmp_path)
    trec = tmp_path / "trec"
    if not _mount_tmpfs(trec, "8k"):
        pytest.skip("needs root and tmpfs to simulate a full disk")
    before = set(ws.bench_runs.glob("*/report.json"))
    try:
        code = run_cli(["bench", "--split", "dev", "--queries", "30", "--runs", "2", "--trec", str(trec),
                        "--home", str(ws.home), "-w", ws.name])
        err = capsys.readouterr().err
        assert code == 1 and "none of them was written" in err and "report was saved" in err, err
        assert len(err.strip().splitlines()) == 1
        assert list(trec.iterdir()) == []
        saved = set(ws.bench_runs.glob("*/report.json")) - before
        assert len(saved) == 1 and next(iter(saved)).parent.name in err
    finally:
        subprocess.run(["umount", "-l", str(trec)], check=False)
