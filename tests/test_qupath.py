"""QuPath both ways: its annotated outlines are our pellets, and our GeoJSON reads back as the same outlines."""

import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from skimage.draw import polygon as draw_polygon

from pellet_analysis.bookkeeping import read_annotations
from pellet_analysis.config import RunConfig
from pellet_analysis.labels import CLASS_CODES
from pellet_analysis.geojson import AnnotationError, feature_collection, fill_rings, geojson_outlines, outline_mask, pellet_geometry
from pellet_analysis.pipeline import run_batch
from pellet_analysis.synthetic import make_section, write_section

PX = 1.5
STEM = "D1_labeled_d14_s1"


@pytest.fixture(scope="module")
def section():
    return make_section(day=14, labeled=True, n_pellets=2, pixel_size_um=PX, seed=71)


@pytest.fixture(scope="module")
def found(section, tmp_path_factory):
    """A run with the pellet finder: its table, label images and GeoJSON."""
    root = tmp_path_factory.mktemp("found")
    write_section(section, root / "in" / f"{STEM}.tif")
    record = run_batch(RunConfig(input_dir=root / "in", output_dir=root / "out"))
    return record, root


def _labels(out, kind):
    return tifffile.imread(out / "labels" / f"{STEM}_{kind}.tif")


def _hand_drawn(section):
    """Two outlines as a person draws them in QuPath: irregular polygons in (x, y), not following the tissue edge."""
    rng = np.random.default_rng(5)
    outlines = []
    for pid in (1, 2):
        rows, cols = np.nonzero(section.pellets == pid)
        r0, c0 = rows.mean(), cols.mean()
        radius = 0.35 * np.sqrt(rows.size / np.pi)
        angles = np.sort(rng.uniform(0, 2 * np.pi, 11))
        radii = radius * rng.uniform(0.7, 1.1, angles.size)
        outlines.append(np.stack([c0 + radii * np.cos(angles), r0 + radii * np.sin(angles)], axis=1))
    return outlines


def _feature(xy, name, object_type="annotation"):
    ring = [[float(x), float(y)] for x, y in xy] + [[float(xy[0][0]), float(xy[0][1])]]
    return {
        "type": "Feature",
        "id": "4f1c2a4e-0000-4000-8000-00000000000" + str(len(name) % 10),
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"objectType": object_type, "classification": {"name": name, "color": [255, 0, 0]}},
    }


def _area_px(xy):
    x, y = np.asarray(xy, np.float64).T
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def test_two_hand_drawn_outlines_are_exactly_the_two_pellets_measured(section, tmp_path):
    drawn = _hand_drawn(section)
    export = [
        _feature(drawn[1], "Pellet"),  # out of order: numbered left to right as the finder numbers
        _feature(drawn[0], "Pellet"),
        _feature([[5, 5], [60, 5], [60, 40], [5, 40]], "Background"),  # an annotation of another class
        _feature([[200, 200], [230, 200], [230, 230]], "Pellet", object_type="detection"),  # a detection is never a pellet
    ]
    write_section(section, tmp_path / "in" / f"{STEM}.tif")
    (tmp_path / "qupath").mkdir()
    (tmp_path / "qupath" / f"{STEM}.geojson").write_text(json.dumps(export))  # a list of Features, as QuPath may export
    record = run_batch(RunConfig(input_dir=tmp_path / "in", output_dir=tmp_path / "out", annotations_dir=tmp_path / "qupath"))

    table = record["table"]
    assert record["n_failures"] == 0 and len(table) == 2
    pellets = _labels(tmp_path / "out", "pellets")
    for pid, xy in zip((1, 2), sorted(drawn, key=lambda xy: xy[:, 0].mean())):
        # the pixels whose centres (x + 0.5, y + 0.5 in QuPath) the polygon encloses: skimage's point-in-polygon
        rr, cc = draw_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, pellets.shape)
        expected = np.zeros(pellets.shape, bool)
        expected[rr, cc] = True
        assert np.array_equal(pellets == pid, expected)
        row = table[table.pellet_id == pid].iloc[0]
        perimeter_px = np.sum(np.hypot(*np.diff(np.vstack([xy, xy[:1]]), axis=0).T))
        assert abs(row.area_um2 / PX**2 - _area_px(xy)) < 0.5 * perimeter_px  # within the rasterisation of its edge
        assert abs(row.area_um2 / PX**2 - _area_px(xy)) / _area_px(xy) < 0.01
        # measured inside the outline: against the section's truth inside the same pixels
        truth = section.classes[expected]
        assert row.proteoglycan_area_fraction == pytest.approx(np.mean(truth == CLASS_CODES["proteoglycan"]), abs=0.06)
        ids = np.unique(section.nuclei[expected])
        centres = ndi.center_of_mass(np.ones(pellets.shape), section.nuclei, ids[ids > 0])
        true_nuclei = sum(bool(expected[int(round(r)), int(round(c))]) for r, c in centres)
        assert row.nuclei_count == pytest.approx(true_nuclei, rel=0.3) and row.iron_area_fraction > 0
    assert record["images"][STEM]["annotations"]["outlines"] == 2


