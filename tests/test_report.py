"""report.html of a small study, checked in a real browser (headless Chromium) and as files."""

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from pellet_analysis.config import RunConfig
from pellet_analysis.figures import CONDITION_STYLE
from pellet_analysis.labels import CLASS_CODES
from pellet_analysis.pipeline import run_batch
from pellet_analysis.report import BERN_METRICS, make_report, slug
from pellet_analysis.review import label_path, save_corrections, set_exclusion
from pellet_analysis.synthetic import make_section, write_section

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CORRECTED = ("B_labeled_d28_s1", 1)


def _paint_proteoglycan(run_dir, image, pellet_id):
    """Paint a 40x40 block of the pellet's non-nucleus, non-iron pixels proteoglycan, as a reviewer would."""
    pellets = tifffile.imread(label_path(run_dir, image, "pellets"))
    classes = tifffile.imread(label_path(run_dir, image, "classes"))
    rows, cols = np.nonzero(pellets == pellet_id)
    r, c = int(np.median(rows)) - 20, int(np.median(cols)) - 20
    crop = classes[r : r + 40, c : c + 40].copy()
    target = (crop != CLASS_CODES["proteoglycan"]) & (crop != CLASS_CODES["nuclei"]) & (crop != CLASS_CODES["iron"]) & (pellets[r : r + 40, c : c + 40] == pellet_id)
    crop[target] = CLASS_CODES["proteoglycan"]
    return crop, (r, c), int(target.sum())


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    src = root / "in"
    seed = 50
    for donor in ("A", "B", "C"):
        for condition in ("labeled", "unlabeled"):
            for day in (7, 28):
                seed += 1
                section = make_section(day=day, labeled=condition == "labeled", n_pellets=1, pixel_size_um=2.0,
                                       pellet_diameter_um=(260, 300), seed=seed)
                write_section(section, src / f"{donor}_{condition}_d{day}_s1.tif")
    out = root / "run"
    run_batch(RunConfig(input_dir=src, output_dir=out))
    automatic = pd.read_parquet(out / "pellets.parquet")
    # a reviewer excluded one pellet: the report must leave it out and count it
    table = automatic.copy()
    table.loc[0, ["excluded", "exclusion_reason"]] = [True, "fold"]
    table.to_parquet(out / "pellets.parquet", index=False)
    # and corrected another one's classes
    crop, origin, n_painted = _paint_proteoglycan(out, *CORRECTED)
    save_corrections(out, *CORRECTED, {"classes": crop}, origin=origin, user="reviewer-a")
    written = make_report(out)
    return out, table, written, automatic, n_painted


def test_summary_and_statistics_files(study):
    out, table, written, *_ = study
    summary = pd.read_parquet(out / "summary.parquet")
    assert pd.read_csv(out / "summary.csv").shape == summary.shape
    assert set(summary.donor) == {"A", "B", "C"} and set(summary.day) == {7, 28}
    assert summary.n_pellets.sum() == len(table) - 1  # the excluded pellet is left out
    stats = pd.read_csv(out / "statistics.csv", keep_default_na=False, na_values=[""])
    assert {"metric", "comparison", "test", "n_donors", "estimate", "ci_low", "ci_high", "df", "p_value", "p_holm", "note"} <= set(stats.columns)
    assert stats.n_donors.notna().all()
    paired = stats[stats.comparison == "labeled - unlabeled"]
    assert (paired.test == "sign-flip permutation (exact)").all()
    np.testing.assert_allclose(paired.p_min_attainable, 2 / 2**paired.n_donors)  # 0.25 with 3 donors, 0.5 with 2
    assert (paired.p_value >= paired.p_min_attainable).all() and set(paired.n_donors) == {2, 3}  # the excluded pellet's pair
    assert paired.note.str.contains("Wilcoxon not run: [23] donors").all()
    # three donors: no mixed model, so no p value can come from a z test on too few donors
    assert not stats.test.str.contains("mixed").any()


