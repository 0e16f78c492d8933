"""Whole-slide scale: tiles give the in-memory labels; large TIFFs are read lazily and written as pyramids."""

import numpy as np
import pytest
import tifffile

from pellet_analysis.classify import classify_pellet, classify_pixels, objects_depth_px, pellet_window, pixel_maps_depth_px
from pellet_analysis.config import RunConfig
from pellet_analysis.io import ImageReadError, open_lazy, read_window, write_label_pyramid
from pellet_analysis.pellets import block_mean
from pellet_analysis.pipeline import analyze_image, run_batch
from pellet_analysis.slide import plan_image
from pellet_analysis.stains import get_preset, rgb_to_od
from pellet_analysis.synthetic import make_section

PX = 0.5


@pytest.fixture(scope="module")
def section():
    # iron-labeled, two pellets, fine pixels: many nuclei and granules lie across any tile grid
    return make_section(labeled=True, pixel_size_um=PX, n_pellets=2, seed=3, jpeg_quality=None, pellet_diameter_um=(260.0, 340.0))


@pytest.fixture(scope="module")
def in_memory(section):
    return analyze_image(section.image, pixel_size_um=PX, config=RunConfig())


def _od_and_pellets(section, config):
    plan = plan_image(section.image, pixel_size_um=PX, config=config)
    full = analyze_image(section.image, pixel_size_um=PX, config=config)
    od = rgb_to_od(section.image, plan.illumination.field(section.image.shape[:2]))
    return od, full.pellets


@pytest.mark.parametrize(
    "chunks",
    [
        ((333, 271, 500, 197), (411, 389, 600, 251, 310)),  # deliberately uneven, none a multiple of another
        ((150,) * 20, (199,) * 20),  # thinner than the overlap: merged with neighbours
    ],
)
def test_tiled_classification_equals_in_memory(section, chunks):
    from scipy import ndimage as ndi

    config = RunConfig()
    od, pellets = _od_and_pellets(section, config)
    kw = dict(pixel_size_um=PX, classify=config.classify.params(), nuclei=config.nuclei.params(), iron=config.iron.params())
    margin = pixel_maps_depth_px(pixel_size_um=PX, classify=config.classify.params(), nuclei=config.nuclei.params())
    window = pellet_window(ndi.find_objects(pellets.astype(int))[0], pellets.shape, margin)
    inside = pellets[window] == 1
    chunks = tuple(_fit(c, n) for c, n in zip(chunks, inside.shape))
    whole = classify_pellet(od[window], inside, get_preset("ab-vg"), **kw)
    tiled = classify_pellet(od[window], inside, get_preset("ab-vg"), tile_px=chunks, **kw)
    assert whole.nuclei.max() > 100 and (whole.classes == 5).sum() > 1000  # many nuclei and iron pixels to get wrong
    np.testing.assert_array_equal(tiled.classes, whole.classes)
    np.testing.assert_array_equal(tiled.nuclei, whole.nuclei)
    np.testing.assert_array_equal(tiled.proteoglycan_od, whole.proteoglycan_od)
    # and the whole image, pellet by pellet, in square tiles
    np.testing.assert_array_equal(classify_pixels(od, pellets, get_preset("ab-vg"), tile_px=256, **kw).nuclei, classify_pixels(od, pellets, get_preset("ab-vg"), **kw).nuclei)


def test_in_memory_numbering_equals_the_tiles_first_pixel_codes():
    from pellet_analysis.classify import _decode, _first_pixel_ids, _raster_numbered

    rng = np.random.default_rng(4)
    labels = np.zeros((97, 131), np.int32)
    for k, new_id in enumerate(rng.permutation(np.arange(2, 400, 3))[:60]):  # ids with gaps, not in raster order
        r, c = rng.integers(0, 90), rng.integers(0, 125)
        labels[r : r + rng.integers(1, 7), c : c + rng.integers(1, 7)] = new_id
    numbered = _raster_numbered(labels)
    _, decoded = _decode(_first_pixel_ids(labels, (0, 0), labels.shape[1]))
    assert numbered.dtype == np.uint32 and numbered.max() == len(np.unique(labels)) - 1 > 40
    np.testing.assert_array_equal(numbered, decoded)
    firsts = [np.flatnonzero(numbered.ravel() == k)[0] for k in range(1, numbered.max() + 1)]
    assert firsts == sorted(firsts)  # 1..n in raster order of their first pixel
    assert not _raster_numbered(np.zeros((5, 4), np.int32)).any()


