"""Keep `serve --workers N`'s processes equally loaded by moving keep-alive connections between them.

A keep-alive connection stays with the process that accepted it. A client with a few long-lived
connections (a load balancer's upstream pool, an app server, wrk) can therefore land 6 of 8 connections
on one process of two: that process queues three times the other's work and sets the tail latency
(measured: p99 14-17 ms at 4/4, 24 ms at 6/2, 32 ms at 7/1; docs/results.md). Each process counts its
active connections (clients seen within the last ``idle_s``) and publishes the count in a small file;
a process holding more than its fair share (total / N, rounded up) answers the request it is serving
with ``Connection: close``. The client reconnects, and the connection goes to whichever process accepts
it, until the shares are even. Files, not shared memory, because they need no set-up across uvicorn's
spawned processes and a dead process's stale file simply ages out.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REFRESH_SECONDS = 0.1
IDLE_SECONDS = 2.0


@dataclass
class LoadShare:
    """This process's active connections, and its peers' as last published in ``directory``."""

    directory: Path
    workers: int
    name: str = field(default_factory=lambda: str(os.getpid()))
    refresh_s: float = REFRESH_SECONDS
    idle_s: float = IDLE_SECONDS
    active: dict[tuple, float] = field(default_factory=dict)
    peers: int = 0
    refreshed: float = -math.inf
    published: bool = True

    def should_close(self, client: tuple, now: float) -> bool:
        """Note a request from ``client``; True when this process holds more than its share of connections."""
        self.active[client] = now
        if now - self.refreshed >= self.refresh_s:
            self.refresh(now)
        mine = len(self.active)
        if self.published and mine > math.ceil((mine + self.peers) / self.workers):
            del self.active[client]  # it is about to close; its replacement counts wherever it lands
            return True
        return False

    def refresh(self, now: float) -> None:
        """Forget idle connections, publish this process's count, read the peers' recent counts."""
        self.refreshed = now
        self.active = {client: seen for client, seen in self.active.items() if now - seen < self.idle_s}
        scratch = self.directory / f".{self.name}.tmp"
        try:
            scratch.write_text(str(len(self.active)))
            os.replace(scratch, self.directory / self.name)
            wall_now = time.time()
            self.peers = sum(self._recent_count(path, wall_now) for path in self.directory.iterdir()
                             if path.name != self.name and not path.name.startswith("."))
            self.published = True
        except OSError:  # the directory is gone (a /tmp cleaner) or full: serve on, just without balancing
            self.published = False

    def _recent_count(self, path: Path, wall_now: float) -> int:
        try:
            if wall_now - path.stat().st_mtime >= self.idle_s:
                return 0  # an idle or dead peer
            return int(path.read_text() or 0)
        except (OSError, ValueError):
            return 0  # a peer replacing its file right now, or gone


class ConnectionBalancer:
    """ASGI middleware: answers with ``Connection: close`` when ``share`` says this process holds too many."""

    def __init__(self, app, share: LoadShare, clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.share = share
        self.clock = clock

    async def __call__(self, scope, receive, send) -> None:
        client = scope.get("client") if scope["type"] == "http" else None
        if not client or not self.share.should_close(tuple(client), self.clock()):
            await self.app(scope, receive, send)
            return

        async def closing(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing)


__all__ = ["ConnectionBalancer", "LoadShare"]
