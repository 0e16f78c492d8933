"""Lacunae, cell territories and roundness, depth profiles (issue 24): by hand, on the generator's truth, and on a real section."""

from dataclasses import replace

import numpy as np
import pytest
from skimage.draw import disk, ellipse

from pellet_analysis.config import CartilageConfig, RunConfig
from pellet_analysis.labels import CLASS_CODES
from pellet_analysis.lacunae import find_lacunae, lacunae_from_clear, nucleus_lacuna
from pellet_analysis.measure import measure_pellets
from pellet_analysis.pipeline import analyze_image
from pellet_analysis.profiles import band_index
from pellet_analysis.synthetic import make_section, truth_table
from pellet_analysis.territories import axis_ratios, cell_territories

from .conftest import REAL_IMAGES

PARAMS = CartilageConfig().params()


# ---- by hand ----

def _matrix_with_cells(shape=(120, 200)):
    """Stained matrix (True) with nuclei (labels) and clear halos carved in it."""
    nuclei = np.zeros(shape, np.int32)
    clear = np.zeros(shape, bool)
    # 1: a nucleus in a round halo
    clear[disk((30, 30), 10, shape=shape)] = True
    nuclei[disk((30, 30), 4, shape=shape)] = 1
    # 2 and 3: two nuclei in one halo (a chondron)
    clear[ellipse(30, 90, 10, 18, shape=shape)] = True
    nuclei[disk((30, 80), 4, shape=shape)] = 2
    nuclei[disk((30, 100), 4, shape=shape)] = 3
    # 4: a nucleus in the matrix itself, no halo
    nuclei[disk((90, 30), 4, shape=shape)] = 4
    # 5: a nucleus in a wide clear zone (a pale zone of the matrix, not a lacuna)
    clear[75:120, 70:200] = True
    nuclei[disk((100, 130), 4, shape=shape)] = 5
    clear &= nuclei == 0
    stained = ~clear & (nuclei == 0)
    return nuclei, clear, stained


def test_lacunae_by_hand():
    nuclei, clear, stained = _matrix_with_cells()
    lacunae = lacunae_from_clear(clear, nuclei, stained, pixel_size_um=1.0, params=PARAMS)
    host = nucleus_lacuna(nuclei, lacunae)
    assert lacunae.dtype == np.uint32 and lacunae.max() == 2
    assert host[1] != 0 and host[2] == host[3] != 0 and host[1] != host[2]  # a lone cell and a chondron
    assert host[4] == 0  # no halo
    assert host[5] == 0  # the clear pixels it reaches are not ringed by matrix
    # a lacuna holds its halo and its nuclei
    halo_and_nucleus = np.zeros(nuclei.shape, bool)
    halo_and_nucleus[disk((30, 30), 10, shape=nuclei.shape)] = True
    assert np.array_equal(lacunae == host[1], halo_and_nucleus)


def test_a_ragged_clear_region_is_no_lacuna():
    shape = (60, 60)
    nuclei = np.zeros(shape, np.int32)
    nuclei[disk((30, 30), 3, shape=shape)] = 1
    clear = np.zeros(shape, bool)
    clear[28:33, 12:48] = True  # a cross of clear gaps, as between a capsule's fibres
    clear[12:48, 28:33] = True
    clear &= nuclei == 0
    stained = ~clear & (nuclei == 0)
    assert lacunae_from_clear(clear, nuclei, stained, pixel_size_um=1.0, params=PARAMS).max() == 0
    assert lacunae_from_clear(clear, nuclei, stained, pixel_size_um=1.0, params=replace(PARAMS, lacuna_min_solidity=0.0)).max() == 1


