"""Damaged artifacts, bad options, two writers, kill -9, a full disk and arbitrary query text.

Every expected failure must end in exactly one line on stderr, the right exit code, no traceback,
and nothing lost: the previously published artifact keeps serving.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from densesearch.cli.app import run_cli
from densesearch.core.artifacts import artifact_health, open_artifact
from densesearch.core.config import QueryConfig
from densesearch.core.errors import BadInput
from densesearch.core.paths import Workspace
from densesearch.retrieval.searcher import Searcher


def one_line_run(capsys, *argv) -> tuple[int, str]:
    code = run_cli([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    return code, err


# ---- damaged artifacts -------------------------------------------------------------------------------

def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


def _garble_same_size(path: Path) -> None:
    path.write_bytes(bytes((b * 7 + 13) % 256 for b in path.read_bytes()))


def _delete(path: Path) -> None:
    path.unlink()


def _bad_json(path: Path) -> None:
    path.write_text("{broken")


def _future_schema(path: Path) -> None:
    raw = json.loads(path.read_text())
    raw["schema"] = 99
    path.write_text(json.dumps(raw))


def _unknown_key(path: Path) -> None:
    raw = json.loads(path.read_text())
    raw["from_the_future"] = {"a": 1}
    path.write_text(json.dumps(raw))


DAMAGE = {
    "data-catalog-truncated": ("data", "catalog.jsonl", _truncate),
    "data-manifest-garbage": ("data", "manifest.json", _bad_json),
    "data-test-split-garbled": ("data", "test.jsonl", _garble_same_size),
    "onnx-int8-garbled": ("onnx", "@int8", _garble_same_size),
    "onnx-int8-deleted": ("onnx", "@int8", _delete),
    "onnx-tokenizer-deleted": ("onnx", "tokenizer.json", _delete),
    "onnx-encoder-config-garbled": ("onnx", "encoder.json", _garble_same_size),
    "onnx-manifest-future-schema": ("onnx", "manifest.json", _future_schema),
    "index-faiss-truncated": ("index", "dense.faiss", _truncate),
    "index-faiss-garbled": ("index", "dense.faiss", _garble_same_size),
    "index-vectors-truncated": ("index", "vectors.npy", _truncate),
    "index-vectors-garbled": ("index", "vectors.npy", _garble_same_size),
    "index-items-truncated": ("index", "items.jsonl", _truncate),
    "index-items-garbled": ("index", "items.jsonl", _garble_same_size),
    "index-bm25-vocab-garbled": ("index", "bm25/vocab.json", _garble_same_size),
    "index-bm25-indptr-deleted": ("index", "bm25/indptr.npy", _delete),
    "index-manifest-empty": ("index", "manifest.json", lambda p: p.write_text("")),
    "index-pointer-garbage": ("index", "../CURRENT", lambda p: p.write_text("nonsense\n")),
}


@pytest.fixture
def damaged(built, request):
    """Damage one file of the shared built workspace; restore it afterwards."""
    kind, name, damage = DAMAGE[request.param]
    ws = built["ws"]
    if name == "@int8":
        name = open_artifact(ws, "onnx").manifest.extra["int8_file"]
    path = ws.artifact(kind) / name
    backup = path.read_bytes()
    damage(path)
    try:
        yield ws, kind
    finally:
        path.write_bytes(backup)
    assert artifact_health(ws, kind)["state"] == "ok"


@pytest.mark.parametrize("damaged", sorted(DAMAGE), indirect=True)
def test_damaged_artifact_is_one_line_everywhere(damaged, capsys):
    ws, kind = damaged
    code, err = one_line_run(capsys, "status", "--home", ws.home)
    assert code == 1
    states = {row["kind"]: row["state"] for row in json.loads(_status_json(capsys, ws))["artifacts"]}
    assert states[kind] in ("corrupt", "stale", "missing"), states
    code, err = one_line_run(capsys, "bench", "--runs", "1", "--queries", "3", "--home", ws.home)
    assert code == 1 and "densesearch" in err, err  # the line names the command that rebuilds it
    code = run_cli(["query", "hat", "--mode", "hybrid", "--home", str(ws.home)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if code == 0:  # serving reads the index's own files only: it may not touch the damaged one
        assert "hat" in out and not err.strip()
    else:
        assert code == 1 and len(err.strip().splitlines()) == 1, err


def _status_json(capsys, ws: Workspace) -> str:
    run_cli(["status", "--json", "--home", str(ws.home)])
    return capsys.readouterr().out


def test_manifest_with_an_unknown_key_still_serves(built):
    ws = built["ws"]
    path = ws.artifact("index") / "manifest.json"
    backup = path.read_text()
    _unknown_key(path)
    try:
        assert Searcher(ws).ask("hat", QueryConfig(k=3)).hits
    finally:
        path.write_text(backup)


def test_a_copied_workspace_serves_its_own_encoder(built, tmp_path):
    copy = Workspace(tmp_path / "home", "copy")
    shutil.copytree(built["ws"].root, copy.root, ignore=shutil.ignore_patterns(".lock*"))
    assert Searcher(copy).ask("hat", QueryConfig(k=3, mode="dense")).hits
    int8 = open_artifact(copy, "onnx").manifest.extra["int8_file"]
    _garble_same_size(copy.artifact("onnx") / int8)  # garbage model in the copy: the copy must notice
    assert artifact_health(copy, "onnx")["state"] == "corrupt"
    assert artifact_health(built["ws"], "onnx")["state"] == "ok"  # the original is untouched


# ---- bad options: refused at the edge, before any work --------------------------------------------

BAD_OPTIONS = [
    (["index", "--m", "-1"], 2), (["index", "--m", "0"], 2), (["index", "--ef-construction", "0"], 2),
    (["index", "--kind", "annoy"], 2), (["query", "hat", "--ef-search", "-5"], 2),
    (["query", "hat", "--rrf-k", "-1"], 2), (["query", "hat", "-k", "-3"], 2),
    (["prepare", "--test-size", "-5"], 2), (["prepare", "--min-rating", "nan"], 2),
    (["prepare", "--sample", "--home", ""], 1), (["status", "-w", "evil\n"], 1), (["status", "-w", ".."], 1),
    (["finetune", "--batch-size", "0"], 2), (["finetune", "--lr", "nan"], 2), (["finetune", "--epochs", "0"], 2),
    (["bench", "--runs", "0"], 2), (["bench", "--scale", "5"], 2), (["quantize", "--isa", "sse"], 2),
    (["quantize", "--model", "/usr"], 1), (["prepare", "--meta", "/nonexistent/meta.jsonl"], 1),
    (["bench", "--trec", __file__], 1), (["index", "--add", "/nonexistent.jsonl"], 2),
]


@pytest.mark.parametrize("argv, expected", BAD_OPTIONS, ids=[" ".join(a)[:40] for a, _ in BAD_OPTIONS])
def test_bad_options_are_one_line_and_write_nothing(tmp_path, capsys, argv, expected):
    home = tmp_path / "home"
    argv = argv if "--home" in argv else [*argv, "--home", str(home)]
    code, err = one_line_run(capsys, *argv)
    assert code == expected, err
    assert not home.exists() or not any(home.rglob("CURRENT"))


# ---- writers: one at a time, kill -9 safe, no window without an index --------------------------------

def _hold_lock(ws: Workspace, seconds: float) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from densesearch.core.paths import Workspace
        with Workspace(Path({str(ws.home)!r}), {ws.name!r}).writing():
            print("locked", flush=True)
            time.sleep({seconds})
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_second_writer_exits_naming_the_busy_pid(built, capsys):
    holder = _hold_lock(built["ws"], 30)
    try:
        code, err = one_line_run(capsys, "index", "--home", built["ws"].home)
        assert code == 1 and f"busy (pid {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()


def _index_process(ws: Workspace) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "densesearch", "index", "--home", str(ws.home), "-w", ws.name],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_kill_9_during_index_keeps_the_old_index_and_republish_has_no_gap(built, tmp_path):
    ws = Workspace(tmp_path / "home", "killed")
    shutil.copytree(built["ws"].root, ws.root, ignore=shutil.ignore_patterns(".lock*"))
    for delay in (0.3, 1.5, 3.0, 4.5):
        process = _index_process(ws)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert Searcher(ws).ask("hat", QueryConfig(k=3, mode="hybrid")).hits  # still served after kill -9
    process = _index_process(ws)  # a full republish while a reader polls: never a moment without an index
    polls = 0
    while process.poll() is None:
        assert open_artifact(ws, "index").manifest.counts["vectors"] == 150
        polls += 1
        time.sleep(0.02)
    assert process.returncode == 0, process.stderr.read()
    assert polls > 10
    leftovers = [p.name for p in ws.artifact_home("index").iterdir() if ".tmp-" in p.name]
    assert leftovers == []  # temporaries of the killed runs were cleaned by the next write
    versions = [p for p in ws.artifact_home("index").iterdir() if p.is_dir()]
    assert len(versions) <= 2


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_full_disk_during_index_is_one_line_and_leaves_nothing(built, tmp_path, capsys):
    ws = Workspace(tmp_path / "home", "full")
    ws.root.mkdir(parents=True)
    for kind in ("data", "model", "onnx"):
        os.symlink(built["ws"].artifact_home(kind), ws.artifact_home(kind))
    if not _mount_tmpfs(ws.artifact_home("index"), "200k"):
        pytest.skip("needs root and tmpfs to simulate a full disk")
    try:
        code, err = one_line_run(capsys, "index", "--home", ws.home, "-w", ws.name)
        assert code == 1 and "no space left" in err
        assert [p.name for p in ws.artifact_home("index").iterdir()] == []
    finally:
        subprocess.run(["umount", "-l", str(ws.artifact_home("index"))], check=False)  # lazy: a dead mmap may pin it


# ---- text from users and catalogs ------------------------------------------------------------------

@pytest.fixture(scope="module")
def searcher(built):
    return Searcher(built["ws"])


LONG_TEXT = st.tuples(st.text(min_size=1, max_size=20), st.integers(9_990, 10_030)).map(
    lambda pair: (pair[0] * (pair[1] // len(pair[0]) + 1))[: pair[1]])  # around the 10,000-character limit


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=300), LONG_TEXT),
       mode=st.sampled_from(["dense", "bm25", "hybrid"]), k=st.integers(min_value=1, max_value=400))
def test_any_query_text_gets_hits_or_a_one_line_refusal(searcher, text, mode, k):
    try:
        answer = searcher.ask(text, QueryConfig(k=k, mode=mode))
    except BadInput as exc:
        assert "\n" not in str(exc)
        return
    assert len(answer.hits) <= min(k, 150)
    assert [h.rank for h in answer.hits] == list(range(1, len(answer.hits) + 1))
    if mode != "bm25":
        assert answer.hits


def test_unknown_words_give_no_bm25_hits_and_hybrid_equals_dense(searcher):
    assert searcher.ask("zqxjv wvkzq", QueryConfig(k=5, mode="bm25")).hits == []
    dense = [h.item_id for h in searcher.ask("zqxjv wvkzq", QueryConfig(k=5, mode="dense")).hits]
    hybrid = [h.item_id for h in searcher.ask("zqxjv wvkzq", QueryConfig(k=5, mode="hybrid")).hits]
    assert hybrid == dense


def test_markup_in_queries_and_titles_is_shown_not_parsed(built, searcher, capsys):
    from densesearch.cli.output import Output
    from densesearch.cli.render import answer_table

    code = run_cli(["query", "[/bold] dress [red]", "-k", "2", "--home", str(built["ws"].home)])
    out = capsys.readouterr().out
    assert code == 0 and "[/bold] dress [red]" in out
    answer = searcher.ask("dress", QueryConfig(k=1))
    answer.hits[0].title = "[/bold] Evil [link=x]title[/link]"
    Output().table(answer_table(answer))
    assert "[/bold] Evil" in capsys.readouterr().out
