"""Screenshot of the review widget in a real napari window on the demo run -> docs/napari_review.png.

After `make demo`:  xvfb-run -a .venv/bin/python docs/make_napari_screenshot.py
"""

from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_plugin._widget import ReviewWidget

ROOT = Path(__file__).resolve().parents[1]


def main() -> Path:
    viewer, widget = docked(ReviewWidget, "Review pellets")
    widget.open_run(ROOT / "outputs" / "demo")
    while widget.progress.maximum() == 0 or widget.grid.rowCount() == 0:
        QApplication.processEvents()
    widget.filters["condition"].setCurrentText("labeled")
    widget.worker = None
    widget.select(0)
    while widget.worker is None or widget.progress.maximum() == 0 or widget.current is None:
        QApplication.processEvents()
    return screenshot(viewer, ROOT / "docs" / "napari_review.png")


def docked(widget_class, name: str):
    """A napari window of the screenshots' size with a ``widget_class`` docked on its right: (viewer, widget)."""
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    widget = widget_class(viewer)
    viewer.window.add_dock_widget(widget, name=name, area="right")
    return viewer, widget


def screenshot(viewer, out: Path) -> Path:
    """Let the window draw what the widgets last showed, save it whole (widgets too) to ``out`` and close it."""
    for _ in range(50):
        QApplication.processEvents()
    viewer.screenshot(str(out), canvas_only=False)
    viewer.close()
    return out


if __name__ == "__main__":
    print(main())