def test_without_a_pellet_class_every_annotation_is_a_pellet(section):
    drawn = _hand_drawn(section)
    export = {"type": "FeatureCollection", "features": [_feature(drawn[0], "Tumor"), _feature(drawn[1], "Stroma")]}
    assert len(geojson_outlines(export)) == 2
    export["features"][1]["properties"]["classification"] = {"name": "pellet: Positive"}  # a derived class, any case
    assert len(geojson_outlines(export)) == 1
    assert len(geojson_outlines(export, pellet_class="tumor")) == 1


def test_our_geojson_reads_back_as_the_same_outlines_and_classes(found, tmp_path):
    record, root = found
    out = root / "out"
    collection = json.loads((out / "geojson" / f"{STEM}.geojson").read_text())
    pellets, classes = _labels(out, "pellets"), _labels(out, "classes")
    table = record["table"]
    assert len(collection["features"]) == len(table) == 2
    for feature in collection["features"]:
        properties = feature["properties"]
        assert properties["objectType"] == "annotation" and properties["classification"]["name"] == "Pellet"
        # QuPath's measurement table: a map of names to finite numbers
        measurements = properties["measurements"]
        assert all(isinstance(v, (int, float)) and np.isfinite(v) for v in measurements.values())
        row = table[table.pellet_id == measurements["pellet_id"]].iloc[0]
        assert measurements["area_um2"] == pytest.approx(row.area_um2) and measurements["nuclei_count"] == row.nuclei_count
        assert properties["metadata"]["image"] == STEM and properties["metadata"]["donor"] == "D1"

    # read back, the same pellets within a pixel
    outlines = geojson_outlines(collection)
    whole = (slice(0, pellets.shape[0]), slice(0, pellets.shape[1]))
    for pid, polygons in enumerate(outlines, start=1):
        back, mask = outline_mask(polygons, whole), pellets == pid
        edge = ndi.distance_transform_edt(mask) <= 1.5
        edge |= ndi.distance_transform_edt(~mask) <= 1.5
        assert not (back ^ mask)[~edge].any()
        assert abs(int(back.sum()) - int(mask.sum())) < 0.005 * mask.sum()

    # and as the annotations of a second run: the same classes inside those outlines
    (tmp_path / "qupath").mkdir()
    (tmp_path / "qupath" / f"{STEM}.json").write_text(json.dumps(collection))
    again = run_batch(RunConfig(input_dir=root / "in", output_dir=tmp_path / "out", annotations_dir=tmp_path / "qupath"))
    assert again["n_failures"] == 0 and len(again["table"]) == 2
    pellets2, classes2 = _labels(tmp_path / "out", "pellets"), _labels(tmp_path / "out", "classes")
    both = (pellets > 0) & (pellets2 > 0)
    assert np.count_nonzero(pellets != pellets2) < 0.005 * np.count_nonzero(pellets)
    assert np.mean(classes[both] == classes2[both]) > 0.999
    for key in ("proteoglycan_area_fraction", "collagen_area_fraction", "iron_area_fraction"):
        assert again["table"][key].to_numpy() == pytest.approx(table[key].to_numpy(), abs=0.002)


def test_a_whole_slide_takes_its_outlines_as_the_image_in_memory(section, tmp_path):
    drawn = _hand_drawn(section)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(
        tmp_path / "in" / f"{STEM}.tif", section.image, tile=(128, 128), compression="zlib",
        photometric="rgb", resolution=(1e4 / PX, 1e4 / PX), resolutionunit="CENTIMETER",
    )
    (tmp_path / "qupath").mkdir()
    (tmp_path / "qupath" / f"{STEM}.geojson").write_text(json.dumps([_feature(xy, "Pellet") for xy in drawn]))
    runs = {}
    for name, min_px in (("slide", 1000), ("memory", 10**9)):
        config = RunConfig(input_dir=tmp_path / "in", output_dir=tmp_path / name, annotations_dir=tmp_path / "qupath", whole_slide_min_px=min_px)
        runs[name] = run_batch(config)
    assert runs["slide"]["images"][STEM]["whole_slide"] is not None and "whole_slide" not in runs["memory"]["images"][STEM]
    measured = [c for c in runs["memory"]["table"].columns if c not in ("image",)]
    assert len(runs["slide"]["table"]) == 2
    for col in measured:
        a, b = runs["slide"]["table"][col].to_numpy(), runs["memory"]["table"][col].to_numpy()
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=col)
        else:
            assert list(a) == list(b), col
    for kind in ("pellets", "classes", "nuclei"):
        np.testing.assert_array_equal(_labels(tmp_path / "slide", kind), _labels(tmp_path / "memory", kind))


