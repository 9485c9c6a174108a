"""Timing helpers shared by `bench` and `bench --scale`: warm-up then timed calls, percentiles, machine info."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from densesearch.core.cpu import usable_cores
from densesearch.core.manifest import package_versions


@dataclass
class LatencyStats:
    backend: str
    stage: str
    batch_size: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    qps: float
    samples_ms: list[float] = field(repr=False, default_factory=list)


def latency_stats(backend: str, stage: str, batch_size: int, samples_ms: list[float]) -> LatencyStats:
    values = np.asarray(samples_ms)
    return LatencyStats(backend=backend, stage=stage, batch_size=batch_size,
                        p50_ms=float(np.percentile(values, 50)), p90_ms=float(np.percentile(values, 90)),
                        p99_ms=float(np.percentile(values, 99)), mean_ms=float(values.mean()),
                        qps=float(batch_size * 1000 / values.mean()), samples_ms=[round(v, 4) for v in samples_ms])


def time_calls(call, inputs: list[Any], runs: int, warmup: int) -> list[float]:
    for n in range(warmup):
        call(inputs[n % len(inputs)])
    samples = []
    for n in range(runs):
        started = time.perf_counter()
        call(inputs[n % len(inputs)])
        samples.append((time.perf_counter() - started) * 1000)
    return samples


INTERLEAVE_BLOCK = 25  # consecutive runs of one call before the next call's turn


def time_interleaved(calls: dict[str, Any], inputs: list[Any], runs: int, warmup: int,
                     block: int = INTERLEAVE_BLOCK) -> dict[str, list[float]]:
    """``time_calls`` for several calls at once, taking turns in blocks of ``block`` runs: a ratio between two of
    them is not skewed by the machine speeding up or slowing down between one call's runs and the next's, while
    each call still runs on caches it warmed itself (one at a time would leave each call the others' caches)."""
    for call in calls.values():
        time_calls(call, inputs, 0, warmup)  # warm-up only
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for first in range(0, runs, block):
        for name, call in calls.items():
            shifted = inputs[first % len(inputs):] + inputs[:first % len(inputs)]
            samples[name] += time_calls(call, shifted, min(block, runs - first), 0)
    return samples


def machine_info(threads: int) -> dict[str, Any]:
    flags = set()
    try:
        flags = {f for f in Path("/proc/cpuinfo").read_text().split() if f.startswith(("avx", "amx", "vnni"))}
    except OSError:
        pass
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"platform": platform.platform(), "cpu": model, "cores": usable_cores(), "cpu_flags": sorted(flags),
            "threads": threads or usable_cores(), "versions": package_versions()}


def cyclic_batches(items: list[Any], batch: int) -> list[list[Any]]:
    """One batch per item, starting there and wrapping around: every run sees a full batch."""
    return [[items[(n + j) % len(items)] for j in range(batch)] for n in range(len(items))]
