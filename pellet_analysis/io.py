"""Reading images and writing results (the I/O edge of the pipeline)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .readers import CZI_FORMATS, ImageReadError, OPENSLIDE_FORMATS, TIFF_FORMATS, UNREADABLE_FORMATS, Levels, main_series, open_reader, tiff_pixel_size_um, zarr_levels

__all__ = [
    "ImageReadError",
    "read_image",
    "to_rgb",
    "read_pixel_size_um",
    "tiff_pixel_size_um",
    "write_label_tiff",
    "LazyImage",
    "open_lazy",
    "read_window",
    "read_label_window",
    "zarr_levels",
    "open_reader",
    "write_label_pyramid",
    "atomic_path",
    "atomic_write",
    "write_json",
    "write_tables",
    "sha256_file",
    "flush_standard_streams",
]


def to_rgb(array, *, photometric: str | None = None, colormap=None) -> np.ndarray:
    """Bring a decoded image to (rows, cols, 3) RGB, keeping its integer or float dtype.

    Greyscale is repeated on three channels, alpha is composited on white,
    palette images are mapped through their colormap, floats are clipped to
    0-1, other integer types become uint16.
    """
    a = np.asarray(array)
    if photometric == "PALETTE" and colormap is not None:
        cmap = np.asarray(colormap)
        if cmap.shape[0] == 3:
            cmap = cmap.T
        a = cmap[a]
        if a.dtype == np.uint16 and a.max() <= 255:
            a = a.astype(np.uint8)
    if a.ndim == 3 and a.shape[0] in (3, 4) and a.shape[-1] not in (3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3:
        raise ImageReadError(f"expected a 2-D colour or greyscale image, got shape {a.shape}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    elif a.shape[-1] == 2:
        # grey + alpha, or two channels of something else: either way no colour to separate stains by
        raise ImageReadError("2 channels: a stained section needs an RGB scan (3 channels)")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.signedinteger):
        raise ImageReadError(f"signed integer pixels ({a.dtype}): a brightfield scan stores unsigned intensities")
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageReadError("pixels that are NaN or infinite")
        a = np.clip(a, 0.0, 1.0).astype(np.float32)
    elif a.dtype not in (np.uint8, np.uint16):
        info = np.iinfo(a.dtype)
        a = np.clip(a, 0, None).astype(np.float64) / max(info.max, 1) * 65535
        a = a.astype(np.uint16)
    if a.shape[-1] == 4:
        full = 1.0 if np.issubdtype(a.dtype, np.floating) else float(np.iinfo(a.dtype).max)
        alpha = a[..., 3:4].astype(np.float32) / full
        rgb = a[..., :3].astype(np.float32) * alpha + full * (1 - alpha)
        a = rgb.astype(a.dtype) if np.issubdtype(a.dtype, np.floating) else np.rint(rgb).astype(a.dtype)
    elif a.shape[-1] != 3:
        raise ImageReadError(f"expected 1, 3 or 4 channels, got {a.shape[-1]}")
    return np.ascontiguousarray(a)


#: File endings read with tifffile (:data:`~pellet_analysis.readers.TIFF_FORMATS`).
TIFF_SUFFIXES = tuple(TIFF_FORMATS)
#: File endings read only through a whole-slide reader (OpenSlide, pylibCZIrw), or not at all.
SLIDE_ONLY_SUFFIXES = tuple(OPENSLIDE_FORMATS) + tuple(CZI_FORMATS) + tuple(UNREADABLE_FORMATS)


def read_image(path, *, max_pixels: int = 400_000_000) -> tuple[np.ndarray, float | None]:
    """Read an image file into RGB and its pixel size.

    Parameters
    ----------
    path : str or Path
        TIFF / OME-TIFF and the TIFF-based scanner formats (the main series,
        full resolution), PNG or JPEG; the other scanner formats through
        their reader (:func:`~pellet_analysis.readers.open_reader`).
    max_pixels : int, keyword-only
        Refuse images with more pixels than this before decoding them.

    Returns
    -------
    rgb : ndarray, shape (rows, cols, 3)
        uint8, uint16 or float32.
    pixel_size_um : float or None
        From the format's metadata (:func:`~pellet_analysis.readers.tiff_pixel_size_um`); None when the file has none.

    Raises
    ------
    ImageReadError
        With a one-line cause.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ImageReadError(f"cannot open ({error.strerror or error})") from None
    if size == 0:
        raise ImageReadError("empty file (0 bytes)")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return _read_tiff(path, max_pixels)
    if suffix in SLIDE_ONLY_SUFFIXES:
        return _read_slide(path, max_pixels)
    return _read_other(path, max_pixels)


