"""The "Run batch" widget: a folder of images through ``run_batch`` (the CLI's function), then its review.

A thin view: the config (with an optional folder of QuPath exports, whose
outlines are the pellets: ``annotations_dir``) is made and the batch run by ``pellet_analysis.pipeline``
(:func:`~pellet_analysis.pipeline.batch_config`,
:func:`~pellet_analysis.pipeline.run_cancellable_batch`) in napari's
``thread_worker``. Each finished image's record comes back through a Qt
signal (queued to the GUI thread) and advances the progress bar. Cancel asks
the batch to stop: it is checked after each image, so the batch stops when
the next image is reported, keeping the images finished so far in the output
folder (a run into the same folder skips them). Errors are one-line
notifications; the finished run opens in the Review widget.
"""

from __future__ import annotations

import threading
from pathlib import Path

from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from pellet_analysis.pipeline import BatchCancelled, batch_config, list_images, run_cancellable_batch
from pellet_analysis.stains import PRESETS

#: The preset entry that keeps the config file's (or the default) stain preset.
FROM_CONFIG = "(from config)"


class _Relay(QObject):
    """Carries each image's record from the batch's thread to the GUI thread."""

    image = Signal(object)


class BatchWidget(QWidget):
    """Run pellet-analysis on a folder of images and review the run."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.record: dict | None = None  # the last finished run's record
        self.review = None  # the Review widget the run was opened in
        self._cancel = threading.Event()
        self._relay = _Relay()
        self._relay.image.connect(self._on_image)
        self._done = 0
        self._output: Path | None = None

        self.input_edit, self.output_edit, self.config_edit, self.annotations_edit = QLineEdit(), QLineEdit(), QLineEdit(), QLineEdit()
        self.input_edit.setPlaceholderText("folder of section images")
        self.output_edit.setPlaceholderText("run folder to write")
        self.config_edit.setPlaceholderText("optional YAML config")
        self.annotations_edit.setPlaceholderText("optional folder of QuPath GeoJSON exports")
        self.stains = QComboBox()
        self.stains.addItems([FROM_CONFIG, *PRESETS])
        self.pixel_size = QDoubleSpinBox()
        self.pixel_size.setDecimals(4)
        self.pixel_size.setRange(0.0, 50.0)
        self.pixel_size.setSingleStep(0.05)
        self.pixel_size.setSuffix(" µm")
        self.pixel_size.setSpecialValueText("from file / estimated")  # 0: the file's, else estimated from the nuclei
        self.pixel_size.setToolTip("µm per pixel for images whose files carry none")
        self.run_button = QPushButton("Run batch")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("%v / %m images")
        self.status = QLabel("Choose an input and an output folder.")
        self.status.setWordWrap(True)

        form = QFormLayout()
        rows = (("input", self.input_edit, True), ("output", self.output_edit, True), ("config", self.config_edit, False))
        for label, edit, folder in (*rows, ("QuPath outlines", self.annotations_edit, True)):
            row = QHBoxLayout()
            row.addWidget(edit)
            browse = QPushButton("…")
            browse.setMaximumWidth(30)
            browse.clicked.connect(lambda _=False, e=edit, f=folder: self._browse(e, f))
            row.addWidget(browse)
            form.addRow(label, row)
        form.addRow("stain preset", self.stains)
        form.addRow("pixel size", self.pixel_size)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        # as tall as its form: a Review widget docked below gets the rest of the column
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)

    def _browse(self, edit: QLineEdit, folder: bool):
        if folder:
            chosen = QFileDialog.getExistingDirectory(self, "folder")
        else:
            chosen, _ = QFileDialog.getOpenFileName(self, "pellet-analysis config", filter="YAML (*.yaml *.yml)")
        if chosen:
            edit.setText(chosen)

    # ---- running
    @property
    def running(self) -> bool:
        return self.worker is not None and self.cancel_button.isEnabled()

    def run(self):
        """Start the batch of the form's folders and settings in a worker thread; None when the form is incomplete."""
        if self.running:
            return None
        inputs, output = self.input_edit.text().strip(), self.output_edit.text().strip()
        if not inputs or not output:
            self._on_error("choose an input and an output folder")
            return None
        try:
            config = batch_config(
                inputs,
                output,
                stains=None if self.stains.currentText() == FROM_CONFIG else self.stains.currentText(),
                pixel_size_um=self.pixel_size.value() or None,
                config_file=self.config_edit.text().strip() or None,
                annotations_dir=self.annotations_edit.text().strip() or None,
            )
            n_images = len(list_images(config.input_dir, config.extensions))
        except Exception as error:  # the form's mistakes, as one line
            self._on_error(error)
            return None
        self._cancel.clear()
        self._done = 0
        self.record = None
        self._output = Path(config.output_dir)
        self.progress.setRange(0, max(1, n_images))
        self.progress.setValue(0)
        self.status.setText(f"running {n_images} image(s) from {config.input_dir}…")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        worker = thread_worker(run_cancellable_batch, ignore_errors=True)(
            config, progress=self._relay.image.emit, cancelled=self._cancel.is_set
        )
        worker.returned.connect(self._on_done)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()
        return worker

    def cancel(self):
        """Stop the batch when the next image is reported (the images finished stay in the output folder)."""
        if self.running:
            self._cancel.set()
            self.cancel_button.setEnabled(False)
            self.status.setText("cancelling after the image under way…")

    def _on_image(self, record):
        self._done += 1
        self.progress.setValue(min(self._done, self.progress.maximum()))
        what = "skipped (done earlier)" if getattr(record, "skipped", False) else ("done" if record.ok else f"failed: {record.reason}")
        if not self._cancel.is_set():
            self.status.setText(f"{self._done}/{self.progress.maximum()} {record.file} {what}")

    def _on_done(self, record):
        self.record = record
        self.progress.setValue(self.progress.maximum())
        skipped = f" ({record['n_skipped']} finished earlier, not recomputed)" if record["n_skipped"] else ""
        self.status.setText(
            f"{record['n_pellets']} pellet(s) from {record['n_images']} image(s){skipped}, {record['n_failures']} failure(s) "
            f"in {record['seconds']:.1f} s: opening {self._output.name} for review"
        )
        show_info(f"batch finished: {record['n_pellets']} pellet(s), {record['n_failures']} failure(s)")
        self.open_review(self._output)

    def _on_error(self, error):
        if isinstance(error, BatchCancelled):
            self.status.setText(str(error))
            show_info(str(error))
            return
        line = " ".join(str(error).split()) or type(error).__name__
        self.status.setText(f"error: {line}")
        show_error(f"pellet batch: {line}")

    def _on_finished(self):
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def open_review(self, run_dir):
        """Open ``run_dir`` in the docked Review widget (docked now if it is not), showing its first pellet."""
        try:
            _, review = self.viewer.window.add_plugin_dock_widget("pellet-analysis", "Review pellets")
        except Exception:  # the plugin not registered (napari_plugin used from a source tree): dock one directly
            from ._widget import ReviewWidget

            review = ReviewWidget(self.viewer)
            self.viewer.window.add_dock_widget(review, name="Review pellets")
        self.review = review
        return review.open_run(run_dir, show_first=True)
