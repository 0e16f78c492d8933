"""``pellet-analysis validate``: the pipeline against freshly rendered synthetic truth.

Each section gets random stain hues (vectors rotated up to ``hue_jitter_deg``),
pixel size, blur, noise, JPEG quality, tinted uneven background, day, labeling
and 1-3 pellets; none of them is in the repository or the tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .config import RunConfig
from .labels import CLASS_CODES
from .measure import measure_pellets
from .metrics import dice, instance_f1, pixel_f1
from .pipeline import analyze_image
from .synthetic import make_section, truth_table

__all__ = ["PIXEL_SIZES_UM", "validation_params", "validation_plan", "validate_section", "validate", "validate_he", "validate_real", "real_image_pairs", "xml_pixel_size_um"]

PIXEL_SIZES_UM = (0.25, 0.4, 0.5, 0.75, 1.0)


def validation_params(rng, *, hue_jitter_deg: float = 6.0) -> dict:
    """Random rendering parameters of one validation section."""
    px = float(rng.choice(PIXEL_SIZES_UM))
    return {
        "day": int(rng.choice([7, 14, 28])),
        "labeled": bool(rng.integers(2)),
        "n_pellets": int(rng.integers(1, 4)),
        "pixel_size_um": px,
        # smaller pellets at the finest pixel sizes keep the images a few thousand pixels wide
        "pellet_diameter_um": (220.0, 320.0) if px < 0.4 else (250.0, 450.0),
        "hue_jitter_deg": float(hue_jitter_deg),
        "blur_sigma_um": float(rng.uniform(0.3, 0.9)),
        "noise_sigma": float(rng.uniform(1.0, 4.0)),
        "jpeg_quality": int(rng.integers(65, 96)),
        "illumination_variation": float(rng.uniform(0.02, 0.15)),
        "background_rgb": tuple(float(v) for v in rng.uniform(215, 250, 3)),
        "seed": int(rng.integers(2**31)),
    }


def validation_plan(n_images: int, seed: int, *, hue_jitter_deg: float = 6.0) -> list[dict]:
    """The rendering parameters of sections 0 .. ``n_images`` - 1 of ``validate(n_images, seed=seed)``, drawn in its order.

    Section k's parameters depend on every draw before it, so a benchmark that
    re-renders one of validate's sections takes it from here.
    """
    rng = np.random.default_rng(seed)
    return [validation_params(rng, hue_jitter_deg=hue_jitter_deg) for _ in range(n_images)]


def validate_section(params: dict, config: RunConfig | None = None, *, nuclei_model: str = "varied") -> tuple[dict, list[dict]]:
    """Render one section (``nuclei_model`` of :class:`~pellet_analysis.synthetic.SectionParams`), analyse it, and compare; returns (image metrics, per-pellet rows)."""
    config = config or RunConfig()
    section = make_section(**params, nuclei_model=nuclei_model)
    found = analyze_image(section.image, pixel_size_um=section.pixel_size_um, config=config)
    truth = truth_table(section, cartilage=config.cartilage.params())
    # the found classes in the truth's pellets and bands: a band's error with most of the outline's share taken out
    # (truth-pellet pixels outside the found tissue stay background, so the outermost bands keep a little of it)
    classes_only = measure_pellets(section.pellets, found.classes, section.nuclei, pixel_size_um=section.pixel_size_um, cartilage=config.cartilage.params())
    iron_true = section.classes == CLASS_CODES["iron"]
    iron_found = found.classes == CLASS_CODES["iron"]
    nuclei_f1 = instance_f1(found.nuclei, section.nuclei)
    image = {
        **{k: params[k] for k in ("day", "labeled", "n_pellets", "pixel_size_um", "jpeg_quality", "hue_jitter_deg", "seed")},
        "shape": "x".join(str(s) for s in section.image.shape[:2]),
        "pellets_found": len(found.rows),
        "pellet_dice": dice(found.pellets > 0, section.pellets > 0),
        "nuclei_instance_f1": nuclei_f1["f1"],
        "iron_pixel_f1": pixel_f1(iron_found, iron_true),
        "iron_as_nuclei_fraction": float((found.classes[iron_true] == CLASS_CODES["nuclei"]).mean()) if iron_true.any() else float("nan"),
    }
    pellets = []
    # pellets are numbered left to right in both; pair them only when every pellet was found
    if len(found.rows) == len(truth):
        for r, t, c in zip(found.rows, truth, classes_only):
            pellets.append({
                "seed": params["seed"], "day": params["day"], "labeled": params["labeled"], "pellet_id": r["pellet_id"],
                "proteoglycan_true": t["proteoglycan_area_fraction"], "proteoglycan_found": r["proteoglycan_area_fraction"],
                "proteoglycan_error_pp": 100 * (r["proteoglycan_area_fraction"] - t["proteoglycan_area_fraction"]),
                "nuclei_true": t["nuclei_count"], "nuclei_found": r["nuclei_count"],
                "nuclei_count_error": (r["nuclei_count"] - t["nuclei_count"]) / max(t["nuclei_count"], 1),
                "iron_error_pp": 100 * (r["iron_area_fraction"] - t["iron_area_fraction"]),
                "iron_positive_cell_fraction_true": t["iron_positive_cell_fraction"],
                "iron_positive_cell_fraction_found": r["iron_positive_cell_fraction"],
                "iron_granule_count_found": r["iron_granule_count"],
                **_cartilage_pair(t, r, c),
            })
    return image, pellets


def _cartilage_pair(truth: dict, found: dict, classes_only: dict | None = None) -> dict:
    """Lacunae, rounded cells and the depth profile of one pellet, truth beside found (issue 24's figures).

    ``classes_only``: the found classes measured in the truth's pellet (its
    outline and bands); its band errors are, but for the truth-pellet pixels
    outside the found tissue (background there), the classification's share
    of the found profile's.
    """
    out = {}
    for col in ("lacuna_count", "lacuna_cell_fraction", "lacuna_mean_area_um2", "chondron_count", "rounded_cell_fraction"):
        out[f"{col}_true"], out[f"{col}_found"] = truth[col], found[col]
    bands_t = truth.get("depth_profile", [])
    # bands by depth from the surface: the found pellet's outline sits within a pixel of the truth's
    errors, full = _band_errors(bands_t, found.get("depth_profile", []))
    out["profile_band_error_pp_max_abs_all_bands"] = float(np.max(np.abs(errors))) if errors.size else float("nan")
    out["profile_band_error_pp_max_abs"] = float(np.max(np.abs(errors[full]))) if full.any() else float("nan")
    out["profile_band_error_pp_mean_abs"] = float(np.mean(np.abs(errors[full]))) if full.any() else float("nan")
    out["profile_band_error_pp_mean"] = float(np.mean(errors[full])) if full.any() else float("nan")
    out["profile_bands_over_3pp"] = int((np.abs(errors[full]) > 3).sum())
    out["profile_bands"] = int(full.sum())
    if classes_only is not None:
        errors, full = _band_errors(bands_t, classes_only.get("depth_profile", []))
        out["profile_band_error_pp_max_abs_classes_only"] = float(np.max(np.abs(errors[full]))) if full.any() else float("nan")
        out["profile_band_error_pp_mean_abs_classes_only"] = float(np.mean(np.abs(errors[full]))) if full.any() else float("nan")
    return out


def _band_errors(bands_t: list, bands_f: list) -> tuple[np.ndarray, np.ndarray]:
    """Found minus true proteoglycan area fraction (pp) of each band the truth holds, and which bands count in the band figures (bool).

    The innermost band of a pellet can hold a few pixels (a pellet's depth
    ends where it ends): a pixel's shift of the outline changes which, and its
    fraction says nothing of the profile; bands smaller than a square of the
    band's width are left out of the band figures (and the error over all
    bands kept beside them).
    """
    pairs = [(t, f) for t, f in zip(bands_t, bands_f) if t["area_um2"] > 0]
    errors = np.array([100 * (f["proteoglycan_area_fraction"] - t["proteoglycan_area_fraction"]) for t, f in pairs])
    full = np.array([t["area_um2"] >= (t["depth_to_um"] - t["depth_from_um"]) ** 2 for t, _ in pairs], bool)
    return errors, full


def _cartilage_summary(pellets: pd.DataFrame) -> dict:
    """The lacuna, rounded-cell and depth-profile figures of the validation."""
    if not len(pellets) or "lacuna_count_true" not in pellets:
        return {}
    true, found = pellets.lacuna_count_true.astype(float), pellets.lacuna_count_found.astype(float)
    many = true >= 20
    return {
        "lacuna_count_error_total": float((found.sum() - true.sum()) / max(true.sum(), 1)),
        "lacuna_count_error_mean_abs_20_or_more": float(((found - true).abs() / true)[many].mean()) if many.any() else float("nan"),
        "lacuna_cell_fraction_error_max_abs": float((pellets.lacuna_cell_fraction_found - pellets.lacuna_cell_fraction_true).abs().max()),
        "rounded_cell_fraction_error_mean_abs": float((pellets.rounded_cell_fraction_found - pellets.rounded_cell_fraction_true).abs().mean()),
        "rounded_cell_fraction_error_max_abs": float((pellets.rounded_cell_fraction_found - pellets.rounded_cell_fraction_true).abs().max()),
        "profile_band_error_pp_mean_abs": float(pellets.profile_band_error_pp_mean_abs.mean()),
        "profile_band_error_pp_max_abs": float(pellets.profile_band_error_pp_max_abs.max()),
        "profile_band_error_pp_max_abs_all_bands": float(pellets.profile_band_error_pp_max_abs_all_bands.max()),
        "profile_bands_within_3pp": _within_3pp(pellets),
        # where the bands miss: labeled pellets against unlabeled, and the classification's share (found classes in the truth's bands)
        "profile_bands_within_3pp_labeled": _within_3pp(pellets[pellets.labeled.astype(bool)]),
        "profile_bands_within_3pp_unlabeled": _within_3pp(pellets[~pellets.labeled.astype(bool)]),
        "profile_band_error_pp_mean_labeled": float(pellets.loc[pellets.labeled.astype(bool), "profile_band_error_pp_mean"].mean()),
        "profile_band_error_pp_mean_unlabeled": float(pellets.loc[~pellets.labeled.astype(bool), "profile_band_error_pp_mean"].mean()),
        **({
            "profile_band_error_pp_mean_abs_classes_only": float(pellets.profile_band_error_pp_mean_abs_classes_only.mean()),
            "profile_band_error_pp_max_abs_classes_only": float(pellets.profile_band_error_pp_max_abs_classes_only.max()),
        } if "profile_band_error_pp_max_abs_classes_only" in pellets else {}),
        "lacuna_count_by_day": {
            int(day): {"found": int(sub.lacuna_count_found.sum()), "true": int(sub.lacuna_count_true.sum()),
                       "error_total": float((sub.lacuna_count_found.sum() - sub.lacuna_count_true.sum()) / max(sub.lacuna_count_true.sum(), 1))}
            for day, sub in pellets.groupby("day")
        },
    }


def _within_3pp(pellets: pd.DataFrame) -> float:
    """Share of the pellets' depth bands (those the band figures count) within 3 pp of the truth; NaN without any."""
    n = pellets.profile_bands.sum() if len(pellets) else 0
    return float(1 - pellets.profile_bands_over_3pp.sum() / n) if n else float("nan")