def read_pixel_size_um(path) -> float | None:
    """The pixel size a scan's or TIFF's metadata give, without reading its pixels; None for other files or none."""
    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES + SLIDE_ONLY_SUFFIXES:
        return None
    try:
        with open_reader(path) as reader:
            return reader.pixel_size_um
    except Exception:  # unreadable: read_image or open_lazy reports it with its cause
        return None


def _read_tiff(path: Path, max_pixels: int):
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            index = main_series(tif)
            series = tif.series[index]
            shape = series.shape
            plane = shape[-3:-1] if len(shape) >= 3 and shape[-1] in (3, 4) else shape[-2:]
            n_px = int(np.prod(plane, dtype=np.float64)) if len(shape) >= 2 else 0
            if n_px > max_pixels:
                raise ImageReadError(f"image of shape {shape} exceeds the limit of {max_pixels} pixels")
            page = series.keyframe
            photometric = page.photometric.name if page.photometric is not None else None
            if photometric == "SEPARATED":
                raise ImageReadError("CMYK (separated) TIFF is not supported; export as RGB")
            data = series.asarray()
            colormap = page.colormap if photometric == "PALETTE" else None
            pixel_size = tiff_pixel_size_um(tif, index)
    except ImageReadError:
        raise
    except Exception as error:  # tifffile raises many types on corrupt data
        raise ImageReadError(f"not a readable TIFF ({type(error).__name__}: {_one_line(error)})") from None
    if data.ndim > 3:
        data = data.reshape((-1,) + data.shape[-3:])[0] if data.shape[-1] in (3, 4) else data.reshape((-1,) + data.shape[-2:])[0]
    return to_rgb(data, photometric=photometric, colormap=colormap), pixel_size


def _read_slide(path: Path, max_pixels: int):
    with open_reader(path) as reader:
        if int(np.prod(reader.shape[:2], dtype=np.float64)) > max_pixels:
            raise ImageReadError(f"image of shape {reader.shape} exceeds the limit of {max_pixels} pixels")
        return reader.read((slice(None), slice(None))), reader.pixel_size_um


def _read_other(path: Path, max_pixels: int):
    import cv2

    raw = np.fromfile(str(path), dtype=np.uint8)
    data = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if data is None:
        raise ImageReadError(f"not a readable {path.suffix.lstrip('.').upper() or 'image'} file")
    if data.shape[0] * data.shape[1] > max_pixels:
        raise ImageReadError(f"image of shape {data.shape} exceeds the limit of {max_pixels} pixels")
    if data.ndim == 3:
        data = data[..., [2, 1, 0, 3][: data.shape[-1]]] if data.shape[-1] >= 3 else data
    return to_rgb(data), None


@dataclass
class LazyImage(Levels):
    """A large RGB image read tile by tile: every pyramid level as a dask array, full resolution first."""

    path: Path
    levels: list  # dask arrays (rows, cols, 3)
    pixel_size_um: float | None
    format: str = "TIFF"  # the reader's name for it, e.g. "Hamamatsu NDPI"


