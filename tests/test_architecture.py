"""The house's shape, checked mechanically: layers point down, no import circles, small functions."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "densesearch"
MAX_COMPLEXITY = 15

# What a serving process must never load: builders, the bench, data preparation, the CLI, training libraries.
SERVING_FORBIDDEN = ("densesearch.build", "densesearch.bench", "densesearch.eval", "densesearch.data",
                     "densesearch.cli", "optimum", "nncf", "datasets")


def tool(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def test_import_contracts_hold():
    """pyproject.toml's import-linter contracts: layers point down; serving imports no builder (lazy imports too)."""
    done = subprocess.run([tool("lint-imports")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_no_import_circles_between_modules():
    """No module reaches itself through imports, counting imports inside functions."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("densesearch", include_external_packages=False)
    circles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain and module != imported:
                circles.append(" -> ".join((module, *chain)))
    assert not circles, "\n".join(circles)


def test_no_function_is_more_complex_than_fifteen():
    radon = pytest.importorskip("radon.complexity")
    too_complex = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for block in radon.cc_visit(path.read_text(encoding="utf-8")):
            if block.complexity > MAX_COMPLEXITY:
                too_complex.append(f"{path.relative_to(ROOT)}:{block.lineno} {block.name} {block.complexity}")
    assert not too_complex, "\n".join(too_complex)


def test_no_function_takes_more_than_eight_parameters():
    """ruff's PLR0913 at pyproject.toml's max-args (Typer commands, whose parameters are their options, exempt)."""
    done = subprocess.run([tool("ruff"), "check", "--select", "PLR0913", "densesearch", "scripts"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]


def loaded_modules_after(code: str, cwd: Path) -> set[str]:
    done = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"],
                          cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return set(done.stdout.split())


def forbidden_in(modules: set[str], torch_served: bool = False) -> list[str]:
    """The forbidden modules loaded. A workspace that serves a torch encoder (nothing quantized) loads
    sentence-transformers, which imports `datasets`: there only densesearch's own builders are forbidden."""
    forbidden = [f for f in SERVING_FORBIDDEN if f.startswith("densesearch.") or not torch_served]
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden))


SERVE_QUERIES = """
from fastapi.testclient import TestClient
from pathlib import Path
from densesearch.core.paths import Workspace
from densesearch.serve.app import create_app, loaded_service
service = loaded_service(Workspace(Path({home!r}), {name!r}), 1)
client = TestClient(create_app(service))
for mode in {modes!r}:
    response = client.get("/search", params={{"q": "warm winter hat", "k": 3, "mode": mode}})
    assert response.status_code == 200, response.text
    assert response.json()["hits"], mode
"""


def test_a_served_dense_bm25_and_hybrid_search_loads_no_builder(built):
    """A server answering every first-stage mode (the learned ranker included when the index kept one) never
    imports the builders, the bench, data preparation or training libraries."""
    code = SERVE_QUERIES.format(home=str(built["ws"].home), name=built["ws"].name, modes=["dense", "bm25", "hybrid"])
    assert forbidden_in(loaded_modules_after(code, ROOT)) == []


ONE_SHOT_QUERY = """
import runpy, sys
sys.argv = ["densesearch", "query", "warm winter hat", "-k", "3", "--mode", {mode!r}, "--home", {home!r},
            "-w", {name!r}]
try:
    runpy.run_module("densesearch", run_name="__main__")
except SystemExit as done:
    assert not done.code, done.code
"""
# Heavy libraries no one-shot query needs: training, the catalog's OpenVINO runtime, the BM25 builder; and what
# start-up alone used to pay for (typer 0.29's pydantic adapters, progress bars, package metadata).
QUERY_FORBIDDEN = ("torch", "transformers", "sentence_transformers", "openvino", "optimum", "nncf", "datasets",
                   "bm25s", "scipy", "sklearn", "densesearch.build", "densesearch.bench", "densesearch.data.prepare",
                   "pydantic", "importlib.metadata",
                   # its answer goes to a pipe: tab-separated lines, no table drawn; no --where, no deletions
                   "rich", "densesearch.cli.render", "densesearch.retrieval.filters")
# What each mode must not load beyond those: a dense query reads no BM25 index and runs no ranker; a BM25 query
# encodes nothing and searches no vectors.
MODE_FORBIDDEN = {"dense": ("Stemmer", "lightgbm", "densesearch.retrieval.crossencoder", "densesearch.retrieval.sparse",
                            "densesearch.retrieval.ranker"),
                  "bm25": ("onnxruntime", "faiss", "lightgbm", "tokenizers", "densesearch.retrieval.crossencoder",
                           "densesearch.retrieval.ranker"),
                  "hybrid": ("densesearch.retrieval.crossencoder",)}


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_a_one_shot_query_imports_only_what_its_mode_needs(built, mode):
    """`densesearch query --mode M` in a fresh process loads the query encoder's runtime and its own indexes only:
    never the catalog encoder's runtime (OpenVINO), training libraries or the BM25 builder."""
    ws = built["ws"]
    loaded = loaded_modules_after(ONE_SHOT_QUERY.format(mode=mode, home=str(ws.home), name=ws.name), ROOT)
    assert "densesearch.retrieval.searcher" in loaded
    forbidden = QUERY_FORBIDDEN + MODE_FORBIDDEN[mode]
    if mode != "bm25" and query_runtime(ws) == "openvino":  # `quantize`'s race found OpenVINO faster for queries
        forbidden = tuple(f for f in forbidden if f not in ("openvino", "importlib.metadata"))  # (it imports that)
    assert sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden)) == []


def query_runtime(ws) -> str:
    """The INT8 runtime that answers the workspace's queries (the race in `quantize` picks it per machine)."""
    from densesearch.core.artifacts import open_artifact

    info = open_artifact(ws, "onnx").info
    return info.query_int8_runtime or info.int8_runtime or "onnxruntime"