def test_a_lacuna_is_empty_in_every_channel_and_against_its_tissue():
    """A clear halo in blue matrix is a lacuna; a yellow ring (clear in the matrix's strongest channel, dark in
    another) and an unstained patch as pale as its own tissue beside a dark capsule are not."""
    shape = (140, 200)
    od = np.zeros(shape + (3,), np.float32)
    od[:] = (0.6, 0.25, 0.15)  # blue matrix: strongest in the red channel
    nuclei = np.zeros(shape, np.int32)
    # 1: an empty halo
    od[disk((35, 35), 10, shape=shape)] = (0.02, 0.02, 0.03)
    # 2: a yellow cytoplasm ring: faint in red and green, darker than the matrix in blue
    od[disk((35, 110), 10, shape=shape)] = (0.03, 0.08, 0.25)
    # 3: a dark capsule over the lower half, an unstained patch beside it as pale as the pellet's unstained tissue
    od[80:, :] = (0.35, 1.2, 0.6)
    od[90:130, 20:60] = (0.15, 0.25, 0.2)  # under the channel limit of the capsule's levels, not under the absorbance limit
    for k, (r, c) in enumerate(((35, 35), (35, 110), (100, 40)), start=1):
        nuclei[disk((r, c), 4, shape=shape)] = k
        od[disk((r, c), 4, shape=shape)] = (0.9, 0.9, 0.6)
    matrix = np.where(nuclei > 0, 0.0, od[..., 0] + od[..., 1]).astype(np.float32)
    for (r, c), level in (((35, 35), 0.0), ((35, 110), 0.05)):
        ring = np.zeros(shape, bool)
        ring[disk((r, c), 10, shape=shape)] = True
        matrix[ring & (nuclei == 0)] = level
    matrix[90:130, 20:60] = 0.05
    inside = np.ones(shape, bool)
    lacunae, _ = find_lacunae(od, matrix, inside, nuclei, pixel_size_um=1.0, params=PARAMS)
    host = nucleus_lacuna(nuclei, lacunae)
    assert host[1] != 0, "the empty halo"
    assert host[2] == 0, "yellow cytoplasm is not empty in the blue channel"
    assert host[3] == 0, "the unstained patch"

    def hosts(**change):
        return nucleus_lacuna(nuclei, find_lacunae(od, matrix, inside, nuclei, pixel_size_um=1.0, params=replace(PARAMS, **change))[0])

    # without the emptiness limits the yellow ring reads as a lacuna (clear in the largest channel)
    assert hosts(lacuna_max_channel_ratio=1e6, lacuna_max_absorbance_ratio=1e6)[2] != 0
    # the patch is not enclosed by stained matrix; enclosed or not, it absorbs as much as the tissue around it
    assert hosts(lacuna_min_enclosure=0.0)[3] == 0, "the unstained patch absorbs as much as the tissue around it"
    assert hosts(lacuna_min_enclosure=0.0, lacuna_max_absorbance_ratio=1e6)[3] != 0


def test_crowded_lacunae_joined_through_a_blurred_wall_come_apart():
    """Three round halos in an L, joined by thin clear bridges (blurred walls read clear), make one ragged region:
    each cell's own halo is a lacuna."""
    shape = (100, 100)
    nuclei = np.zeros(shape, np.int32)
    clear = np.zeros(shape, bool)
    for k, centre in enumerate(((30, 30), (30, 52), (52, 52)), start=1):
        clear[disk(centre, 9, shape=shape)] = True
        nuclei[disk(centre, 4, shape=shape)] = k
    clear[29:31, 38:45] = True
    clear[38:45, 51:53] = True
    clear &= nuclei == 0
    stained = ~clear & (nuclei == 0)
    lacunae = lacunae_from_clear(clear, nuclei, stained, pixel_size_um=1.0, params=PARAMS)
    assert lacunae.max() == 3 and set(nucleus_lacuna(nuclei, lacunae)[1:].tolist()) == {1, 2, 3}
    # as one region the group is ragged: without the split all three are lost, without the solidity test they are one
    assert lacunae_from_clear(clear, nuclei, stained, pixel_size_um=1.0, params=replace(PARAMS, split_min_solidity=1.01)).max() == 0
    assert lacunae_from_clear(clear, nuclei, stained, pixel_size_um=1.0, params=replace(PARAMS, lacuna_min_solidity=0.0)).max() == 1


