"""`serve --workers N` keeps its processes' keep-alive connections even (densesearch.serve.loadshare)."""

import asyncio
import os
import time

from densesearch.serve.loadshare import ConnectionBalancer, LoadShare


def _clients(n: int, first: int = 0) -> list[tuple]:
    return [("127.0.0.1", 40000 + i) for i in range(first, first + n)]


def _publish(directory, name: str, connections: int) -> LoadShare:
    """A peer process that currently holds ``connections`` active connections."""
    peer = LoadShare(directory, 2, name=name)
    peer.active = {client: 0.0 for client in _clients(connections, 100)}
    peer.refresh(0.0)
    return peer


def test_a_process_over_its_share_closes_until_even(tmp_path):
    _publish(tmp_path, "b", 2)
    a = LoadShare(tmp_path, 2, name="a")
    closed = [a.should_close(client, now=0.0) for client in _clients(6)]
    assert closed == [False, False, False, True, True, True]  # a 4th would be over ceil((4 + 2) / 2)
    assert len(a.active) == 3 and a.peers == 2
    assert not any(a.should_close(client, now=0.05) for client in a.active.copy())  # settled: nobody moves


def test_even_split_and_odd_totals_never_close(tmp_path):
    _publish(tmp_path, "b", 3)
    a = LoadShare(tmp_path, 2, name="a")
    assert not any(a.should_close(client, now=0.0) for client in _clients(4))  # 4 of 7: ceil(7 / 2)
    assert a.should_close(("127.0.0.1", 1), now=0.0)  # a 5th would be over
    alone = LoadShare(tmp_path / "none", 2, name="x")
    (tmp_path / "none").mkdir()
    assert not alone.should_close(("127.0.0.1", 2), now=0.0)  # one connection, no peer: stays


def test_idle_connections_and_stale_peers_stop_counting(tmp_path):
    _publish(tmp_path, "b", 4)
    a = LoadShare(tmp_path, 2, name="a", idle_s=2.0)
    for client in _clients(3):
        a.should_close(client, now=0.0)
    assert a.peers == 4
    old = time.time() - 10
    os.utime(tmp_path / "b", (old, old))  # b died or went quiet
    a.should_close(_clients(1)[0], now=5.0)  # a's other two clients went idle meanwhile
    assert a.peers == 0 and len(a.active) == 1


def test_a_lost_share_directory_only_stops_the_balancing(tmp_path):
    a = LoadShare(tmp_path / "gone", 2, name="a")
    assert not any(a.should_close(client, now=0.0) for client in _clients(5))  # never created: no error, no close
    assert not a.published


def test_balancer_adds_connection_close_only_when_told(tmp_path):
    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def headers_for(balancer, client) -> list:
        sent = []

        async def send(message) -> None:
            sent.append(message)

        await balancer({"type": "http", "client": client}, None, send)
        return sent[0]["headers"]

    LoadShare(tmp_path, 2, name="peer").should_close(("10.0.0.9", 1), now=0.0)  # the peer holds 1
    balancer = ConnectionBalancer(app, LoadShare(tmp_path, 2, name="me"), clock=lambda: 0.0)
    first, second, third = (asyncio.run(headers_for(balancer, c)) for c in _clients(3))
    assert (b"connection", b"close") not in first and (b"connection", b"close") not in second
    assert third[-1] == (b"connection", b"close") and third[0] == (b"content-type", b"text/plain")
