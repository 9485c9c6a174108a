"""Cold `densesearch query` wall time against the script a user would write by hand, one fresh process per run.

Usage: python scripts/bench_cold_query.py [--runs 7] [--home PATH] [-w NAME] [--terminal] [--json]

Cases, each run ``--runs`` times (round-robin) after one untimed run that warms the page cache, with densesearch's
bytecode compiled first as a wheel install has it:
- ``python -c pass`` and ``import densesearch.cli.app``: what start-up alone costs;
- ``hand-written script``: the same dense search written directly on onnxruntime, tokenizers and faiss over the
  workspace's own files (the query INT8 model, its tokenizer, the FAISS index at its tuned efSearch, the item
  titles) -- the reference a cold `query` is measured against;
- ``query --mode bm25|dense|hybrid``: the product, process start to printed answer.

Output goes to a pipe (a query then prints tab-separated lines); ``--terminal`` runs every case, the script
included, on a pseudo-terminal through util-linux `script` (a query then draws its table).
The table gives each case's median and its ratio to the hand-written script's median, measured in one run.
Needs a built workspace (`densesearch quickstart`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUERY = "comfy summer dress for beach"

HAND_WRITTEN = '''
import json, sys
import faiss, numpy as np, onnxruntime as ort
from tokenizers import Tokenizer

model, tokenizer_file, max_length, index_file, ef_search, items_file, query = sys.argv[1:]
tokenizer = Tokenizer.from_file(tokenizer_file)
tokenizer.enable_truncation(max_length=int(max_length))
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
ids = np.array([tokenizer.encode(query).ids], dtype=np.int64)
feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
if "token_type_ids" in {i.name for i in session.get_inputs()}:
    feeds["token_type_ids"] = np.zeros_like(ids)
vector = session.run(None, feeds)[0].mean(axis=1)
vector /= np.linalg.norm(vector, axis=1, keepdims=True)
index = faiss.read_index(index_file)
faiss.ParameterSpace().set_index_parameter(index, "efSearch", int(ef_search))
scores, found = index.search(vector.astype(np.float32), 10)
titles = [json.loads(line)["title"] for line in open(items_file, encoding="utf-8")]
for rank, (item, score) in enumerate(zip(found[0], scores[0]), 1):
    print(rank, round(float(score), 4), titles[item])
'''


def wall_seconds(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def measure(cases: dict[str, list[str]], env: dict[str, str], runs: int) -> dict[str, dict[str, float]]:
    """Each case's first run, then ``runs`` rounds of every case in turn (a slow spell of a noisy machine then
    touches every case alike, not one case's whole series)."""
    first = {name: wall_seconds(command, env) for name, command in cases.items()}
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, command in cases.items():
            samples[name].append(wall_seconds(command, env))
    return {name: {"first": first[name], "median": statistics.median(times), "min": min(times), "max": max(times)}
            for name, times in samples.items()}


def compile_package() -> None:
    """Write densesearch's bytecode, as `pip install` does for a wheel: an editable install run with
    PYTHONDONTWRITEBYTECODE set (CI images, this machine) would otherwise compile every module in every run."""
    import compileall

    import densesearch

    compileall.compile_dir(Path(densesearch.__file__).parent, quiet=1)


def hand_written_arguments(home: Path, workspace: str) -> list[str]:
    """The workspace's served files, found through densesearch before any timing starts."""
    from densesearch.core.artifacts import DENSE_FILE, ITEMS_FILE, open_artifact
    from densesearch.core.paths import Workspace

    ws = Workspace(home, workspace)
    index, onnx = open_artifact(ws, "index"), open_artifact(ws, "onnx")
    info = onnx.info
    served = [(info.query_int8_file, info.query_int8_runtime or info.int8_runtime), (info.int8_file, info.int8_runtime),
              *((t.get("file"), t.get("runtime")) for t in onnx.manifest.extra.get("runtimes") or [])]
    model = next((file for file, runtime in served  # the ONNX Runtime INT8 file, served or raced (OpenVINO won)
                  if file and (runtime or "onnxruntime") == "onnxruntime" and (onnx.path / file).is_file()), None)
    if index.info.encoder.backend != "onnx-int8" or not model or index.info.kind not in ("hnsw", "hnsw-sq8"):
        raise SystemExit("the reference script searches an ONNX Runtime INT8 encoder's HNSW index: build one with "
                         "`densesearch quantize` and `densesearch index`")
    config = json.loads((onnx.path / "encoder.json").read_text(encoding="utf-8"))
    return [str(onnx.path / model), str(onnx.path / "tokenizer.json"), str(config["max_seq_length"]),
            str(index.path / DENSE_FILE), str(index.info.param), str(index.path / ITEMS_FILE), QUERY]


def on_terminal(command: list[str]) -> list[str]:
    """``command`` run on a pseudo-terminal (its stdout is a tty), through util-linux `script`."""
    if shutil.which("script") is None:
        raise SystemExit("--terminal needs util-linux `script` (apt-get install bsdutils)")
    return ["script", "-qec", shlex.join(command), "/dev/null"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--home", default=None, help="artifact root (default: $DENSESEARCH_HOME or the cache dir)")
    parser.add_argument("-w", "--workspace", default="default")
    parser.add_argument("--terminal", action="store_true", help="run every case on a pseudo-terminal")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from densesearch.core.paths import resolve_home

    env = dict(os.environ)
    home = resolve_home(args.home)
    env["DENSESEARCH_HOME"] = str(home)
    with tempfile.TemporaryDirectory() as scratch:
        script = Path(scratch) / "hand_written.py"
        script.write_text(HAND_WRITTEN, encoding="utf-8")
        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "import densesearch.cli.app": [sys.executable, "-c", "import densesearch.cli.app"],
            "hand-written script": [sys.executable, str(script), *hand_written_arguments(home, args.workspace)],
            **{f"query --mode {mode}": [sys.executable, "-m", "densesearch", "query", QUERY, "-k", "10", "--mode",
                                        mode, "-w", args.workspace] for mode in ("bm25", "dense", "hybrid")},
        }
        if args.terminal:
            cases = {name: on_terminal(command) for name, command in cases.items()}
        compile_package()
        results = measure(cases, env, args.runs)
    reference = results["hand-written script"]["median"]
    for result in results.values():
        result["vs_hand_written"] = result["median"] / reference
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'case':<28}{'first s':>9}{'median s':>10}{'min s':>8}{'max s':>8}{'vs script':>11}")
    for name, r in results.items():
        print(f"{name:<28}{r['first']:>9.3f}{r['median']:>10.3f}{r['min']:>8.3f}{r['max']:>8.3f}"
              f"{r['vs_hand_written']:>10.2f}x")


if __name__ == "__main__":
    main()
