"""The package's import layers: every `seallm_jax` module imports only from its own layer or the layers
below it, and no modules or packages import each other in a circle.

The layers, lowest first (`LAYERS`; a unit is `seallm_jax.<unit>` and everything under it):

  foundation  errors, paths, files, defaults, languages,  no imports of the package but each other
              trees,                                      (files uses paths, paths uses errors)
              _lazy
  model       model                                       the architecture, its config and logical axes
  io          tokenizer, hf, sharding, checkpoint,        what turns the model and text into arrays on a
              distributed                                 mesh and files on disk, and back
  data        data                                        corpora, streams, SFT, mixing
  train       train                                       the training engine (knows nothing of LSN)
  features    lsn, eval, lora                             what joins training from outside, and evaluation
  commands    cli, cli_args, demo, every */cli.py, and    the command line and the public facade; nothing
              the package root (`seallm_jax/__init__`)    in the library imports them

Every import counts: module-level, inside functions (the lazy imports that keep `--help` cheap), under
`if TYPE_CHECKING:`, `importlib.import_module("literal")`, and the lazy export tables of package
`__init__`s (`_EXPORTS = {name: "seallm_jax.x.y"}`). `from seallm_jax import hf` is an edge to
`seallm_jax.hf`; `from seallm_jax import LANGUAGES` is an edge to the package root, which the library
must not use (import from the defining module instead).

Modules in the same layer may import each other (`hf` uses `checkpoint`), as long as there is no
circle, at module or at unit level. A known upward edge that is being removed goes into
KNOWN_EXCEPTIONS with a comment; an exception that no longer exists fails the test, so the list
only shrinks.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = "seallm_jax"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("errors", "paths", "files", "defaults", "languages", "trees", "_lazy")),
    ("model", ("model",)),
    ("io", ("tokenizer", "hf", "sharding", "checkpoint", "distributed")),
    ("data", ("data",)),
    ("train", ("train",)),
    ("features", ("lsn", "eval", "lora")),
    ("commands", ("__init__", "cli", "cli_args", "demo", "*.cli")),
)

# (importer, imported) edges that go upward today and are being removed (issue 13: LSN joins training
# from outside, through the optimizer-wrapper hook, built by the command layer).
KNOWN_EXCEPTIONS: frozenset[tuple[str, str]] = frozenset({
})

LAZY_TABLES = ("_EXPORTS", "_LAZY")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def unit_of(module: str) -> str:
    """The unit a module belongs to: `seallm_jax.data.corpus` -> `data`; command modules are their own."""
    parts = module.split(".")[1:]
    if not parts:
        return "__init__"
    if parts[0] in ("cli", "cli_args", "demo"):
        return parts[0]
    if parts[-1] == "cli":
        return ".".join(parts)
    return parts[0]


def layer_of(module: str) -> int:
    unit = unit_of(module)
    for index, (_, units) in enumerate(LAYERS):
        if unit in units or (unit.endswith(".cli") and "*.cli" in units):
            return index
    raise AssertionError(f"{module} (unit {unit!r}) is in no layer; add it to LAYERS in {__file__}")


def _resolve(name: str) -> str | None:
    """The module an imported dotted name refers to: itself, or its longest prefix that is a module."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[tuple[str, int]]:
    """(imported module, line) for every import of a `seallm_jax` module in `module`'s source."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[tuple[str, int]] = set()

    def add(name: str | None, line: int) -> None:
        if name and (name == PACKAGE or name.startswith(PACKAGE + ".")):
            target = _resolve(name)
            if target and target != module:
                found.add((target, line))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                add(submodule if submodule in MODULES else base, node.lineno)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            function = node.func
            called = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                add(node.args[0].value, node.lineno)
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            if any(isinstance(target, ast.Name) and target.id in LAZY_TABLES for target in node.targets):
                for value in node.value.values:
                    if isinstance(value, ast.Constant) and isinstance(value.value, str):
                        add(value.value, node.lineno)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "lazy_getattr":
            for argument in node.args[1:]:
                if isinstance(argument, ast.Dict):
                    for value in argument.values:
                        if isinstance(value, ast.Constant) and isinstance(value.value, str):
                            add(value.value, node.lineno)
    return found


GRAPH: dict[str, set[tuple[str, int]]] = {module: imports_of(module) for module in MODULES}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(edges.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components


def test_every_module_is_in_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_upward_imports():
    upward = []
    for module, imported in sorted(GRAPH.items()):
        for target, line in sorted(imported):
            if layer_of(target) > layer_of(module) and (module, target) not in KNOWN_EXCEPTIONS:
                upward.append(f"{MODULES[module].relative_to(ROOT.parent)}:{line}: {module} "
                              f"({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "imports against the layering (see tests/test_layers.py):\n" + "\n".join(upward)


def test_known_exceptions_still_exist():
    """Fails once an exception is gone: delete it from KNOWN_EXCEPTIONS, so the list only shrinks."""
    edges = {(module, target) for module, imported in GRAPH.items() for target, _ in imported}
    assert not KNOWN_EXCEPTIONS - edges, f"no longer imported, remove from KNOWN_EXCEPTIONS: {KNOWN_EXCEPTIONS - edges}"


def _edges() -> dict[str, set[str]]:
    return {module: {target for target, _ in imported if (module, target) not in KNOWN_EXCEPTIONS}
            for module, imported in GRAPH.items()}


def test_no_import_circles_between_modules():
    edges = _edges()
    assert not _cycles(edges), f"modules importing each other in a circle: {_cycles(edges)}"


def test_no_import_circles_between_units():
    edges: dict[str, set[str]] = {}
    for module, imported in _edges().items():
        for target in imported:
            if unit_of(target) != unit_of(module):
                edges.setdefault(unit_of(module), set()).add(unit_of(target))
    assert not _cycles(edges), f"packages importing each other in a circle: {_cycles(edges)}"


def test_language_table_has_no_imports():
    tree = ast.parse(MODULES[f"{PACKAGE}.languages"].read_text(encoding="utf-8"))
    assert not [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def test_light_entry_points_do_not_import_jax():
    """What the package root and the command line promise: reading the corpus, registering the
    commands and importing the public facades do not import JAX, Flax, transformers or TensorFlow."""
    code = (
        "import sys\n"
        "import seallm_jax, seallm_jax.data.corpus, seallm_jax.data, seallm_jax.train, seallm_jax.tokenizer\n"
        "import seallm_jax.tokenizer.special, seallm_jax.lsn, seallm_jax.eval, seallm_jax.model\n"
        "from seallm_jax import LANGUAGES\n"
        "from seallm_jax.cli import build_parser\n"
        "build_parser()\n"
        "heavy = sorted({'jax', 'flax', 'transformers', 'tensorflow', 'torch'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
