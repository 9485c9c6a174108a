"""`serve`: the searcher behind HTTP (FastAPI) with a search page, health, metrics and hot reload.

One process loads the served index once (the ONNX encoder path: no torch) and answers every request
from it. It follows the workspace's ``CURRENT`` pointer: when `densesearch index` publishes a new
version, the next request after the check interval starts loading it in a background thread, and it
is swapped in atomically once loaded; requests in flight finish on the version they started with, and a version
that fails to load is reported by ``/health`` while the old one keeps serving.

With ``workers`` > 1, that many processes share the port (uvicorn's supervisor) and each answers its
requests inline, on its own core: no thread hand-off and no GIL shared between searches. On 2 cores one
process is bound by its event-loop thread; two served 1.44x its dense QPS back to back (docs/results.md).
"""

import gc
import json
import os
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from densesearch.config import QueryConfig
from densesearch.errors import DensesearchError
from densesearch.paths import Workspace
from densesearch.search import MAX_QUERY_CHARS, Searcher

MAX_K = 1000
MAX_BATCH = 64
RELOAD_CHECK_SECONDS = 1.0
LATENCY_BUCKETS_MS = (1, 2, 3, 5, 7.5, 10, 15, 25, 50, 100, 250, 1000)
PAGE_RESOURCE = "web/index.html"
GIL_SWITCH_SECONDS = 0.0005
WORKER_SETTINGS_ENV = "DENSESEARCH_SERVE_WORKER"  # how `serve --workers N` hands its settings to each process


@dataclass
class LoadedIndex:
    """One loaded index version and its item lookup."""

    version: Path
    searcher: Searcher
    by_id: dict[str, dict]


@dataclass
class Metrics:
    """Request counters and latency histograms per mode, in Prometheus text format."""

    requests: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    buckets: dict[str, list[int]] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    reloads: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, mode: str, status: str, ms: float) -> None:
        with self.lock:
            self.requests[(mode, status)] += 1
            counts = self.buckets.setdefault(mode, [0] * (len(LATENCY_BUCKETS_MS) + 1))
            counts[next((n for n, edge in enumerate(LATENCY_BUCKETS_MS) if ms <= edge), len(LATENCY_BUCKETS_MS))] += 1
            self.sums[mode] += ms / 1000

    def text(self, items: int) -> str:
        with self.lock:
            lines = ["# HELP densesearch_requests_total Search requests by mode and outcome.",
                     "# TYPE densesearch_requests_total counter"]
            lines += [f'densesearch_requests_total{{mode="{m}",status="{s}"}} {n}'
                      for (m, s), n in sorted(self.requests.items())]
            lines += ["# HELP densesearch_request_seconds Search latency inside the server.",
                      "# TYPE densesearch_request_seconds histogram"]
            for mode, counts in sorted(self.buckets.items()):
                running = 0
                for edge, count in zip((*LATENCY_BUCKETS_MS, float("inf")), counts, strict=True):
                    running += count
                    le = "+Inf" if edge == float("inf") else f"{edge / 1000:g}"
                    lines.append(f'densesearch_request_seconds_bucket{{mode="{mode}",le="{le}"}} {running}')
                lines.append(f'densesearch_request_seconds_sum{{mode="{mode}"}} {self.sums[mode]:.6f}')
                lines.append(f'densesearch_request_seconds_count{{mode="{mode}"}} {running}')
            lines += ["# TYPE densesearch_index_reloads_total counter",
                      f"densesearch_index_reloads_total {self.reloads}",
                      "# TYPE densesearch_index_items gauge", f"densesearch_index_items {items}"]
        return "\n".join(lines) + "\n"


class SearchService:
    """The served index, following the workspace's published version."""

    def __init__(self, workspace: Workspace, threads: int = 1, check_seconds: float = RELOAD_CHECK_SECONDS,
                 workers: int = 0) -> None:
        self.workspace = workspace
        self.threads = threads
        self.workers = workers or os.cpu_count() or 1
        self.check_seconds = check_seconds
        self.metrics = Metrics()
        self.reload_error: str | None = None
        self._swap = threading.Lock()
        self._checked = time.monotonic()
        self.current = self._load()

    def _load(self) -> LoadedIndex:
        version = self.workspace.artifact("index")
        searcher = Searcher(self.workspace, threads=self.threads)
        searcher.load_for("hybrid")  # encoder and BM25 now, not on a user's first request
        return LoadedIndex(version=version, searcher=searcher, by_id={row["item_id"]: row for row in searcher.items})

    def index(self) -> LoadedIndex:
        """The version to answer with; now and then starts loading a newer published one in the background."""
        now = time.monotonic()
        if now - self._checked >= self.check_seconds and self._swap.acquire(blocking=False):
            self._checked = now
            if self.workspace.artifact("index") != self.current.version:
                threading.Thread(target=self._reload, name="densesearch-reload", daemon=True).start()
            else:
                self._swap.release()
        return self.current

    def _reload(self) -> None:
        """Load the newly published version off the request path, then swap it in (one reference assignment)."""
        try:
            self.current = self._load()
            self.metrics.reloads += 1
            self.reload_error = None
        except DensesearchError as exc:  # keep serving the old version; /health says why
            self.reload_error = str(exc)
        finally:
            self._swap.release()

    def search(self, text: str, k: int, mode: str | None) -> dict[str, Any]:
        loaded = self.index()
        started = time.perf_counter()
        try:
            answer = loaded.searcher.ask(text, QueryConfig(k=k, mode=mode, threads=self.threads))
        except DensesearchError:
            self.metrics.observe(mode or "default", "error", (time.perf_counter() - started) * 1000)
            raise
        self.metrics.observe(answer.mode, "ok", (time.perf_counter() - started) * 1000)
        return answer.as_json()

    def health(self) -> dict[str, Any]:
        searcher = self.current.searcher
        return {"status": "degraded" if self.reload_error else "ok", "reload_error": self.reload_error,
                "process": os.getpid(),
                "index_version": self.current.version.name, "index": searcher.manifest.fingerprint,
                "data": searcher.manifest.upstream.get("data"), "encoder": searcher.spec.fingerprint,
                "encoder_label": searcher.spec.label, "items": len(searcher.items),
                "default_mode": searcher.default_mode, "notes": searcher.notes}


