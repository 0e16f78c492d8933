"""Scanner formats: each read lazily through one reader, with its own pixel size, giving the OME-TIFF twin's table."""

import tracemalloc

import numpy as np
import pandas as pd
import pytest

from pellet_analysis.config import RunConfig
from pellet_analysis.io import ImageReadError, open_lazy, read_image, read_pixel_size_um, read_window
from pellet_analysis.pipeline import run_batch
from pellet_analysis.readers import SCANNER_SUFFIXES, open_reader
from pellet_analysis.synthetic import make_section
from pellet_analysis.wholeslide import _low_resolution, is_whole_slide

from .slide_files import WRITERS, write_bif, write_ndpi, write_ome

PX = 0.8
STEM = "D1_labeled_d14_s1"
FORMATS = {".svs": "Aperio SVS", ".ndpi": "Hamamatsu NDPI", ".scn": "Leica SCN", ".qptiff": "Akoya QPTIFF", ".bif": "Ventana BIF", ".mrxs": "3DHistech MIRAX", ".czi": "Zeiss CZI"}
NEEDS = {".mrxs": "openslide", ".czi": "pylibCZIrw"}


def _needs(suffix):
    if suffix in NEEDS:
        pytest.importorskip(NEEDS[suffix])


@pytest.fixture(scope="module")
def section():
    return make_section(labeled=True, pixel_size_um=PX, n_pellets=2, seed=23, jpeg_quality=None, pellet_diameter_um=(260.0, 330.0))


