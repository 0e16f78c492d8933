"""The package's layering, read from its imports: plain, relative, inside functions, and made by string (importlib).

Layers, from the ground up (a module imports only its own layer or lower ones,
and no module imports another in a loop):

1. array functions: numpy in, numpy out; no config, I/O or scheduling module
2. config, I/O, the synthetic sections
3. one image's steps (plan, classify a pellet window, measure), whole-slide planning
4. the records a run passes between tasks, and what a run decides about each image
5. the tasks of an image, the scheduler and its worker processes, the batch's iron calibration, review, study tables
6. the batch runner, the study report
7. the library's entry points and validation
8. the command line

An import inside ``if TYPE_CHECKING:`` is a type hint, not a dependency, and is left out of the
layering; an array module imports no config module even so (its functions take the frozen
parameter objects of ``pellet_analysis.params``).
"""

import ast
import importlib.util
from pathlib import Path

import pytest

import pellet_analysis

PACKAGE = "pellet_analysis"
ROOT = Path(pellet_analysis.__file__).parent

GUI = {"napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "napari_plugin"}

ARRAY = {
    "labels", "filters", "morphology", "stains", "classify", "pellets", "bern", "scale", "metrics", "measure",
    "calibrate", "gates", "geojson", "overlay", "metadata", "params", "lacunae", "territories", "profiles",
}
LAYERS = [
    ARRAY,
    {"config", "io", "readers", "synthetic", "synthetic_he"},
    {"slide", "wholeslide"},
    {"records", "bookkeeping"},
    {"tasks", "scheduling", "workers", "_server_exit", "iron_calibration", "review", "study", "stats"},
    {"batch", "report", "figures"},
    {"pipeline", "validate"},
    {"cli", "__main__", "__init__"},
]

#: What an array module never imports: settings, files, or where and how the work runs.
NOT_IN_ARRAY_MODULES = {
    f"{PACKAGE}.{m}"
    for m in ("config", "io", "workers", "pipeline", "batch", "tasks", "scheduling", "bookkeeping", "records", "review", "iron_calibration", "cli")
} | {"tifffile", "pathlib", "imageio", "PIL", "zarr", "yaml", "pydantic", "pandas", "distributed", "dask.distributed", "dask.multiprocessing"}

def _resolve(module: str, name: str | None, level: int) -> str:
    """The absolute name of ``from <level dots><name> import ...`` written in ``module``."""
    if level == 0:
        return name or ""
    base = f"{PACKAGE}.{module}".split(".")[:-level]
    return ".".join(base + ([name] if name else []))


def _string_module(node) -> str | None:
    """A module name written as a string: ``"pkg.mod"`` or ``f"{__package__}.mod"``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and len(node.values) == 2:
        first, rest = node.values
        if (
            isinstance(first, ast.FormattedValue) and isinstance(first.value, ast.Name) and first.value.id == "__package__"
            and isinstance(rest, ast.Constant) and isinstance(rest.value, str)
        ):
            return PACKAGE + rest.value
    return None


def _is_module_name(text: str) -> bool:
    if not text or not all(part.isidentifier() for part in text.split(".")):
        return False
    return text.split(".")[0] == PACKAGE or importlib.util.find_spec(text.split(".")[0]) is not None


def imports_of(source: str, module: str) -> set[str]:
    """Every module ``source`` (the module ``module`` of the package) imports at run time.

    Plain and relative imports wherever they stand (functions included),
    except under ``if TYPE_CHECKING:``; ``importlib.import_module("x")`` and
    ``__import__("x")``; and, in a module that imports by a name it computes
    (``import_module(name)``), every string in it that names a module.
    """
    tree = ast.parse(source)
    hinted = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hinted |= {id(n) for child in node.body for n in ast.walk(child)}
    found, computed = set(), False
    for node in ast.walk(tree):
        if id(node) in hinted:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node.module, node.level)
            found.add(base)
            # "from . import x" or "from .pkg import submodule"
            found |= {f"{base}.{a.name}" for a in node.names if (ROOT / f"{a.name}.py").is_file() and base == PACKAGE}
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name.endswith("import_module") or name == "__import__":
                target = _string_module(node.args[0]) if node.args else None
                if target is not None:
                    found.add(target)
                else:
                    computed = True
    if computed:  # the names it may compute from: dotted module names, and tuples or lists of module names
        found |= {text for node in ast.walk(tree) if (text := _string_module(node)) and "." in text and _is_module_name(text)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Tuple, ast.List)):
                names = [_string_module(e) for e in node.elts if not isinstance(e, ast.Starred)]
                if names and all(n is not None and _is_module_name(n) for n in names):
                    found |= set(names)
    return found


def _modules() -> dict[str, set[str]]:
    return {path.stem: imports_of(path.read_text(encoding="utf-8"), path.stem) for path in sorted(ROOT.glob("*.py"))}


def _own(imported: set[str]) -> set[str]:
    return {name.split(".")[1] for name in imported if name.startswith(PACKAGE + ".")}


def test_imports_made_by_string_are_found():
    source = (
        "import importlib\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .config import RunConfig\n"
        "MODULES = (f'{__package__}.tasks', 'dask.array', 'zarr')\n"
        "def warm():\n"
        "    importlib.import_module('pellet_analysis.io')\n"
        "    __import__('tifffile')\n"
        "    for m in MODULES:\n        importlib.import_module(m)\n"
        "    from . import batch\n"
    )
    found = imports_of(source, "probe")
    assert {"pellet_analysis.io", "tifffile", "pellet_analysis.tasks", "dask.array", "zarr", "pellet_analysis.batch"} <= found
    assert "pellet_analysis.config" not in found


def test_every_module_has_a_layer():
    layered = set().union(*LAYERS)
    assert set(_modules()) == layered


def test_array_modules_import_no_config_io_or_scheduling_module():
    offenders = []
    for module, imported in _modules().items():
        if module not in ARRAY:
            continue
        for name in imported:
            if any(name == bad or name.startswith(bad + ".") for bad in NOT_IN_ARRAY_MODULES):
                offenders.append(f"{module}: {name}")
    assert offenders == []


def test_array_modules_name_no_config_even_as_a_type_hint():
    """Their parameters are the frozen objects of ``params``, not the pydantic sections, in code and in hints."""
    offenders = []
    for path in sorted(ROOT.glob("*.py")):
        if path.stem not in ARRAY:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and _resolve(path.stem, node.module, node.level) == f"{PACKAGE}.config":
                offenders.append(path.stem)
    assert offenders == []


def test_no_module_imports_a_higher_layer():
    layer = {m: k for k, members in enumerate(LAYERS) for m in members}
    upward = [
        f"{module} (layer {layer[module] + 1}) imports {other} (layer {layer[other] + 1})"
        for module, imported in _modules().items()
        for other in _own(imported)
        if other in layer and layer[other] > layer[module]
    ]
    assert upward == []


def test_no_import_cycles():
    graph = {m: _own(i) - {m} for m, i in _modules().items()}
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_the_entry_points_are_no_hub():
    """``pipeline`` holds the in-memory entry point and hands on the batch runner: it reaches the tasks, I/O and scheduling only through it."""
    imported = _own(_modules()["pipeline"])
    assert imported <= {"batch", "config", "gates", "pellets", "slide", "stains"}, imported


def test_only_the_scheduler_talks_to_a_cluster():
    users = sorted(m for m, imported in _modules().items() if any(n.split(".")[0] == "distributed" or n == "dask.distributed" for n in imported))
    assert users == ["scheduling"]


def test_core_imports_no_gui_module():
    offenders = [f"{m}: {n}" for m, imported in _modules().items() for n in imported if n.split(".")[0] in GUI]
    assert offenders == []