def test_geojson_outlines_match_pellet_areas(study):
    out, table, *_ = study
    stem = table.image.iloc[1]
    collection = json.loads((out / "geojson" / f"{stem}.geojson").read_text())
    feature = collection["features"][0]
    ring = np.asarray(feature["geometry"]["coordinates"][0])
    x, y = ring[:, 0], ring[:, 1]
    area_px = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    row = table[(table.image == stem) & (table.pellet_id == 1)].iloc[0]
    assert area_px * row.pixel_size_um**2 == pytest.approx(row.area_um2, rel=0.03)
    assert feature["properties"]["measurements"]["proteoglycan_area_fraction"] == pytest.approx(row.proteoglycan_area_fraction)
    assert feature["properties"]["classification"]["name"] == "Pellet"


def _png_dpi(path):
    """Dots per inch from a PNG's pHYs chunk (pixels per metre)."""
    data = Path(path).read_bytes()
    i = data.index(b"pHYs")
    per_metre = struct.unpack(">I", data[i + 4 : i + 8])[0]
    return per_metre * 0.0254


def test_figures_hold_svg_png_and_exactly_the_plotted_numbers(study):
    out, table, written, *_ = study
    figures = out / "figures"
    names = {p.stem for p in figures.iterdir()}
    assert names == {"measurements_over_days", "labeling_efficiency", "bern_categories", "pellet_sizes", "depth_profiles"}
    for name in names:
        svg = (figures / f"{name}.svg").read_text()
        assert svg.lstrip().startswith("<?xml")
        # labeled and unlabeled in the same colours in every figure
        assert all(CONDITION_STYLE[c]["color"] in svg for c in ("labeled", "unlabeled")), name
        assert round(_png_dpi(figures / f"{name}.png")) == 300
    summary = pd.read_csv(out / "summary.csv")
    over_days = pd.read_csv(figures / "measurements_over_days.csv")
    merged = over_days.merge(summary.melt(id_vars=["donor", "condition", "day"], var_name="metric", value_name="summary"),
                             on=["donor", "condition", "day", "metric"], validate="one_to_one")
    assert len(merged) == len(over_days) == 4 * len(summary)
    np.testing.assert_allclose(merged.value, merged.summary.astype(float))
    efficiency = pd.read_csv(figures / "labeling_efficiency.csv")
    merged = efficiency.merge(summary.melt(id_vars=["donor", "condition", "day"], var_name="metric", value_name="summary"),
                              on=["donor", "condition", "day", "metric"], validate="one_to_one")
    # both metrics and conditions of every donor and day with both conditions (the excluded pellet's pair is left out)
    assert len(merged) == len(efficiency) == 4 * len(written["efficiency"]) == 4 * 5  # 3 donors x 2 days, less one pair
    np.testing.assert_allclose(merged.value, merged.summary.astype(float))
    # the Bern-like categories, labeled against unlabeled: the donors' continuous means, the same pairs as above
    bern = pd.read_csv(figures / "bern_categories.csv")
    merged = bern.merge(summary.melt(id_vars=["donor", "condition", "day"], var_name="metric", value_name="summary"),
                        on=["donor", "condition", "day", "metric"], validate="one_to_one")
    assert set(bern.metric) == set(BERN_METRICS) and len(merged) == len(bern) == 2 * 4 * 5
    np.testing.assert_allclose(merged.value, merged.summary.astype(float))
    # the depth profiles: each point the area-weighted mean of the kept pellets' bands in profiles.csv
    drawn = pd.read_csv(figures / "depth_profiles.csv")
    profiles = pd.read_csv(out / "profiles.csv")
    excluded = set(zip(table.image[table.excluded], table.pellet_id[table.excluded]))
    assert len(excluded) == 1
    profiles = profiles[[(i, p) not in excluded for i, p in zip(profiles.image, profiles.pellet_id)]]
    point = drawn[drawn.metric == "proteoglycan_area_fraction"].iloc[0]
    band = profiles[(profiles.day == point.day) & (profiles.condition == point.condition)
                    & ((profiles.depth_from_um + profiles.depth_to_um) / 2 == point.depth_um)]
    assert point.n_pellets == len(band) > 0
    assert point.value == pytest.approx(np.average(band.proteoglycan_area_fraction, weights=band.area_um2))


