"""Real scans from ../shared/real-images (read in place, never copied); skipped when absent."""

import numpy as np
import pytest

from pellet_analysis.config import RunConfig
from pellet_analysis.io import read_image
from pellet_analysis.pipeline import analyze_image

from .conftest import REAL_IMAGES

pytestmark = pytest.mark.skipif(not REAL_IMAGES.is_dir(), reason="../shared/real-images is not here")


MBS = "mbs_pellet_whole_section.tif"
SAFRANIN_O = RunConfig(stains={"preset": "safranin-o"})


def rerender(rgb, white, *, od_scale: float, od_offset: float = 0.0):
    """The same section with its stain ``od_scale`` times as strong and a veil of ``od_offset`` OD over all of it.

    RGB to optical density against the image's white point, scaled and
    offset, back to RGB uint8.
    """
    white = np.asarray(white, dtype=np.float64)
    od = -np.log10(np.maximum(rgb.astype(np.float64), 1.0) / white)
    return np.clip(np.round(white * 10.0 ** -(od * od_scale + od_offset)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def mbs():
    rgb, _ = read_image(REAL_IMAGES / MBS)
    return rgb[..., :3]


def test_safranin_o_pellet_is_one_pellet_with_a_proteoglycan_rich_core(mbs):
    # the file's resolution tag says 72 dpi; the pellet is about 2 mm across: 2 µm per pixel
    found = analyze_image(mbs, pixel_size_um=2.0, config=SAFRANIN_O)
    assert len(found.rows) == 1
    row = found.rows[0]
    assert 0.1 < row["proteoglycan_area_fraction"] < 0.6
    assert 0 <= row["bern_score"] <= 9 and row["nuclei_count"] > 300
    # proteoglycan (Safranin O) lies in the core, the fast-green fibrous rim holds little
    assert row["proteoglycan_core_fraction"] > 2 * row["proteoglycan_rim_fraction"]
    # the outline follows the tissue, not every cell: a visibly round pellet reads round (cell-scale: 0.23)
    assert row["circularity"] > 0.8, row["circularity"]
    # the fast-green fibrous capsule is the collagen class (it read 0.026 as "other tissue")
    assert row["collagen_area_fraction"] > 0.08, row["collagen_area_fraction"]


# ---- the mbs section at 0.6 µm per pixel: outline, capsule, and its stain made paler or hazier ----

MBS_PIXEL_SIZE_UM = 0.6
RENDERS = {"0.7x": (0.7, 0.0), "0.5x": (0.5, 0.0), "0.5x+0.15": (0.5, 0.15)}


@pytest.fixture(scope="module")
def mbs_runs(mbs):
    white = np.percentile(mbs.reshape(-1, 3), 99, axis=0)  # the glass: most of the frame's bright pixels
    runs = {"original": analyze_image(mbs, pixel_size_um=MBS_PIXEL_SIZE_UM, config=SAFRANIN_O)}
    for name, (scale, offset) in RENDERS.items():
        runs[name] = analyze_image(rerender(mbs, white, od_scale=scale, od_offset=offset), pixel_size_um=MBS_PIXEL_SIZE_UM, config=SAFRANIN_O)
    for name, run in runs.items():
        r = run.rows[0]
        print(f"\n{name}: area {r['area_um2']:.0f} µm², circularity {r['circularity']:.3f}, nuclei {r['nuclei_count']}, "
              f"collagen {r['collagen_area_fraction']:.3f}, proteoglycan {r['proteoglycan_area_fraction']:.3f}")
    return runs


def test_safranin_o_outline_is_smooth_round_and_cut_by_the_border(mbs_runs):
    original = mbs_runs["original"]
    assert len(original.rows) == 1
    row = original.rows[0]
    assert row["circularity"] > 0.85, row["circularity"]
    # the section runs off the top and bottom of the frame: its shape measures are not comparable
    assert row["touches_border"] is True
    # lacunae and pale matrix inside are the pellet's: no hole in the outline's interior
    from scipy import ndimage as ndi

    inside = original.pellets == 1
    assert ndi.binary_fill_holes(inside).sum() == inside.sum()


def test_safranin_o_capsule_is_collagen_and_its_flat_cells_are_not_all_nuclei(mbs_runs):
    from pellet_analysis.labels import CLASS_CODES

    run = mbs_runs["original"]
    row = run.rows[0]
    assert row["collagen_area_fraction"] > 0.08, row["collagen_area_fraction"]
    # the capsule: the outer 40 µm of the section, where it lies on glass (not where the frame cuts it)
    import cv2

    inside = (run.pellets == 1).astype(np.uint8)
    depth_um = cv2.distanceTransform(np.pad(inside, ((0, 0), (1, 1))), cv2.DIST_L2, 5)[:, 1:-1] * MBS_PIXEL_SIZE_UM
    capsule = (inside > 0) & (depth_um <= 40)
    capsule[:40] = capsule[-40:] = False
    core = (inside > 0) & (depth_um > 150)
    collagen = run.classes == CLASS_CODES["collagen"]
    nuclei = run.classes == CLASS_CODES["nuclei"]
    assert collagen[capsule].mean() > 0.3 and collagen[capsule].mean() > 2 * collagen[core].mean(), (collagen[capsule].mean(), collagen[core].mean())
    # fast green's dense flat cells are nuclei only where hematoxylin is: not a band of nuclei around the section
    # (fast green read as hematoxylin made the capsule 1.8 times as dense in "nuclei" as the core)
    assert nuclei[capsule].mean() < 1.3 * nuclei[core].mean(), (nuclei[capsule].mean(), nuclei[core].mean())


@pytest.mark.parametrize("name", list(RENDERS))
def test_safranin_o_paler_or_hazier_stain_finds_the_same_pellet_and_nuclei(mbs_runs, name):
    original, other = mbs_runs["original"].rows[0], mbs_runs[name].rows[0]
    assert len(mbs_runs[name].rows) == 1
    assert other["area_um2"] == pytest.approx(original["area_um2"], rel=0.05)
    assert other["nuclei_count"] == pytest.approx(original["nuclei_count"], rel=0.20)
    assert other["circularity"] == pytest.approx(original["circularity"], abs=0.05)


def test_macenko_on_easy1_matches_histomicstk_expected_matrix():
    """HistomicsTK's test expects this matrix on Easy1.png (EXPECTED_VALUES.txt); compare up to order and sign."""
    import cv2

    from pellet_analysis.stains import complete_matrix, estimate_stains_macenko, rgb_to_od

    text = (REAL_IMAGES / "EXPECTED_VALUES.txt").read_text()
    block = text[text.index("expected W") :].splitlines()[1:4]
    expected = np.array([[float(v) for v in line.strip(" [],").replace("]", "").split(",") if v.strip()] for line in block])
    bgr = cv2.imread(str(REAL_IMAGES / "Easy1.png"), cv2.IMREAD_UNCHANGED)
    rgb = bgr[..., [2, 1, 0]]  # drop alpha
    ours = complete_matrix(estimate_stains_macenko(rgb_to_od(rgb, 255.0)))
    for column in expected.T:
        diffs = [np.abs(row - s * column).max() for row in ours for s in (1, -1)]
        assert min(diffs) < 1e-3, (column, ours)


# ---- Alcian-blue valve sections: our classification against the lab's QuPath protocol ----

VALVES = ["ab_valve_KI_POST_493-13.tif", "ab_valve_KI_ANT_510-4.tif"]
VALVE_PIXEL_SIZE_UM = 0.912  # SOURCES.tsv; the files carry no resolution tag


def lab_qupath_stains():
    """(counterstain, BA, residual) rows from qupath_BA_stain_vectors.txt."""
    import re

    text = (REAL_IMAGES / "qupath_BA_stain_vectors.txt").read_text()
    number = r"(-?\d+\.\d+)"
    rows = [re.search(rf"^\s*{key}[^:\n]*:\s+{number} {number} {number}", text, re.M).groups() for key in ("counterstain", "Alcian blue", "residual")]
    return np.array(rows, dtype=np.float64)


def qupath_ba_positive(rgb, matrix, *, threshold_od=0.2):
    """The lab's QuPath pixel classifier 'ThresholdBA', re-implemented.

    QuPath (ColorDeconvolutionHelper.makeOD) takes OD = max(0, -log10(max(I, 1) / I0)) with
    I0 = 255 per channel; ColorDeconvolutionStains normalises each stain row to unit length and
    inverts the 3 x 3 matrix (rows: stain 1, 2, 3), and stain j of a pixel is
    sum_c OD_c * inverse[c][j]. The classifier thresholds stain 2 (BA) at 0.2 with no smoothing,
    at the image's own resolution (0.912 µm per pixel).
    """
    od = np.maximum(0.0, -np.log10(np.maximum(rgb.astype(np.float64), 1.0) / 255.0))
    m = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    return (od @ np.linalg.inv(m))[..., 1] > threshold_od


@pytest.fixture(scope="module")
def valves():
    from pellet_analysis.labels import CLASS_CODES

    lab = lab_qupath_stains()
    lab_vectors = {"nuclear_fast_red": lab[0].tolist(), "alcian_blue": lab[1].tolist()}
    out = {}
    for name in VALVES:
        rgb, _ = read_image(REAL_IMAGES / name)
        given = analyze_image(rgb, pixel_size_um=VALVE_PIXEL_SIZE_UM, config=RunConfig(stains={"preset": "alcian-nfr", "vectors": lab_vectors}))
        estimated = analyze_image(rgb, pixel_size_um=VALVE_PIXEL_SIZE_UM, config=RunConfig(stains={"preset": "alcian-nfr", "estimate": "auto"}))
        # one denominator for all three: our tissue (pellet) mask, which does not depend on the stain vectors
        tissue = given.pellets > 0
        assert np.array_equal(tissue, estimated.pellets > 0) and tissue.mean() > 0.1
        out[name] = {
            "reference": float(qupath_ba_positive(rgb, lab)[tissue].mean()),
            "lab_vectors": float((given.classes[tissue] == CLASS_CODES["proteoglycan"]).mean()),
            "estimated": float((estimated.classes[tissue] == CLASS_CODES["proteoglycan"]).mean()),
            "stains_source": estimated.stains_info,
            # vectors are estimated pellet by pellet (here: tissue piece by piece); the largest piece holds most pixels
            "largest_source": max(zip((r["area_um2"] for r in estimated.rows), estimated.stains_info), key=lambda pair: pair[0])[1]["source"],
        }
        print(f"\n{name}: reference {100 * out[name]['reference']:.2f} %, ours with lab vectors "
              f"{100 * out[name]['lab_vectors']:.2f} %, ours with estimated vectors {100 * out[name]['estimated']:.2f} % "
              f"({estimated.stains_info})")
    return out


@pytest.mark.parametrize("name", VALVES)
def test_alcian_blue_fraction_with_lab_vectors_within_3_points_of_lab_qupath_protocol(valves, name):
    v = valves[name]
    assert abs(v["lab_vectors"] - v["reference"]) <= 0.03, v


@pytest.mark.parametrize("name", VALVES)
def test_alcian_blue_fraction_with_estimated_vectors_within_5_points_of_lab_qupath_protocol(valves, name):
    v = valves[name]
    assert v["largest_source"] == "estimated-macenko", v
    assert abs(v["estimated"] - v["reference"]) <= 0.05, v


def test_safranin_o_tiles_at_half_resolution_find_nuclei_where_the_whole_section_does(mbs, mbs_runs):
    """224-px tiles wholly inside the section, downscaled by 2 (1.2 µm per pixel), each analysed alone.

    Each tile fills its frame, so it is one region with its own white point and thresholds. Its
    nuclei are matched one to one (Hungarian, centroids within 5 µm) to the whole section's
    nuclei whose centroids lie in the tile.
    """
    import cv2
    from scipy import ndimage as ndi
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    def centroids(nuclei):
        ids = np.unique(nuclei[nuclei > 0])
        return np.array(ndi.center_of_mass(np.ones_like(nuclei), nuclei, ids)).reshape(-1, 2)

    whole = mbs_runs["original"]
    in_whole = centroids(whole.nuclei)
    totals = np.zeros(3)
    for r in range(0, mbs.shape[0] - 223, 224):
        for c in range(0, mbs.shape[1] - 223, 224):
            if not (whole.pellets[r : r + 224, c : c + 224] > 0).all():
                continue
            tile = cv2.resize(mbs[r : r + 224, c : c + 224], (112, 112), interpolation=cv2.INTER_AREA)
            found = analyze_image(tile, pixel_size_um=2 * MBS_PIXEL_SIZE_UM, config=SAFRANIN_O)
            assert len(found.rows) == 1 and found.rows[0]["area_um2"] == pytest.approx(112 * 112 * 1.44)
            in_tile = centroids(found.nuclei) * 2 + 0.5 + np.array([r, c])
            here = in_whole[(in_whole[:, 0] >= r) & (in_whole[:, 0] < r + 224) & (in_whole[:, 1] >= c) & (in_whole[:, 1] < c + 224)]
            distance = cdist(here, in_tile)
            rows, cols = linear_sum_assignment(distance)
            matched = int((distance[rows, cols] <= 5.0 / MBS_PIXEL_SIZE_UM).sum())
            print(f"\ntile ({r}, {c}): whole section {len(here)}, tile {len(in_tile)}, matched {matched}")
            assert len(in_tile) == pytest.approx(len(here), rel=0.3)
            totals += (len(here), len(in_tile), matched)
    assert totals[0] > 500  # seven tiles lie wholly inside the section
    assert totals[1] == pytest.approx(totals[0], rel=0.15)
    recall, precision = totals[2] / totals[0], totals[2] / totals[1]
    print(f"all tiles: whole {totals[0]:.0f}, tiles {totals[1]:.0f}, recall {recall:.2f}, precision {precision:.2f}")
    assert recall >= 0.7 and precision >= 0.8


def test_safranin_o_tiled_classification_equals_in_memory(mbs, mbs_runs):
    """The spot maps' filters (stain and darkness top-hats) and the object step's size test tile exactly."""
    whole = mbs_runs["original"]
    tiled = analyze_image(mbs, pixel_size_um=MBS_PIXEL_SIZE_UM, config=RunConfig(stains={"preset": "safranin-o"}, tile_px=256))
    assert np.array_equal(whole.pellets, tiled.pellets)
    assert np.array_equal(whole.classes, tiled.classes) and np.array_equal(whole.nuclei, tiled.nuclei)