def _direction_check(pellets: pd.DataFrame) -> dict:
    """Per day: is mean proteoglycan lower in labeled pellets, as in the truth?"""
    out = {}
    for day, sub in pellets.groupby("day"):
        means = sub.groupby("labeled")[["proteoglycan_true", "proteoglycan_found"]].mean()
        if set(means.index) == {False, True}:
            true_dir = np.sign(means.loc[True, "proteoglycan_true"] - means.loc[False, "proteoglycan_true"])
            found_dir = np.sign(means.loc[True, "proteoglycan_found"] - means.loc[False, "proteoglycan_found"])
            out[int(day)] = bool(true_dir == found_dir)
    return out


def summarize(images: pd.DataFrame, pellets: pd.DataFrame) -> dict:
    """The figures of the validation, as reported in docs/accuracy.md."""
    labeled = images[images.labeled]
    return {
        "images": int(len(images)),
        "pellets": int(images.n_pellets.sum()),
        "images_with_every_pellet_found_and_none_invented": int((images.pellets_found == images.n_pellets).sum()),
        "pellet_dice_min": float(images.pellet_dice.min()),
        "pellet_dice_mean": float(images.pellet_dice.mean()),
        "proteoglycan_error_pp_mean_abs": float(pellets.proteoglycan_error_pp.abs().mean()) if len(pellets) else float("nan"),
        "proteoglycan_error_pp_max_abs": float(pellets.proteoglycan_error_pp.abs().max()) if len(pellets) else float("nan"),
        "nuclei_count_error_mean_abs": float(pellets.nuclei_count_error.abs().mean()) if len(pellets) else float("nan"),
        "nuclei_instance_f1_mean": float(images.nuclei_instance_f1.mean()),
        "iron_pixel_f1_mean_labeled": float(labeled.iron_pixel_f1.mean()) if len(labeled) else float("nan"),
        "iron_as_nuclei_fraction_mean_labeled": float(labeled.iron_as_nuclei_fraction.mean()) if len(labeled) else float("nan"),
        "iron_error_pp_mean_abs": float(pellets.iron_error_pp.abs().mean()) if len(pellets) else float("nan"),
        "unlabeled_iron_positive_cell_fraction_mean": _unlabeled(pellets, "iron_positive_cell_fraction_found", "mean"),
        "unlabeled_iron_positive_cell_fraction_max": _unlabeled(pellets, "iron_positive_cell_fraction_found", "max"),
        "unlabeled_iron_granule_count_max": _unlabeled(pellets, "iron_granule_count_found", "max"),
        "labeled_vs_unlabeled_direction_correct_by_day": _direction_check(pellets) if len(pellets) else {},
        **_cartilage_summary(pellets),
    }