def open_lazy(path, *, max_pixels: int = 100_000_000_000) -> LazyImage:
    """Open a scan or a (pyramidal, tiled) TIFF without decoding it.

    Every pyramid level becomes a dask array over the format's reader
    (:func:`~pellet_analysis.readers.open_reader`: tifffile's zarr store,
    OpenSlide or pylibCZIrw), chunked like the file's tiles; nothing is read
    until computed. The reader stays open as long as the arrays.

    Raises
    ------
    ImageReadError
        With a one-line cause: not readable, not RGB, too large, or the
        format's optional package missing (with the ``pip install`` that adds it).
    """
    path = Path(path)
    reader = open_reader(path)
    try:
        levels = reader.dask_levels()
    except Exception as error:
        reader.close()
        raise ImageReadError(f"not a readable tiled {reader.format} ({type(error).__name__}: {_one_line(error)})") from None
    if int(np.prod(levels[0].shape[:2], dtype=np.float64)) > max_pixels:
        reader.close()
        raise ImageReadError(f"image of shape {levels[0].shape} exceeds the limit of {max_pixels} pixels")
    return LazyImage(path, levels, reader.pixel_size_um, reader.format)


def read_window(path, window, *, level: int = 0) -> np.ndarray:
    """Decode only the tiles under ``window`` (a pair of slices) of one level of a scan or TIFF; RGB."""
    with open_reader(Path(path)) as reader:
        return reader.read(window, level)


def read_label_window(path, window) -> np.ndarray:
    """Decode only the tiles (or strips) under ``window`` of a label TIFF's full resolution."""
    array = zarr_levels(Path(path))[0]
    return np.asarray(array[window[0], window[1]])


