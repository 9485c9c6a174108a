"""`serve`: the searcher behind HTTP (FastAPI) with a search page, health, metrics and hot reload.

One process loads the served index once (the ONNX encoder path: no torch) and answers every request
from it. It follows the workspace's ``CURRENT`` pointer: when `densesearch index` publishes a new
version, the next request after the check interval starts loading it in a background thread, and it
is swapped in atomically once loaded; requests in flight finish on the version they started with, and a version
that fails to load is reported by ``/health`` while the old one keeps serving.

With ``workers`` > 1, that many processes share the port (uvicorn's supervisor) and each answers its
requests inline, on its own core: no thread hand-off and no GIL shared between searches; keep-alive
connections are moved between them until each holds its share (``densesearch.loadshare``). Well-formed
``GET /search`` requests skip FastAPI's per-request machinery (``SearchFastPath``). Measured throughput
and tail latency: docs/results.md, "Serving over HTTP".
"""

import asyncio
import gc
import json
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, unquote_to_bytes

from densesearch.core.config import DEFAULT_QUERY, Mode, QueryConfig
from densesearch.core.cpu import usable_cores
from densesearch.core.errors import BadInput, DensesearchError, MissingArtifact
from densesearch.core.paths import Workspace
from densesearch.retrieval.filters import MAX_FILTER_CHARS
from densesearch.retrieval.searcher import MAX_QUERY_CHARS, MODES, Searcher, UnknownItem, check_utf8, not_utf8
from densesearch.serve.limits import ServerLimits, raise_open_file_limit
from densesearch.serve.loadshare import ConnectionBalancer, LoadShare

MAX_K = 1000
MAX_BATCH = 64
MAX_HISTORY_ENTRIES = 1000  # texts or item ids in one POST /recommend
MAX_FILTERS = 8  # filter expressions in one request (each: retrieval/filters.py syntax, all must hold)
RELOAD_CHECK_SECONDS = 1.0
LATENCY_BUCKETS_MS = (1, 2, 3, 5, 7.5, 10, 15, 25, 50, 100, 250, 1000)
PAGE_RESOURCE = "serve/web/index.html"
GIL_SWITCH_SECONDS = 0.0005
PR_SET_PDEATHSIG = 1  # prctl option: the signal this process gets when its parent dies
OPEN_FILES_SPARE = 256  # open files beyond the connection cap: the index's files, logs, the workers' pipes
WORKER_SETTINGS_ENV = "DENSESEARCH_SERVE_WORKER"  # how `serve --workers N` hands its settings to each process


@dataclass
class LoadedIndex:
    """One loaded index version and what a probe query in each mode it offers said."""

    version: Path
    searcher: Searcher
    modes: dict[str, str] = field(default_factory=dict)  # mode -> "ok" or the one-line reason it cannot answer


def offered_modes(searcher: Searcher) -> list[Mode]:
    """The modes this index answers: rerank only where a cross-encoder was published."""
    from densesearch.core.artifacts import has_artifact

    return [mode for mode in MODES if mode != Mode.RERANK or has_artifact(searcher.workspace, "reranker")]


def probe_modes(searcher: Searcher) -> dict[str, str]:
    """One real query per offered mode: "ok", or the one-line error a user of that mode would get."""
    outcome = {}
    for mode in offered_modes(searcher):
        try:
            searcher.ask(DEFAULT_QUERY, QueryConfig(k=1, mode=mode))
        except DensesearchError as exc:
            outcome[mode.value] = str(exc)
        else:
            outcome[mode.value] = "ok"
    return outcome


