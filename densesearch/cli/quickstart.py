"""`densesearch quickstart`: the whole pipeline on the embedded sample, by running each command in turn."""

from __future__ import annotations

import time

from densesearch.cli.output import Output
from densesearch.core.artifacts import open_artifact
from densesearch.core.config import DEFAULT_QUERY


def run_quickstart(commands, samples: int, max_seq_length: int, epochs: int, home: str | None,
                   workspace: str) -> None:
    """prepare -> finetune -> quantize -> index -> bench on the embedded sample, then one example query, each run
    by ``commands`` (the CLI module's own command functions, as a user would run them)."""
    ws = commands.workspace_of(home, workspace)
    out = Output(False)
    started = time.perf_counter()
    stages = [("prepare (embedded sample)", lambda: commands.prepare(sample=True, home=home, workspace=workspace)),
              ("finetune", lambda: commands.finetune(samples=samples, max_seq_length=max_seq_length, epochs=epochs,
                                                     batch_size=32, home=home, workspace=workspace)),
              ("quantize", lambda: commands.quantize(fallback_fp32=True, home=home, workspace=workspace)),
              ("index", lambda: commands.index(home=home, workspace=workspace)),
              ("bench", lambda: commands.bench(runs=100, home=home, workspace=workspace)),
              (f"query {DEFAULT_QUERY!r} (default mode)",
               lambda: commands.query(text=DEFAULT_QUERY, k=10, home=home, workspace=workspace))]
    for step, (name, run) in enumerate(stages, start=1):
        out.note(f"{step}/{len(stages)} {name}")
        run()
    if open_artifact(ws, "onnx").info.fell_back_to_fp32:
        out.warn("no INT8 recipe passed the parity gate on this CPU: FP32 ONNX is served "
                 "(see the parity table above; `densesearch quantize --force` publishes INT8 anyway)")
    out.note(f"quickstart finished in {time.perf_counter() - started:.0f} s; artifacts in {ws.root}")
