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