def _fit(chunks, n):
    """Uneven chunks summing to n: the given sizes repeated, the last one cut."""
    out, total = [], 0
    for c in list(chunks) * (n // min(chunks) + 1):
        if total + c >= n:
            out.append(n - total)
            break
        out.append(c)
        total += c
    return tuple(out)


def test_overlaps_come_from_the_filters_and_the_largest_nucleus():
    config = RunConfig()
    small = pixel_maps_depth_px(pixel_size_um=1.0, classify=config.classify.params(), nuclei=config.nuclei.params())
    fine = pixel_maps_depth_px(pixel_size_um=0.25, classify=config.classify.params(), nuclei=config.nuclei.params())
    assert fine > 3.5 * small  # in pixels, the reach scales with 1 / pixel size
    # the wider of the two top-hats (nucleus or granule scale) sets the reach
    coarse_granules = config.iron.model_copy(update={"max_granule_diameter_um": 3 * config.nuclei.max_diameter_um})
    assert pixel_maps_depth_px(pixel_size_um=1.0, classify=config.classify.params(), nuclei=config.nuclei.params(), iron=coarse_granules.params()) >= small + 2 * config.nuclei.max_diameter_um
    bigger = config.nuclei.model_copy(update={"max_diameter_um": 2 * config.nuclei.max_diameter_um})
    assert objects_depth_px(pixel_size_um=1.0, nuclei=bigger.params(), iron=config.iron.params()) >= objects_depth_px(
        pixel_size_um=1.0, nuclei=config.nuclei.params(), iron=config.iron.params()
    ) + 2 * config.nuclei.max_diameter_um


def test_whole_image_tile_size_does_not_change_measurements(section, in_memory):
    tiled = analyze_image(section.image, pixel_size_um=PX, config=RunConfig(tile_px=300))
    np.testing.assert_array_equal(tiled.nuclei, in_memory.nuclei)
    np.testing.assert_array_equal(tiled.classes, in_memory.classes)
    assert tiled.rows == in_memory.rows


def test_block_means_of_dask_chunks_equal_numpy(section):
    import dask.array as da

    image = section.image
    lazy = da.from_array(image, chunks=(137, 211, 3))
    np.testing.assert_array_equal(block_mean(lazy, 7).compute(), block_mean(image, 7))
    rows, cols = image.shape[0] // 7, image.shape[1] // 7
    blocks = image[: rows * 7, : cols * 7].reshape(rows, 7, cols, 7, 3).astype(np.float64)
    np.testing.assert_allclose(block_mean(image, 7), blocks.mean(axis=(1, 3)), rtol=0, atol=1e-4)
    assert block_mean(image, 7).shape == (rows, cols, 3) and block_mean(image, 7).dtype == np.float32


@pytest.fixture(scope="module")
def slide_run(section, tmp_path_factory):
    """The section as a tiled, deflate-compressed TIFF processed by the whole-slide path."""
    root = tmp_path_factory.mktemp("slide")
    (root / "in").mkdir()
    tifffile.imwrite(
        root / "in" / "D1_labeled_d14_s1.tif", section.image, tile=(256, 256), compression="zlib",
        photometric="rgb", resolution=(1e4 / PX, 1e4 / PX), resolutionunit="CENTIMETER",
    )
    config = RunConfig(input_dir=root / "in", output_dir=root / "out", whole_slide_min_px=1000, tile_px=700, scheduler="threads")
    return run_batch(config), root


def test_whole_slide_run_equals_in_memory_labels_and_table(slide_run, in_memory):
    record, root = slide_run
    assert record["n_failures"] == 0 and record["n_pellets"] == len(in_memory.rows) == 2
    for kind, expected in (("pellets", in_memory.pellets), ("classes", in_memory.classes), ("nuclei", in_memory.nuclei)):
        with tifffile.TiffFile(root / "out" / "labels" / f"D1_labeled_d14_s1_{kind}.tif") as tif:
            assert tif.is_ome and tif.pages[0].is_tiled
            levels = tif.series[0].levels
            np.testing.assert_array_equal(levels[0].asarray(), expected)
            # pyramid levels: every second label of the level above, never a blend of two labels
            np.testing.assert_array_equal(levels[1].asarray(), expected[::2, ::2])
            assert 'PhysicalSizeX="0.5"' in tif.ome_metadata
    table = record["table"]
    for row in in_memory.rows:
        got = table[table.pellet_id == row["pellet_id"]].iloc[0]
        for key, value in row.items():
            if key == "depth_profile":  # profiles.csv, band by band
                bands = record["profiles"][record["profiles"].pellet_id == row["pellet_id"]]
                assert len(bands) == len(value) > 0
                for (_, b), v in zip(bands.iterrows(), value):
                    assert all(b[k] == pytest.approx(x, rel=1e-9, abs=1e-12) for k, x in v.items()), v
                continue
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    summary = record["images"]["D1_labeled_d14_s1"]
    assert summary["whole_slide"]["low_resolution_factor"] >= 1
    assert not (root / "out" / "parts" / "D1_labeled_d14_s1.pellets").exists()  # scratch pieces removed


def test_whole_slide_on_worker_processes_equals_threads_and_keeps_the_workers_light(slide_run, tmp_path):
    from pellet_analysis.workers import process_pool

    record, root = slide_run
    config = RunConfig(
        input_dir=root / "in", output_dir=tmp_path / "out", whole_slide_min_px=1000, tile_px=700, scheduler="processes", n_workers=2
    )
    pool = process_pool(2)
    try:
        again = run_batch(config, pool=pool)
        # what the workers hold after planning and analysing the slide (eval: a builtin, so it pickles)
        probe = "sorted(m for m in ('pandas', 'distributed', 'pellet_analysis.tasks', 'pellet_analysis._server_exit') if m in __import__('sys').modules)"
        loaded = [pool.submit(eval, probe).result() for _ in range(2)]
    finally:
        pool.shutdown()
    assert again["n_failures"] == 0 and again["table"].equals(record["table"])
    # the pipeline comes from the fork server, and so does its exit handler (the server imported it); pandas
    # (tables are made in the main process) and distributed (imported by Dask's scheduler lookup by name)
    # would be 0.3 s of imports in a worker
    assert loaded == [["pellet_analysis._server_exit", "pellet_analysis.tasks"]] * 2


def test_a_slides_pellets_are_all_classified_before_the_small_tasks_run(slide_run, tmp_path):
    """On one worker, the order the scheduler sends a slide's tasks: every pellet's classification, then the small tasks.

    The small tasks (measuring each pellet, writing each label image) fill in
    around the last pellets on several workers instead of waiting behind them;
    numbering, which the label images wait for, runs as soon as it can.
    """
    from dask.callbacks import Callback

    _, root = slide_run
    config = RunConfig(input_dir=root / "in", output_dir=tmp_path / "out", whole_slide_min_px=1000, tile_px=700, scheduler="threads", n_workers=1)
    sent = []
    with Callback(pretask=lambda key, dsk, state: sent.append(key if isinstance(key, str) else key[0])):
        record = run_batch(config)
    assert record["n_failures"] == 0 and record["n_pellets"] == 2
    steps = [key.split("-")[0] for key in sent if key.split("-")[0] in ("pellet", "measure", "number", "labels", "image")]
    assert steps[:3] == ["pellet", "pellet", "number"], steps
    assert sorted(steps[3:-1]) == ["labels"] * 4 + ["measure"] * 2 and steps[-1] == "image", steps  # pellets, classes, nuclei, lacunae
    # the measurements are those of the slide run on two threads
    assert record["table"].equals(slide_run[0]["table"])


def test_a_whole_slide_without_a_pixel_size_says_it_used_the_default(section, tmp_path):
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "D1_labeled_d14_s1.tif", section.image, tile=(256, 256), compression="zlib", photometric="rgb")
    config = RunConfig(input_dir=tmp_path / "in", output_dir=tmp_path / "out", whole_slide_min_px=1000, scheduler="synchronous")
    summary = run_batch(config)["images"]["D1_labeled_d14_s1"]
    assert "whole_slide" in summary and summary["pixel_size_source"] == "default" and summary["pixel_size_um"] == 1.0
    assert any("none is estimated for whole-slide scans: used the default 1 µm" in w for w in summary["warnings"]), summary["warnings"]
    # a pixel size given in the config is used without a word
    given = run_batch(config.model_copy(update={"output_dir": tmp_path / "given", "pixel_size_um": PX}))
    assert not any("pixel size" in w for w in given["images"]["D1_labeled_d14_s1"]["warnings"])


