"""`index --engine ray`: encode the catalog as a Ray Dataset over a pool of encoder actors.

Each actor loads the encoder once (its files travel through Ray's object store, so workers on other
machines need no shared disk). The catalog is cut into the same chunks the local engine encodes, one
chunk per task, so every text meets the same batch-mates and INT8's per-batch activation scales match
the local engine. Vectors stream back to the driver and land in the memory-mapped matrix by row.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from densesearch.core.errors import BadInput
from densesearch.retrieval.encoders import EncoderSpec, load_catalog_runtime, load_onnx_encoder, load_torch_encoder

RAY_HINT = "install the extra: pip install 'densesearch[ray]'"


@dataclass(frozen=True)
class RayPlan:
    """Where to run (None: a local Ray started for this command) and how many encoder actors."""

    address: str | None = None
    workers: int = 2
    threads_per_worker: int = 1
    chunk: int = 4096      # catalog texts per task (the local engine's chunk, so vectors match)
    batch_size: int = 16   # texts per encoder batch


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401 (Ray Data is a separate part of the package)
    except ImportError as exc:
        raise BadInput("--engine ray needs Ray, which is not installed", hint=RAY_HINT) from exc
    return ray


def directory_payload(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` by relative path (an encoder is tens of MB)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


class EncoderActor:
    """A Ray actor that unpacks the encoder once and encodes one chunk per call."""

    def __init__(self, payload, backend: str, fingerprint: str, threads: int, batch_size: int) -> None:
        import ray

        if isinstance(payload, ray.ObjectRef):  # the files, put once in the object store
            payload = ray.get(payload)
        directory = Path(tempfile.mkdtemp(prefix="densesearch-encoder-"))
        try:  # an actor is killed, not closed, at shutdown: its files go as soon as the model is loaded
            for name, data in payload.items():
                target = directory / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            if backend == "torch":
                self.encoder = load_torch_encoder(str(directory), fingerprint)
            else:
                self.encoder = load_onnx_encoder(directory, int8=backend == "onnx-int8", fingerprint=fingerprint,
                                                 threads=threads)
                load_catalog_runtime(self.encoder)  # before its files go: this actor encodes the catalog
        finally:  # the runtimes hold the model in memory (or a mapping, which outlives the file on POSIX)
            shutil.rmtree(directory, ignore_errors=True)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows, vectors = [], []
        for start, texts in zip(batch["start"], batch["texts"], strict=True):
            texts = [str(t) for t in texts]
            vectors.append(self.encoder.encode(texts, batch_size=self.batch_size))
            rows.append(np.arange(int(start), int(start) + len(texts)))
        return {"row": np.concatenate(rows), "vector": np.concatenate(vectors).astype(np.float32)}


def encode_with_ray(spec: EncoderSpec, encoder_dir: Path, texts: list[str], out: np.ndarray, chunk: int,
                    batch_size: int, plan: RayPlan, progress=None) -> dict[str, float]:
    """Fill ``out`` (rows x dim) with the catalog's vectors, encoded by ``plan.workers`` Ray actors."""
    ray = require_ray()
    for name in ("ray", "ray.data"):  # the driver's INFO lines would interleave with the command's output
        logging.getLogger(name).setLevel(logging.ERROR)
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=plan.address, num_cpus=None if plan.address else plan.workers * plan.threads_per_worker,
                     include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                     configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise BadInput(f"cannot reach a Ray cluster at {plan.address!r} ({exc})",
                           hint="check --address (ray://HOST:10001 or HOST:6379) or drop it for a local Ray") from exc
    try:
        return _encode(ray, spec, encoder_dir, texts, out, replace(plan, chunk=chunk, batch_size=batch_size),
                       progress)
    except ray.exceptions.RayError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else exc.__class__.__name__
        raise BadInput(f"Ray could not encode the catalog ({first[:200]})",
                       hint="run again with --engine local, or check the cluster's logs") from exc
    finally:
        if started_here:
            ray.shutdown()


def _encode(ray, spec: EncoderSpec, encoder_dir: Path, texts: list[str], out: np.ndarray, plan: RayPlan,
            progress) -> dict[str, float]:
    from ray.data import ActorPoolStrategy, DataContext

    DataContext.get_current().enable_progress_bars = False
    started = time.perf_counter()
    payload = ray.put(directory_payload(encoder_dir))
    chunk, batch_size = plan.chunk, plan.batch_size
    chunks = [{"start": s, "texts": texts[s:s + chunk]} for s in range(0, len(texts), chunk)]
    dataset = ray.data.from_items(chunks, override_num_blocks=len(chunks))
    actors = max(1, min(plan.workers, len(chunks)))  # more actors than chunks would idle (and Ray warns)
    encoded = dataset.map_batches(
        EncoderActor, batch_size=1, batch_format="numpy", compute=ActorPoolStrategy(size=actors),
        num_cpus=plan.threads_per_worker,
        fn_constructor_kwargs={"payload": payload, "backend": spec.backend, "fingerprint": spec.fingerprint,
                               "threads": plan.threads_per_worker, "batch_size": batch_size})
    done = 0
    for batch in encoded.iter_batches(batch_size=None, batch_format="numpy"):
        out[batch["row"]] = batch["vector"]
        done += len(batch["row"])
        if progress:
            progress("encoding catalog (Ray)", done, len(texts))
    if done != len(texts):
        raise BadInput(f"Ray returned {done:,} of {len(texts):,} vectors", hint="run `densesearch index` again")
    return {"seconds": time.perf_counter() - started, "workers": actors}