@pytest.mark.parametrize(
    "text, cause",
    [
        ("{not json", "not JSON (line 1 column 2"),
        ('{"type": "Polygon", "coordinates": []}', "not a FeatureCollection or a list of Features"),
        ('[{"type": "Feature", "geometry": {"type": "Point", "coordinates": [3, 4]}, "properties": {}}]', "no annotation with a Polygon"),
        ('[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[1, "a"], [2, 3], [4, 5]]]}}]', "not a list of [x, y] numbers"),
        ('[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[9000, 9000], [9100, 9000], [9100, 9100]]]}}]', "lies outside the image"),
    ],
)
def test_bad_geojson_fails_its_image_with_one_line_naming_file_and_cause(section, tmp_path, text, cause):
    write_section(section, tmp_path / "in" / f"{STEM}.tif")
    (tmp_path / "qupath").mkdir()
    (tmp_path / "qupath" / f"{STEM}.geojson").write_text(text)
    record = run_batch(RunConfig(input_dir=tmp_path / "in", output_dir=tmp_path / "out", annotations_dir=tmp_path / "qupath"))
    (reason,) = record["failures"]["reason"]
    assert reason.startswith(f"{STEM}.geojson: ") and cause in reason and "\n" not in reason
    if "outside" not in cause:  # the reader alone says the same (an outline off the image needs the image)
        with pytest.raises(AnnotationError) as raised:
            read_annotations(tmp_path / "qupath" / f"{STEM}.geojson", RunConfig())
        assert str(raised.value) == reason


def test_an_image_without_an_export_is_found_and_warned_about(section, tmp_path):
    write_section(section, tmp_path / "in" / f"{STEM}.tif")
    (tmp_path / "qupath").mkdir()
    record = run_batch(RunConfig(input_dir=tmp_path / "in", output_dir=tmp_path / "out", annotations_dir=tmp_path / "qupath"))
    assert len(record["table"]) == 2
    assert any("no QuPath annotations" in w for w in record["images"][STEM]["warnings"])
    with pytest.raises(FileNotFoundError, match="annotations folder does not exist"):
        run_batch(RunConfig(input_dir=tmp_path / "in", output_dir=tmp_path / "out2", annotations_dir=tmp_path / "nowhere"))


def test_fill_rings_is_the_pixel_centres_inside_with_holes_and_parts():
    rng = np.random.default_rng(0)
    angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    ring = np.stack([50 + 30 * np.sin(angles), 60 + 40 * np.cos(angles)], 1) + rng.normal(0, 2, (40, 2))
    rr, cc = draw_polygon(ring[:, 0], ring[:, 1], (100, 120))
    expected = np.zeros((100, 120), bool)
    expected[rr, cc] = True
    assert np.array_equal(fill_rings([np.vstack([ring, ring[:1]])], (100, 120)), expected)
    # a part with a hole, an island in the hole, and a second part: written and read back
    mask = np.zeros((80, 90), bool)
    mask[5:40, 5:40] = True
    mask[15:25, 15:25] = False
    mask[18:22, 18:22] = True
    mask[50:70, 50:75] = True
    geometry = pellet_geometry(mask, offset=(100, 200))
    assert geometry["type"] == "MultiPolygon" and sorted(len(p) for p in geometry["coordinates"]) == [1, 1, 2]
    (outline,) = geojson_outlines(feature_collection([({"pellet_id": 1, "image": "x"}, geometry)]))
    back = outline_mask(outline, (slice(100, 180), slice(200, 290)))
    edge = ndi.binary_dilation(mask) & ~ndi.binary_erosion(mask)
    assert not (back ^ mask)[~edge].any() and (back ^ mask).sum() <= 0.1 * edge.sum()


def test_the_command_line_names_a_missing_annotations_folder(section, tmp_path):
    import subprocess
    import sys

    write_section(section, tmp_path / "in" / f"{STEM}.tif")
    done = subprocess.run(
        [sys.executable, "-m", "pellet_analysis", "run", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
         "--annotations", str(tmp_path / "nowhere")],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and done.stderr.strip() == f"error: annotations folder {tmp_path / 'nowhere'} does not exist"
