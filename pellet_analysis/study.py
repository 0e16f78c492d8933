"""Study design: metadata from a sample sheet, and aggregation pellet -> section -> donor."""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

import pandas as pd

from .measure import SHAPE_COLUMNS
from .metadata import CONDITIONS

__all__ = ["SampleSheetError", "EXCEL_SUFFIXES", "read_sample_sheet", "aggregate"]

SHEET_COLUMNS = ("image", "donor", "condition", "day")


class SampleSheetError(ValueError):
    """A sample sheet is invalid; the message is one line naming the file (and sheet), row, column and cause."""


def _confined(name: str, input_dir: Path) -> bool:
    """True when ``name`` is a relative path that stays inside ``input_dir``."""
    for flavour in (PurePosixPath, PureWindowsPath):
        p = flavour(name)
        if p.is_absolute() or p.drive or ".." in p.parts:
            return False
    root = input_dir.resolve()
    target = (input_dir / name).resolve()
    return target == root or root in target.parents


#: Sample sheet file endings read as Excel workbooks (their first sheet).
EXCEL_SUFFIXES = (".xlsx", ".xlsm")


def _column_letter(index: int) -> str:
    """Spreadsheet letter of the 0-based column ``index`` (0 -> A, 26 -> AA)."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def _cell_text(value) -> str:
    """A cell as the text a CSV would hold: whole numbers without ``.0``, dates as ISO, empty cells as ''."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, bool):
        return str(value).upper()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value).strip()


def _read_excel(path: Path):
    """Rows of an Excel sheet as ``(spreadsheet row number, {column: text})``, the sheet's name and column letters.

    The header is the first non-empty row of the first sheet; rows and
    columns are numbered as Excel shows them, empty rows are skipped.
    """
    try:
        import openpyxl  # noqa: F401  (pandas reads .xlsx with it)
    except ImportError:
        raise SampleSheetError(f"{path}: reading an Excel sample sheet needs openpyxl: pip install openpyxl") from None
    try:
        with pd.ExcelFile(path, engine="openpyxl") as book:
            sheet = book.sheet_names[0]
            grid = pd.read_excel(book, sheet_name=sheet, header=None, dtype=object)
    except Exception as error:  # zipfile.BadZipFile, KeyError, openpyxl's InvalidFileException, OSError
        raise SampleSheetError(f"{path}: cannot read Excel sample sheet ({type(error).__name__}: {' '.join(str(error).split())[:150]})") from None
    cells = [[_cell_text(v) for v in row] for row in grid.itertuples(index=False)]
    filled = [i for i, row in enumerate(cells) if any(row)]
    if not filled:
        return [], {}, sheet
    head = filled[0]
    letters = {cells[head][j].lower(): _column_letter(j) for j in range(len(cells[head])) if cells[head][j]}
    positions = {name: j for j, name in enumerate(c.lower() for c in cells[head]) if name}
    rows = [(i + 1, {name: cells[i][j] for name, j in positions.items()}) for i in filled[1:]]
    return rows, letters, sheet


def _read_csv(path: Path):
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise SampleSheetError(f"{path}: cannot read sample sheet ({' '.join(str(error).split())[:150]})") from None
    names = [c.strip().lower() for c in table.columns]
    table.columns = names
    letters = {name: _column_letter(j) for j, name in enumerate(names)}
    rows = [(i, row) for i, row in enumerate(table.to_dict("records"), start=2)]  # row 1 is the header
    return rows, letters, None


def read_sample_sheet(path, input_dir) -> pd.DataFrame:
    """Read and validate a sample sheet: a CSV file or an Excel workbook's first sheet.

    Parameters
    ----------
    path : str or Path
        CSV, or Excel (``.xlsx``/``.xlsm``, the first sheet, its header the
        first non-empty row), with columns ``image, donor, condition, day``
        and optionally ``section`` and ``notes``. ``image`` is a file name
        (or relative path) inside ``input_dir``.
    input_dir : str or Path

    Returns
    -------
    DataFrame
        Indexed by image stem, with ``file``, ``donor``, ``condition``
        (``labeled`` | ``unlabeled``), ``day`` (int), ``section``, ``notes``.

    Raises
    ------
    SampleSheetError
        One line naming the file (and the Excel sheet), the row and the
        column as a spreadsheet shows them: missing columns, unknown
        conditions, missing or non-integer days, duplicated images, and
        paths outside ``input_dir``.
    """
    path, input_dir = Path(path), Path(input_dir)
    suffix = path.suffix.lower()
    if suffix == ".xls":
        raise SampleSheetError(f"{path}: old Excel (.xls) workbooks are not read: save it as .xlsx or CSV")
    rows, letters, sheet = _read_excel(path) if suffix in EXCEL_SUFFIXES else _read_csv(path)
    source = f"{path}: sheet {sheet!r}" if sheet is not None else str(path)
    missing = [c for c in SHEET_COLUMNS if c not in letters]
    if missing:
        raise SampleSheetError(f"{source}: missing column(s) {', '.join(missing)}")
    records = []
    seen = {}
    for i, row in rows:

        def where(column: str) -> str:
            return f"{source}: row {i}, column {letters[column]} ({column})"

        image = (row.get("image") or "").strip()
        if not image:
            raise SampleSheetError(f"{where('image')}: empty image")
        if not _confined(image, input_dir):
            raise SampleSheetError(f"{where('image')}: image {image!r} points outside the input folder {input_dir}")
        stem = Path(image).stem
        if stem in seen:
            raise SampleSheetError(f"{where('image')}: image {image!r} duplicates row {seen[stem]}")
        seen[stem] = i
        condition = row["condition"].strip().lower().replace("labelled", "labeled")
        if condition not in CONDITIONS:
            raise SampleSheetError(f"{where('condition')}: unknown condition {row['condition']!r} (expected {' or '.join(CONDITIONS)})")
        day = row["day"].strip().lower().lstrip("d")
        if not day:
            raise SampleSheetError(f"{where('day')}: missing day")
        if not day.isdigit():
            raise SampleSheetError(f"{where('day')}: day {row['day']!r} is not a whole number")
        donor = row["donor"].strip()
        if not donor:
            raise SampleSheetError(f"{where('donor')}: missing donor")
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

