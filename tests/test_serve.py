"""`densesearch serve`: the HTTP API, hot reload, the search page in a real Chromium, the terminal view."""

import json
import os
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from densesearch.build.indexer import run_add
from densesearch.cli.render import answer_table
from densesearch.core.artifacts import open_artifact
from densesearch.core.config import IndexConfig, QueryConfig
from densesearch.core.paths import Workspace
from densesearch.retrieval.searcher import Searcher
from densesearch.serve.app import MAX_K, SearchFastPath, SearchService, create_app, search_params

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="module")
def client(built):
    return TestClient(create_app(SearchService(built["ws"])))


def test_search_answers_with_the_query_json_schema(client, built):
    from densesearch.cli.output import to_jsonable
    from densesearch.retrieval.searcher import Searcher

    response = client.get("/search", params={"q": "comfy summer dress for beach", "k": 10, "mode": "dense"})
    assert response.status_code == 200
    payload = response.json()
    expected = to_jsonable(Searcher(built["ws"]).ask("comfy summer dress for beach", QueryConfig(k=10, mode="dense")))
    assert set(payload) == set(expected) and len(payload["hits"]) == 10
    assert [h["item_id"] for h in payload["hits"]] == [h["item_id"] for h in expected["hits"]]
    assert set(payload["hits"][0]) == set(expected["hits"][0]) and "image" in payload["hits"][0]
    assert payload["encode_ms"] >= 0 and payload["total_ms"] >= payload["search_ms"]


def test_batch_items_health_and_metrics(client):
    batch = client.post("/search", json={"queries": ["leather wallet", "beach hat"], "k": 3, "mode": "bm25"}).json()
    assert [len(a["hits"]) for a in batch["answers"]] == [3, 3]
    item_id = batch["answers"][0]["hits"][0]["item_id"]
    item = client.get(f"/items/{item_id}").json()
    assert item["item_id"] == item_id and item["text"]
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["items"] == 150 and len(health["index"]) == 64
    metrics = client.get("/metrics").text
    assert 'densesearch_requests_total{mode="bm25",status="ok"}' in metrics
    assert 'densesearch_request_seconds_bucket{mode="bm25",le="+Inf"}' in metrics
    assert client.get("/openapi.json").json()["paths"]["/search"]
    page = client.get("/")
    assert page.status_code == 200 and "<script>" in page.text and "http" not in page.text.split("<script>")[0]


@pytest.mark.parametrize("request_args, status, words", [
    ({"params": {"q": "   "}}, 400, "query is empty"),
    ({"params": {"q": "x" * 10_001}}, 422, "q:"),
    ({"params": {"q": "hat", "k": 0}}, 422, "k:"),
    ({"params": {"q": "hat", "k": 5000}}, 422, "k:"),
    ({"params": {"q": "hat", "mode": "fuzzy"}}, 422, "mode:"),
    ({"params": {}}, 422, "q:"),
])
def test_bad_requests_get_one_readable_json_error(client, request_args, status, words):
    response = client.get("/search", **request_args)
    assert response.status_code == status
    error = response.json()["error"]
    assert words in error and "\n" not in error and "Traceback" not in error


def test_inline_app_answers_like_the_threaded_one(client, built):
    """`serve --workers N` answers on the event loop's thread: same answers, same errors."""
    inline = TestClient(create_app(SearchService(built["ws"]), inline=True))
    params = {"q": "comfy summer dress for beach", "k": 10, "mode": "hybrid"}
    ids = [[h["item_id"] for h in c.get("/search", params=params).json()["hits"]] for c in (client, inline)]
    assert ids[0] == ids[1] and len(ids[0]) == 10
    assert inline.get("/search", params={"q": "  "}).status_code == 400
    assert inline.get("/health").json()["process"] == os.getpid()


def _get(path: str, query: str = "", method: str = "GET") -> dict:
    return {"type": "http", "method": method, "path": path, "query_string": query.encode()}