def http_status(exc: DensesearchError) -> int:
    """404 for an item the index does not hold, 400 for what the request got wrong (or asked for and was never
    built), 503 for what is broken on our side."""
    if isinstance(exc, UnknownItem):
        return 404
    return 400 if isinstance(exc, BadInput | MissingArtifact) else 503


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
        self.workers = workers or usable_cores()
        self.check_seconds = check_seconds
        self.metrics = Metrics()
        self.failed: tuple[Path, str] | None = None  # a published version that could not be served, and why
        self.mode_errors: dict[str, str] = {}  # the last server-side failure of a mode since its last success
        self._swap = threading.Lock()
        self._checked = time.monotonic()
        self.current = self._load()

    def _load(self) -> LoadedIndex:
        """The published version, loaded and probed: a version whose default mode cannot answer is refused."""
        version = self.workspace.artifact("index")
        searcher = Searcher(self.workspace, threads=self.threads)
        modes = probe_modes(searcher)  # loads every mode's parts now, not on a user's first request
        default = searcher.default_mode.value
        if modes.get(default, "ok") != "ok":
            raise DensesearchError(f"the index's default mode ({default}) cannot answer: {modes[default]}")
        return LoadedIndex(version=version, searcher=searcher, modes=modes)

    def index(self) -> LoadedIndex:
        """The version to answer with; now and then starts loading a newer published one in the background (a
        version that failed to load is not tried again; rolling ``CURRENT`` back to the served one clears it)."""
        now = time.monotonic()
        if now - self._checked >= self.check_seconds and self._swap.acquire(blocking=False):
            self._checked = now
            published = self.workspace.artifact("index")
            if published == self.current.version:
                self.failed = None
            if published not in (self.current.version, self.failed and self.failed[0]):
                threading.Thread(target=self._reload, args=(published,), name="densesearch-reload",
                                 daemon=True).start()
            else:
                self._swap.release()
        return self.current

    def _reload(self, published: Path) -> None:
        """Load the newly published version off the request path, then swap it in (one reference assignment);
        a version whose default mode fails its probe query is not swapped in."""
        try:
            loaded = self._load()
            self.metrics.reloads += 1  # counted before the swap: whoever sees the new version sees it counted
            self.current, self.failed, self.mode_errors = loaded, None, {}
        except DensesearchError as exc:  # keep serving the old version; /health says why
            self.failed = (published, str(exc))
        finally:
            self._swap.release()

    def search(self, text: str, k: int, mode: str | None, where: Sequence[str] = ()) -> dict[str, Any]:
        loaded = self.index()
        started = time.perf_counter()
        try:
            answer = loaded.searcher.ask(text, QueryConfig(k=k, mode=mode, threads=self.threads,
                                                           where=checked_filters(where)))
        except DensesearchError as exc:
            self.metrics.observe(mode or "default", "error", (time.perf_counter() - started) * 1000)
            if http_status(exc) >= 500:
                self.mode_errors[mode or loaded.searcher.default_mode.value] = str(exc)
            raise
        if self.mode_errors:  # a mode that failed before answers again (nothing to do on the common path)
            self.mode_errors.pop(answer.mode, None)
        self.metrics.observe(answer.mode, "ok", (time.perf_counter() - started) * 1000)
        return answer.as_json()

    def similar(self, item_id: str, k: int, where: Sequence[str] = ()) -> dict[str, Any]:
        """`similar_items` on the version serving, as the `similar --json` schema."""
        from densesearch.retrieval.recommend import similar_items

        return similar_items(self.index().searcher, item_id, k, checked_filters(where)).as_json()

    def recommend(self, texts: list[str], item_ids: list[str], k: int, where: Sequence[str] = ()) -> dict[str, Any]:
        """`recommend` on the version serving: ``texts`` oldest first (all taken as positive)."""
        from densesearch.retrieval.recommend import History, recommend

        history = History(texts=texts, item_ids=item_ids)
        return recommend(self.index().searcher, history, k, checked_filters(where)).as_json()

    def modes(self) -> dict[str, str]:
        """Each offered mode: "ok", or why it cannot answer (its probe at load, or its last failed request)."""
        return {mode: self.mode_errors.get(mode, probed) for mode, probed in self.current.modes.items()}

    def health(self) -> dict[str, Any]:
        """The truth about the version actually serving: 200 "ok" when every offered mode answers; "degraded"
        when a mode fails or the published version could not be loaded (503 when the default mode fails or the
        published version is not the one serving)."""
        searcher, modes = self.index().searcher, self.modes()  # index(): a health poll notices a publish too
        broken = [mode for mode, state in modes.items() if state != "ok"]
        default = searcher.default_mode.value
        return {"status": "degraded" if broken or self.failed else "ok",
                "serving": not self.failed and modes.get(default) == "ok",
                "reload_error": self.failed[1] if self.failed else None, "modes": modes,
                "process": os.getpid(),
                "index_version": self.current.version.name, "index": searcher.manifest.fingerprint,
                "data": searcher.manifest.upstream.get("data"), "encoder": searcher.spec.fingerprint,
                "encoder_label": searcher.spec.label, "items": len(searcher.items),
                "default_mode": default, "notes": searcher.notes}


