"""The review widget: walk a run's pellets, correct, exclude, save and re-quantify.

A thin view: every read, write and measurement is done by
``pellet_analysis.review``; heavy calls run in napari's ``thread_worker`` with a
busy progress bar, and errors reach the user as notifications.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from pellet_analysis import review

from ._layers import class_features, pellet_layers

SHOWN_COLUMNS = [
    "image", "pellet_id", "donor", "condition", "day", "proteoglycan_area_fraction", "collagen_area_fraction",
    "iron_area_fraction", "nuclei_count", "bern_score", "excluded", "exclusion_reason", "corrected",
]
REASONS = ["fold", "tear", "out of focus", "wrong stain", "not a pellet"]


class _Item(QTableWidgetItem):
    """Sorts numbers as numbers."""

    def __lt__(self, other):
        a, b = self.data(Qt.ItemDataRole.UserRole), other.data(Qt.ItemDataRole.UserRole)
        try:
            return float(a) < float(b)
        except (TypeError, ValueError):
            return str(a) < str(b)


class ReviewWidget(QWidget):
    """Review the pellets of a pellet-analysis run folder."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.run_dir: Path | None = None
        self.table = pd.DataFrame(columns=SHOWN_COLUMNS)
        self.current: dict | None = None  # image, pellet_id, crop
        self.worker = None
        self._layers = []

        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("run folder (written by pellet-analysis run)")
        open_button = QPushButton("Open…")
        open_button.clicked.connect(self._choose_run)
        self.filters = {name: QComboBox() for name in ("donor", "condition", "day")}
        for combo in self.filters.values():
            combo.currentTextChanged.connect(self._refresh_table)
        self.grid = QTableWidget(0, len(SHOWN_COLUMNS))
        self.grid.setHorizontalHeaderLabels(SHOWN_COLUMNS)
        # Qt's default indicator is column 0 *descending*: rows listed by image, ascending, as the header says
        self.grid.horizontalHeader().setSortIndicator(0, Qt.SortOrder.AscendingOrder)
        self.grid.setSortingEnabled(True)
        self.grid.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.grid.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
        self.grid.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.grid.itemSelectionChanged.connect(self._on_selection)
        self.reason = QComboBox()
        self.reason.setEditable(True)
        self.reason.addItems(REASONS)
        buttons = {
            "◀ Previous (p)": self.previous,
            "Next (n) ▶": self.next,
            "Exclude": lambda: self.exclude(self.reason.currentText()),
            "Include": self.include,
            "Save corrections": self.save,
            "Re-quantify": self.requantify,
        }
        self.buttons = {}
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.status = QLabel("Open a run folder.")
        self.status.setWordWrap(True)

        layout = QVBoxLayout(self)
        top = QHBoxLayout()
        top.addWidget(self.path_edit)
        top.addWidget(open_button)
        layout.addLayout(top)
        filters = QHBoxLayout()
        for name, combo in self.filters.items():
            filters.addWidget(QLabel(name))
            filters.addWidget(combo)
        layout.addLayout(filters)
        layout.addWidget(self.grid)
        actions = QGridLayout()
        for i, (text, slot) in enumerate(buttons.items()):
            button = QPushButton(text)
            button.clicked.connect(slot)
            self.buttons[text] = button
            actions.addWidget(button, i // 2, i % 2)
        actions.addWidget(QLabel("reason"), 3, 0)
        actions.addWidget(self.reason, 3, 1)
        layout.addLayout(actions)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)

        self.viewer.bind_key("n", lambda viewer: self.next(), overwrite=True)
        self.viewer.bind_key("p", lambda viewer: self.previous(), overwrite=True)

    # ---- running work off the GUI thread
    def _run(self, function, on_done, *args, message: str = "working…"):
        self.progress.setRange(0, 0)  # busy
        self.status.setText(message)
        worker = thread_worker(function, ignore_errors=True)(*args)  # errors go to _on_error only
        worker.returned.connect(on_done)
        worker.errored.connect(self._on_error)
        worker.finished.connect(lambda: self.progress.setRange(0, 1))
        self.worker = worker
        worker.start()
        return worker

    def _on_error(self, error):
        self.status.setText(f"error: {error}")
        show_error(f"pellet review: {error}")

    # ---- opening a run
    def _choose_run(self):
        folder = QFileDialog.getExistingDirectory(self, "pellet-analysis run folder")
        if folder:
            self.open_run(folder)

    def open_run(self, path, *, show_first: bool = False):
        """Load a run folder's pellet table (reviewer corrections and exclusions applied); ``show_first`` then shows its first row."""
        path = Path(path)
        self.path_edit.setText(str(path))

        def load():
            if not (path / "pellets.parquet").is_file():
                raise FileNotFoundError(f"{path} is not a pellet-analysis run folder (no pellets.parquet)")
            return review.apply_review(pd.read_parquet(path / "pellets.parquet"), path)

        def done(table):
            self.run_dir = path
            self.table = table.reset_index(drop=True)
            for name, combo in self.filters.items():
                combo.blockSignals(True)
                combo.clear()
                combo.addItem("all")
                combo.addItems([str(v) for v in sorted(self.table[name].dropna().unique())])
                combo.blockSignals(False)
            self.current = None
            self._clear_layers()
            self._refresh_table()
            self.status.setText(f"{len(self.table)} pellets in {path.name}")
            if show_first and self.grid.rowCount():
                self.grid.blockSignals(True)  # row 0 may be selected already: show it whether or not the selection changes
                self.grid.selectRow(0)
                self.grid.blockSignals(False)
                self.show_pellet(*self._row_key(0))

        return self._run(load, done, message=f"reading {path}…")

    # ---- table
    def visible_rows(self) -> pd.DataFrame:
        """The table after the donor/condition/day filters."""
        rows = self.table
        for name, combo in self.filters.items():
            value = combo.currentText()
            if value and value != "all":
                rows = rows[rows[name].astype(str) == value]
        return rows

    def _refresh_table(self):
        rows = self.visible_rows()
        self.grid.setSortingEnabled(False)
        self.grid.setRowCount(len(rows))
        for r, (_, row) in enumerate(rows.iterrows()):
            for c, col in enumerate(SHOWN_COLUMNS):
                value = row.get(col)
                text = f"{value:.4g}" if isinstance(value, (float, np.floating)) else ("" if value is None or value is pd.NA else str(value))
                item = _Item(text)
                item.setData(Qt.ItemDataRole.UserRole, value if not isinstance(value, (np.generic,)) else value.item())
                self.grid.setItem(r, c, item)
        self.grid.setSortingEnabled(True)
        if self.current is not None:  # keep the reviewed pellet selected, without reloading it
            for r in range(self.grid.rowCount()):
                if self._row_key(r) == (self.current["image"], self.current["pellet_id"]):
                    self.grid.blockSignals(True)
                    self.grid.selectRow(r)
                    self.grid.blockSignals(False)
                    break

    def _row_key(self, grid_row: int):
        image = self.grid.item(grid_row, 0).text()
        pellet_id = int(self.grid.item(grid_row, 1).data(Qt.ItemDataRole.UserRole))
        return image, pellet_id

    def select(self, grid_row: int):
        """Select a row of the (filtered, sorted) table and show that pellet."""
        if 0 <= grid_row < self.grid.rowCount():
            self.grid.selectRow(grid_row)

    def next(self):
        self.select(min(self.grid.currentRow() + 1, self.grid.rowCount() - 1))

    def previous(self):
        self.select(max(self.grid.currentRow() - 1, 0))

    def _on_selection(self):
        row = self.grid.currentRow()
        if row < 0 or self.run_dir is None:
            return
        image, pellet_id = self._row_key(row)
        self.show_pellet(image, pellet_id)

    # ---- showing a pellet
    def show_pellet(self, image: str, pellet_id: int):
        run_dir = self.run_dir

        def done(crop):
            self._clear_layers()
            row = self._table_row(image, pellet_id)
            for data, meta, kind in pellet_layers(crop, row=row):
                self._layers.append(getattr(self.viewer, f"add_{kind}")(data, **meta))
            self.layer("nuclei").contour = 1
            self.layer("pellet").contour = 3
            if self.layer("lacunae") is not None:
                self.layer("lacunae").contour = 2
            self.current = {"image": image, "pellet_id": pellet_id, "crop": crop}
            self.viewer.reset_view()
            self.viewer.layers.selection.active = self.layer("classes")
            flag = " (corrected labels)" if crop["corrected"] else ""
            self.status.setText(f"{image} pellet {pellet_id}{flag}: paint, fill or erase on the labels, then Save and Re-quantify.")

        return self._run(review.pellet_crop, done, run_dir, image, pellet_id, message=f"loading {image} #{pellet_id}…")

    def _clear_layers(self):
        for layer in self._layers:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self._layers = []

    def layer(self, kind: str):
        names = {"section": 0, "classes": 1, "nuclei": 2, "pellet": 3, "lacunae": 4}
        return self._layers[names[kind]] if len(self._layers) > names[kind] else None

    def _table_row(self, image, pellet_id) -> dict:
        match = self.table[(self.table.image == image) & (self.table.pellet_id == pellet_id)]
        return match.iloc[0].to_dict() if len(match) else {"pellet_id": pellet_id}

    # ---- reviewer actions
    def _require_current(self):
        if self.current is None:
            raise RuntimeError("select a pellet first")
        return self.current

    def save(self):
        """Write the edited labels beside the automatic ones and append the audit record."""
        try:
            cur = self._require_current()
            edits = {"classes": self.layer("classes").data, "nuclei": self.layer("nuclei").data, "pellets": self.layer("pellet").data}
            record = review.save_corrections(self.run_dir, cur["image"], cur["pellet_id"], edits, origin=cur["crop"]["origin"])
        except Exception as error:  # shown to the reviewer, never a traceback
            self._on_error(error)
            return None
        self.layer("classes").features = class_features(self.layer("classes").data)
        changed = ", ".join(f"{k} {v}" for k, v in record["pixels_changed"].items())
        self.status.setText(f"saved corrections ({changed} pixels changed)")
        show_info(f"saved corrections of {cur['image']} #{cur['pellet_id']}")
        return record

    def requantify(self):
        """Measure the current pellet again from its corrected labels; marks the row corrected."""
        try:
            cur = self._require_current()
        except RuntimeError as error:
            self._on_error(error)
            return None
        started = time.perf_counter()

        def measure(run_dir, image, pellet_id):
            return review.requantify(run_dir, image, [pellet_id])

        def done(rows):
            if not rows:
                self._on_error(f"pellet {cur['pellet_id']} has no pixels left in the corrected labels")
                return
            row = rows[0]
            mask = (self.table.image == cur["image"]) & (self.table.pellet_id == cur["pellet_id"])
            for key, value in row.items():
                if key in self.table.columns and key != "pellet_id":
                    self.table.loc[mask, key] = value
            self._refresh_table()
            self.layer("pellet").features = pd.DataFrame([{"index": cur["pellet_id"], **self._table_row(cur["image"], cur["pellet_id"])}])
            self.status.setText(
                f"re-quantified {cur['image']} #{cur['pellet_id']} in {time.perf_counter() - started:.2f} s: "
                f"proteoglycan {row['proteoglycan_area_fraction']:.3f}, nuclei {row['nuclei_count']}"
            )

        return self._run(measure, done, self.run_dir, cur["image"], cur["pellet_id"], message="re-quantifying…")

    def exclude(self, reason: str):
        """Exclude the current pellet with a reason (appended to corrections.jsonl)."""
        return self._set_excluded(True, reason)

    def include(self):
        return self._set_excluded(False, "")

    def _set_excluded(self, excluded: bool, reason: str):
        try:
            cur = self._require_current()
            review.set_exclusion(self.run_dir, cur["image"], cur["pellet_id"], reason, excluded=excluded)
        except Exception as error:
            self._on_error(error)
            return None
        mask = (self.table.image == cur["image"]) & (self.table.pellet_id == cur["pellet_id"])
        self.table.loc[mask, "excluded"] = excluded
        self.table.loc[mask, "exclusion_reason"] = reason if excluded else ""
        self._refresh_table()
        self.status.setText(f"{'excluded' if excluded else 'included'} {cur['image']} #{cur['pellet_id']}" + (f": {reason}" if excluded else ""))
        return True
