"""Scanner formats behind one reader: pyramid levels, windows and a pixel size, whatever the file.

:func:`open_reader` picks the reader from the file ending:

- TIFF-based formats through tifffile (always installed): plain and
  OME-TIFF, BigTIFF, Aperio ``.svs``, Hamamatsu ``.ndpi``, Leica ``.scn``,
  Akoya ``.qptiff`` and Ventana ``.bif``. The main image is the series
  with the most pixels (a Leica file puts its macro image first), and the
  pixel size comes from the format's own metadata (:func:`tiff_pixel_size_um`).
- 3DHistech ``.mrxs``, Hamamatsu ``.vms``/``.vmu``, Sakura ``.svslide``
  and DICOM ``.dcm`` through OpenSlide's wheels (the ``slides`` extra).
- Zeiss ``.czi`` through pylibCZIrw (the ``slides`` extra).

A format whose package is missing fails with one line naming the file and
the ``pip install`` that adds it. Every level is an array-like that decodes
only the tiles under the window it is indexed with (``level[rows, cols]`` ->
RGB ``(rows, cols, 3)``), so the whole-slide path never needs to know which
format it reads.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

__all__ = [
    "ImageReadError",
    "TIFF_FORMATS",
    "OPENSLIDE_FORMATS",
    "CZI_FORMATS",
    "UNREADABLE_FORMATS",
    "SCANNER_SUFFIXES",
    "SLIDES_EXTRA",
    "Levels",
    "SlideReader",
    "open_reader",
    "tiff_pixel_size_um",
    "main_series",
    "zarr_levels",
]

#: File ending -> format name, read with tifffile.
TIFF_FORMATS = {
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".btf": "BigTIFF",
    ".svs": "Aperio SVS",
    ".ndpi": "Hamamatsu NDPI",
    ".scn": "Leica SCN",
    ".qptiff": "Akoya QPTIFF",
    ".bif": "Ventana BIF",
}
#: File ending -> format name, read with OpenSlide (``slides`` extra).
OPENSLIDE_FORMATS = {
    ".mrxs": "3DHistech MIRAX",
    ".vms": "Hamamatsu VMS",
    ".vmu": "Hamamatsu VMU",
    ".svslide": "Sakura SVSLIDE",
    ".dcm": "DICOM WSI",
}
#: File ending -> format name, read with pylibCZIrw (``slides`` extra).
CZI_FORMATS = {".czi": "Zeiss CZI"}
#: File endings no reader here can read, with what to do instead.
UNREADABLE_FORMATS = {
    ".vsi": "Olympus VSI has no reader on PyPI that runs without Java (Bio-Formats): export it as OME-TIFF (OlyVIA or QuPath)",
}
#: Endings of scanner files: always read window by window, never whole.
SCANNER_SUFFIXES = tuple(sorted(({*TIFF_FORMATS} - {".tif", ".tiff", ".btf"}) | {*OPENSLIDE_FORMATS} | {*CZI_FORMATS}))
#: The ``pip install`` that adds the optional readers.
SLIDES_EXTRA = {
    "OpenSlide": "pip install openslide-bin openslide-python",
    "pylibCZIrw": "pip install pylibCZIrw",
}


class _KnownBifWarning(logging.Filter):
    """Drops tifffile's warning that BIF tiles are not stitched: :func:`bif_tiles_overlap` decides (overlapping files go to OpenSlide)."""

    def filter(self, record) -> bool:
        return "BIF series tiles are not stitched" not in record.getMessage()


logging.getLogger("tifffile").addFilter(_KnownBifWarning())


class ImageReadError(ValueError):
    """An input image cannot be read; the message is one line naming the cause."""


def _one_line(error) -> str:
    return " ".join(str(error).split())[:200] or type(error).__name__


#: Tiles smaller than this (px, a side) are read this many pixels at a time: an NDPI's restart
#: intervals, which tifffile reads as tiles, are 8 or 16 rows high, and one dask task each would
#: make millions of tasks on a slide.
_SMALL_TILE_PX = 128
_MIN_CHUNK_PX = 512


class Levels:
    """``shape`` and ``dtype`` of the full resolution of anything holding pyramid ``levels``."""

    levels: list

    @property
    def shape(self) -> tuple:
        return tuple(self.levels[0].shape)

    @property
    def dtype(self):
        return self.levels[0].dtype


