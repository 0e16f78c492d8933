"""The reviewer loop in a real napari window (Xvfb + PyQt6): open, select, paint, save, re-quantify, exclude."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

napari = pytest.importorskip("napari")


def _qt_window_possible() -> str | None:
    """Why a real Qt window cannot open here (no X server, missing xcb libraries), or None.

    Probed in a subprocess: Qt aborts the whole process when its platform plugin cannot load.
    """
    if not os.environ.get("DISPLAY"):
        return "no X display (install Debian's xvfb; pytest-xvfb starts it)"
    probe = subprocess.run(
        [sys.executable, "-c", "from qtpy.QtWidgets import QApplication; QApplication([])"],
        capture_output=True, text=True, timeout=60,
    )
    if probe.returncode != 0:
        return "Qt cannot open a window: " + " ".join(probe.stderr.split())[:200]
    return None


_WHY_NOT = _qt_window_possible()
if _WHY_NOT and os.environ.get("CI"):
    pytest.fail(f"CI must run the napari tests: {_WHY_NOT} (.ci/run installs xvfb and Qt's libraries)", pytrace=False)
gui = pytest.mark.skipif(_WHY_NOT is not None, reason=_WHY_NOT or "")

from pellet_analysis.config import RunConfig  # noqa: E402
from pellet_analysis.labels import CLASS_CODES  # noqa: E402
from pellet_analysis.pipeline import run_batch  # noqa: E402
from pellet_analysis.review import label_path, read_log  # noqa: E402
from pellet_analysis.synthetic import make_section, write_section  # noqa: E402


@pytest.fixture()
def run_dir(tmp_path):
    src = tmp_path / "in"
    write_section(make_section(day=14, labeled=True, n_pellets=2, pixel_size_um=1.5, seed=71), src / "P1_labeled_d14_s1.tif")
    write_section(make_section(day=28, labeled=False, n_pellets=1, pixel_size_um=1.5, seed=72), src / "P2_unlabeled_d28_s1.tif")
    run_batch(RunConfig(input_dir=src, output_dir=tmp_path / "run"))
    return tmp_path / "run"


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: widget.worker is not None and widget.progress.maximum() == 1, timeout=30000)


def test_manifest_validates():
    done = subprocess.run([sys.executable, "-m", "npe2", "validate", "pellet-analysis"], capture_output=True, text=True)
    assert done.returncode == 0 and "valid" in (done.stdout + done.stderr)


def test_reader_accepts_only_our_files(run_dir, tmp_path):
    from napari_plugin._reader import get_reader

    assert get_reader(str(run_dir)) is not None
    assert get_reader(str(label_path(run_dir, "P1_labeled_d14_s1", "classes"))) is not None
    assert get_reader(str(tmp_path / "in")) is None  # a folder of images is not a run
    assert get_reader(str(tmp_path / "in" / "P1_labeled_d14_s1.tif")) is None  # napari's own TIFF reader keeps these
    fake = tmp_path / "x_classes.tif"
    tifffile.imwrite(fake, np.zeros((4, 4, 3), np.uint8), photometric="rgb")
    assert get_reader(str(fake)) is None  # right name, not a label image
    layers = get_reader(str(run_dir))(str(run_dir))  # no viewer: the first pellet's layers
    assert [kind for _, _, kind in layers] == ["image", "labels", "labels", "labels", "labels"]  # section, classes, nuclei, pellet, lacunae
    assert layers[4][1]["name"].endswith("lacunae") and layers[4][0].dtype == np.uint32
    assert layers[0][1]["scale"] == (1.5, 1.5)
    pellet = layers[3][0]
    assert 0 < np.count_nonzero(pellet) < 0.1 * pellet.size  # an outline, not a filled pellet over the classes


def test_reader_gives_label_pyramids_as_lazy_multiscale(tmp_path):
    from napari_plugin._reader import get_reader

    from pellet_analysis.io import write_label_pyramid

    values = np.arange(1, 301 * 401 + 1, dtype=np.uint32).reshape(301, 401)
    path = write_label_pyramid(tmp_path / "slide_nuclei.tif", (3000, 2500), [((slice(100, 401), slice(2000, 2401)), values, values > 0, 0)],
                               dtype=np.uint32, pixel_size_um=0.5, tile_px=256, min_level_px=512)
    ((data, meta, kind),) = get_reader(str(path))(str(path))
    assert kind == "labels" and meta["multiscale"] and meta["scale"] == (0.5, 0.5)
    assert [level.shape for level in data] == [(3000, 2500), (1500, 1250), (750, 625), (375, 313)]
    np.testing.assert_array_equal(np.asarray(data[0][100:401, 2000:2401]), values)
    np.testing.assert_array_equal(np.asarray(data[1][50:60, 1000:1010]), values[0:20:2, 0:20:2])


def test_writer_and_sample(tmp_path):
    from napari_plugin._sample import synthetic_pellet
    from napari_plugin._writer import write_labels

    sample = synthetic_pellet()
    assert sample[0][2] == "image" and sample[1][0].max() == CLASS_CODES["iron"]
    out = write_labels(str(tmp_path / "l.tif"), sample[1][0], {"scale": (0.5, 0.5)})
    assert np.array_equal(tifffile.imread(out[0]), sample[1][0])


@gui
def test_review_loop_in_a_real_window(make_napari_viewer, qtbot, run_dir):
    from napari_plugin._widget import ReviewWidget

    viewer = make_napari_viewer(show=True)
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Review pellets")
    widget.open_run(run_dir)
    _wait(qtbot, widget)
    assert widget.grid.rowCount() == 3

    # filter by condition, then back
    widget.filters["condition"].setCurrentText("unlabeled")
    assert widget.grid.rowCount() == 1
    widget.filters["condition"].setCurrentText("all")

    # sort by proteoglycan fraction, then select the first row
    from qtpy.QtCore import Qt

    widget.grid.sortItems(5, Qt.SortOrder.AscendingOrder)
    values = [widget.grid.item(r, 5).data(256) for r in range(3)]
    assert values == sorted(values)
    widget.worker = None
    widget.select(0)
    _wait(qtbot, widget)
    image, pellet_id = widget.current["image"], widget.current["pellet_id"]
    classes_layer = widget.layer("classes")
    assert classes_layer.scale[0] == pytest.approx(1.5) and widget.layer("section").rgb
    assert set(classes_layer.features["class"]) >= {"proteoglycan", "nuclei"}
    old = widget._table_row(image, pellet_id)

    # paint proteoglycan over a block of other tissue with napari's own paint method
    pellet = widget.layer("pellet").data == pellet_id
    classes = classes_layer.data
    r, c = (int(v) for v in np.median(np.argwhere(pellet), axis=0))
    classes_layer.selected_label = CLASS_CODES["proteoglycan"]
    classes_layer.brush_size = 15
    before = classes.copy()
    classes_layer.paint((r * 1.5, c * 1.5), CLASS_CODES["proteoglycan"], refresh=True)
    painted = int(((classes_layer.data != before) & pellet).sum())
    assert painted > 50

    record = widget.save()
    assert record["pixels_changed"]["classes"] == int((classes_layer.data != before).sum())
    assert label_path(run_dir, image, "classes", corrected=True).is_file()
    assert read_log(run_dir)[-1]["action"] == "correct"

    widget.worker = None
    widget.requantify()
    _wait(qtbot, widget)
    new = widget._table_row(image, pellet_id)
    pellet_px = old["area_um2"] / old["pixel_size_um"] ** 2
    assert new["proteoglycan_area_fraction"] == pytest.approx(old["proteoglycan_area_fraction"] + painted / pellet_px, abs=1e-9)
    assert bool(new["corrected"])
    assert widget.layer("pellet").features["proteoglycan_area_fraction"].iloc[0] == pytest.approx(new["proteoglycan_area_fraction"])

    assert widget.exclude("fold")
    assert json.loads((run_dir / "corrections.jsonl").read_text().splitlines()[-1])["reason"] == "fold"
    assert bool(widget._table_row(image, pellet_id)["excluded"])

    # next and previous keys walk the table
    widget.worker = None
    widget.next()
    _wait(qtbot, widget)
    assert (widget.current["image"], widget.current["pellet_id"]) != (image, pellet_id)


@gui
def test_errors_are_notifications_not_tracebacks(make_napari_viewer, qtbot, tmp_path):
    from napari_plugin._widget import ReviewWidget

    viewer = make_napari_viewer(show=True)
    widget = ReviewWidget(viewer)
    assert widget.save() is None and "select a pellet first" in widget.status.text()
    widget.open_run(tmp_path)
    qtbot.waitUntil(lambda: widget.status.text().startswith("error:"), timeout=10000)
    assert "not a pellet-analysis run folder" in widget.status.text()


@gui
def test_a_run_folder_opens_once_whether_by_the_reader_or_the_widget(make_napari_viewer, qtbot, run_dir):
    viewer = make_napari_viewer(show=True)
    viewer.open(str(run_dir), plugin="pellet-analysis")  # File > Open Folder
    _, widget = viewer.window.add_plugin_dock_widget("pellet-analysis", "Review pellets")  # the docked one
    qtbot.waitUntil(lambda: widget.current is not None and widget.progress.maximum() == 1, timeout=30000)
    # section, classes, nuclei, pellet and lacunae
    assert len(viewer.layers) == 5 and widget._layers == list(viewer.layers)
    assert widget.layer("pellet").contour > 0 and widget.layer("nuclei").contour > 0  # outlines over the classes
    first = (widget.current["image"], widget.current["pellet_id"])
    assert first == ("P1_labeled_d14_s1", 1)
    widget.worker = None
    widget.open_run(run_dir, show_first=True)  # and again from the widget: still one set of layers
    qtbot.waitUntil(lambda: widget.current is not None and len(viewer.layers) == 5 and widget.progress.maximum() == 1, timeout=30000)
    assert len(viewer.layers) == 5 and widget._layers == list(viewer.layers)
    origins = {tuple(layer.translate) for layer in viewer.layers}
    assert len(origins) == 1  # every layer of the pellet at one offset


@gui
def test_the_table_is_sorted_as_its_header_says(make_napari_viewer, qtbot, run_dir):
    from qtpy.QtCore import Qt

    from napari_plugin._widget import SHOWN_COLUMNS, ReviewWidget

    viewer = make_napari_viewer(show=True)
    widget = ReviewWidget(viewer)
    widget.open_run(run_dir)
    _wait(qtbot, widget)
    header = widget.grid.horizontalHeader()

    def column(c):
        return [widget.grid.item(r, c).data(Qt.ItemDataRole.UserRole) for r in range(widget.grid.rowCount())]

    assert (header.sortIndicatorSection(), header.sortIndicatorOrder()) == (0, Qt.SortOrder.AscendingOrder)
    assert column(0) == sorted(column(0))
    for c in (SHOWN_COLUMNS.index("pellet_id"), SHOWN_COLUMNS.index("nuclei_count"), SHOWN_COLUMNS.index("proteoglycan_area_fraction")):
        for order in (Qt.SortOrder.AscendingOrder, Qt.SortOrder.DescendingOrder):
            header.setSortIndicator(c, order)
            assert column(c) == sorted(column(c), reverse=order == Qt.SortOrder.DescendingOrder)


def _batch_widget(viewer, src, out):
    _, widget = viewer.window.add_plugin_dock_widget("pellet-analysis", "Run batch")  # the manifest's widget
    widget.input_edit.setText(str(src))
    widget.output_edit.setText(str(out))
    widget.stains.setCurrentText("ab-vg")
    return widget


@gui
def test_batch_widget_runs_a_folder_shows_progress_and_opens_the_review(make_napari_viewer, qtbot, run_dir):
    import pandas as pd

    viewer = make_napari_viewer(show=True)
    _, existing = viewer.window.add_plugin_dock_widget("pellet-analysis", "Review pellets")  # docked before the run
    widget = _batch_widget(viewer, run_dir.parent / "in", run_dir.parent / "from-napari")
    seen = []
    widget._relay.image.connect(lambda record: seen.append((widget.progress.value(), widget.progress.maximum(), record.file)))
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.record is not None, timeout=120000)
    assert [(value, maximum) for value, maximum, _ in seen] == [(1, 2), (2, 2)]  # one step per image, as each finishes
    assert sorted(file for *_, file in seen) == ["P1_labeled_d14_s1.tif", "P2_unlabeled_d28_s1.tif"]
    # the CLI's function: the same table as run_batch gave the fixture
    ours, cli = pd.read_csv(run_dir.parent / "from-napari" / "pellets.csv"), pd.read_csv(run_dir / "pellets.csv")
    pd.testing.assert_frame_equal(ours, cli)
    # opened for review: the run's pellets in the Review widget, the first one shown
    review = widget.review
    assert review is existing  # the Review widget already docked, not a second one
    qtbot.waitUntil(lambda: review.current is not None and review.progress.maximum() == 1, timeout=30000)
    assert review.run_dir == run_dir.parent / "from-napari" and review.grid.rowCount() == len(cli) == 3
    assert (review.current["image"], review.current["pellet_id"]) == ("P1_labeled_d14_s1", 1) and len(viewer.layers) == 5
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


@gui
def test_batch_widget_cancels_between_images_and_reports_errors_in_one_line(make_napari_viewer, qtbot, run_dir, tmp_path):
    viewer = make_napari_viewer(show=True)
    out = tmp_path / "cancelled"
    widget = _batch_widget(viewer, run_dir.parent / "in", out)
    widget.run()
    widget.cancel()  # asked at once: the batch stops when its first image is reported
    qtbot.waitUntil(lambda: widget.run_button.isEnabled(), timeout=120000)
    assert widget.status.text().startswith("batch cancelled after 1 image(s)") and widget.record is None
    assert not (out / "run.json").exists() and len(list((out / "parts").glob("*.json"))) >= 1
    widget.run()  # again into the same folder: the finished image is skipped, the other done
    qtbot.waitUntil(lambda: widget.record is not None, timeout=120000)
    assert widget.record["n_skipped"] >= 1 and widget.record["n_pellets"] == 3
    review = widget.review  # opened for review: let it finish showing before the window closes
    qtbot.waitUntil(lambda: review.current is not None and review.progress.maximum() == 1, timeout=30000)

    widget.input_edit.setText(str(tmp_path / "nowhere"))
    assert widget.run() is None and widget.status.text() == f"error: {tmp_path / 'nowhere'}: input folder does not exist"
    bad = tmp_path / "bad.yaml"
    bad.write_text("pellets:\n  rim_width_um: -3\n")
    widget.input_edit.setText(str(run_dir.parent / "in"))
    widget.config_edit.setText(str(bad))
    assert widget.run() is None and widget.status.text().startswith(f"error: {bad}: pellets.rim_width_um")
    assert "\n" not in widget.status.text()
    widget.config_edit.setText("")
    widget.annotations_edit.setText(str(tmp_path / "no-exports"))  # found when the batch starts, in its thread
    widget.run()
    qtbot.waitUntil(lambda: widget.run_button.isEnabled(), timeout=30000)
    assert widget.status.text() == f"error: {tmp_path / 'no-exports'}: annotations folder does not exist"