@pytest.mark.parametrize("scope, expected", [
    (_get("/search", "q=red+dress&k=5&mode=dense"), ("red dress", 5, "dense", ())),
    (_get("/search", "q=red%20dress"), ("red dress", 10, None, ())),
    (_get("/search", "q=&k=3"), ("", 3, None, ())),  # the searcher refuses it with its own one-line message
    (_get("/search", f"q=hat&k={MAX_K}&other=1"), ("hat", MAX_K, None, ())),
    (_get("/search", "q=hat&filter=price+%3C+30&filter=rating%3E%3D4"), ("hat", 10, None, ("price < 30", "rating>=4"))),
    (_get("/search", "q=hat&filter=" + "x" * 2001), None),  # an over-long filter: FastAPI's 422
    (_get("/search", "q=hat&k=0"), None), (_get("/search", f"q=hat&k={MAX_K + 1}"), None),
    (_get("/search", "q=hat&k=ten"), None), (_get("/search", "q=hat&k=-1"), None),
    (_get("/search", "q=hat&k=%D9%A3"), None),  # a non-ASCII digit
    (_get("/search", "q=hat&mode=fuzzy"), None), (_get("/search", "k=3"), None),
    (_get("/search", "q=a&q=b"), None), (_get("/search", "q=" + "x" * 10_001), None),
    (_get("/search", "q=%FF"), None), (_get("/search", "q=hat", method="POST"), None), (_get("/items/3"), None),
])
def test_fast_path_takes_only_valid_searches(scope, expected):
    assert search_params(scope) == expected


def test_fast_path_answers_without_the_framework(built):
    """Valid searches never reach the wrapped app; anything else does, untouched."""
    import asyncio

    reached = []

    async def framework(scope, receive, send) -> None:
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def call(app, scope) -> tuple[int, bytes]:
        sent = []

        async def send(message) -> None:
            sent.append(message)

        await app(scope, None, send)
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

    service = SearchService(built["ws"])
    app = SearchFastPath(framework, service=service, executor=None)
    status, body = asyncio.run(call(app, _get("/search", "q=leather+wallet&k=4&mode=bm25")))
    expected = service.search("leather wallet", 4, "bm25")
    got = [hit["item_id"] for hit in json.loads(body)["hits"]]
    assert status == 200 and got == [hit["item_id"] for hit in expected["hits"]]
    status, body = asyncio.run(call(app, _get("/search", "q=++")))
    assert status == 400 and json.loads(body) == {"error": "query is empty (give some words to search for)"}
    assert reached == []
    assert asyncio.run(call(app, _get("/search", "q=hat&k=0")))[0] == 204 and reached == ["/search"]


def test_unknown_item_and_bad_batch(client):
    assert client.get("/items/NOPE").status_code == 404 and "NOPE" in client.get("/items/NOPE").json()["error"]
    assert client.post("/search", json={"queries": []}).status_code == 422
    assert client.post("/search", json={"nothing": 1}).status_code == 422


def test_new_index_is_served_without_restart_and_without_a_failed_request(built, tmp_path):
    ws = Workspace(tmp_path / "home", "live")
    shutil.copytree(built["ws"].root, ws.root, ignore=shutil.ignore_patterns(".lock*"))
    service = SearchService(ws, check_seconds=0)
    client = TestClient(create_app(service))
    failures, answered, stop = [], [0], threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            response = client.get("/search", params={"q": "glow in the dark rain boots", "k": 3, "mode": "hybrid"})
            if response.status_code != 200:
                failures.append(response.text)
            answered[0] += 1

    worker = threading.Thread(target=hammer)
    worker.start()
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"parent_asin": "BGLOWBOOT1", "title": "Zorblax glow-in-the-dark galoshes",
                               "store": "Zorblax", "features": ["Rubber rain boots that glow at night"]}) + "\n")
    try:
        run_add(IndexConfig(add_path=new), ws)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            hits = client.get("/search", params={"q": "zorblax galoshes", "k": 1, "mode": "bm25"}).json()["hits"]
            if hits and hits[0]["item_id"] == "BGLOWBOOT1":
                break
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join()
    assert hits and hits[0]["item_id"] == "BGLOWBOOT1"
    assert failures == [] and answered[0] > 5
    assert client.get("/health").json()["index"] == open_artifact(ws, "index").fingerprint
    assert "densesearch_index_reloads_total 1" in client.get("/metrics").text