def test_whole_slide_rerun_skips_the_finished_slide(slide_run, section):
    record, root = slide_run
    config = RunConfig(input_dir=root / "in", output_dir=root / "out", whole_slide_min_px=1000, tile_px=700, scheduler="threads")
    again = run_batch(config)
    assert again["n_skipped"] == 1 and again["table"].equals(record["table"])


def test_lazy_reading_decodes_only_the_window_and_every_level(tmp_path):
    rr, cc = np.mgrid[:1000, :1500]
    image = np.stack([rr * 255 // 1000, cc * 255 // 1500, (rr + cc) * 255 // 2500], axis=-1).astype(np.uint8)  # smooth: JPEG keeps it
    path = tmp_path / "pyramid.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(image, tile=(256, 256), compression="jpeg", compressionargs={"level": 95}, photometric="rgb", subifds=1,
                  resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
        tif.write(image[::2, ::2], tile=(256, 256), compression="jpeg", compressionargs={"level": 95}, photometric="rgb", subfiletype=1)
    lazy = open_lazy(path)
    assert lazy.shape == (1000, 1500, 3) and [lvl.shape[:2] for lvl in lazy.levels] == [(1000, 1500), (500, 750)]
    assert lazy.pixel_size_um == pytest.approx(0.25)
    assert lazy.levels[0].chunksize[:2] == (256, 256)
    window = (slice(300, 420), slice(700, 777))
    got = read_window(path, window)
    assert got.shape == (120, 77, 3)
    assert np.abs(got.astype(int) - image[window].astype(int)).max() <= 3  # JPEG-lossy, but the same pixels


def test_unreadable_or_oversized_slides_fail_with_one_line(tmp_path):
    path = tmp_path / "text.tif"
    path.write_text("not a tiff")
    with pytest.raises(ImageReadError, match="not a readable tiled TIFF"):
        open_lazy(path)
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, np.zeros((64, 64, 3), np.uint8), tile=(32, 32))
    with pytest.raises(ImageReadError, match="exceeds the limit"):
        open_lazy(small, max_pixels=1000)


def test_label_pyramid_is_written_without_the_full_image(tmp_path):
    shape = (5000, 7000)
    values = np.arange(1, 1201 * 801 + 1, dtype=np.uint32).reshape(1201, 801)
    inside = values % 7 != 0
    window = (slice(3000, 4201), slice(6100, 6901))
    path = write_label_pyramid(tmp_path / "l.tif", shape, [(window, values, inside, 10)], dtype=np.uint32, pixel_size_um=0.5, tile_px=512)
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        assert [lvl.shape for lvl in levels] == [(5000, 7000), (2500, 3500), (1250, 1750), (625, 875)]
        full = levels[0].asarray()
    expected = np.zeros(shape, np.uint32)
    expected[window][inside] = values[inside] + 10
    np.testing.assert_array_equal(full, expected)
    assert path.stat().st_size < 0.05 * full.nbytes  # empty tiles compress to almost nothing


def test_review_of_a_whole_slide_reads_windows_and_writes_a_corrected_pyramid(slide_run, in_memory):
    from pellet_analysis import review

    record, root = slide_run
    run_dir, image = root / "out", "D1_labeled_d14_s1"
    crop = review.pellet_crop(run_dir, image, 2, margin_px=5)
    r0, c0 = crop["origin"]
    h, w = crop["pellets"].shape
    np.testing.assert_array_equal(crop["nuclei"], in_memory.nuclei[r0 : r0 + h, c0 : c0 + w])
    # re-quantifying the untouched labels gives the run's own measurements
    (again,) = review.requantify(run_dir, image, [2])
    row = record["table"].set_index("pellet_id").loc[2]
    for key in ("proteoglycan_area_fraction", "proteoglycan_mean_od", "nuclei_count", "iron_area_fraction"):
        assert again[key] == pytest.approx(row[key], rel=1e-6), key
    # the reviewer relabels a block of the pellet as collagen (code 3)
    classes = crop["classes"].copy()
    block = (slice(h // 2 - 20, h // 2 + 20), slice(w // 2 - 20, w // 2 + 20))
    classes[block] = 3
    automatic = (root / "out" / "labels" / f"{image}_classes.tif").read_bytes()
    audit = review.save_corrections(run_dir, image, 2, {"classes": classes}, origin=crop["origin"])
    assert audit["pixels_changed"]["classes"] == int((crop["classes"][block] != 3).sum()) > 0
    assert (root / "out" / "labels" / f"{image}_classes.tif").read_bytes() == automatic  # never overwritten
    with tifffile.TiffFile(root / "out" / "labels" / f"{image}_classes.corrected.tif") as tif:
        corrected = tif.series[0].levels[0].asarray()
        assert len(tif.series[0].levels) > 1
    expected = in_memory.classes.copy()
    expected[r0 : r0 + h, c0 : c0 + w] = classes
    np.testing.assert_array_equal(corrected, expected)
    (after,) = review.requantify(run_dir, image, [2])
    assert after["collagen_area_fraction"] > again["collagen_area_fraction"] and after["corrected"]
