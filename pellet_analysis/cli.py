"""Command line: ``pellet-analysis run | demo | synth``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__

DEFAULT_CONFIG = Path("configs/default.yaml")


def _console():
    from rich.console import Console

    # soft wrap: an error stays one line (a path split over two lines is no longer a path)
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _run(config, console) -> int:
    from .workers import process_pool

    # worker processes first: they import the pipeline while this process does
    pool = process_pool(config.n_workers) if config.scheduler == "processes" else None
    try:
        return _run_with(config, console, pool)
    finally:
        if pool is not None:
            pool.shutdown()


def _run_with(config, console, pool) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .batch import RunFolderConflict, list_images, run_batch
    from .study import SampleSheetError

    try:
        n_images = len(list_images(config.input_dir, config.extensions))
    except FileNotFoundError as error:
        console.print(f"[red]error:[/red] {error}")
        return 2
    if n_images == 0:
        console.print(f"[red]error:[/red] no images ({', '.join(config.extensions)}) in {config.input_dir}")
        return 2
    if config.annotations_dir is not None and not Path(config.annotations_dir).is_dir():
        console.print(f"[red]error:[/red] annotations folder {config.annotations_dir} does not exist")
        return 2
    if Path(config.output_dir).exists() and not Path(config.output_dir).is_dir():
        console.print(f"[red]error:[/red] output folder {config.output_dir} is an existing file")
        return 2
    console.print(
        f"pellet-analysis {__version__}: {n_images} image(s) in {config.input_dir} -> {config.output_dir} "
        f"(stains {config.stains.preset}, scheduler {config.scheduler})"
    )
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, disable=not console.is_terminal and n_images == 0,
    ) as progress:
        task = progress.add_task("images", total=n_images)

        def report(image):
            progress.advance(task)
            if image.skipped:
                progress.console.print(f"skipped {image.file}: finished earlier with the same input and config")
            elif not image.ok:
                progress.console.print(f"[red]failed[/red] {image.file}: {image.reason}")
            else:
                for warning in image.warnings:
                    progress.console.print(f"[yellow]warning[/yellow] {image.file}: {warning}")

        try:
            record = run_batch(config, progress=report, pool=pool)
        except SampleSheetError as error:
            console.print(f"[red]sample sheet error:[/red] {error}")
            return 2
        except RunFolderConflict as error:
            console.print(f"[red]error:[/red] {error}")
            return 2
    console.print(
        f"{record['n_pellets']} pellet(s) from {n_images - record['n_failures']} image(s) "
        f"({record['n_skipped']} finished earlier, not recomputed), "
        f"{record['n_failures']} failure(s), {record['seconds']:.1f} s; results in {config.output_dir}"
    )
    line = iron_threshold_line(record.get("iron_calibration") or {})
    if line:
        console.print(line)
    return 0


def iron_threshold_line(calibration: dict) -> str:
    """One line on the iron granule threshold the run used and how it was found (run.json's ``iron_calibration``); '' without iron."""
    if calibration.get("reason") == "the stain set has no iron":
        return ""
    threshold = calibration.get("granule_min_od", float("nan"))
    if calibration.get("calibrated"):
        line = (
            f"iron threshold {calibration['configured_granule_min_od']:.3g} -> {threshold:.3g}, calibrated on "
            f"{calibration['n_control_cells']} cells of {calibration['n_control_pellets']} control pellet(s)"
        )
        if "positive_fraction_after" in calibration:
            line += f": iron-positive control cells {calibration['positive_fraction_before']:.1%} -> {calibration['positive_fraction_after']:.1%}"
        return line + (" (calibration of an earlier run, same config and control files)" if calibration.get("reused") else "")
    return f"iron threshold {threshold:.3g}, not calibrated: {calibration.get('reason', 'not recorded')}"


def _load(args, console):
    from .config import ConfigError, load_config  # here, not at import: 0.23 s that `run` spends beside the fork server

    given = {key: getattr(args, attribute, None) for key, (attribute, _) in _OPTIONS.items()}
    try:
        return load_config(args.config, options={key: flag for key, (_, flag) in _OPTIONS.items()}, **given)
    except ConfigError as error:
        console.print(f"[red]error:[/red] {error}")
        return None


#: Config key (dotted with ``__``) -> (argparse attribute, command-line option) of the options that override it.
_OPTIONS = {
    "input_dir": ("input", "--input"),
    "output_dir": ("output", "--output"),
    "stains__preset": ("stains", "--stains"),
    "pixel_size_um": ("pixel_size_um", "--pixel-size-um"),
    "scheduler": ("scheduler", "--scheduler"),
    "n_workers": ("workers", "--workers"),
    "sample_sheet": ("sample_sheet", "--sample-sheet"),
    "annotations_dir": ("annotations", "--annotations"),
}


def cmd_run(args) -> int:
    if args.scheduler == "processes":
        from .workers import start_server

        # the workers' server imports the pipeline (the longest step before the first task) while
        # this process reads the config, instead of after it
        start_server()
    console = _console()
    config = _load(args, console)
    if config is None:
        return 2
    if args.force_pixel_size:
        config.force_pixel_size = True
    return _run(config, console)


def cmd_demo(args) -> int:
    console = _console()
    if args.config is None and DEFAULT_CONFIG.exists():
        args.config = DEFAULT_CONFIG
    config = _load(args, console)
    if config is None:
        return 2
    if not Path(config.input_dir).is_dir() or not any(Path(config.input_dir).iterdir()):
        console.print(f"{config.input_dir} is empty: writing the synthetic demo study there first")
        from .synthetic import make_study

        make_study(config.input_dir)
    from .batch import RunFolderConflict, check_same_config
    from .bookkeeping import config_hash

    try:
        check_same_config(Path(config.output_dir), config_hash(config))
    except RunFolderConflict:
        # never touch the earlier demo (it may hold a reviewer's corrections): write beside it
        new_dir = Path(f"{config.output_dir}-{config_hash(config)[:8]}")
        console.print(f"{config.output_dir} holds a run of another config: writing this demo to {new_dir} instead")
        config.output_dir = new_dir
    status = _run(config, console)
    if status == 0:
        from .report import make_report

        console.print(f"report: {make_report(config.output_dir)['report']}")
    return status


def cmd_report(args) -> int:
    from .report import make_report

    console = _console()
    try:
        written = make_report(args.run)
    except FileNotFoundError as error:
        console.print(f"[red]error:[/red] {error}")
        return 2
    console.print(f"report: {written['report']}")
    return 0


def cmd_validate(args) -> int:
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .validate import validate

    console = _console()
    if args.real is not None:
        return _validate_real(args, console)
    if args.stains not in (None, "ab-vg", "he"):
        console.print("[red]error:[/red] synthetic validation renders ab-vg sections or he tiles; other presets need --real DIR")
        return 2
    if args.stains == "he":
        return _validate_he(args, console)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("sections", total=args.n)
        result = validate(args.n, seed=args.seed, hue_jitter_deg=args.hue_jitter_deg, output_dir=args.output,
                          progress=lambda i, n, image: bar.advance(task), nuclei_model=args.nuclei_model)
    columns = ["pixel_size_um", "day", "labeled", "n_pellets", "pellets_found", "pellet_dice", "nuclei_instance_f1", "iron_pixel_f1", "iron_as_nuclei_fraction"]
    print(result["images"][columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(json.dumps(result["summary"], indent=2))
    if args.output:
        console.print(f"tables and summary in {args.output}")
    return 0


def _validate_he(args, console) -> int:
    """``validate --stains he``: nuclei instance F1 on synthetic full-frame H&E tiles, run as the command line runs them."""
    import json

    from .validate import validate_he

    result = validate_he(args.n, seed=args.seed, size_px=args.size_px, work_dir=args.output)
    print(result["images"].drop(columns=["image"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(json.dumps(result["summary"], indent=2))
    if args.output:
        console.print(f"tiles and the run in {args.output}")
    return 0


def _validate_real(args, console) -> int:
    """``validate --real DIR``: nuclei instance F1 against the instance labels of real images."""
    import json

    from .validate import validate_real

    if not args.real.is_dir():
        console.print(f"[red]error:[/red] {args.real} is not a folder")
        return 2
    try:
        result = validate_real(args.real, stains=args.stains or "he", use_pixel_size=not args.no_pixel_size, output_dir=args.output,
                               progress=lambda i, n, row: console.print(f"{i}/{n} {row['image']}: F1 {row['f1']:.3f}"))
    except FileNotFoundError as error:
        console.print(f"[red]error:[/red] {error}")
        return 2
    images = result["images"]
    print(images.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"mean F1 {result['summary']['nuclei_instance_f1_mean']:.3f} over {len(images)} image(s)")
    print(json.dumps(result["summary"], indent=2))
    if args.output:
        console.print(f"validation_real_images.csv and validation_real.json in {args.output}")
    return 0


def cmd_synth(args) -> int:
    from .synthetic import make_study

    console = _console()
    donors = [f"P{i:02d}" for i in range(1, args.donors + 1)]
    written = make_study(
        args.output,
        donors=donors,
        days=args.days,
        pixel_size_um=args.pixel_size_um,
        max_pellets=args.max_pellets,
        hue_jitter_deg=args.hue_jitter_deg,
        suffix=args.format,
        seed=args.seed,
        truth_dir=Path(args.output) / "truth" if args.truth else None,
        progress=lambda p: console.print(f"wrote {p}"),
    )
    console.print(f"{len(written)} synthetic section(s) in {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pellet-analysis",
        description="Quantitative histology of chondrogenic pellet sections (Alcian blue / Van Gieson, iron-labeled cells).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="process every image in a folder", description="Find, classify and measure every pellet section of every image in a folder.")
    run.add_argument("config", nargs="?", type=Path, help="YAML config (defaults apply to keys it leaves out)")
    run.add_argument("--input", type=Path, help="folder of images (overrides input_dir)")
    run.add_argument("--output", type=Path, help="output folder (overrides output_dir)")
    run.add_argument("--stains", help="stain preset: ab-vg, safranin-o, alcian-nfr, he, h-dab")
    run.add_argument("--pixel-size-um", type=float, dest="pixel_size_um", help="pixel size (µm) for files without one")
    run.add_argument("--force-pixel-size", action="store_true", help="use --pixel-size-um even where a file has its own")
    run.add_argument("--scheduler", help="threads | processes | synchronous | tcp://host:port")
    run.add_argument("--workers", type=int, help="local worker threads or processes")
    run.add_argument("--sample-sheet", type=Path, dest="sample_sheet", help="CSV or Excel (.xlsx, first sheet) of image, donor, condition, day[, section, notes]")
    run.add_argument(
        "--annotations", type=Path, metavar="DIR",
        help="folder of QuPath GeoJSON exports (<image stem>.geojson): their annotated outlines are the pellets",
    )
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="run the default config on the sample images", description="Run configs/default.yaml on images/ and write outputs/demo/.")
    demo.add_argument("config", nargs="?", type=Path, help=f"YAML config (default {DEFAULT_CONFIG})")
    demo.add_argument("--output", type=Path, help="output folder (overrides output_dir)")
    demo.set_defaults(func=cmd_demo)

    report = sub.add_parser("report", help="summary, statistics and report.html of a run", description="Aggregate a run to donors, compare labeled with unlabeled per day and over days, and write summary.csv, summary.parquet, statistics.csv, figures/ (SVG, 300-dpi PNG and CSV of every plot) and a self-contained report.html into the run folder.")
    report.add_argument("run", type=Path, help="run folder written by `pellet-analysis run`")
    report.set_defaults(func=cmd_report)

    val = sub.add_parser("validate", help="accuracy on freshly rendered synthetic sections", description="Render N synthetic AB/VG sections with random stain hues, pixel sizes, blur, noise and JPEG quality, run the pipeline and print pellet Dice, proteoglycan error, nuclei count error and instance F1, iron pixel F1 and iron read as nuclei.")
    val.add_argument("--n", type=int, default=24, help="number of sections (default 24)")
    val.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    val.add_argument("--hue-jitter-deg", type=float, default=6.0, dest="hue_jitter_deg", help="largest stain-vector rotation (degrees, default 6)")
    val.add_argument("--output", type=Path, help="folder for validation_images.csv, validation_pellets.csv, validation.json")
    val.add_argument("--stains", choices=["ab-vg", "safranin-o", "alcian-nfr", "he", "h-dab"], default=None,
                     help="ab-vg: pellet sections (default); he: full-frame H&E tiles (PNG, no pixel size) through `run --stains he`, nuclei instance F1 at IoU 0.5; "
                     "with --real, the preset the images are analysed with (default he)")
    val.add_argument("--real", type=Path, default=None, metavar="DIR",
                     help="score nuclei against instance labels: every <stem>.tif in DIR with a <stem>_labels.tif; pixel size from <stem>.xml "
                     "(MicronsPerPixel) or the file; prints F1, precision, recall and counts per image and the mean")
    val.add_argument("--no-pixel-size", action="store_true", dest="no_pixel_size",
                     help="with --real: ignore the XML and file pixel sizes and let the tool estimate them from the nuclei, as `run` does")
    val.add_argument("--size-px", type=int, default=512, dest="size_px", help="with --stains he: tile side in pixels (default 512)")
    val.add_argument("--nuclei-model", choices=["varied", "simple"], default="varied", dest="nuclei_model",
                     help="ab-vg nuclei: varied (irregular, touching, textured, faint and dark, small dark nuclei in the rim; default) "
                     "or simple (the smooth dark ellipses in pale rings of the demo study)")
    val.set_defaults(func=cmd_validate)

    synth = sub.add_parser("synth", help="write synthetic AB/VG sections with ground truth", description="Write a synthetic study: every donor x condition x day, one section each, named {donor}_{condition}_d{day}_s1.")
    synth.add_argument("output", type=Path, help="folder to write into")
    synth.add_argument("--donors", type=int, default=3, help="number of donors (default 3)")
    synth.add_argument("--days", type=int, nargs="+", default=[7, 14, 28], help="days (default 7 14 28)")
    synth.add_argument("--pixel-size-um", type=float, dest="pixel_size_um", default=1.0, help="pixel size (µm, default 1.0)")
    synth.add_argument("--max-pellets", type=int, default=3, help="pellets per image, at most (default 3)")
    synth.add_argument("--hue-jitter-deg", type=float, default=3.0, help="stain vector drift (degrees, default 3)")
    synth.add_argument("--format", choices=[".tif", ".png", ".jpg"], default=".tif", help="image format (default .tif)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--truth", action="store_true", help="also write ground-truth label images to OUTPUT/truth")
    synth.set_defaults(func=cmd_synth)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; finished images are kept in the output folder", file=sys.stderr)
        return 130


def command() -> None:
    """The ``pellet-analysis`` command: :func:`main`, then an exit that skips the interpreter's teardown.

    When :func:`main` returns, every output is written, synced and closed and
    the worker pool is shut down; what remains is freeing each object of the
    1,500 modules the pipeline imports, which took 0.4 s after a whole-slide
    run (mypy exits the same way). Output streams are flushed first.
    """
    from .io import flush_standard_streams

    code = main()
    flush_standard_streams()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    command()
