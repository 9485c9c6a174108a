"""Cold `densesearch query` wall time: process start to printed table, one fresh process per run.

Usage: python scripts/bench_cold_query.py [--runs 7] [--home PATH] [--mode dense|bm25|hybrid]

Prints a table of median / min / max seconds for: a bare Python start, importing the CLI, and the
full query per mode, so the cost of start-up can be told from the cost of the query itself. Needs a
built workspace (`densesearch quickstart`). The page cache is warm after the first run; the first
run is reported separately as "first".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

QUERY = "comfy summer dress for beach"


def wall_seconds(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def measure(command: list[str], env: dict[str, str], runs: int) -> dict[str, float]:
    first = wall_seconds(command, env)
    samples = [wall_seconds(command, env) for _ in range(runs)]
    return {"first": first, "median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--home", default=None, help="artifact root (default: $DENSESEARCH_HOME or the cache dir)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.home:
        env["DENSESEARCH_HOME"] = args.home
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "import densesearch.cli.app": [sys.executable, "-c", "import densesearch.cli.app"],
        **{f"query --mode {mode}": [sys.executable, "-m", "densesearch", "query", QUERY, "-k", "10", "--mode", mode]
           for mode in ("bm25", "dense", "hybrid")},
    }
    results = {name: measure(command, env, args.runs) for name, command in cases.items()}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'case':<26}{'first s':>9}{'median s':>10}{'min s':>8}{'max s':>8}")
    for name, r in results.items():
        print(f"{name:<26}{r['first']:>9.3f}{r['median']:>10.3f}{r['min']:>8.3f}{r['max']:>8.3f}")


if __name__ == "__main__":
    main()