class SlideReader(Levels):
    """An open scan: its pyramid levels (full resolution first), pixel size and format.

    Attributes
    ----------
    path : Path
    format : str
        E.g. ``"Hamamatsu NDPI"``.
    levels : list
        Array-likes of shape ``(rows, cols, 3)`` (uint8 or uint16 RGB) with
        ``chunks`` (rows, cols): indexing one with a pair of slices decodes
        only the tiles under it.
    pixel_size_um : float or None
        Of the full resolution, from the file's metadata; None when it has none.
    """

    path: Path
    format: str
    pixel_size_um: float | None

    def dask_levels(self) -> list:
        """Every level as a dask array chunked like the file's tiles (or 1024-px blocks); nothing is read until computed."""
        import dask.array as da

        out = []
        for index, level in enumerate(self.levels):
            if isinstance(level, _TiffLevel):
                chunks = tuple(c if c >= _SMALL_TILE_PX else c * -(-_MIN_CHUNK_PX // c) for c in level.chunks)
                if chunks == level.chunks:
                    array = da.from_zarr(level.array)
                else:
                    array = da.from_zarr(level.array, chunks=(1,) * len(level.lead) + chunks + level.array.shape[-1:])
                out.append(array[level.lead][..., :3])
            else:
                name = f"{type(self).__name__}-{self.path}-{index}"  # tokenizing the open file handle is not deterministic
                out.append(da.from_array(level, chunks=level.chunks + (3,), asarray=True, lock=False, fancy=False, name=name))
        return out

    def read(self, window, level: int = 0) -> np.ndarray:
        """The RGB pixels under ``window`` (a pair of slices) of ``level``."""
        return np.ascontiguousarray(self.levels[level][window[0], window[1]])

    def close(self) -> None:
        """Release the file."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_reader(path) -> SlideReader:
    """Open a scan with the reader of its format.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    SlideReader

    Raises
    ------
    ImageReadError
        One line: not readable, not RGB, or the reader's package is missing
        (naming the file and the ``pip install`` that adds it).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in UNREADABLE_FORMATS:
        raise ImageReadError(f"{path.name}: {UNREADABLE_FORMATS[suffix]}")
    if suffix in OPENSLIDE_FORMATS:
        return _OpenSlideReader(path, OPENSLIDE_FORMATS[suffix])
    if suffix in CZI_FORMATS:
        return _CziReader(path)
    try:
        return _TiffReader(path, TIFF_FORMATS.get(suffix, "TIFF"))
    except _OverlappingTiles:
        # tifffile lays a BIF's tiles edge to edge; OpenSlide's Ventana reader stitches their overlaps
        return _OpenSlideReader(path, "Ventana BIF with overlapping tiles")


def _missing(path: Path, fmt: str, package: str):
    return ImageReadError(f"{path.name}: reading {fmt} needs {package}, not installed: {SLIDES_EXTRA[package]} (the [slides] extra)")


# ---------------------------------------------------------------------------------------------------------------------
# TIFF-based formats


def _is_rgb_page(page) -> bool:
    photometric = page.photometric.name if page.photometric is not None else None
    return photometric in ("RGB", "YCBCR") or (photometric != "SEPARATED" and page.shape and page.shape[-1] in (3, 4) and page.samplesperpixel in (3, 4))


def main_series(tif) -> int:
    """Index of the main image among a tifffile.TiffFile's series: the colour series with the most pixels.

    Leica SCN files put their macro (overview) image first, SVS, NDPI, BIF
    and QPTIFF files their thumbnails, labels and macros after the
    baseline: the largest colour series is the scan in all of them.
    """
    best, best_px = 0, -1.0
    for index, series in enumerate(tif.series):
        try:
            key = series.levels[0].keyframe
            shape = series.levels[0].shape
        except Exception:  # a series tifffile cannot describe is not the scan
            continue
        rgb = _is_rgb_page(key)
        plane = shape[-3:-1] if rgb and len(shape) >= 3 else shape[-2:]
        n_px = float(math.prod(plane)) if len(plane) == 2 else 0.0
        # colour first (a fluorescence QPTIFF has none and fails later with its own reason), then size
        score = n_px + (1e18 if rgb else 0.0)
        if score > best_px:
            best, best_px = index, score
    return best


_UNIT_TO_UM = {2: 25400.0, 3: 10000.0}  # TIFF ResolutionUnit: 2 inch, 3 centimetre
_OME_UNIT_TO_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4}


def _ome_pixel_size_um(description: str | None) -> float | None:
    if not description or "PhysicalSizeX" not in description:
        return None
    match = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', description)
    if not match:
        return None
    unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', description)
    factor = _OME_UNIT_TO_UM.get(unit.group(1) if unit else "µm", 1.0)
    value = float(match.group(1)) * factor
    return value if value > 0 else None


def _resolution_pixel_size_um(page) -> float | None:
    """From a page's XResolution and ResolutionUnit (inch or centimetre); None for the default 1 pixel per unit."""
    tags = page.tags
    unit_tag = tags.get("ResolutionUnit")
    xres = tags.get("XResolution")
    if unit_tag is None or xres is None:
        return None
    unit = int(unit_tag.value)
    if unit not in _UNIT_TO_UM:
        return None
    num, den = xres.value
    if num <= 0 or den <= 0:
        return None
    per_unit = num / den
    if per_unit <= 1.0:  # default 1 pixel per unit: no real calibration
        return None
    return _UNIT_TO_UM[unit] / per_unit


def _positive(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _svs_pixel_size_um(description: str) -> float | None:
    """Aperio: ``|MPP = 0.2520|`` in the baseline's ImageDescription."""
    match = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", description or "")
    return _positive(match.group(1)) if match else None


def _xml_root(text):
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    try:
        return ElementTree.fromstring(text.strip().lstrip("\ufeff"))
    except (ElementTree.ParseError, AttributeError):
        return None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _scn_pixel_size_um(description: str, cols: int) -> float | None:
    """Leica SCN: the image whose pixels are ``cols`` wide; its view's width (nm) over its pixels' width."""
    root = _xml_root(description)
    if root is None:
        return None
    for image in root.iter():
        if _local(image.tag) != "image":
            continue
        pixels = next((e for e in image if _local(e.tag) == "pixels"), None)
        view = next((e for e in image if _local(e.tag) == "view"), None)
        if pixels is None or view is None:
            continue
        width_px = _positive(pixels.get("sizeX"))
        width_nm = _positive(view.get("sizeX"))
        if width_px and width_nm and int(width_px) == int(cols):
            return width_nm / width_px / 1000.0
    return None


def _qptiff_pixel_size_um(description: str) -> float | None:
    """Akoya QPTIFF: ``ScanProfile/root/PixelSizeMicrons`` in the page's PerkinElmer-QPI XML."""
    root = _xml_root(description)
    if root is None:
        return None
    for element in root.iter():
        if _local(element.tag) == "PixelSizeMicrons":
            return _positive(element.text)
    return None


def _bif_xmp_elements(tif, tag: str):
    """Ventana BIF: every XMP element named ``tag`` (namespace dropped), page by page."""
    for page in tif.pages:
        xmp = page.tags.get(700)
        root = _xml_root(xmp.value) if xmp is not None else None
        if root is None:
            continue
        yield from (element for element in root.iter() if _local(element.tag) == tag)


def _bif_pixel_size_um(tif) -> float | None:
    """Ventana BIF: ``ScanRes`` (µm per pixel) of the first ``iScan`` element of the XMP."""
    iscan = next(_bif_xmp_elements(tif, "iScan"), None)
    return _positive(iscan.get("ScanRes")) if iscan is not None else None


def bif_tiles_overlap(tif) -> bool:
    """True when a BIF's XMP declares overlapping tiles (``TileJointInfo`` with a non-zero ``OverlapX``/``OverlapY``)."""
    return any(
        any(_positive(element.get(k)) for k in ("OverlapX", "OverlapY")) for element in _bif_xmp_elements(tif, "TileJointInfo")
    )


def tiff_pixel_size_um(tif, series: int | None = None) -> float | None:
    """Pixel size (µm) of a tifffile.TiffFile's main image, from its format's own metadata.

    OME-TIFF: ``PhysicalSizeX``. SVS: ``MPP`` in the description. Leica
    SCN: the view size over the pixel size of the image in its XML. QPTIFF:
    ``PixelSizeMicrons`` in its XML. BIF: ``ScanRes`` in its XMP. Then
    (NDPI, generic TIFF and any format above without the entry) the
    resolution tags of the series' first page.

    Parameters
    ----------
    tif : tifffile.TiffFile
    series : int, optional
        Default: :func:`main_series`.

    Returns
    -------
    float or None
    """
    ome = _ome_pixel_size_um(tif.ome_metadata) if tif.is_ome else None
    if ome:
        return ome
    index = main_series(tif) if series is None else series
    key = tif.series[index].levels[0].keyframe if tif.series else tif.pages[0]
    found = None
    if tif.is_svs:
        found = _svs_pixel_size_um(key.description)
    elif tif.is_scn:
        found = _scn_pixel_size_um(tif.pages[0].description, key.shape[1])
    elif tif.is_qpi:
        found = _qptiff_pixel_size_um(key.description)
    elif tif.is_bif:
        found = _bif_pixel_size_um(tif)
    return found or _resolution_pixel_size_um(key)


def zarr_levels(path, *, series: int = 0) -> list:
    """Every level of one series of a TIFF as a zarr array (tiles decoded on access), full resolution first."""
    import tifffile
    import zarr

    store = tifffile.imread(Path(path), aszarr=True, series=series)
    root = zarr.open(store, mode="r")
    if hasattr(root, "array_keys"):
        return [root[k] for k in sorted(root.array_keys(), key=int)]
    return [root]


class _OverlappingTiles(Exception):
    """A Ventana BIF whose tiles overlap: read with OpenSlide instead."""


class _TiffLevel:
    """One level of a TIFF series' zarr store as ``(rows, cols, 3)``: leading axes (focal planes, one channel) at their first index."""

    def __init__(self, array):
        self.array = array
        self.lead = (0,) * (array.ndim - 3)
        self.shape = tuple(array.shape[-3:-1]) + (3,)
        self.dtype = np.dtype(array.dtype)
        self.ndim = 3
        self.chunks = tuple(array.chunks[-3:-1])

    def __getitem__(self, key):
        rows, cols = key[:2]
        return np.asarray(self.array[self.lead + (rows, cols, slice(0, 3))])


class _TiffReader(SlideReader):
    def __init__(self, path: Path, fmt: str):
        import tifffile

        self.path, self.format = path, fmt
        try:
            with tifffile.TiffFile(path) as tif:
                index = main_series(tif)
                series = tif.series[index]
                key = series.levels[0].keyframe
                photometric = key.photometric.name if key.photometric is not None else None
                shape = series.levels[0].shape
                self.pixel_size_um = tiff_pixel_size_um(tif, index)
                overlapping = tif.is_bif and bif_tiles_overlap(tif)
            arrays = zarr_levels(path, series=index)
        except Exception as exc:  # tifffile raises many types on corrupt data
            raise ImageReadError(f"not a readable tiled TIFF ({type(exc).__name__}: {_one_line(exc)})") from None
        if overlapping:
            raise _OverlappingTiles(path)
        if len(shape) < 3 or shape[-1] not in (3, 4) or photometric in ("SEPARATED", "PALETTE"):
            raise ImageReadError(f"whole-slide reading needs an RGB(A) image, got shape {shape} ({photometric})")
        self.levels = [_TiffLevel(a) for a in arrays]


# ---------------------------------------------------------------------------------------------------------------------
# OpenSlide


def _on_white(rgba: np.ndarray) -> np.ndarray:
    """RGB of OpenSlide's un-premultiplied RGBA, composited on white (transparent: no tissue scanned there)."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3:4]
    if alpha.min(initial=255) == 255:
        return np.ascontiguousarray(rgb)
    blend = (rgb.astype(np.uint16) * alpha + 255 * (255 - alpha.astype(np.uint16)) + 127) // 255
    return blend.astype(np.uint8)


class _OpenSlideLevel:
    def __init__(self, slide, level: int, chunk_px: int):
        cols, rows = slide.level_dimensions[level]
        self.slide, self.level = slide, level
        self.downsample = float(slide.level_downsamples[level])
        self.shape = (int(rows), int(cols), 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self.chunks = (min(chunk_px, rows), min(chunk_px, cols))

    def __getitem__(self, key):
        rows, cols = (range(*k.indices(n)) for k, n in zip(key[:2], self.shape[:2]))
        if rows.step != 1 or cols.step != 1:
            raise IndexError("OpenSlide levels are read by contiguous windows only")
        height, width = len(rows), len(cols)
        if height == 0 or width == 0:
            return np.zeros((height, width, 3), np.uint8)
        # read_region takes the top-left corner in full-resolution coordinates and the size at the level
        origin = (int(round(cols.start * self.downsample)), int(round(rows.start * self.downsample)))
        region = np.asarray(self.slide.read_region(origin, self.level, (width, height)))
        return _on_white(region)


class _OpenSlideReader(SlideReader):
    # each dask thread holds a block's RGBA, its RGB and the block means' float copy; planning a 16k x 16k
    # scan took 61 MB above the imports with 1024-px blocks, 49 MB with 512 (benchmarks/formats.py)
    chunk_px = 512

    def __init__(self, path: Path, fmt: str):
        try:
            import openslide
        except ImportError:  # openslide-python without openslide-bin raises ImportError too
            raise _missing(path, fmt, "OpenSlide") from None
        self.path, self.format = path, fmt
        try:
            self.slide = openslide.OpenSlide(str(path))
        except Exception as exc:  # OpenSlideUnsupportedFormatError, OpenSlideError, OSError
            raise ImageReadError(f"not a readable {fmt} file ({type(exc).__name__}: {_one_line(exc)})") from None
        mpp = _positive(self.slide.properties.get("openslide.mpp-x"))
        self.pixel_size_um = mpp
        self.levels = [_OpenSlideLevel(self.slide, k, self.chunk_px) for k in range(self.slide.level_count)]

    def close(self) -> None:
        self.slide.close()


# ---------------------------------------------------------------------------------------------------------------------
# Zeiss CZI


#: A CZI ``Distance`` value at least this large cannot be metres per pixel of a microscope scan (1 mm):
#: it was written in µm, as pylibCZIrw's ``write_metadata`` documents its ``scale_x``.
_CZI_METRES_MAX = 1e-3


def _czi_pixel_size_um(metadata: dict) -> float | None:
    """``ImageDocument/Metadata/Scaling/Items/Distance[@Id='X']/Value`` in µm.

    ZEN writes the value in metres per pixel (CZI specification); a value of
    :data:`_CZI_METRES_MAX` or more is taken as µm.
    """
    try:
        distances = metadata["ImageDocument"]["Metadata"]["Scaling"]["Items"]["Distance"]
    except (KeyError, TypeError):
        return None
    for distance in distances if isinstance(distances, list) else [distances]:
        if isinstance(distance, dict) and distance.get("@Id") == "X":
            value = _positive(distance.get("Value"))
            if value is None:
                return None
            return value if value >= _CZI_METRES_MAX else value * 1e6
    return None


class _CziLevel:
    """The full resolution of a CZI's first scene and plane; libCZI reads the subblocks under each window."""

    def __init__(self, reader, box, dtype, lock, chunk_px: int):
        self.reader, self.box, self.lock = reader, box, lock
        self.shape = (int(box.h), int(box.w), 3)
        self.dtype = np.dtype(dtype)
        self.ndim = 3
        self.chunks = (min(chunk_px, box.h), min(chunk_px, box.w))

    def __getitem__(self, key):
        rows, cols = (range(*k.indices(n)) for k, n in zip(key[:2], self.shape[:2]))
        if rows.step != 1 or cols.step != 1:
            raise IndexError("CZI planes are read by contiguous windows only")
        if len(rows) == 0 or len(cols) == 0:
            return np.zeros((len(rows), len(cols), 3), self.dtype)
        roi = (self.box.x + cols.start, self.box.y + rows.start, len(cols), len(rows))
        with self.lock:  # one libCZI accessor per file; reads are serialised
            bgr = self.reader.read(roi=roi, plane={"C": 0, "Z": 0, "T": 0}, background_pixel=(1.0, 1.0, 1.0))
        return np.ascontiguousarray(bgr[..., ::-1])  # libCZI's colour order is B, G, R


class _CziReader(SlideReader):
    chunk_px = 1024

    def __init__(self, path: Path):
        fmt = CZI_FORMATS[".czi"]
        try:
            from pylibCZIrw import czi
        except ImportError:
            raise _missing(path, fmt, "pylibCZIrw") from None
        self.path, self.format = path, fmt
        try:
            # not open_czi(): its generator closes the file when collected, while the levels still read it
            self.reader = czi.CziReader(str(path))
            box = self.reader.total_bounding_rectangle
            pixel_type = self.reader.pixel_types.get(0)
            self.pixel_size_um = _czi_pixel_size_um(self.reader.metadata)
        except Exception as exc:
            raise ImageReadError(f"not a readable {fmt} file ({type(exc).__name__}: {_one_line(exc)})") from None
        dtypes = {"Bgr24": np.uint8, "Bgr48": np.uint16}
        if pixel_type not in dtypes:
            self.close()
            raise ImageReadError(f"whole-slide reading needs an RGB image, got CZI pixel type {pixel_type}")
        self.levels = [_CziLevel(self.reader, box, dtypes[pixel_type], threading.Lock(), self.chunk_px)]

    def close(self) -> None:
        self.reader.close()