class SearchFastPath:
    """ASGI middleware that answers well-formed ``GET /search`` requests without FastAPI's per-request machinery.

    The route is the hot path of a search box. FastAPI's parameter validation, dependency resolution and
    anyio's thread hand-off cost about as much event-loop time as the search itself (an A/B on 2 cores:
    +11% QPS and about 2 ms off p99 with this path; docs/results.md). Anything it does not recognise as
    valid (a missing or over-long ``q``, a ``k`` out of range, an unknown mode) goes on to the FastAPI route,
    so errors, validation messages and the OpenAPI schema stay FastAPI's.
    """

    def __init__(self, app, service: "SearchService", executor: ThreadPoolExecutor | None) -> None:
        self.app = app
        self.service = service
        self.executor = executor  # None: answer inline, on the event loop's thread

    async def __call__(self, scope, receive, send) -> None:
        params = search_params(scope) if scope["type"] == "http" else None
        if params is None:
            refusal = undecodable_query(scope) if scope["type"] == "http" else None
            if refusal is None:
                await self.app(scope, receive, send)
            else:
                await respond(send, 400, json.dumps({"error": refusal}).encode())
            return
        await respond(send, *await run_on(self.executor, self.answer, *params))

    def answer(self, text: str, k: int, mode: str | None, where: tuple[str, ...]) -> tuple[int, bytes]:
        """Status and JSON body, serialised off the event loop when a worker thread runs this."""
        try:
            return 200, json.dumps(self.service.search(text, k, mode, where), ensure_ascii=False).encode()
        except DensesearchError as exc:
            return http_status(exc), json.dumps({"error": str(exc)}, ensure_ascii=False).encode()


async def respond(send, status: int, body: bytes) -> None:
    """A whole JSON response through the ASGI ``send``."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def undecodable_query(scope) -> str | None:
    """The CLI's refusal of a query that is not valid UTF-8, for a ``GET /search`` whose ``q`` is not (Starlette
    would replace the bad bytes with U+FFFD and search for that): one rule for both."""
    if scope["method"] != "GET" or scope["path"] != "/search":
        return None
    for pair in scope["query_string"].split(b"&")[:16]:
        key, _, value = pair.partition(b"=")
        if unquote_to_bytes(key.replace(b"+", b" ")) != b"q":
            continue
        try:
            check_utf8(unquote_to_bytes(value.replace(b"+", b" ")).decode("utf-8", errors="surrogateescape"))
        except BadInput as exc:
            return str(exc)
    return None


async def run_on(executor: ThreadPoolExecutor | None, function, *args):
    """``function(*args)`` on one of the executor's threads, or right here when there is no executor."""
    if executor is None:
        return function(*args)
    return await asyncio.get_running_loop().run_in_executor(executor, function, *args)


def checked_filters(where: Sequence[str]) -> tuple[str, ...]:
    """A request's filter expressions (blank ones dropped), at most ``MAX_FILTERS``."""
    kept = tuple(text for text in where if text.strip())
    if len(kept) > MAX_FILTERS:
        raise BadInput(f"{len(kept)} filters given (max {MAX_FILTERS})",
                       hint="join conditions with 'and' in one filter")
    return kept


