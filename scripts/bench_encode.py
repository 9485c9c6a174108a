"""Catalog encode speed and batch dependence of every encoder in a workspace's ONNX artifact, in one run.

Usage: python scripts/bench_encode.py [--home PATH] [--workspace default] [--rounds 3] [--int8-only] [--json]

For the FP32 ONNX model and each INT8 model `quantize` left in the artifact (ONNX Runtime's dynamic
INT8 and, where it passed, OpenVINO's static INT8), at catalog batch sizes 16 and 64 (64 was the
default before the batch-size sweep): items/s and real tokens/s over the whole catalog (the best of
interleaved rounds, so machine noise hits every row alike), the share of the CPU's rough INT8 peak,
and how much a vector depends on its batch-mates: the cosine between a text encoded alone and in a
batch, and the dev Recall@10 of the catalog encoded in batches minus encoded one text at a time
(queries one at a time, as served). Needs a built workspace (`densesearch quickstart`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from densesearch.build.export import encode_speeds
from densesearch.core.artifacts import open_artifact
from densesearch.core.cpu import int8_peak_ops, read_cpu, usable_cores
from densesearch.core.paths import Workspace, resolve_home
from densesearch.data.readers import load_catalog, load_pairs
from densesearch.eval.evaluation import exact_topk
from densesearch.retrieval.encoders import RUNTIMES, load_onnx_encoder, ops_per_token

BATCHES = (16, 64)


@dataclass
class Row:
    encoder: str
    batch: int
    items_per_second: float
    tokens_per_second: float
    peak_share: float | None
    cosine_alone_min: float | None = None
    cosine_alone_mean: float | None = None
    recall_batched: float | None = None
    recall_alone: float | None = None


def encoders_in(directory: Path, fp32: bool = True) -> dict[str, object]:
    """FP32 (unless told not to) plus one encoder per INT8 model file the artifact's runtime race kept."""
    found = {"fp32 onnxruntime": load_onnx_encoder(directory, int8=False, fingerprint="")} if fp32 else {}
    for trial in json.loads((directory / "manifest.json").read_text())["extra"].get("runtimes", []):
        found[f"int8 {trial['runtime']} ({trial['recipe']})"] = RUNTIMES[trial["runtime"]](
            directory, int8=True, fingerprint="", model_file=trial["file"])
    return found


def recall_at_10(queries: np.ndarray, items: np.ndarray, positives: np.ndarray) -> float:
    top, _ = exact_topk(queries, items, 10)
    return float(np.mean([p in row for p, row in zip(positives, top, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default=None)
    parser.add_argument("--workspace", default="default")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--int8-only", action="store_true",
                        help="skip the FP32 rows (e.g. on a machine where only the INT8 files were copied)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ws = Workspace(resolve_home(args.home), args.workspace)
    directory = open_artifact(ws, "onnx").path
    catalog = load_catalog(ws)
    texts = catalog.texts
    position = {item: n for n, item in enumerate(catalog.ids)}
    dev = [p for p in load_pairs(ws, "dev") if p.item_id in position]
    positives = np.asarray([position[p.item_id] for p in dev])
    peak = int8_peak_ops(read_cpu(), usable_cores())
    rows: list[Row] = []
    encoders = encoders_in(directory, fp32=not args.int8_only)
    best = {(name, batch): speed for batch in BATCHES
            for name, speed in zip(encoders, encode_speeds(list(encoders.values()), texts, batch, args.rounds),
                                   strict=True)}
    ops = ops_per_token(directory, sum(len(e.ids) for e in next(iter(encoders.values())).tokenizer.encode_batch(
        texts)) / len(texts))
    for name, encoder in encoders.items():
        queries = encoder.encode_queries([p.query for p in dev])  # one at a time, as served
        alone = encoder.encode_queries(texts)  # each catalog text by itself
        for batch in BATCHES:
            items_s, tokens_s = best[name, batch]
            batched = encoder.encode(texts, batch_size=batch)
            cosines = np.sum(batched * alone, axis=1)
            share = ops * tokens_s / peak if ops and peak and name.startswith("int8") else None
            rows.append(Row(name, batch, items_s, tokens_s, share, float(cosines.min()), float(cosines.mean()),
                            recall_at_10(queries, batched, positives), recall_at_10(queries, alone, positives)))
    if args.json:
        print(json.dumps({"cpu": read_cpu().as_dict(), "cores": usable_cores(), "items": len(texts),
                          "dev_queries": len(dev), "rows": [asdict(r) for r in rows]}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"catalog encode, {len(texts):,} items, {len(dev):,} dev queries, {read_cpu().model}, "
                        f"{usable_cores()} cores (best of {args.rounds} interleaved rounds)")
    for column in ("encoder", "batch", "items/s", "tokens/s", "INT8 peak", "alone vs batched cos min / mean",
                   "dev R@10 batched", "dev R@10 alone"):
        table.add_column(column, justify="left" if column == "encoder" else "right")
    for r in rows:
        table.add_row(r.encoder, str(r.batch), f"{r.items_per_second:,.0f}", f"{r.tokens_per_second:,.0f}",
                      f"{r.peak_share:.0%}" if r.peak_share else "-",
                      f"{r.cosine_alone_min:.4f} / {r.cosine_alone_mean:.5f}", f"{r.recall_batched:.3f}",
                      f"{r.recall_alone:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
