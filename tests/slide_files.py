"""Scanner files the tests write themselves, one per format, each with its pixel size where that format keeps it.

``levels`` is a list of RGB uint8 arrays, full resolution first (or, for the
large files of the memory tests, a list of ``(shape, tile)`` pairs: every
tile of that level is ``tile``, so nothing full-size is ever held).

tifffile writes SVS, SCN, QPTIFF and BIF with the tags and metadata their
readers key on (tifffile's and ours): the Aperio description with ``MPP``, the
Leica XML with the macro image first, the PerkinElmer-QPI XML with
``PixelSizeMicrons``, the Ventana XMP ``iScan`` element with ``ScanRes``.
Pixels are deflate-compressed tiles, where scanners mostly write JPEG.

NDPI: tifffile cannot write one, so :func:`write_ndpi` writes a classic TIFF
with the NDPI tags (FileFormat, Magnification, Make) and then lays its IFDs
out the NDPI way (64-bit next-IFD offsets and a high word per tag, which
tifffile parses for any ``.ndpi`` file). Its levels are either tiled and
lossless, or, as a scanner writes them, one JPEG strip each with restart
markers and ``McuStarts`` (OpenCV's encoder; 4:4:4 where scanners subsample).

CZI is written with pylibCZIrw in tiles, its pixel size in metres as ZEN
writes it. OpenSlide recognises a file by its content, so a generic tiled
pyramidal TIFF saved under an OpenSlide-only ending goes through the whole
OpenSlide path (``read_region``, level downsamples, ``openslide.mpp-x``);
what is MIRAX-specific in a real ``.mrxs`` is OpenSlide's own code.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import tifffile

TILE = 256


def _tiles(level):
    """The data and shape tifffile writes for one level: the array, or the same tile repeated."""
    if isinstance(level, np.ndarray):
        return level, {}
    shape, tile = level
    n = -(-shape[0] // TILE) * -(-shape[1] // TILE)
    return (tile for _ in range(n)), {"shape": (*shape, 3), "dtype": np.uint8}


def _shape(level):
    return level.shape[:2] if isinstance(level, np.ndarray) else tuple(level[0])


def _write_levels(tif, levels, first: dict, rest: dict | None = None, per_level=None):
    for k, level in enumerate(levels):
        data, extra = _tiles(level)
        options = dict(first if k == 0 else (rest or first))
        if per_level:
            options.update(per_level(k))
        tif.write(data, tile=(TILE, TILE), photometric="rgb", compression="zlib", metadata=None, **extra, **options)


def _thumbnail(levels, size=64):
    rows, cols = _shape(levels[-1])
    return np.full((min(size, rows), min(size, cols), 3), 230, np.uint8)


def write_ome(path, levels, pixel_size_um: float) -> Path:
    """Pyramidal OME-TIFF (sub-IFDs), the twin every scanner file is compared with."""
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        for k, level in enumerate(levels):
            data, extra = _tiles(level)
            options = {"subifds": len(levels) - 1, "metadata": {"axes": "YXS", "PhysicalSizeX": pixel_size_um, "PhysicalSizeY": pixel_size_um}} if k == 0 else {"subfiletype": 1}
            tif.write(data, tile=(TILE, TILE), photometric="rgb", compression="zlib", **extra, **options)
    return Path(path)


def write_generic(path, levels, pixel_size_um: float) -> Path:
    """Generic tiled pyramidal TIFF (OpenSlide's ``generic-tiff``): levels as pages, resolution in pixels per centimetre."""
    resolution = dict(resolution=(1e4 / pixel_size_um,) * 2, resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path) as tif:
        _write_levels(tif, levels, resolution, {**resolution, "subfiletype": 1})
    return Path(path)


def write_svs(path, levels, pixel_size_um: float) -> Path:
    """Aperio SVS: baseline with ``MPP`` in its description, thumbnail, lower levels; no resolution tags."""
    rows, cols = _shape(levels[0])
    description = f"Aperio Image Library v12.0.15 \r\n{cols}x{rows} [0,0 {cols}x{rows}] ({TILE}x{TILE}) JPEG/RGB Q=70|AppMag = 20|MPP = {pixel_size_um}"
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        _write_levels(tif, levels[:1], {"description": description})
        tif.write(_thumbnail(levels), photometric="rgb", metadata=None, description="Aperio Image Library v12.0.15 thumbnail")
        _write_levels(tif, levels[1:], {"description": "Aperio Image Library v12.0.15 level"})
    return Path(path)


def write_scn(path, levels, pixel_size_um: float) -> Path:
    """Leica SCN: the macro image first, then the scan's levels; pixel size only in the XML (view nm over pixels)."""
    rows, cols = _shape(levels[0])
    macro = _thumbnail(levels)
    view = f'<view sizeX="{round(cols * pixel_size_um * 1000)}" sizeY="{round(rows * pixel_size_um * 1000)}" offsetX="0" offsetY="0" spacingZ="0"/>'
    dims = "".join(f'<dimension sizeX="{_shape(lv)[1]}" sizeY="{_shape(lv)[0]}" r="{k}" ifd="{k + 1}"/>' for k, lv in enumerate(levels))
    xml = (
        '<?xml version="1.0" encoding="utf-8"?>\n<scn xmlns="http://www.leica-microsystems.com/scn/2010/10/01">'
        f'<collection name="slide" uuid="c" sizeX="{round(cols * pixel_size_um * 1000)}" sizeY="{round(rows * pixel_size_um * 1000)}">'
        f'<image name="macro" uuid="m"><pixels sizeX="{macro.shape[1]}" sizeY="{macro.shape[0]}">'
        f'<dimension sizeX="{macro.shape[1]}" sizeY="{macro.shape[0]}" r="0" ifd="0"/></pixels>{view}</image>'
        f'<image name="main" uuid="i"><pixels sizeX="{cols}" sizeY="{rows}">{dims}</pixels>{view}'
        "<scanSettings><objectiveSettings><objective>20</objective></objectiveSettings>"
        "<illuminationSettings><illuminationSource>brightfield</illuminationSource></illuminationSettings></scanSettings>"
        "</image></collection></scn>"
    )
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(macro, photometric="rgb", metadata=None, description=xml)
        _write_levels(tif, levels, {}, {"subfiletype": 1})
    return Path(path)


def write_qptiff(path, levels, pixel_size_um: float) -> Path:
    """Akoya QPTIFF (brightfield): full resolution, thumbnail, reduced levels, each with its PerkinElmer-QPI XML."""

    def xml(kind):
        return (
            '<?xml version="1.0" encoding="utf-8"?><PerkinElmer-QPI-ImageDescription><DescriptionVersion>2</DescriptionVersion>'
            f"<ImageType>{kind}</ImageType><Name>RGB</Name><ScanProfile><root><PixelSizeMicrons>{pixel_size_um}</PixelSizeMicrons>"
            "<Magnification>20</Magnification></root></ScanProfile></PerkinElmer-QPI-ImageDescription>"
        )

    common = {"software": "PerkinElmer-QPI"}
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        _write_levels(tif, levels[:1], {**common, "description": xml("FullResolution")})
        tif.write(_thumbnail(levels), photometric="rgb", metadata=None, description=xml("Thumbnail"), **common)
        _write_levels(tif, levels[1:], {**common, "description": xml("ReducedResolution")})
    return Path(path)


def write_bif(path, levels, pixel_size_um: float, *, overlap_px: int = 0) -> Path:
    """Ventana BIF: label and thumbnail pages, then ``level=k`` pages; ``ScanRes`` in the XMP's ``iScan`` element."""
    xmp = (
        f'<?xml version="1.0" encoding="utf-8"?><Metadata><iScan ScanRes="{pixel_size_um}" Magnification="20"/>'
        f'<EncodeInfo Ver="2"><SlideStitchInfo><ImageInfo><TileJointInfo Tile1="1" Tile2="2" Direction="RIGHT" '
        f'OverlapX="{overlap_px}" OverlapY="0"/></ImageInfo></SlideStitchInfo></EncodeInfo></Metadata>'
    ).encode()
    common = {"software": "ScanOutputManager 1.1.0.15854"}
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(_thumbnail(levels), photometric="rgb", metadata=None, description="Label_Image", extratags=[(700, 1, None, xmp, True)], **common)
        tif.write(_thumbnail(levels), photometric="rgb", metadata=None, description="Thumbnail", **common)
        _write_levels(tif, levels, common, per_level=lambda k: {"description": f"level={k} mag={20 / 2**k:g} quality=95"})
    return Path(path)


def write_ndpi(path, levels, pixel_size_um: float, *, jpeg: bool = False) -> Path:
    """Hamamatsu NDPI-style: NDPI tags and resolution in pixels per centimetre, IFDs laid out as NDPI lays them.

    ``jpeg``: each level is, as a scanner writes it, one JPEG strip with
    restart markers and the ``McuStarts`` tag (tifffile reads each restart
    interval as a tile); every level's sides must then be multiples of 8.
    Otherwise each level is tiled and deflate-compressed (lossless).
    """
    path = Path(path)
    classic = path.with_suffix(".classic.tif")

    def ndpi_tags(k):
        factor = _shape(levels[0])[1] / _shape(levels[k])[1]
        return {
            "resolution": (1e4 / (pixel_size_um * factor),) * 2,
            "resolutionunit": "CENTIMETER",
            "extratags": [
                (271, 2, None, "Hamamatsu", True),  # Make
                (272, 2, None, "NanoZoomer", True),  # Model
                (65420, 4, 1, 1, True),  # FileFormat
                (65421, 11, 1, 20.0 / factor, True),  # Magnification (macro: -1)
                (65422, 9, 1, 0, True),  # XOffsetFromSlideCentre (nm)
                (65423, 9, 1, 0, True),  # YOffsetFromSlideCentre (nm)
            ],
        }

    with tifffile.TiffWriter(classic) as tif:
        if jpeg:
            for k, level in enumerate(levels):
                strip, starts = _restart_jpeg(level)
                options = ndpi_tags(k)
                options["extratags"] = options["extratags"] + [(65426, 4, len(starts), starts, True)]  # McuStarts
                tif.write(iter([strip]), shape=level.shape, dtype=np.uint8, photometric="rgb", compression="jpeg", rowsperstrip=level.shape[0], metadata=None, **options)
        else:
            _write_levels(tif, levels, {}, per_level=ndpi_tags)
        macro = _thumbnail(levels)
        extra = ndpi_tags(0)["extratags"][:4] + [(65421, 11, 1, -1.0, True)]
        tif.write(macro, photometric="rgb", metadata=None, extratags=extra)
    data = bytearray(classic.read_bytes())
    classic.unlink()
    path.write_bytes(_ndpi_layout(data))
    return path


def _restart_jpeg(rgb: np.ndarray, quality: int = 92, max_interval: int = 64):
    """One JPEG of ``rgb`` (4:4:4, 8-px MCUs) restarting every k MCUs, k dividing a row's MCUs; and where each interval starts."""
    import cv2

    rows, cols = rgb.shape[:2]
    assert rows % 8 == 0 and cols % 8 == 0, "NDPI strips here need sides that are multiples of the 8-px MCU"
    interval = max(k for k in range(1, max_interval + 1) if (cols // 8) % k == 0)  # a restart interval never wraps a row
    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_RST_INTERVAL, interval, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, buffer = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), params)
    assert ok
    data = buffer.tobytes()
    sos = data.index(b"\xff\xda")
    starts = [sos + 2 + struct.unpack(">H", data[sos + 2 : sos + 4])[0]]  # the first interval starts after the scan header
    i = starts[0]
    while (i := data.find(b"\xff", i)) >= 0 and i + 1 < len(data):
        if 0xD0 <= data[i + 1] <= 0xD7:  # RSTn: the next interval starts after it
            starts.append(i + 2)
        i += 2 if data[i + 1] != 0xFF else 1
    assert len(starts) == (rows // 8) * (cols // 8) // interval
    return data, np.asarray(starts, np.uint32)


def _ndpi_layout(data: bytearray) -> bytes:
    """A classic little-endian TIFF with its IFDs rewritten at its end in NDPI's layout.

    NDPI keeps classic 12-byte tag entries but a 64-bit first-IFD offset in
    the header, a 64-bit next-IFD offset after each IFD's entries and then
    the high 32 bits of every entry's value. Tag data stays where it was.
    """
    assert data[:4] == b"II*\x00"
    offset = struct.unpack_from("<I", data, 4)[0]
    assert offset == 8, "the first IFD must be right after the header: the 64-bit header offset overwrites it"
    ifds = []
    while offset:
        n = struct.unpack_from("<H", data, offset)[0]
        ifds.append((n, bytes(data[offset + 2 : offset + 2 + 12 * n])))
        offset = struct.unpack_from("<I", data, offset + 2 + 12 * n)[0]
    if len(data) % 2:
        data += b"\0"
    position = len(data)
    struct.pack_into("<Q", data, 4, position)
    for k, (n, entries) in enumerate(ifds):
        size = 2 + 12 * n + 8 + 4 * n
        following = position + size if k < len(ifds) - 1 else 0
        data += struct.pack("<H", n) + entries + struct.pack("<Q", following) + bytes(4 * n)
        position += size
    return bytes(data)


def write_czi(path, levels, pixel_size_um: float) -> Path:
    """Zeiss CZI of the full resolution (pylibCZIrw writes no pyramid), zstd tiles; pixel size in metres."""
    from pylibCZIrw import czi

    level = levels[0]
    rows, cols = _shape(level)
    with czi.create_czi(str(path), exist_ok=True, compression_options="zstd0:ExplicitLevel=1") as writer:
        for r0 in range(0, rows, 1024):
            for c0 in range(0, cols, 1024):
                if isinstance(level, np.ndarray):
                    tile = level[r0 : r0 + 1024, c0 : c0 + 1024]
                else:
                    tile = np.tile(level[1], (4, 4, 1))[: min(1024, rows - r0), : min(1024, cols - c0)]
                writer.write(np.ascontiguousarray(tile[..., ::-1]), location=(c0, r0))  # libCZI's colour order is B, G, R
        # ZEN stores metres per pixel; pylibCZIrw passes the number through
        writer.write_metadata("section", scale_x=pixel_size_um * 1e-6, scale_y=pixel_size_um * 1e-6)
    return Path(path)


WRITERS = {
    ".svs": write_svs,
    ".ndpi": write_ndpi,
    ".scn": write_scn,
    ".qptiff": write_qptiff,
    ".bif": write_bif,
    ".mrxs": write_generic,  # through OpenSlide (see the module's docstring)
    ".czi": write_czi,
}