def search_params(scope) -> tuple[str, int, str | None, tuple[str, ...]] | None:
    """``(q, k, mode, filters)`` of a valid ``GET /search``, or None for anything the FastAPI route should
    handle."""
    if scope["method"] != "GET" or scope["path"] != "/search":
        return None
    try:
        query = parse_qs(scope["query_string"].decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                         errors="strict", max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        return None
    texts, ks, modes = query.get("q", []), query.get("k", ["10"]), query.get("mode", [None])
    if len(texts) != 1 or len(ks) != 1 or len(modes) != 1 or len(texts[0]) > MAX_QUERY_CHARS:
        return None
    k, mode = ks[0], modes[0]
    if not (k.isascii() and k.isdigit() and 1 <= int(k) <= MAX_K) or mode not in (None, *MODES):
        return None
    filters = tuple(query.get("filter", ()))
    if any(len(text) > MAX_FILTER_CHARS for text in filters):
        return None
    return texts[0], int(k), mode, filters


def search_page() -> str:
    return (resources.files("densesearch") / PAGE_RESOURCE).read_text(encoding="utf-8")


def create_app(service: SearchService, inline: bool = False, share: LoadShare | None = None):
    """The FastAPI application over one SearchService.

    ``inline`` answers each search on the event loop's own thread: right for a process that owns one core
    (``serve --workers N``), where handing work to a thread only adds cost. ``share`` moves keep-alive
    connections away from a process that holds more than its share of them (``densesearch.loadshare``).
    """
    from fastapi import Body, FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

    filter_query = Annotated[list[Annotated[str, Query(max_length=MAX_FILTER_CHARS)]], Query(
        max_length=MAX_FILTERS, description="A filter, e.g. price < 30 and rating >= 4 (repeated: all must hold)")]
    filter_body = Annotated[list[Annotated[str, Body(max_length=MAX_FILTER_CHARS)]], Body(max_length=MAX_FILTERS)]
    # Searches run in worker threads, one per core: ONNX Runtime, FAISS and numpy release the GIL, so two
    # requests encode in parallel while the event loop keeps parsing and answering.
    executor = None if inline else ThreadPoolExecutor(service.workers, thread_name_prefix="densesearch-search")

    @asynccontextmanager
    async def lifespan(_app):
        yield
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="densesearch", version=_version(), lifespan=lifespan,
                  description="Dense, BM25 and hybrid search over one densesearch workspace.")

    async def answer(q: str, k: int, mode: str | None, where: Sequence[str] = ()) -> dict[str, Any]:
        return await run_on(executor, service.search, q, k, mode, where)

    @app.exception_handler(DensesearchError)
    async def refused(request: Request, exc: DensesearchError) -> JSONResponse:
        return JSONResponse(status_code=http_status(exc), content={"error": str(exc)})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ("request",), "msg": "invalid request"}
        if first.get("type") == "string_unicode":  # a JSON string with a lone surrogate: the CLI's rule and words
            return JSONResponse(status_code=400, content={"error": str(not_utf8())})
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        return JSONResponse(status_code=422, content={"error": f"{where}: {first.get('msg', 'invalid')}"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return search_page()

    @app.get("/search", summary="Top-k items for one query (the `query --json` schema, with timings)")
    async def search(q: Annotated[str, Query(max_length=MAX_QUERY_CHARS)],
                     k: Annotated[int, Query(ge=1, le=MAX_K)] = 10, mode: Mode | None = None,
                     filter: filter_query = ()) -> Response:  # noqa: A002 (the API's parameter name)
        # already plain JSON types: serialised directly, without FastAPI's per-field encoder
        return Response(json.dumps(await answer(q, k, mode, filter), ensure_ascii=False),
                        media_type="application/json")

    @app.post("/search", summary="Top-k items for a batch of queries")
    async def search_batch(queries: Annotated[list[Annotated[str, Body(max_length=MAX_QUERY_CHARS)]],
                                              Body(embed=True, min_length=1, max_length=MAX_BATCH)],
                           k: Annotated[int, Body(ge=1, le=MAX_K)] = 10,
                           mode: Annotated[Mode | None, Body()] = None,
                           filter: filter_body = ()) -> dict[str, Any]:  # noqa: A002
        return {"answers": [await answer(q, k, mode, filter) for q in queries]}

    @app.get("/items/{item_id}", summary="One catalog item as indexed")
    async def item(item_id: str) -> dict[str, Any]:
        searcher = service.index().searcher
        return searcher.items[searcher.row(item_id)]

    @app.get("/items/{item_id}/similar", summary="Items like one item (its stored vector; not its variant group)")
    async def similar(item_id: str, k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
                      filter: filter_query = ()) -> Response:  # noqa: A002
        answer = await run_on(executor, service.similar, item_id, k, filter)
        return Response(json.dumps(answer, ensure_ascii=False), media_type="application/json")

    @app.post("/recommend", summary="Items for a shopper's history (recent texts and/or item ids), unseen ones only")
    async def recommend(texts: Annotated[list[Annotated[str, Body(max_length=MAX_QUERY_CHARS)]],
                                         Body(max_length=MAX_HISTORY_ENTRIES)] = (),
                        item_ids: Annotated[list[Annotated[str, Body(max_length=256)]],
                                            Body(max_length=MAX_HISTORY_ENTRIES)] = (),
                        k: Annotated[int, Body(ge=1, le=MAX_K)] = 10,
                        filter: filter_body = ()) -> Response:  # noqa: A002
        answer = await run_on(executor, service.recommend, list(texts), list(item_ids), k, filter)
        return Response(json.dumps(answer, ensure_ascii=False), media_type="application/json")

    @app.get("/health", summary="Served artifacts and their fingerprints")
    async def health() -> JSONResponse:
        report = service.health()
        return JSONResponse(status_code=200 if report["serving"] else 503, content=report)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def metrics() -> str:
        return service.metrics.text(len(service.current.searcher.items))

    app.add_middleware(SearchFastPath, service=service, executor=executor)
    if share is not None:
        app.add_middleware(ConnectionBalancer, share=share)  # added last: the outermost layer
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


def serve(workspace: Workspace, host: str, port: int, threads: int = 1, workers: int = 1,
          limits: ServerLimits | None = None) -> None:
    """Load the index and serve until interrupted (``workers`` processes sharing the port), within ``limits``."""
    import uvicorn

    limits = limits or ServerLimits()
    limits.publish()
    raise_open_file_limit(limits.connections + OPEN_FILES_SPARE)
    options = {"host": host, "port": port, "log_level": "warning", "access_log": False,  # uvloop where installed
               **limits.uvicorn_options()}
    if workers == 1:
        uvicorn.run(create_app(loaded_service(workspace, threads)), **options)
        return
    from densesearch.core.artifacts import open_artifact

    open_artifact(workspace, "index")  # a missing or damaged index: one clear line here, not one per process
    with tempfile.TemporaryDirectory(prefix="densesearch-serve-") as shares:
        os.environ[WORKER_SETTINGS_ENV] = json.dumps({"home": str(workspace.home), "name": workspace.name,
                                                      "threads": threads, "workers": workers, "shares": shares,
                                                      "parent": os.getpid()})
        uvicorn.run("densesearch.serve.app:worker_app", factory=True, workers=workers, **options)


def worker_app():
    """One process of ``serve --workers N`` (uvicorn imports and calls this in each process it starts)."""
    settings = json.loads(os.environ[WORKER_SETTINGS_ENV])
    die_with_parent(int(settings["parent"]))
    workspace = Workspace(Path(settings["home"]), settings["name"])
    share = LoadShare(Path(settings["shares"]), settings["workers"])
    return create_app(loaded_service(workspace, settings["threads"]), inline=True, share=share)


def die_with_parent(parent: int) -> None:
    """Ask Linux to end this process when its parent dies (a `serve --workers` supervisor killed with -9 would
    otherwise leave its workers holding the port); exit now if the parent is already gone."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor's own shutdown still stops its workers
        return
    if os.getppid() != parent:
        os._exit(1)


__all__ = ["SearchService", "create_app", "serve", "worker_app"]
