"""Screenshot of the Run batch widget in a real napari window -> docs/napari_batch.png.

After `make demo`:  xvfb-run -a .venv/bin/python docs/make_batch_screenshot.py

The widget runs configs/default.yaml on images/ into outputs/demo, the demo's
own folder: every image finished by the demo is skipped (same inputs and
config), so the batch ends at once and opens the run in the Review widget.
"""

import os
from pathlib import Path

from qtpy.QtWidgets import QApplication

from make_napari_screenshot import docked, screenshot  # docs/, the script's own folder
from napari_plugin._batch import BatchWidget

ROOT = Path(__file__).resolve().parents[1]


def main() -> Path:
    viewer, widget = docked(BatchWidget, "Run batch")
    os.chdir(ROOT)  # the folders as a user types them, relative to the checkout
    widget.input_edit.setText("images")
    widget.output_edit.setText("outputs/demo")
    widget.config_edit.setText("configs/default.yaml")
    widget.stains.setCurrentText("ab-vg")
    widget.pixel_size.setValue(1.0)
    if widget.run() is None:
        raise SystemExit(widget.status.text())
    while widget.record is None and not widget.status.text().startswith("error"):
        QApplication.processEvents()
    if widget.record is None:
        raise SystemExit(widget.status.text())
    review = widget.review
    while review.current is None or review.progress.maximum() == 0:
        QApplication.processEvents()
    return screenshot(viewer, ROOT / "docs" / "napari_batch.png")


if __name__ == "__main__":
    print(main())