def search_page() -> str:
    return (resources.files("densesearch") / PAGE_RESOURCE).read_text(encoding="utf-8")


def create_app(service: SearchService, inline: bool = False):
    """The FastAPI application over one SearchService.

    ``inline`` answers each search on the event loop's own thread: right for a process that owns one core
    (``serve --workers N``), where handing work to a thread only adds cost.
    """
    import anyio
    from fastapi import Body, FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

    app = FastAPI(title="densesearch", version=_version(),
                  description="Dense, BM25 and hybrid search over one densesearch workspace.")
    # Searches run in worker threads, one per core: ONNX Runtime, FAISS and numpy release the GIL, so two
    # requests encode in parallel while the event loop keeps parsing and answering.
    workers = anyio.CapacityLimiter(service.workers)

    async def answer(q: str, k: int, mode: str | None) -> dict[str, Any]:
        if inline:
            return service.search(q, k, mode)
        return await anyio.to_thread.run_sync(service.search, q, k, mode, limiter=workers)
    Mode = Literal["dense", "bm25", "hybrid"]

    @app.exception_handler(DensesearchError)
    async def refused(request: Request, exc: DensesearchError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"error": str(exc)})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ("request",), "msg": "invalid request"}
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        return JSONResponse(status_code=422, content={"error": f"{where}: {first.get('msg', 'invalid')}"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return search_page()

    @app.get("/search", summary="Top-k items for one query (the `query --json` schema, with timings)")
    async def search(q: Annotated[str, Query(max_length=MAX_QUERY_CHARS)],
                     k: Annotated[int, Query(ge=1, le=MAX_K)] = 10, mode: Mode | None = None) -> Response:
        # already plain JSON types: serialised directly, without FastAPI's per-field encoder
        return Response(json.dumps(await answer(q, k, mode), ensure_ascii=False), media_type="application/json")

    @app.post("/search", summary="Top-k items for a batch of queries")
    async def search_batch(queries: Annotated[list[Annotated[str, Body(max_length=MAX_QUERY_CHARS)]],
                                              Body(embed=True, min_length=1, max_length=MAX_BATCH)],
                           k: Annotated[int, Body(ge=1, le=MAX_K)] = 10,
                           mode: Annotated[Mode | None, Body()] = None) -> dict[str, Any]:
        return {"answers": [await answer(q, k, mode) for q in queries]}

    @app.get("/items/{item_id}", summary="One catalog item as indexed")
    async def item(item_id: str) -> dict[str, Any]:
        row = service.index().by_id.get(item_id)
        if row is None:
            return JSONResponse(status_code=404, content={"error": f"no item {item_id!r} in the index"})
        return row

    @app.get("/health", summary="Served artifacts and their fingerprints")
    async def health() -> JSONResponse:
        report = service.health()
        return JSONResponse(status_code=200 if report["status"] == "ok" else 503, content=report)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def metrics() -> str:
        return service.metrics.text(len(service.current.searcher.items))

    return app


def _version() -> str:
    from densesearch import __version__

    return __version__


def loaded_service(workspace: Workspace, threads: int) -> SearchService:
    """The service with its index loaded, in a process set up to serve it: the loaded objects kept out of the
    garbage collector's scans (a full collection over a large catalog's rows is a latency spike on some unlucky
    request), and a short GIL switch interval. Threads hand the GIL to each other between native calls (encoder,
    FAISS); at CPython's default 5 ms a request that needs it for a few Python lines can wait that long."""
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    service = SearchService(workspace, threads=threads)
    gc.collect()
    gc.freeze()
    return service


def serve(workspace: Workspace, host: str, port: int, threads: int = 1, workers: int = 1) -> None:
    """Load the index and serve until interrupted (``workers`` processes sharing the port)."""
    import uvicorn

    options = {"host": host, "port": port, "log_level": "warning", "access_log": False}  # uvloop, httptools if there
    if workers == 1:
        uvicorn.run(create_app(loaded_service(workspace, threads)), **options)
        return
    from densesearch.artifacts import open_artifact

    open_artifact(workspace, "index")  # a missing or damaged index: one clear line here, not one per process
    os.environ[WORKER_SETTINGS_ENV] = json.dumps({"home": str(workspace.home), "name": workspace.name,
                                                  "threads": threads})
    uvicorn.run("densesearch.serve:worker_app", factory=True, workers=workers, **options)


def worker_app():
    """One process of ``serve --workers N`` (uvicorn imports and calls this in each process it starts)."""
    settings = json.loads(os.environ[WORKER_SETTINGS_ENV])
    workspace = Workspace(Path(settings["home"]), settings["name"])
    return create_app(loaded_service(workspace, settings["threads"]), inline=True)


__all__ = ["SearchService", "create_app", "serve", "worker_app"]