def _levels(image, n=3):
    """Full resolution and halvings, each level's size rounded down (as QPTIFF's reader expects it)."""
    levels = [image]
    for _ in range(n - 1):
        rows, cols = (s // 2 * 2 for s in levels[-1].shape[:2])
        levels.append(np.ascontiguousarray(levels[-1][:rows:2, :cols:2]))
    return levels


@pytest.mark.parametrize("suffix", list(FORMATS))
def test_each_format_reads_its_levels_windows_and_pixel_size(section, tmp_path, suffix):
    _needs(suffix)
    levels = _levels(section.image)
    path = WRITERS[suffix](tmp_path / f"scan{suffix}", levels, PX)
    assert suffix in SCANNER_SUFFIXES and is_whole_slide(path, RunConfig())
    lazy = open_lazy(path)
    assert lazy.format == FORMATS[suffix]
    assert lazy.pixel_size_um == pytest.approx(PX, rel=1e-6) and read_pixel_size_um(path) == pytest.approx(PX, rel=1e-6)
    expected = levels[:1] if suffix == ".czi" else levels  # pylibCZIrw writes no pyramid
    assert [lv.shape for lv in lazy.levels] == [lv.shape for lv in expected]
    for k, (got, want) in enumerate(zip(lazy.levels, expected)):
        if suffix == ".mrxs" and k > 0:
            # OpenSlide places a region by its full-resolution corner: at a downsample that is not a whole
            # number (1169 / 584 = 2.0017 here) a block not starting at 0 lands between pixels and is resampled
            difference = np.abs(np.asarray(got).astype(int) - want)
            assert difference.mean() < 0.5 and difference.max() <= 32
            continue
        np.testing.assert_array_equal(np.asarray(got), want)  # lossless tiles: the very pixels written
    window = (slice(101, 333), slice(250, 517))
    np.testing.assert_array_equal(read_window(path, window), section.image[window])
    np.testing.assert_array_equal(read_window(path, window, level=0), np.asarray(lazy.levels[0][window]))
    rgb, px = read_image(path)
    np.testing.assert_array_equal(rgb, section.image)
    assert px == pytest.approx(PX, rel=1e-6)


@pytest.fixture(scope="module")
def twin_run(section, tmp_path_factory):
    """The section as a pyramidal OME-TIFF through the whole-slide path, and the same for its full resolution only."""
    root = tmp_path_factory.mktemp("twin")
    runs = {}
    for name, levels in (("pyramid", _levels(section.image)), ("flat", [section.image])):
        (root / name).mkdir()
        write_ome(root / name / f"{STEM}.tif", levels, PX)  # an OME-TIFF; ".ome.tif" would make the stem "….ome"
        runs[name] = run_batch(_config(root / name, root / f"{name}-out"))
    return runs


def _config(input_dir, output_dir):
    return RunConfig(input_dir=input_dir, output_dir=output_dir, whole_slide_min_px=1000, scheduler="threads")


def _comparable(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=[c for c in ("file", "path") if c in table.columns]).reset_index(drop=True)


@pytest.mark.parametrize("suffix", list(FORMATS))
def test_the_pipeline_gives_the_ome_tiff_twins_table(section, twin_run, tmp_path, suffix):
    _needs(suffix)
    (tmp_path / "in").mkdir()
    WRITERS[suffix](tmp_path / "in" / f"{STEM}{suffix}", _levels(section.image), PX)
    record = run_batch(_config(tmp_path / "in", tmp_path / "out"))
    twin = twin_run["flat" if suffix == ".czi" else "pyramid"]
    assert record["n_failures"] == 0 and record["n_pellets"] == twin["n_pellets"] == 2
    summary = record["images"][STEM]
    assert summary["pixel_size_source"] == "file" and summary["pixel_size_um"] == pytest.approx(PX)
    assert "whole_slide" in summary
    pd.testing.assert_frame_equal(_comparable(record["table"]), _comparable(twin["table"]))


@pytest.mark.parametrize("suffix", list(FORMATS))
def test_reading_a_scan_never_holds_its_full_resolution(tmp_path, suffix):
    """An 8k x 8k scan (201 MB of RGB): planning reads a coarse level (CZI: block means tile by tile), a pellet window only its tiles.

    tracemalloc sees every numpy buffer (decoded tiles, windows, block
    means); the C libraries' own buffers (libtiff in OpenSlide, libCZI) are
    tile- or window-sized and copied into numpy arrays it counts.
    """
    _needs(suffix)
    import dask.array  # noqa: F401  (imported before tracing: only reading is measured)
    import zarr  # noqa: F401

    tile = np.full((256, 256, 3), 215, np.uint8)
    tile[np.add.outer(np.arange(256) // 32, np.arange(256) // 32) % 2 == 0] = (150, 90, 160)
    tile[10:20, 30:90] = (40, 40, 40)  # tells where a tile starts
    shape = (8192, 8192)
    levels = [((shape[0] >> k, shape[1] >> k), tile) for k in range(4)]
    path = WRITERS[suffix](tmp_path / f"big{suffix}", levels, PX)
    full_bytes = shape[0] * shape[1] * 3
    open_lazy(path)  # the readers' own imports (OpenSlide, pylibCZIrw) are not what is measured either
    tracemalloc.start()
    try:
        lazy = open_lazy(path)
        small, factor = _low_resolution(lazy.levels, 32)
        window = read_window(path, (slice(5000, 6024), slice(7000, 8024)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lazy.shape == (*shape, 3) and lazy.pixel_size_um == pytest.approx(PX)
    assert factor == 32 and small.shape[:2] == (256, 256)
    np.testing.assert_array_equal(window[:256, :256], np.roll(tile, (-5000 % 256, -7000 % 256), axis=(0, 1)))
    assert peak < 0.1 * full_bytes, f"peak {peak / 1e6:.0f} MB of a {full_bytes / 1e6:.0f} MB scan"


def test_an_ndpi_of_jpeg_strips_with_restart_markers_is_read_interval_by_interval(section, tmp_path):
    """NDPI as scanners write it: each level one JPEG strip, read by restart interval through ``McuStarts``."""
    import tifffile

    rows, cols = (-(-n // 32) * 32 for n in section.image.shape[:2])  # sides every level can halve to multiples of 8
    padded = np.empty((rows, cols, 3), np.uint8)
    padded[...] = np.median(section.image[:8].reshape(-1, 3), axis=0)  # the glass
    padded[: section.image.shape[0], : section.image.shape[1]] = section.image
    levels = _levels(padded)
    (tmp_path / "in").mkdir()
    path = write_ndpi(tmp_path / "in" / f"{STEM}.ndpi", levels, PX, jpeg=True)
    with tifffile.TiffFile(path) as tif:
        page = tif.series[0].levels[0].keyframe
        assert tif.is_ndpi and page.tilelength == 8 and cols % page.tilewidth == 0 and page.compression == 7
        n_intervals = len(page.dataoffsets)
    assert n_intervals == rows // 8 * (cols // page.tilewidth) > 300
    lazy = open_lazy(path)
    assert lazy.pixel_size_um == pytest.approx(PX) and [lv.shape for lv in lazy.levels] == [lv.shape for lv in levels]
    assert lazy.levels[0].chunksize[0] == 512  # 8-row intervals read 512 rows at a time: not one dask task each
    decoded = [np.asarray(lv) for lv in lazy.levels]
    for got, want in zip(decoded, levels):
        assert np.abs(got.astype(int) - want).mean() < 3.0  # JPEG at quality 92
    window = (slice(203, 371), slice(150, 611))
    np.testing.assert_array_equal(read_window(path, window), decoded[0][window])
    # the pipeline on it gives the table of its decoded pixels saved as OME-TIFF
    (tmp_path / "twin").mkdir()
    write_ome(tmp_path / "twin" / f"{STEM}.tif", decoded, PX)
    record = run_batch(_config(tmp_path / "in", tmp_path / "out"))
    twin = run_batch(_config(tmp_path / "twin", tmp_path / "twin-out"))
    assert record["n_failures"] == 0 and record["n_pellets"] == twin["n_pellets"] == 2
    pd.testing.assert_frame_equal(_comparable(record["table"]), _comparable(twin["table"]))


def test_a_bif_with_overlapping_tiles_goes_to_openslide(section, tmp_path):
    """tifffile lays BIF tiles edge to edge; a file whose XMP declares overlaps is read by OpenSlide's Ventana reader.

    Only the routing is tested: this file's XMP declares one overlap without
    the rest of a scanner's stitching metadata, so OpenSlide's stitching is not exercised.
    """
    pytest.importorskip("openslide")
    path = write_bif(tmp_path / "overlap.bif", _levels(section.image), PX, overlap_px=12)
    with open_reader(path) as reader:
        assert reader.format == "Ventana BIF with overlapping tiles" and type(reader).__name__ == "_OpenSlideReader"
        assert reader.pixel_size_um == pytest.approx(PX) and reader.shape == section.image.shape
    with open_reader(write_bif(tmp_path / "plain.bif", _levels(section.image), PX)) as reader:
        assert type(reader).__name__ == "_TiffReader"


@pytest.mark.parametrize("suffix, package, install", [(".mrxs", "openslide", "pip install openslide-bin openslide-python"), (".czi", "pylibCZIrw", "pip install pylibCZIrw")])
def test_a_missing_reader_fails_in_one_line_naming_file_and_install(tmp_path, monkeypatch, suffix, package, install):
    import builtins

    real_import = builtins.__import__

    def without(name, *args, **kwargs):
        if name.split(".")[0] == package:
            raise ImportError(f"No module named {package!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)
    path = tmp_path / f"slide{suffix}"
    path.write_bytes(b"\0" * 64)
    with pytest.raises(ImageReadError) as info:
        open_lazy(path)
    message = str(info.value)
    assert message.startswith(f"slide{suffix}: ") and install in message and "\n" not in message
    # in a batch: the image's failure, the batch goes on
    (tmp_path / "in").mkdir()
    path.rename(tmp_path / "in" / path.name)
    record = run_batch(RunConfig(input_dir=tmp_path / "in", output_dir=tmp_path / "out", scheduler="synchronous"))
    assert record["n_failures"] == 1 and install in record["failures"].iloc[0]["reason"]


def test_olympus_vsi_says_what_to_do(tmp_path):
    path = tmp_path / "slide.vsi"
    path.write_bytes(b"\0" * 64)
    with pytest.raises(ImageReadError, match="slide.vsi: Olympus VSI .* export it as OME-TIFF"):
        open_lazy(path)
