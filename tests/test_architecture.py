"""The core library stays free of the GUI: no Qt, napari or magicgui import anywhere in it."""

import ast
from pathlib import Path

import pellet_analysis

GUI = {"napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "napari_plugin"}


def test_core_imports_no_gui_module():
    root = Path(pellet_analysis.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in GUI]
    assert offenders == []