def test_result_table_fits_80_columns_one_line_per_hit(built):
    from rich.console import Console

    from densesearch.retrieval.searcher import Searcher

    answer = Searcher(built["ws"]).ask("comfy summer dress for beach", QueryConfig(k=10, mode="dense"))
    console = Console(width=80, record=True, markup=False, force_terminal=False)
    console.print(answer_table(answer))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    ranks = [line for line in lines if line.strip()[:3].strip().rstrip(".").isdigit()]
    assert len(ranks) == 10  # one line per hit: no title wraps
    assert any("…" in line for line in ranks)  # long titles are cut with an ellipsis
    wide = Console(width=160, record=True, markup=False)
    wide.print(answer_table(answer, wide=True))
    assert answer.hits[0].item_id in wide.export_text()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server_thread(workspace: Workspace, **options):
    """The app on uvicorn in a thread of this process, on a free loopback port: yields the port."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(SearchService(workspace)), host="127.0.0.1", port=port,
                                           log_level="warning", **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def live_server(built):
    with server_thread(built["ws"]) as port:
        yield f"http://127.0.0.1:{port}"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (.ci/run installs it)")
def test_search_page_in_chromium_shows_ten_cards(live_server, tmp_path, built):
    live_server_workspace = built["ws"]
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.route("http*://m.media-amazon.com/**", lambda route: route.abort())  # offline: no CDN pictures
            page.goto(live_server + "/")
            page.fill("#q", "comfy summer dress for beach")
            page.press("#q", "Enter")
            page.wait_for_function("document.querySelectorAll('#results .card').length === 10", timeout=30_000)
            titles = page.locator("#results .card .title").all_inner_texts()
            status = page.inner_text("#status")
            first = page.get_attribute("#results .card:first-child", "data-item")
            page.click("#results .card:first-child .similar")
            page.wait_for_function("document.getElementById('status').textContent.includes('similar to')",
                                   timeout=30_000)
            alike = [card.get_attribute("data-item") for card in page.locator("#results .card").all()]
            similar_url = page.url
            page.fill("#price-max", "20")
            page.select_option("#rating-min", "4")
            page.press("#q", "Enter")
            page.wait_for_function("location.search.includes('pmax=20') && "
                                   "/^\\d+ items/.test(document.getElementById('status').textContent)",
                                   timeout=30_000)
            filtered = [card.get_attribute("data-item") for card in page.locator("#results .card").all()]
            shot = Path(os.environ.get("DENSESEARCH_SCREENSHOT", tmp_path / "search-page.png"))
            page.screenshot(path=str(shot), full_page=False)
        finally:
            browser.close()
    assert len(titles) == 10 and all(titles)
    assert "10 items" in status and "ms" in status
    assert len(alike) == 10 and first not in alike and f"similar={first}" in similar_url  # the link, followed
    items = {row["item_id"]: row for row in Searcher(live_server_workspace).items}
    assert filtered and all(items[i]["price"] <= 20 and items[i]["rating"] >= 4 for i in filtered)  # the controls
    assert shot.stat().st_size > 10_000


def test_server_loads_without_torch(built):
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from fastapi.testclient import TestClient
        from densesearch.core.paths import Workspace
        from densesearch.serve.app import MAX_K, SearchFastPath, SearchService, create_app, search_params
        client = TestClient(create_app(SearchService(Workspace(Path({str(built['ws'].home)!r})))))
        assert client.get("/search", params={{"q": "summer dress", "mode": "hybrid"}}).json()["hits"]
        heavy = [m for m in ("torch", "sentence_transformers", "transformers", "bm25s", "scipy") if m in sys.modules]
        assert not heavy, heavy
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_serve_with_two_worker_processes(built):
    """`densesearch serve --workers 2`: two processes share the port; both answer as the index says."""
    import subprocess
    import sys

    import httpx

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "densesearch", "serve", "--port", str(port), "--workers", "2",
                               "--home", str(built["ws"].home), "-w", built["ws"].name],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        processes = answering_processes(server, base, 2)
        assert len(processes) == 2 and server.pid not in processes
        from densesearch.retrieval.searcher import Searcher

        expected = Searcher(built["ws"]).ask("leather wallet", QueryConfig(k=5, mode="dense"))
        hits = httpx.get(f"{base}/search", params={"q": "leather wallet", "k": 5, "mode": "dense"}).json()["hits"]
        assert [h["item_id"] for h in hits] == [h.item_id for h in expected.hits]
    finally:
        server.terminate()
        server.wait(timeout=30)
    deadline = time.monotonic() + 15  # stopping the supervisor stops its processes: none is left serving
    while time.monotonic() < deadline and any(_alive(pid) for pid in processes):
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in processes)


def answering_processes(server, base: str, count: int) -> set[int]:
    """The process ids that answer ``/health`` at ``base``, until ``count`` of them have (or two minutes pass)."""
    import httpx

    deadline, processes = time.monotonic() + 120, set()
    while time.monotonic() < deadline and len(processes) < count:
        assert server.poll() is None, server.stderr.read() if server.stderr else "the server exited"
        try:  # a new connection each time: the processes take turns accepting
            processes.add(httpx.get(f"{base}/health", timeout=2, headers={"Connection": "close"}).json()["process"])
        except httpx.HTTPError:
            time.sleep(0.2)
    return processes


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_serve_with_workers_and_no_index_says_which_command_to_run(tmp_path):
    from typer.testing import CliRunner

    from densesearch.cli.app import app

    result = CliRunner().invoke(app, ["serve", "--workers", "2", "--home", str(tmp_path)])
    assert result.exit_code != 0 and "densesearch index" in result.output


def test_idle_and_trickling_connections_are_cut_off_while_searches_go_on(built, monkeypatch):
    """Slowloris: 220 connections that never finish a request (silent, or one header byte now and then) neither
    stop a real search nor stay open past the request deadline."""
    import json as json_module
    from dataclasses import asdict

    from densesearch.serve.limits import LIMITS_ENV, ServerLimits, raise_open_file_limit

    limits = ServerLimits(request_timeout=1.0, keep_alive=1.0, connections=512)
    monkeypatch.setenv(LIMITS_ENV, json_module.dumps(asdict(limits)))
    raise_open_file_limit(2048)
    with server_thread(built["ws"], **limits.uvicorn_options()) as port:
        _slowloris(port)


def _slowloris(port: int) -> None:
    import httpx

    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(220)]
    try:
        for n, sock in enumerate(idle[::2]):
            sock.sendall(f"GET /search?q=shoe{n} HTTP/1.1\r\nHost: x\r\n".encode())  # headers never finished
        opened = time.monotonic()
        for _ in range(3):  # keep trickling: the deadline counts from the request's first byte, not the last
            time.sleep(0.3)
            for sock in idle[::2]:
                sock.sendall(b"X")
            answer = httpx.get(f"http://127.0.0.1:{port}/search", params={"q": "leather wallet", "k": 3}, timeout=5)
            assert answer.status_code == 200 and len(answer.json()["hits"]) == 3
        for sock in idle:
            sock.settimeout(max(0.1, opened + 3.0 - time.monotonic()))
            assert sock.recv(1024) == b""  # closed by the server (a timeout here raises)
        assert time.monotonic() - opened < 3.0
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.slow
def test_workers_die_with_their_supervisor_killed_by_signal_9(built):
    """kill -9 of `serve --workers 2`: its workers exit too, and the port is free for a restart."""
    import signal
    import subprocess
    import sys


    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "densesearch", "serve", "--port", str(port), "--workers", "2",
                               "--home", str(built["ws"].home), "-w", built["ws"].name],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        processes = answering_processes(server, f"http://127.0.0.1:{port}", 2)
        assert len(processes) == 2
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(pid) for pid in processes):
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in processes)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))  # "address already in use" if a worker still held it
