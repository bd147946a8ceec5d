"""docs/colab.ipynb runs top to bottom (headless, CPU, FAST settings), shows its plots and tables, is
committed without outputs, and imports only documented, public seallm-jax names."""
import ast
import importlib
import os
import re
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "docs" / "colab.ipynb"
API = ROOT / "docs" / "api.md"


def read_notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def code_of(notebook) -> str:
    return "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")


def seallm_imports(notebook) -> list[tuple[str, str]]:
    """(module, name) of every `from seallm_jax... import name` in the notebook's code cells."""
    found = []
    for node in ast.walk(ast.parse(code_of(notebook))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("seallm_jax"):
            found += [(node.module, alias.name) for alias in node.names]
    return found


def test_committed_notebook_has_no_outputs():
    notebook = read_notebook()
    nbformat.validate(notebook)
    for number, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"cell {number} has outputs: strip them"
    assert notebook.metadata["kernelspec"]["name"] == "python3"


def test_notebook_uses_only_documented_public_names():
    api = API.read_text(encoding="utf-8")
    imports = seallm_imports(read_notebook())
    assert imports
    for module_name, name in imports:
        module = importlib.import_module(module_name)
        value = getattr(module, name) if hasattr(module, name) else importlib.import_module(f"{module_name}.{name}")
        assert not name.startswith("_"), f"{module_name}.{name} is private"
        assert (getattr(value, "__doc__", None) or "").strip() or not callable(value), \
            f"{module_name}.{name} has no docstring"
        assert re.search(rf"`{re.escape(module_name)}\.{re.escape(name)}\b", api), \
            f"docs/api.md does not list {module_name}.{name}"


def test_readme_links_the_notebook_in_colab():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "https://colab.research.google.com/github/" in readme and "/blob/main/docs/colab.ipynb" in readme


def test_notebook_executes_headless_on_cpu(tmp_path):
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from nbclient import NotebookClient

    notebook = read_notebook()
    # A fresh user's machine: one CPU device (not the suite's 8 fake ones), FAST settings, offline hubs.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(SEALLM_NOTEBOOK_FAST="1", JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    client = NotebookClient(notebook, kernel_name="python3", timeout=600,
                            resources={"metadata": {"path": str(tmp_path)}})
    started = time.perf_counter()
    client.execute(env=env)  # raises CellExecutionError on any cell's error
    seconds = time.perf_counter() - started
    print(f"notebook executed in {seconds:.0f} s", file=sys.stderr)

    images = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
              if "image/png" in output.get("data", {})]
    tables = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
              if "text/markdown" in output.get("data", {})]
    assert len(images) >= 5  # pretraining loss, neuron heatmap, ablation matrix, LSN loss, perplexity change
    assert len(tables) >= 10
    work = tmp_path / "seallm_notebook"
    for name in ("neurons.png", "ablation.png", "lsn_loss.png", "perplexity_change.png", "export_hf/config.json"):
        assert (work / name).exists(), name
    text = "\n".join(output["data"]["text/markdown"] for output in tables)
    assert "| everywhere else | 0 |" in text  # masked training left every other element bit-identical
    parity = re.search(r"\| Qwen2ForCausalLM \| \d+ x \d+ \| ([0-9.e+-]+) \|", text)  # transformers loaded the export
    assert parity and float(parity.group(1)) < 1e-4, parity