def test_review_compares_automatic_and_corrected_values(study):
    out, table, written, automatic, n_painted = study
    html = (out / "report.html").read_text()
    image, pid = CORRECTED
    before = automatic[(automatic.image == image) & (automatic.pellet_id == pid)].iloc[0]
    pellet_px = before.area_um2 / before.pixel_size_um**2
    after = before.proteoglycan_area_fraction + n_painted / pellet_px
    review = html[html.index('id="review"'):html.index("<h2>Pellets</h2>")]
    assert f"{before.proteoglycan_area_fraction:.3g}</td><td class=\"n\">{after:.3g}" in review
    assert f"+{n_painted} / -" in review and "reviewer-a" in review and "fold" in review
    # the effect on the comparison, day 28 (one pellet per section and donor): automatic, every donor; reviewed,
    # donor A's labeled pellet excluded (the fixture's first row) and donor B's labeled pellet corrected
    day28 = automatic[automatic.day == 28].pivot_table(index="donor", columns="condition", values="proteoglycan_area_fraction")
    assert table.image.iloc[0] == "A_labeled_d28_s1"
    auto_estimate = (day28.labeled - day28.unlabeled).mean()
    day28.loc["B", "labeled"] = after
    reviewed_estimate = (day28.labeled - day28.unlabeled).drop("A").mean()
    row = re.search(r"<tr><td class=\"t\">Proteoglycan area fraction</td><td class=\"t\">labeled - unlabeled</td><td class=\"n\">28</td>(.*?)</tr>",
                    review[review.index('id="review-effect"'):]).group(1)
    cells = re.findall(r">([^<]*)</td>", row)
    # columns after day: condition, test, n_donors automatic, reviewed, estimate automatic, reviewed, ...
    assert float(cells[4]) == pytest.approx(auto_estimate, rel=5e-3)
    assert (cells[2], cells[3]) == ("3", "2")
    assert float(cells[5]) == pytest.approx(reviewed_estimate, rel=5e-3)


def _chromium(*args, html_path):
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", *args, html_path.resolve().as_uri()],
            capture_output=True, text=True, timeout=120,
        )


def _need_chromium():
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (.ci/run does) so the report is checked in a browser")
        pytest.skip("needs Debian's chromium (.ci/run installs it)")


def _dom(page):
    # dump the DOM after the page has loaded and rendered (no network needed: everything is inline)
    done = _chromium("--virtual-time-budget=5000", "--dump-dom", html_path=page)
    assert done.returncode == 0, done.stderr[-500:]
    return done.stdout


