"""What the server allows a client, so that slow or idle connections cannot take it down (docs/reliability.md).

- A request's headers and body must arrive within ``request_timeout`` seconds of its first byte (of the connection's
  opening, for its first request); a client that sends one byte now and then is cut off, not waited for.
- A keep-alive connection with no request in flight is closed after ``keep_alive`` seconds (uvicorn's own timer).
- At most ``connections`` connections and requests in flight per process; above it new requests get HTTP 503 at
  once (uvicorn's ``limit_concurrency``), below the open-file limit, which `serve` raises to the cap + a spare.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

LIMITS_ENV = "DENSESEARCH_SERVE_LIMITS"  # how `serve` hands the limits to the protocol in each process


@dataclass(frozen=True)
class ServerLimits:
    """The server's limits (`serve --request-timeout --keep-alive --max-connections`)."""

    request_timeout: float = 10.0
    keep_alive: float = 5.0
    connections: int = 512

    def uvicorn_options(self) -> dict:
        return {"http": GuardedHttpProtocol, "timeout_keep_alive": self.keep_alive,
                "limit_concurrency": self.connections}

    def publish(self) -> None:
        """Hand the limits to this process's and its worker processes' protocol (read per connection)."""
        os.environ[LIMITS_ENV] = json.dumps(asdict(self))

    @classmethod
    def published(cls) -> ServerLimits:
        try:
            return cls(**json.loads(os.environ.get(LIMITS_ENV, "{}")))
        except (ValueError, TypeError):
            return cls()


def raise_open_file_limit(needed: int) -> None:
    """Raise this process's soft open-file limit to at least ``needed`` (up to the hard limit)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request deadline: armed when the connection opens and when a request's
    first byte arrives, cleared when its last byte has arrived; when it fires the connection is closed."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.request_timeout = ServerLimits.published().request_timeout
        self.deadline = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.deadline is None:
            self._arm()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self.deadline = self.loop.call_later(self.request_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _too_slow(self) -> None:
        self.deadline = None
        if not self.transport.is_closing():
            self.transport.close()
