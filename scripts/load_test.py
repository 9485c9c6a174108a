"""Bounded load test of `densesearch serve` on loopback: QPS, p50/p99 and errors per mode, then during a republish.

Usage: python scripts/load_test.py [--home PATH] [-w NAME] [--clients 8] [--seconds 30] [--workers N]
                                  [--no-republish] [--json]

Starts `densesearch serve` on a free 127.0.0.1 port for an already built workspace (`densesearch
quickstart`), drives it with N concurrent keep-alive HTTP connections for a fixed time per mode,
then (unless --no-republish) repeats dense mode while `densesearch index` rebuilds and republishes the
index. Each mode's QPS is also given as a share of dense mode's, measured in the same run. The load comes
from `wrk` (Debian package; a C client that leaves the CPU to the server) when installed, else from
an asyncio httpx client (heavier: on 2 cores it takes CPU from the server). Only loopback is
contacted; every loop ends by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from densesearch.core.cpu import usable_cores

QUERIES = ("comfy summer dress for beach", "waterproof hiking boots for men", "silver hoop earrings",
           "kids halloween costume dinosaur", "high waisted yoga shorts with pockets", "polarized sunglasses",
           "warm winter coat for women", "leather wallet with coin pocket", "running shoes wide feet",
           "floral maxi skirt", "cotton socks pack", "baseball cap adjustable")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def client_loop(client, url: str, mode: str, until: float, offset: int, latencies: list[float],
                      errors: list[str]) -> None:
    n = offset
    while time.perf_counter() < until:
        started = time.perf_counter()
        try:
            response = await client.get(url, params={"q": QUERIES[n % len(QUERIES)], "k": 10, "mode": mode})
            if response.status_code != 200:
                errors.append(f"{response.status_code} {response.text[:80]}")
        except Exception as exc:  # noqa: BLE001 (a load test counts every failure, whatever its kind)
            errors.append(type(exc).__name__)
        latencies.append((time.perf_counter() - started) * 1000)
        n += 1


async def run_phase(base: str, mode: str, clients: int, seconds: float) -> dict[str, float]:
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:
        started = time.perf_counter()
        until = started + seconds
        await asyncio.gather(*(client_loop(client, f"{base}/search", mode, until, i, latencies, errors)
                               for i in range(clients)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"mode": mode, "requests": len(latencies), "errors": len(errors), "qps": len(latencies) / elapsed,
            "p50_ms": statistics.median(ordered), "p99_ms": ordered[int(0.99 * (len(ordered) - 1))],
            "first_errors": errors[:3]}


WRK_SCRIPT = """
local paths = {%s}
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", paths[(n %% #paths) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %%d, "errors": %%d, "p50_us": %%d, "p99_us": %%d, "duration_us": %%d}\\n',
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), summary.duration))
end
"""


def run_phase_wrk(base: str, mode: str, clients: int, seconds: float, scratch: str) -> dict[str, float]:
    from urllib.parse import urlencode

    paths = ", ".join(json.dumps("/search?" + urlencode({"q": q, "k": 10, "mode": mode})) for q in QUERIES)
    script = os.path.join(scratch, f"load-{mode}.lua")
    with open(script, "w") as handle:
        handle.write(WRK_SCRIPT % paths)
    done = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{int(seconds)}s", "-s", script, base],
                          capture_output=True, text=True, check=True, timeout=seconds + 60)
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    return {"mode": mode, "requests": stats["requests"], "errors": stats["errors"],
            "qps": stats["requests"] / (stats["duration_us"] / 1e6), "p50_ms": stats["p50_us"] / 1000,
            "p99_ms": stats["p99_us"] / 1000, "first_errors": []}


def wait_until_up(base: str, process: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {process.stderr.read()}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("the server did not start in time")


def republish_phase(phase, workspace: str, home: list[str]) -> dict:
    """Dense mode while `densesearch index --reencode` republishes, run as an operator would beside a live server:
    lowest CPU priority, one thread."""
    nice = ["nice", "-n", "19"] if shutil.which("nice") else []
    rebuild = subprocess.Popen([*nice, sys.executable, "-m", "densesearch", "index", "--threads", "1", "--reencode",
                                "-w", workspace, *home], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    during = phase("dense")
    during["mode"] = "dense, during index republish"
    during["republish_exit_code"] = rebuild.wait(timeout=600)
    return during


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default=None)
    parser.add_argument("-w", "--workspace", default="default")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--threads", type=int, default=1, help="server encoder threads (0: all cores)")
    parser.add_argument("--workers", type=int, default=usable_cores(),
                        help="server processes (`serve --workers`; default: one per core)")
    parser.add_argument("--tool", choices=("auto", "wrk", "httpx"), default="auto")
    parser.add_argument("--no-republish", action="store_true", help="skip the phase during an index republish")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    home = ["--home", args.home] if args.home else []
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "densesearch", "serve", "--port", str(port), "--threads",
                               str(args.threads), "--workers", str(args.workers), "-w", args.workspace, *home],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    results = []
    tool = ("wrk" if shutil.which("wrk") else "httpx") if args.tool == "auto" else args.tool
    scratch = tempfile.mkdtemp(prefix="densesearch-load-")

    def phase(mode: str) -> dict:
        if tool == "wrk":
            return run_phase_wrk(base, mode, args.clients, args.seconds, scratch)
        return asyncio.run(run_phase(base, mode, args.clients, args.seconds))

    try:
        wait_until_up(base, server)
        for mode in ("dense", "hybrid", "bm25"):
            results.append(phase(mode))
        if not args.no_republish:
            results.append(republish_phase(phase, args.workspace, home))
        health = __import__("httpx").get(f"{base}/health", timeout=5).json()
    finally:
        server.terminate()
        server.wait(timeout=30)
    dense_qps = results[0]["qps"]
    for row in results:
        row["share_of_dense_qps"] = row["qps"] / dense_qps if dense_qps else 0.0
    if args.json:
        print(json.dumps({"tool": tool, "clients": args.clients, "seconds": args.seconds, "workers": args.workers,
                          "threads": args.threads, "results": results,
                          "health": health},
                         indent=2))
        return
    print(f"{tool}, {args.clients} connections, {args.seconds:.0f} s per phase, loopback, server processes "
          f"{args.workers}, encoder threads {args.threads}; served index {health['index'][:12]}")
    print(f"{'mode':32} {'requests':>9} {'QPS':>7} {'vs dense':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for row in results:
        print(f"{row['mode']:32} {row['requests']:>9,} {row['qps']:>7.0f} {row['share_of_dense_qps']:>8.0%} "
              f"{row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['errors']:>7}")


if __name__ == "__main__":
    main()