class _Elements(HTMLParser):
    """Every element (tag, attributes), every table by id (rows of cell texts) and the text of the page."""

    def __init__(self):
        super().__init__()
        self.elements, self.text, self.tables = [], [], {}
        self._table, self._row, self._cell = None, None, None

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag == "table":
            self._table = self.tables.setdefault(dict(attrs).get("id"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _parse(dom):
    parser = _Elements()
    parser.feed(dom)
    return parser


def test_report_in_a_real_browser(study, tmp_path):
    _need_chromium()
    out, table, *_ = study
    page = out / "report.html"
    dom = _dom(page)
    assert "Pellet study report" in dom
    counts = re.search(r"<p id=\"counts\">(.*?)</p>", dom).group(1)
    assert f"{len(table)} pellets" in counts and "1 excluded by review" in counts and "3 donors" in counts
    assert dom.count("<figure id=\"thumb-pellet-") == len(table)
    assert dom.count("src=\"data:image/jpeg;base64,") == len(table)
    assert "id=\"plots\"" in dom and "data:image/png;base64," in dom
    assert "Repeated-measures ANOVA".lower() in dom.lower() and "p_holm" in dom and "Wilcoxon not run" in dom
    assert "alcian_blue" in dom and "pellet-analysis 0.1.0" in dom
    assert "http://" not in dom and "https://" not in dom  # self-contained
    # each table row links to its thumbnail and back
    first = slug(f"{table.image.iloc[1]}#{table.pellet_id.iloc[1]}", "pellet")
    assert f"href=\"#thumb-{first}\"" in dom and f"href=\"#{first}\"" in dom
    shot = tmp_path / "report.png"
    done = _chromium("--hide-scrollbars", "--window-size=1200,1600", f"--screenshot={shot}", html_path=page)
    assert done.returncode == 0 and shot.stat().st_size > 50_000
    import cv2

    pixels = cv2.imread(str(shot))
    assert pixels.std() > 20  # rendered plots and tables, not a blank page


def test_conclusions_efficiency_and_review_in_the_browser(study):
    _need_chromium()
    out, table, written, *_ = study
    parsed = _parse(_dom(out / "report.html"))
    text = " ".join(parsed.text)
    ids = {attrs.get("id") for _, attrs in parsed.elements}
    assert {"conclusions", "labeling-efficiency", "labeling-efficiency-plot", "review", "review-corrections",
            "review-exclusions", "review-values", "review-effect", "stains", "provenance-table", "provenance-images"} <= ids
    assert "Does iron labeling change proteoglycan area fraction?" in text
    assert re.search(r"With [23] donors no sign-flip test can reach p < 0.05 \(smallest possible p = 0.5|0.25\)", text)
    efficiency = parsed.tables["labeling-efficiency-table"]
    header, rows = efficiency[0], efficiency[1:]
    assert header[:2] == ["day", "donor"] and "Iron-positive cell fraction labeled" in header
    assert len(rows) == len(written["efficiency"]) + 2  # per day: its donors and their mean
    col = header.index("Iron-positive cell fraction labeled")
    expected = written["efficiency"].iron_positive_cell_fraction_labeled
    assert [float(r[col]) for r in rows if not r[1].startswith("mean")] == pytest.approx(expected.tolist(), rel=5e-3)
    exclusions = parsed.tables["review-exclusions"]
    assert exclusions[1][:3] == [table.image.iloc[0], str(table.pellet_id.iloc[0]), "fold"]
    # the Bern-like categories, labeled and unlabeled, per day; the pellet table keeps each pellet's integer grades
    assert {"bern", "bern-plot"} <= ids
    bern = parsed.tables["bern-table"]
    assert bern[0][:2] == ["day", "donor"] and "Bern morphology labeled" in bern[0] and len(bern) - 1 == len(rows)
    assert {"bern_stain", "bern_matrix", "bern_morphology", "bern_score"} <= set(parsed.tables["pellets-table"][0])


def test_report_numbers_equal_statistics_csv(study):
    _need_chromium()
    out, *_ = study
    parsed = _parse(_dom(out / "report.html"))
    shown = parsed.tables["statistics-table"]
    header, rows = shown[0], shown[1:]
    csv = pd.read_csv(out / "statistics.csv", keep_default_na=False, na_values=[""])
    assert header == list(csv.columns) and len(rows) == len(csv)
    checked = 0
    for row, (_, expected) in zip(rows, csv.iterrows()):
        for column, cell in zip(header, row):
            value = expected[column]
            if isinstance(value, (float, np.floating, int, np.integer)) and not isinstance(value, bool):
                if pd.isna(value):
                    assert cell == ""
                else:
                    assert float(cell) == pytest.approx(float(value), rel=5e-3, abs=1e-12), (column, cell, value)
                    checked += 1
    assert checked > 100


# pwned() is undefined: were a handler to run, it would throw and not block headless Chromium as alert() does
HOSTILE_IMAGES = ["q' onmouseover='pwned(1)' x='", '"><img src=x onerror=pwned(2)>', "<script>pwned(3)"]
HOSTILE_DONORS = ["</td><script>pwned(4)</script>", '"><svg onload=pwned(5)>', "D3' autofocus onfocus='pwned(6)"]
HOSTILE_REASON = '</td></tr><script>pwned(7)</script><b onclick="pwned(8)">fold</b>'
ALLOWED = {
    "html": {"lang"}, "head": set(), "meta": {"charset"}, "title": set(), "style": set(), "body": set(), "h1": set(), "h2": set(),
    "h3": set(), "p": {"id", "class"}, "b": set(), "ul": set(), "li": set(), "span": {"class"}, "div": {"id", "class"},
    "table": {"id"}, "thead": set(), "tbody": set(), "tr": {"id", "class"}, "th": {"class"}, "td": {"class"}, "a": {"href"},
    "img": {"class", "id", "alt", "src"}, "figure": {"id"}, "figcaption": set(),
}


def test_hostile_names_create_no_element_attribute_or_handler(tmp_path):
    _need_chromium()
    src = tmp_path / "in"
    rows = []
    seed = 80
    for name, donor in zip(HOSTILE_IMAGES, HOSTILE_DONORS):
        for condition in ("labeled", "unlabeled"):
            seed += 1
            file = f"{name}_{condition}_d7_s1.tif"
            write_section(make_section(day=7, labeled=condition == "labeled", n_pellets=1, pixel_size_um=2.0,
                                       pellet_diameter_um=(260, 300), seed=seed), src / file)
            rows.append({"image": file, "donor": donor, "condition": condition, "day": 7})
    broken = "<img src=y onerror=pwned(9)>.tif"
    (src / broken).write_bytes(b"not an image")
    rows.append({"image": broken, "donor": HOSTILE_DONORS[0], "condition": "labeled", "day": 14})
    sheet = tmp_path / "sheet.csv"
    pd.DataFrame(rows).to_csv(sheet, index=False)
    out = tmp_path / "run"
    run_batch(RunConfig(input_dir=src, output_dir=out, sample_sheet=sheet))
    stem = Path(rows[0]["image"]).stem
    set_exclusion(out, stem, 1, HOSTILE_REASON, user='<i onmouseover="pwned(10)">x</i>')
    make_report(out)
    dom = _dom(out / "report.html")
    parsed = _parse(dom)
    for tag, attrs in parsed.elements:
        assert tag in ALLOWED, (tag, attrs)
        assert set(attrs) <= ALLOWED[tag], (tag, attrs)
        assert not any(a.startswith("on") for a in attrs)
        if tag == "a":
            assert attrs["href"].startswith("#") and re.fullmatch(r"#[a-z0-9-]+", attrs["href"]), attrs
        if "id" in attrs:
            assert re.fullmatch(r"[a-z0-9-]+", attrs["id"]), attrs
        if tag == "img":
            assert attrs["src"].startswith("data:image/"), attrs
    ids = [attrs["id"] for _, attrs in parsed.elements if "id" in attrs]
    assert len(ids) == len(set(ids))
    # the names are there, as text
    text = " ".join(parsed.text)
    for s in [*HOSTILE_IMAGES, *HOSTILE_DONORS, " ".join(HOSTILE_REASON.split()), "<img src=y onerror=pwned(9)>"]:
        assert s in text, s
    assert "failed" in text.lower()


def test_statistics_and_tables_do_not_depend_on_statsmodels(study, tmp_path):
    """The same run reported where statsmodels cannot be imported gives the same statistics.csv and tables."""
    out, *_ = study
    blocked = tmp_path / "run"
    shutil.copytree(out, blocked, symlinks=True)
    code = ("import sys; sys.modules['statsmodels'] = None\n"
            "from pellet_analysis.report import make_report\n"
            f"make_report({str(blocked)!r})\n"
            "assert 'statsmodels' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (blocked / "statistics.csv").read_bytes() == (out / "statistics.csv").read_bytes()
    assert (blocked / "summary.csv").read_bytes() == (out / "summary.csv").read_bytes()

    def tables(path):
        page = path.read_text()
        return re.findall(r"<table id=\"(?!provenance)[^\"]*\">.*?</table>", page, flags=re.S)

    assert tables(blocked / "report.html") == tables(out / "report.html")
    for name in ("measurements_over_days", "labeling_efficiency", "pellet_sizes"):
        assert (blocked / "figures" / f"{name}.csv").read_bytes() == (out / "figures" / f"{name}.csv").read_bytes()


def test_a_run_folder_without_the_continuous_bern_columns_is_still_reported(study, tmp_path):
    """A run written before the continuous Bern columns existed: the report leaves them out instead of failing."""
    out, *_ = study
    old = tmp_path / "run"
    shutil.copytree(out, old, symlinks=True)
    table = pd.read_parquet(old / "pellets.parquet")
    table.drop(columns=[c for c in table.columns if c.endswith("_continuous")]).to_parquet(old / "pellets.parquet", index=False)
    make_report(old)
    statistics = pd.read_csv(old / "statistics.csv")
    assert "bern_score_continuous" not in set(statistics["metric"])
    assert {"proteoglycan_area_fraction", "nuclei_density_per_mm2"} <= set(statistics["metric"])
    page = (old / "report.html").read_text()
    assert all(c in page for c in ("bern_stain", "bern_matrix", "bern_morphology", "bern_score"))  # the integer grades stay
    assert "bern_score_continuous" not in page