def test_territories_follow_the_open_pixels_and_read_rounded_or_spindle():
    shape = (80, 80)
    nuclei = np.zeros(shape, np.int32)
    nuclei[disk((20, 20), 3, shape=shape)] = 1
    nuclei[disk((60, 40), 3, shape=shape)] = 2
    room = np.zeros(shape, bool)
    room[disk((20, 20), 8, shape=shape)] = True  # a round halo
    room[ellipse(60, 40, 3, 20, shape=shape)] = True  # a long cytoplasm along the columns
    territories = cell_territories(nuclei, room, max_distance_px=30)
    ratio = axis_ratios(territories)
    assert ratio[1] > 0.9 and ratio[2] < 0.3
    assert set(np.unique(territories)) == {0, 1, 2}
    # the reach limit cuts the long cytoplasm
    short = axis_ratios(cell_territories(nuclei, room, max_distance_px=4))
    assert short[2] > ratio[2]


def test_territories_leave_out_open_spurs_narrower_than_min_width():
    shape = (80, 80)
    nuclei = np.zeros(shape, np.int32)
    nuclei[disk((40, 40), 4, shape=shape)] = 1
    room = np.zeros(shape, bool)
    room[disk((40, 40), 6, shape=shape)] = True  # a thin cytoplasm ring, 2 px wide
    room[39:41, 40:60] = True  # a spur of open pixels 2 px wide, as the matrix stain's noise leaves at a cell's edge
    room &= nuclei == 0
    spur = axis_ratios(cell_territories(nuclei, room, max_distance_px=30))
    kept = cell_territories(nuclei, room, max_distance_px=30, min_width_px=4)
    assert spur[1] < 0.6  # the spur makes a round cell read spindle-shaped
    assert axis_ratios(kept)[1] > 0.9  # without it the cell is round again
    # the ring around the nucleus is kept (nucleus and ring together are wider than the opening), the spur is not
    assert kept[disk((40, 40), 6, shape=shape)].all() and not kept[39:41, 50:60].any()
    assert np.array_equal(cell_territories(nuclei, room, max_distance_px=30, min_width_px=0), cell_territories(nuclei, room, max_distance_px=30))


def test_float32_depth_bands_are_the_float64_quotients_floor():
    # float32 depths (a distance map's) at and one float32 step either side of every band edge, for
    # band widths whose multiples float32 cannot hold exactly, and negative depths: the band is
    # floor(depth / band_um) in float64, as for any other dtype
    rng = np.random.default_rng(5)
    for band_um in (25.0, 0.1, 1 / 3, 7.77, 1e-3):
        edges = (np.arange(-20, 60) * band_um).astype(np.float32)
        depth = np.concatenate([edges, np.nextafter(edges, np.float32(-1e9)), np.nextafter(edges, np.float32(1e9)),
                                (rng.normal(size=5000) * 40 * band_um).astype(np.float32)])
        expected = np.floor(depth.astype(np.float64) / band_um).astype(np.int64)
        found = band_index(depth, band_um)
        assert found.dtype == np.int64 and np.array_equal(found, expected), band_um
    assert band_index(np.zeros((0, 3), np.float32), 25.0).shape == (0, 3)


def test_depth_bands_and_profile_by_hand():
    assert band_index([0, 24.9, 25, 50, 74.99], 25).tolist() == [0, 0, 1, 2, 2]
    # a round pellet, proteoglycan only deeper than 50 µm
    shape = (260, 260)
    pellets = np.zeros(shape, np.uint16)
    rr, cc = disk((130, 130), 120, shape=shape)
    pellets[rr, cc] = 1
    from scipy import ndimage as ndi

    depth = ndi.distance_transform_edt(pellets > 0)
    classes = np.where(pellets > 0, CLASS_CODES["other_tissue"], 0).astype(np.uint8)
    classes[depth > 50] = CLASS_CODES["proteoglycan"]
    nuclei = np.zeros(shape, np.uint32)
    (row,) = measure_pellets(pellets, classes, nuclei, pixel_size_um=1.0, cartilage=replace(PARAMS, profile_band_um=25.0))
    fractions = [b["proteoglycan_area_fraction"] for b in row["depth_profile"]]
    assert fractions[0] == fractions[1] == 0.0 and all(f > 0.97 for f in fractions[3:])
    assert row["stain_band_cv"] > 0.5  # proteoglycan only in the core: uneven over bands
    (plain,) = measure_pellets(pellets, classes, nuclei, pixel_size_um=1.0)
    assert np.isnan(plain["lacuna_count"]) and plain["depth_profile"] == []