def write_label_pyramid(path, shape, pieces, *, dtype, pixel_size_um: float | None, tile_px: int = 1024, min_level_px: int = 1024) -> Path:
    """Write a label image as a tiled, deflate-compressed, pyramidal OME-TIFF, tile by tile.

    The full image is never held in memory: each tile is filled from the
    pieces that overlap it.

    Parameters
    ----------
    path : str or Path
    shape : tuple
        Full-resolution (rows, cols).
    pieces : list of (window, values, inside, offset)
        ``window`` a pair of slices in the full image; ``values`` the labels
        in it (arrays or memory maps); ``inside`` (bool) the pixels the piece
        owns (others keep 0); ``offset`` added to its non-zero values.
    dtype : dtype, keyword-only
    pixel_size_um : float, keyword-only
    tile_px : int, keyword-only
    min_level_px : int, keyword-only
        Halve the resolution (nearest label, no blending) until the longer side is below this.

    Returns
    -------
    Path
    """
    import tifffile

    dtype = np.dtype(dtype)
    rows, cols = (int(n) for n in shape[:2])
    strides = [1]
    while max(rows, cols) // strides[-1] > min_level_px:
        strides.append(strides[-1] * 2)
    metadata = {"axes": "YX"}
    options = dict(tile=(tile_px, tile_px), compression="zlib", dtype=dtype, photometric="minisblack")
    if pixel_size_um:
        metadata.update(PhysicalSizeX=pixel_size_um, PhysicalSizeXUnit="µm", PhysicalSizeY=pixel_size_um, PhysicalSizeYUnit="µm")
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
        for level, stride in enumerate(strides):
            level_shape = (-(-rows // stride), -(-cols // stride))
            extra = {"subifds": len(strides) - 1, "metadata": metadata} if level == 0 else {"subfiletype": 1}
            if pixel_size_um:
                extra.update(resolution=(1e4 / (pixel_size_um * stride),) * 2, resolutionunit="CENTIMETER")
            tif.write(_compressed(_label_tiles(level_shape, stride, pieces, dtype, tile_px), dtype, tile_px), shape=level_shape, **options, **extra)
    return Path(path)


#: zlib-ng level of label tiles: level 1 is zlib-ng's "quick" strategy, as fast as level 2 on
#: label tiles but with 2 to 9 times larger files (the 40k benchmark slide's three label images:
#: 163 MB at level 1, 24 MB at level 2).
_LABEL_LEVEL = 2


def _compressed(tiles, dtype, tile_px: int, threads: int = 2):
    """Deflate each tile (zlib-ng at :data:`_LABEL_LEVEL`); the empty tile is compressed once.

    zlib-ng writes the same zlib stream as zlib and libdeflate, several
    times faster than libdeflate on label tiles (1024-px nucleus tiles:
    2.0 ms at level 2 against 11.5 ms for libdeflate at level 1, and about
    the same size). Tiles are filled
    in this thread and compressed in ``threads`` others (the codec releases
    the GIL), a few tiles ahead, in order.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    import imagecodecs

    encode = imagecodecs.zlibng_encode if imagecodecs.ZLIBNG.available else imagecodecs.deflate_encode
    empty = encode(np.zeros((tile_px, tile_px), dtype).tobytes(), _LABEL_LEVEL)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending = deque()
        for tile in tiles:
            pending.append(pool.submit(encode, tile, _LABEL_LEVEL) if tile is not None else None)
            if len(pending) > 2 * threads:
                done = pending.popleft()
                yield empty if done is None else done.result()
        while pending:
            done = pending.popleft()
            yield empty if done is None else done.result()


def _strided(start: int, stop: int, first: int, stride: int, n: int):
    """Slices (into a level tile, into a piece) of the full-resolution rows ``(first + k) * stride``, k < n, within [start, stop)."""
    k0 = max(0, -(-start // stride) - first)
    k1 = min(n, -(-stop // stride) - first)
    if k1 <= k0:
        return None
    local = (first + k0) * stride - start
    return slice(k0, k1), slice(local, local + (k1 - k0 - 1) * stride + 1, stride)


def _label_tiles(level_shape, stride: int, pieces, dtype, tile_px: int):
    """Tiles of one pyramid level in row-major order, each sampled from the pieces at every ``stride``-th pixel; None when empty."""
    for r0 in range(0, level_shape[0], tile_px):
        for c0 in range(0, level_shape[1], tile_px):
            tile = None
            for window, values, inside, offset in pieces:
                rows = _strided(window[0].start, window[0].stop, r0, stride, tile_px)
                cols = _strided(window[1].start, window[1].stop, c0, stride, tile_px)
                if rows is None or cols is None:
                    continue
                tile = np.zeros((tile_px, tile_px), dtype) if tile is None else tile
                owned = np.asarray(inside[rows[1], cols[1]])
                found = np.asarray(values[rows[1], cols[1]])
                if offset:
                    found = found.astype(dtype)
                    np.add(found, dtype.type(offset), out=found, where=found > 0)
                np.copyto(tile[rows[0], cols[0]], found, where=owned, casting="unsafe")
            yield tile


def _one_line(error) -> str:
    return " ".join(str(error).split())[:200] or type(error).__name__


def _umask() -> int:
    """The process's file-creation mask, read without changing it where the system tells it (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it; restored at once
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it is synced and renamed over ``path``.

    Readers never see a partial file: either the old file or the complete new one.
    The file gets the permissions the process's umask gives a new file (the
    temporary file is created private, mode 0600), so colleagues on a shared
    server can read a run as they can read any file its owner writes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@contextmanager
def atomic_write(path, mode="wb"):
    """Open a file handle whose content replaces ``path`` atomically when the block ends."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8", newline=None if "b" in mode else "") as handle:
            yield handle


def write_label_tiff(path, labels, *, pixel_size_um: float | None = None) -> Path:
    """Write a label image as a zlib-compressed TIFF (atomically), with its pixel size."""
    import tifffile

    kwargs = {}
    if pixel_size_um:
        per_cm = 1e4 / float(pixel_size_um)
        kwargs = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, np.asarray(labels), compression="zlib", photometric="minisblack", **kwargs)
    return Path(path)


def write_tables(directory, tables: dict, *, parquet=()) -> None:
    """Write DataFrames atomically as ``<name>.csv`` (and ``<name>.parquet`` for names in ``parquet``)."""
    directory = Path(directory)
    for name, frame in tables.items():
        with atomic_write(directory / f"{name}.csv", "w") as handle:
            frame.to_csv(handle, index=False)
        if name in parquet:
            with atomic_write(directory / f"{name}.parquet") as handle:
                frame.to_parquet(handle, index=False)


def flush_standard_streams() -> None:
    """Flush stdout and stderr before an exit that skips the interpreter's teardown; a closed or gone reader is ignored."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away (`| head`) or a closed stream
            pass


def write_json(path, data) -> Path:
    """Write JSON atomically (UTF-8, indented)."""
    with atomic_write(path, "w") as handle:
        json.dump(data, handle, indent=2, default=_json_default)
        handle.write("\n")
    return Path(path)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def sha256_file(path, chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()