def _unlabeled(pellets: pd.DataFrame, column: str, how: str) -> float:
    """Mean or max of a column over the unlabeled pellets (which hold no iron); NaN without any."""
    if not len(pellets) or column not in pellets:
        return float("nan")
    values = pellets.loc[~pellets.labeled.astype(bool), column]
    return float(getattr(values, how)()) if len(values) else float("nan")


def validate(
    n_images: int = 24, *, seed: int = 1, hue_jitter_deg: float = 6.0, output_dir=None, progress=None, nuclei_model: str = "varied"
) -> dict:
    """Run the validation; writes validation_images.csv, validation_pellets.csv and validation.json when ``output_dir`` is given.

    ``nuclei_model`` "varied" (irregular, touching, textured nuclei of mixed darkness, small dark
    nuclei in the fibrous rim) or "simple" (the smooth dark ellipses in pale rings of the demo study).
    """
    images, pellets = [], []
    for i, params in enumerate(validation_plan(n_images, seed, hue_jitter_deg=hue_jitter_deg)):
        image, rows = validate_section(params, nuclei_model=nuclei_model)
        images.append(image)
        pellets.extend(rows)
        if progress is not None:
            progress(i + 1, n_images, image)
    images = pd.DataFrame(images)
    pellets = pd.DataFrame(pellets)
    summary = summarize(images, pellets)
    if output_dir is not None:
        from .io import write_json, write_tables

        output_dir = Path(output_dir)
        write_tables(output_dir, {"validation_images": images, "validation_pellets": pellets})
        write_json(
            output_dir / "validation.json",
            {"n_images": n_images, "seed": seed, "hue_jitter_deg": hue_jitter_deg, "nuclei_model": nuclei_model, **summary},
        )
    return {"images": images, "pellets": pellets, "summary": summary}


