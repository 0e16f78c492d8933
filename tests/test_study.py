import pandas as pd
import pytest

from pellet_analysis.config import RunConfig
from pellet_analysis.pipeline import run_batch
from pellet_analysis.study import SampleSheetError, read_sample_sheet
from pellet_analysis.synthetic import make_section, write_section


def _sheet(tmp_path, text):
    path = tmp_path / "sheet.csv"
    path.write_text(text)
    return path


def test_sample_sheet_reads_and_normalises(tmp_path):
    sheet = read_sample_sheet(_sheet(tmp_path, "image,donor,condition,day,section,notes\na.tif,P1,Labelled,d14,2,fold\nb.png,P2,unlabeled,28,,\n"), tmp_path)
    assert sheet.loc["a"].to_dict() == {"file": "a.tif", "donor": "P1", "condition": "labeled", "day": 14, "section": "2", "notes": "fold"}
    assert sheet.loc["b", "day"] == 28 and pd.isna(sheet.loc["b", "section"])


@pytest.mark.parametrize(
    "body, cause",
    [
        ("a.tif,P1,treated,14\n", "unknown condition 'treated'"),
        ("a.tif,P1,labeled,\n", "missing day"),
        ("a.tif,P1,labeled,two\n", "not a whole number"),
        ("a.tif,P1,labeled,7\na.tif,P1,labeled,14\n", "duplicates row 2"),
        ("../secret.tif,P1,labeled,7\n", "outside the input folder"),
        ("/etc/passwd,P1,labeled,7\n", "outside the input folder"),
        ("a.tif,,labeled,7\n", "missing donor"),
    ],
)
def test_sample_sheet_errors_name_file_row_and_cause(tmp_path, body, cause):
    path = _sheet(tmp_path, "image,donor,condition,day\n" + body)
    with pytest.raises(SampleSheetError) as info:
        read_sample_sheet(path, tmp_path / "in")
    assert str(path) in str(info.value) and "row" in str(info.value) and cause in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_columns(tmp_path):
    with pytest.raises(SampleSheetError, match="missing column.*day"):
        read_sample_sheet(_sheet(tmp_path, "image,donor,condition\na.tif,P1,labeled\n"), tmp_path)


def test_run_uses_sheet_metadata_and_reports_unlisted_and_missing(tmp_path):
    src = tmp_path / "in"
    write_section(make_section(day=7, n_pellets=1, pixel_size_um=2.0, seed=41), src / "scan1.png")
    write_section(make_section(day=7, n_pellets=1, pixel_size_um=2.0, seed=42), src / "scan2.png")
    sheet = _sheet(tmp_path, "image,donor,condition,day\nscan1.png,P9,labeled,28\nscan3.png,P9,unlabeled,28\n")
    record = run_batch(RunConfig(input_dir=src, output_dir=tmp_path / "out", pixel_size_um=2.0, sample_sheet=sheet))
    row = record["table"].iloc[0]
    assert (row.image, row.donor, row.condition, row.day) == ("scan1", "P9", "labeled", 28)
    failures = pd.read_csv(tmp_path / "out" / "failures.csv").set_index("image").reason
    assert "not listed in sample sheet" in failures["scan2"]
    assert "not found" in failures["scan3"]


def test_shape_measures_of_pellets_cut_by_the_border_are_left_out_of_the_means():
    from pellet_analysis.study import aggregate

    table = pd.DataFrame(
        {
            "image": ["a", "a"], "pellet_id": [1, 2], "donor": ["P1", "P1"], "condition": ["labeled", "labeled"], "day": [14, 14],
            "area_um2": [100_000.0, 40_000.0], "circularity": [0.9, 0.4], "proteoglycan_area_fraction": [0.2, 0.4],
            "touches_border": [False, True], "shape_exclusion_reason": ["", "cut by the image border"], "excluded": [False, False],
        }
    )
    agg = aggregate(table, ["area_um2", "circularity", "proteoglycan_area_fraction"])
    section = agg["sections"].iloc[0]
    assert section["area_um2"] == 100_000.0 and section["circularity"] == 0.9  # the cut pellet's shape is left out
    assert section["proteoglycan_area_fraction"] == pytest.approx(0.3)  # its other measures stay
    assert section["n_pellets"] == 2 and agg["n_shape_excluded"] == 1


def _workbook(path, rows, *, sheet="Samples", start="A1"):
    """An .xlsx whose first sheet holds ``rows`` (header first) from cell ``start``, numbers as numbers."""
    import openpyxl

    book = openpyxl.Workbook()
    ws = book.active
    ws.title = sheet
    first = ws[start]
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            ws.cell(row=first.row + r, column=first.column + c, value=value)
    book.save(path)
    return path