# ---- the generator's truth ----

def test_generator_cartilage_leaves_the_rest_of_the_section_alone():
    with_cartilage = make_section(day=28, seed=4, pixel_size_um=1.0, pellet_diameter_um=(300, 300))
    without = make_section(day=28, seed=4, pixel_size_um=1.0, pellet_diameter_um=(300, 300), cartilage=False)
    assert np.array_equal(with_cartilage.nuclei, without.nuclei) and np.array_equal(with_cartilage.pellets, without.pellets)
    assert without.lacunae.max() == 0 and with_cartilage.lacunae.max() > 10
    # a lacuna is a clear halo and the nuclei it holds: no matrix class in it
    inside = with_cartilage.classes[with_cartilage.lacunae > 0]
    assert set(np.unique(inside)) <= {CLASS_CODES["other_tissue"], CLASS_CODES["nuclei"], CLASS_CODES["iron"]}
    host = nucleus_lacuna(with_cartilage.nuclei, with_cartilage.lacunae)
    assert set(np.unique(with_cartilage.lacunae)) - {0} == set(np.unique(host)) - {0}  # every lacuna holds a cell
    # a territory is what the image shows as the cell's: no pixel the collagen stain covers (the capsule's cells
    # have a cytoplasm ring, but it renders red, as collagen)
    room = (with_cartilage.territories > 0) & (with_cartilage.nuclei == 0)
    assert not np.any(room & (with_cartilage.classes == CLASS_CODES["collagen"]))
    assert np.any(room & (with_cartilage.classes == CLASS_CODES["other_tissue"]))


def test_generator_lacunae_rise_with_day_fewer_when_labeled_and_rounded_cells_sit_deeper():
    rows = {}
    for day in (7, 14, 28):
        for labeled in (False, True):
            s = make_section(day=day, labeled=labeled, seed=day, pixel_size_um=1.0, pellet_diameter_um=(400, 400))
            rows[day, labeled] = truth_table(s)[0]
    for labeled in (False, True):
        cells = [rows[d, labeled]["lacuna_cell_fraction"] for d in (7, 14, 28)]
        assert cells[0] < cells[1] < cells[2], cells
    assert rows[28, True]["lacuna_cell_fraction"] < rows[28, False]["lacuna_cell_fraction"]
    for day in (14, 28):
        r = rows[day, False]
        assert r["rounded_cell_fraction_core"] > r["rounded_cell_fraction_rim"] + 0.1
        assert r["chondron_count"] >= 1


# ---- found against the truth ----

@pytest.fixture(scope="module")
def found_and_truth():
    pairs = []
    for day, labeled, px in ((14, False, 0.5), (28, False, 0.5), (28, True, 0.75)):
        s = make_section(day=day, labeled=labeled, seed=40 + day, pixel_size_um=px, pellet_diameter_um=(320, 400))
        found = analyze_image(s.image, pixel_size_um=px, config=RunConfig())
        assert len(found.rows) == 1
        pairs.append((found.rows[0], truth_table(s)[0]))
    return pairs