def validate_he(n_images: int = 8, *, seed: int = 1, size_px: int = 512, config: RunConfig | None = None, work_dir=None) -> dict:
    """Nuclei instance F1 at IoU 0.5 on synthetic full-frame H&E tiles, through ``run --stains he``.

    Each tile (:func:`~pellet_analysis.synthetic_he.make_he_tile`, random
    parameters from :func:`~pellet_analysis.synthetic_he.he_tile_params`) is
    written as a PNG, which carries no pixel size, into ``work_dir/tiles``;
    :func:`~pellet_analysis.batch.run_batch` analyses the folder exactly as
    the command line does, and each ``labels/<tile>_nuclei.tif`` is compared
    with the tile's truth.

    Parameters
    ----------
    n_images : int
    seed : int, keyword-only
    size_px : int, keyword-only
        Tile side (px).
    config : RunConfig, optional, keyword-only
        Default: ``RunConfig(stains={"preset": "he"})``; its input and output
        folders are replaced.
    work_dir : path, optional, keyword-only
        Where tiles and the run go; a temporary folder (removed) by default.

    Returns
    -------
    dict
        ``images`` (DataFrame: one row per tile with its F1, precision,
        recall, counts, true and estimated pixel size, inside fraction),
        ``summary`` (mean F1 and the rest) and ``failures`` (DataFrame).
    """
    import tempfile

    import cv2
    import tifffile

    from .batch import run_batch
    from .synthetic_he import he_tile_params, make_he_tile

    rng = np.random.default_rng(seed)
    config = config or RunConfig(stains={"preset": "he"})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(work_dir) if work_dir is not None else Path(tmp)
        tiles_dir, out_dir = root / "tiles", root / "run"
        tiles_dir.mkdir(parents=True, exist_ok=True)
        truth = {}
        for i in range(n_images):
            params = he_tile_params(rng, size_px=size_px)
            tile = make_he_tile(**params)
            stem = f"he_tile_{i:03d}"
            cv2.imwrite(str(tiles_dir / f"{stem}.png"), tile.image[..., ::-1])
            truth[stem] = (tile, params)
        record = run_batch(config.model_copy(update={"input_dir": tiles_dir, "output_dir": out_dir}))
        rows = []
        for stem, (tile, params) in truth.items():
            info = record["images"].get(stem, {})
            row = {"image": stem, "pixel_size_um": params["pixel_size_um"], "jpeg_quality": params["jpeg_quality"],
                   "pale_fraction": params["pale_fraction"], "ok": bool(info.get("ok"))}
            if row["ok"]:
                found = tifffile.imread(out_dir / "labels" / f"{stem}_nuclei.tif")
                pellets = tifffile.imread(out_dir / "labels" / f"{stem}_pellets.tif")
                score = instance_f1(found, tile.nuclei)
                row.update({"estimated_pixel_size_um": info["pixel_size_um"], "inside_fraction": float((pellets > 0).mean()),
                            **{k: score[k] for k in ("f1", "precision", "recall", "n_true", "n_predicted")}})
            else:
                row.update({"f1": 0.0, "reason": info.get("reason", "missing")})
            rows.append(row)
    images = pd.DataFrame(rows)
    summary = {
        "images": int(n_images),
        "failures": int(len(record["failures"])),
        "nuclei_instance_f1_mean": float(images.f1.mean()),
        "nuclei_instance_f1_min": float(images.f1.min()),
        "precision_mean": float(images.get("precision", pd.Series(dtype=float)).mean()),
        "recall_mean": float(images.get("recall", pd.Series(dtype=float)).mean()),
    }
    return {"images": images, "summary": summary, "failures": record["failures"]}


