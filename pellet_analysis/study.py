"""Study design: metadata from a sample sheet, and aggregation pellet -> section -> donor."""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

import pandas as pd

from .measure import SHAPE_COLUMNS
from .metadata import CONDITIONS

__all__ = ["SampleSheetError", "read_sample_sheet", "aggregate"]

SHEET_COLUMNS = ("image", "donor", "condition", "day")


class SampleSheetError(ValueError):
    """A sample sheet is invalid; the message is one line naming the file, row and cause."""


def _confined(name: str, input_dir: Path) -> bool:
    """True when ``name`` is a relative path that stays inside ``input_dir``."""
    for flavour in (PurePosixPath, PureWindowsPath):
        p = flavour(name)
        if p.is_absolute() or p.drive or ".." in p.parts:
            return False
    root = input_dir.resolve()
    target = (input_dir / name).resolve()
    return target == root or root in target.parents


def read_sample_sheet(path, input_dir) -> pd.DataFrame:
    """Read and validate a sample sheet.

    Parameters
    ----------
    path : str or Path
        CSV with columns ``image, donor, condition, day`` and optionally
        ``section`` and ``notes``. ``image`` is a file name (or relative path)
        inside ``input_dir``.
    input_dir : str or Path

    Returns
    -------
    DataFrame
        Indexed by image stem, with ``file``, ``donor``, ``condition``
        (``labeled`` | ``unlabeled``), ``day`` (int), ``section``, ``notes``.

    Raises
    ------
    SampleSheetError
        Missing columns, unknown conditions, missing or non-integer days,
        duplicated images, and paths outside ``input_dir``.
    """
    path, input_dir = Path(path), Path(input_dir)
    try:
        sheet = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise SampleSheetError(f"{path}: cannot read sample sheet ({' '.join(str(error).split())[:150]})") from None
    sheet.columns = [c.strip().lower() for c in sheet.columns]
    missing = [c for c in SHEET_COLUMNS if c not in sheet.columns]
    if missing:
        raise SampleSheetError(f"{path}: missing column(s) {', '.join(missing)}")
    records = []
    seen = {}
    for i, row in enumerate(sheet.to_dict("records"), start=2):  # row 1 is the header
        where = f"{path}: row {i}"
        image = row["image"].strip()
        if not image:
            raise SampleSheetError(f"{where}: empty image")
        if not _confined(image, input_dir):
            raise SampleSheetError(f"{where}: image {image!r} points outside the input folder {input_dir}")
        stem = Path(image).stem
        if stem in seen:
            raise SampleSheetError(f"{where}: image {image!r} duplicates row {seen[stem]}")
        seen[stem] = i
        condition = row["condition"].strip().lower().replace("labelled", "labeled")
        if condition not in CONDITIONS:
            raise SampleSheetError(f"{where}: unknown condition {row['condition']!r} (expected {' or '.join(CONDITIONS)})")
        day = row["day"].strip().lower().lstrip("d")
        if not day:
            raise SampleSheetError(f"{where}: missing day")
        if not day.isdigit():
            raise SampleSheetError(f"{where}: day {row['day']!r} is not a whole number")
        donor = row["donor"].strip()
        if not donor:
            raise SampleSheetError(f"{where}: missing donor")
        records.append(
            {
                "image": stem,
                "file": image,
                "donor": donor,
                "condition": condition,
                "day": int(day),
                "section": (row.get("section") or "").strip() or None,
                "notes": (row.get("notes") or "").strip(),
            }
        )
    return pd.DataFrame(records).set_index("image") if records else pd.DataFrame(columns=["file", "donor", "condition", "day", "section", "notes"])


def aggregate(table: pd.DataFrame, metrics) -> dict:
    """Aggregate pellets to sections and donors, leaving excluded pellets out.

    A section is one image (or one ``section`` value of a donor/condition/day);
    its value is the mean over its pellets; a donor's value per condition and
    day is the mean over its sections. The shape measures
    (:data:`~pellet_analysis.measure.SHAPE_COLUMNS`) of a pellet with a
    ``shape_exclusion_reason`` (cut by the image border) are left out of
    those means; its other measures stay.

    Parameters
    ----------
    table : DataFrame
        The run's pellet table.
    metrics : list of str
        Columns to aggregate.

    Returns
    -------
    dict
        ``sections`` and ``donors`` DataFrames (each with ``n_pellets``, and
        ``n_sections`` for donors), ``n_excluded``, ``n_unassigned``
        (pellets without donor, condition or day) and ``n_shape_excluded``
        (pellets aggregated without their shape measures).
    """
    table = table.copy()
    excluded = table["excluded"].fillna(False).astype(bool)
    n_excluded = int(excluded.sum())
    table = table[~excluded].copy()
    n_shape_excluded = 0
    if "shape_exclusion_reason" in table.columns:
        cut = table["shape_exclusion_reason"].fillna("").astype(str).str.len() > 0
        n_shape_excluded = int(cut.sum())
        for column in SHAPE_COLUMNS:
            if column in table.columns:
                table[column] = table[column].astype(float).where(~cut)
    assigned = table["donor"].notna() & table["condition"].notna() & table["day"].notna()
    n_unassigned = int((~assigned).sum())
    table = table[assigned].copy()
    table["day"] = table["day"].astype(int)
    table["section_key"] = table["image"].astype(str)
    keys = ["donor", "condition", "day"]
    sections = (
        table.groupby(keys + ["section_key"], observed=True)
        .agg(n_pellets=("pellet_id", "size"), **{m: (m, "mean") for m in metrics})
        .reset_index()
    )
    donors = (
        sections.groupby(keys, observed=True)
        .agg(n_sections=("section_key", "size"), n_pellets=("n_pellets", "sum"), **{m: (m, "mean") for m in metrics})
        .reset_index()
    )
    for frame in (sections, donors):
        for col in ("donor", "condition"):
            frame[col] = frame[col].astype(str)
    return {"sections": sections, "donors": donors, "n_excluded": n_excluded, "n_unassigned": n_unassigned, "n_shape_excluded": n_shape_excluded}