SHEET_ROWS = [
    ["Image", "Donor", "Condition", "Day", "Section", "Notes"],
    ["scan1.png", "P9", "labeled", 28, 1, "fold at the rim"],
    ["scan2.png", "P9", "Unlabelled", "d28", None, None],
    ["scan3.png", "P9", "unlabeled", 28, None, None],
]


def test_an_excel_sheet_and_its_csv_twin_give_identical_runs(tmp_path):
    src = tmp_path / "in"
    write_section(make_section(day=28, n_pellets=1, pixel_size_um=2.0, seed=41), src / "scan1.png")
    write_section(make_section(day=28, n_pellets=1, pixel_size_um=2.0, seed=42), src / "scan2.png")
    # scan3 is listed but missing: a failure in both runs
    xlsx = _workbook(tmp_path / "sheet.xlsx", SHEET_ROWS, start="B3")  # a title-less sheet not starting at A1
    csv = tmp_path / "sheet.csv"
    csv.write_text("\n".join(",".join("" if v is None else str(v) for v in row) for row in SHEET_ROWS) + "\n")
    pd.testing.assert_frame_equal(read_sample_sheet(xlsx, src), read_sample_sheet(csv, src))
    runs = {}
    for sheet in (xlsx, csv):
        out = tmp_path / f"out-{sheet.suffix[1:]}"
        runs[sheet.suffix] = run_batch(RunConfig(input_dir=src, output_dir=out, pixel_size_um=2.0, sample_sheet=sheet, scheduler="synchronous"))
    a, b = runs[".xlsx"], runs[".csv"]
    assert a["n_pellets"] == b["n_pellets"] == 2 and a["n_failures"] == b["n_failures"] == 1
    pd.testing.assert_frame_equal(a["table"], b["table"])
    csv_failures = b["failures"].assign(reason=b["failures"].reason.str.replace(str(csv), str(xlsx), regex=False))
    pd.testing.assert_frame_equal(a["failures"], csv_failures)  # the same, but for the sheet each names
    assert list(a["table"].donor) == ["P9", "P9"] and list(a["table"].day) == [28, 28]
    assert sorted(a["table"].condition) == ["labeled", "unlabeled"]


@pytest.mark.parametrize(
    "row, cell, cause",
    [
        (["a.tif", "P1", "treated", 14], "row 5, column E (condition)", "unknown condition 'treated'"),
        (["a.tif", "P1", "labeled", 14.5], "row 5, column F (day)", "not a whole number"),
        (["a.tif", None, "labeled", 7], "row 5, column D (donor)", "missing donor"),
        (["../x.tif", "P1", "labeled", 7], "row 5, column C (image)", "outside the input folder"),
    ],
)
def test_a_bad_excel_row_names_sheet_row_and_column(tmp_path, row, cell, cause):
    rows = [["image", "donor", "condition", "day"], ["b.tif", "P1", "labeled", 7], row]
    path = _workbook(tmp_path / "sheet.xlsx", rows, sheet="Pellets", start="C3")
    with pytest.raises(SampleSheetError) as info:
        read_sample_sheet(path, tmp_path / "in")
    message = str(info.value)
    assert message.startswith(f"{path}: sheet 'Pellets': {cell}: ") and cause in message and "\n" not in message


def test_a_bad_csv_row_names_row_and_column(tmp_path):
    path = _sheet(tmp_path, "image,donor,condition,day\na.tif,P1,labeled,7\nb.tif,P1,labeled,x\n")
    with pytest.raises(SampleSheetError, match=r"sheet\.csv: row 3, column D \(day\): day 'x' is not a whole number"):
        read_sample_sheet(path, tmp_path)


def test_unreadable_or_old_excel_files_say_so_in_one_line(tmp_path):
    broken = tmp_path / "sheet.xlsx"
    broken.write_bytes(b"not a zip")
    with pytest.raises(SampleSheetError, match="cannot read Excel sample sheet"):
        read_sample_sheet(broken, tmp_path)
    old = tmp_path / "sheet.xls"
    old.write_bytes(b"\xd0\xcf\x11\xe0")
    with pytest.raises(SampleSheetError, match=r"save it as \.xlsx or CSV"):
        read_sample_sheet(old, tmp_path)
    empty = _workbook(tmp_path / "empty.xlsx", [["image", "donor", "condition"]])
    with pytest.raises(SampleSheetError, match="sheet 'Samples': missing column.*day"):
        read_sample_sheet(empty, tmp_path)