def test_lacunae_and_rounded_cells_against_the_truth(found_and_truth):
    # issue 24: lacuna count within 15 %, cells in lacunae and rounded fraction within 0.1 of the truth
    true_total = sum(t["lacuna_count"] for _, t in found_and_truth)
    found_total = sum(f["lacuna_count"] for f, _ in found_and_truth)
    assert abs(found_total - true_total) / true_total <= 0.15, (found_total, true_total)
    for f, t in found_and_truth:
        assert abs(f["lacuna_cell_fraction"] - t["lacuna_cell_fraction"]) <= 0.1
        # issue 24 asks for 0.1; with the territories' noise spurs left out these sections are within 0.023 (docs/accuracy.md)
        assert abs(f["rounded_cell_fraction"] - t["rounded_cell_fraction"]) <= 0.05


def test_rounded_fraction_is_not_read_low(found_and_truth):
    # territories that followed the matrix stain's noise read round cells as spindle-shaped: every section low,
    # 0.04 on average; at 1 µm per pixel too, where the opening's disk is a few pixels wide
    pairs = list(found_and_truth)
    for day, labeled in ((7, True), (14, True), (28, False)):
        s = make_section(day=day, labeled=labeled, seed=40 + day, pixel_size_um=1.0, pellet_diameter_um=(320, 400))
        (row,) = analyze_image(s.image, pixel_size_um=1.0, config=RunConfig()).rows
        (true_row,) = truth_table(s)
        pairs.append((row, true_row))
    errors = [f["rounded_cell_fraction"] - t["rounded_cell_fraction"] for f, t in pairs]
    assert max(abs(e) for e in errors) <= 0.05, errors  # issue 24 asks for 0.1
    assert abs(np.mean(errors)) <= 0.025, errors


def test_few_lacunae_where_the_section_has_none():
    """Sections without lacunae (``cartilage=False``: yellow cytoplasm rings, unstained matrix beside a dark capsule).

    Issue 24's aim is none. The emptiness test leaves a few, in unstained matrix along the capsule: at
    most 3 % of a section's cells and 12 over the three (figures in docs/accuracy.md, "Lacunae that are
    empty, and crowded halos cut apart").
    """
    found = []
    for day, seed in ((7, 3), (14, 5), (28, 7)):
        s = make_section(day=day, seed=seed, pixel_size_um=0.75, pellet_diameter_um=(320, 400), cartilage=False, n_pellets=1)
        (row,) = analyze_image(s.image, pixel_size_um=0.75, config=RunConfig()).rows
        assert row["lacuna_count"] <= 0.03 * row["nuclei_count"], (day, row["lacuna_count"], row["nuclei_count"])
        found.append(row["lacuna_count"])
    assert sum(found) <= 12, found


def test_depth_profile_against_the_truth(found_and_truth):
    for f, t in found_and_truth:
        errors = [100 * (a["proteoglycan_area_fraction"] - b["proteoglycan_area_fraction"]) for a, b in zip(f["depth_profile"], t["depth_profile"])]
        assert np.mean(np.abs(errors)) <= 3.0, errors


# ---- a real Safranin-O pellet ----

@pytest.mark.skipif(not REAL_IMAGES.is_dir(), reason="../shared/real-images is not here")
def test_real_pellet_core_holds_more_lacunae_and_rounder_cells_than_the_fibrous_rim():
    from pellet_analysis.io import read_image

    rgb, _ = read_image(REAL_IMAGES / "mbs_pellet_whole_section.tif")
    found = analyze_image(rgb[..., :3], pixel_size_um=0.6, config=RunConfig(stains={"preset": "safranin-o"}))
    (row,) = found.rows
    assert row["lacuna_density_core_per_mm2"] > 1.5 * row["lacuna_density_rim_per_mm2"], row
    assert row["rounded_cell_fraction_core"] > row["rounded_cell_fraction_rim"] + 0.05, row
    assert found.lacunae.dtype == np.uint32 and found.lacunae.max() == row["lacuna_count"]
    # the proteoglycan-rich core: the profile rises from the fast-green rim inward
    pg = [b["proteoglycan_area_fraction"] for b in row["depth_profile"]]
    assert max(pg[:2]) < 0.05 and min(pg[-4:]) > 0.4, pg