#: Suffixes of the images :func:`validate_real` scores (their labels are always ``<stem>_labels.tif``).
REAL_IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


def xml_pixel_size_um(path) -> float | None:
    """The ``MicronsPerPixel`` attribute of an annotation XML (MoNuSeg, Aperio ImageScope), or None."""
    import re

    path = Path(path)
    if not path.is_file():
        return None
    found = re.search(r'MicronsPerPixel="\s*([0-9.eE+-]+)\s*"', path.read_text(errors="replace"))
    if found is None:
        return None
    value = float(found.group(1))
    return value if value > 0 else None


def real_image_pairs(folder) -> list[tuple[Path, Path]]:
    """``(image, labels)`` for every ``<stem>.<ext>`` in ``folder`` with a ``<stem>_labels.tif`` beside it, by name."""
    folder = Path(folder)
    pairs = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in REAL_IMAGE_SUFFIXES or path.stem.endswith("_labels"):
            continue
        labels = folder / f"{path.stem}_labels.tif"
        if labels.is_file():
            pairs.append((path, labels))
    return pairs


def validate_real(folder, *, stains: str = "he", use_pixel_size: bool = True, config: RunConfig | None = None, output_dir=None, progress=None) -> dict:
    """Nuclei instance F1 at IoU 0.5 against the instance labels of real images.

    Every ``<stem>.<ext>`` of ``folder`` with a ``<stem>_labels.tif`` (integer
    instance labels, 0 background) is analysed as ``pellet-analysis run``
    would analyse it. The pixel size comes from ``<stem>.xml``
    (``MicronsPerPixel``, as in MoNuSeg), else from the image file; with
    ``use_pixel_size`` False, or where neither gives one, it is estimated from
    the nuclei of all such images together, as ``run`` does for a folder
    without pixel sizes (:func:`~pellet_analysis.bookkeeping.pixel_size_choices`).

    Parameters
    ----------
    folder : path
    stains : str, keyword-only
        Stain preset (ignored when ``config`` is given).
    use_pixel_size : bool, keyword-only
    config : RunConfig, optional, keyword-only
    output_dir : path, optional, keyword-only
        Where ``validation_real_images.csv`` and ``validation_real.json`` go.
    progress : callable, optional, keyword-only
        Called as ``progress(i, n, row)`` after each image.

    Returns
    -------
    dict
        ``images`` (DataFrame: image, pixel size and its source, f1,
        precision, recall, n_true, n_predicted) and ``summary``.

    Raises
    ------
    FileNotFoundError
        When ``folder`` holds no image with labels.
    """
    import tifffile

    from .io import read_image
    from .bookkeeping import pixel_size_choices
    from .scale import nucleus_sizes_px
    from .stains import configured_stains

    config = config or RunConfig(stains={"preset": stains})
    pairs = real_image_pairs(folder)
    if not pairs:
        raise FileNotFoundError(f"no <stem>.tif with a <stem>_labels.tif in {folder}")
    images = {path.stem: read_image(path) for path, _ in pairs}
    given = {}
    for path, _ in pairs:
        xml_px = xml_pixel_size_um(path.with_suffix(".xml"))
        file_px = images[path.stem][1]
        if use_pixel_size and xml_px is not None:
            given[path.stem] = (xml_px, "xml")
        elif use_pixel_size and file_px is not None:
            given[path.stem] = (file_px, "file")
    unknown = [path.stem for path, _ in pairs if path.stem not in given]
    if unknown:
        stain_set = configured_stains(config.stains.params())
        choices = pixel_size_choices({stem: nucleus_sizes_px(images[stem][0], stain_set, tissue_min_od=config.pellets.tissue_min_od) for stem in unknown}, config)
        for stem in unknown:
            px = choices[stem].pixel_size_um
            given[stem] = (px, "estimated") if px is not None else (config.pixel_size_um, "config")
    rows = []
    for i, (path, labels_path) in enumerate(pairs, start=1):
        rgb = images[path.stem][0]
        px, source = given[path.stem]
        found = analyze_image(rgb, pixel_size_um=px, config=config)
        score = instance_f1(found.nuclei, tifffile.imread(labels_path))
        row = {"image": path.stem, "pixel_size_um": float(px), "pixel_size_source": source,
               **{k: score[k] for k in ("f1", "precision", "recall", "n_true", "n_predicted")}}
        rows.append(row)
        if progress is not None:
            progress(i, len(pairs), row)
    table = pd.DataFrame(rows)
    summary = {
        "folder": str(folder),
        "stains": config.stains.preset,
        "pixel_size": "given" if use_pixel_size else "estimated",
        "images": int(len(table)),
        "nuclei_instance_f1_mean": float(table.f1.mean()),
        "nuclei_instance_f1_min": float(table.f1.min()),
        "precision_mean": float(table.precision.mean()),
        "recall_mean": float(table.recall.mean()),
        "n_true": int(table.n_true.sum()),
        "n_predicted": int(table.n_predicted.sum()),
    }
    if output_dir is not None:
        from .io import write_json, write_tables

        output_dir = Path(output_dir)
        write_tables(output_dir, {"validation_real_images": table})
        write_json(output_dir / "validation_real.json", summary)
    return {"images": table, "summary": summary}
