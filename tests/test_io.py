import numpy as np
import pytest
import tifffile
import cv2

from pellet_analysis.io import ImageReadError, atomic_write, read_image, write_label_tiff


def _rgb(h=40, w=50):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_pixel_size_from_tiff_resolution_tags(tmp_path):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, _rgb(), photometric="rgb", resolution=(1e4 / 0.37, 1e4 / 0.37), resolutionunit="CENTIMETER")
    image, px = read_image(path)
    assert image.shape == (40, 50, 3) and image.dtype == np.uint8
    assert px == pytest.approx(0.37, rel=1e-6)
    inch = tmp_path / "inch.tif"
    tifffile.imwrite(inch, _rgb(), photometric="rgb", resolution=(25400 / 0.5, 25400 / 0.5), resolutionunit="INCH")
    assert read_image(inch)[1] == pytest.approx(0.5, rel=1e-6)


def test_pixel_size_from_ome_metadata(tmp_path):
    path = tmp_path / "a.ome.tif"
    tifffile.imwrite(path, _rgb(), photometric="rgb", metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.25}, ome=True)
    image, px = read_image(path)
    assert image.shape == (40, 50, 3)
    assert px == pytest.approx(0.25)


def test_no_pixel_size_without_tags_png_or_jpeg(tmp_path):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, _rgb(), photometric="rgb")
    assert read_image(plain)[1] is None
    for name in ("a.png", "a.jpg"):
        cv2.imwrite(str(tmp_path / name), _rgb()[..., ::-1])
        image, px = read_image(tmp_path / name)
        assert px is None and image.shape == (40, 50, 3)
    # PNG is lossless: channel order must be RGB
    assert np.array_equal(read_image(tmp_path / "a.png")[0], _rgb())


def test_greyscale_rgba_16bit_and_palette_become_rgb(tmp_path):
    grey = tmp_path / "grey.tif"
    tifffile.imwrite(grey, _rgb()[..., 0])
    image, _ = read_image(grey)
    assert image.shape == (40, 50, 3) and np.array_equal(image[..., 0], image[..., 2])

    rgba = np.dstack([_rgb(), np.zeros((40, 50), np.uint8)])  # fully transparent -> white
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    assert (read_image(tmp_path / "rgba.tif")[0] == 255).all()

    deep = (_rgb().astype(np.uint16) * 257)
    tifffile.imwrite(tmp_path / "deep.tif", deep, photometric="rgb")
    image, _ = read_image(tmp_path / "deep.tif")
    assert image.dtype == np.uint16 and np.array_equal(image, deep)

    index = np.arange(40 * 50, dtype=np.uint8).reshape(40, 50) % 4
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, 1] = [65535, 0, 0]
    tifffile.imwrite(tmp_path / "pal.tif", index, photometric="palette", colormap=cmap)
    image, _ = read_image(tmp_path / "pal.tif")
    assert image.shape == (40, 50, 3)
    assert tuple(image[index == 1][0]) in ((255, 0, 0), (65535, 0, 0))


@pytest.mark.parametrize(
    "content, suffix, cause",
    [(b"", ".tif", "empty file"), (b"this is not an image", ".tif", "not a readable TIFF"), (b"\x89PNG\r\n\x1a\n garbage", ".png", "not a readable PNG")],
)
def test_bad_files_raise_one_line(tmp_path, content, suffix, cause):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert cause in str(info.value) and "\n" not in str(info.value)


def test_truncated_tiff_is_an_error(tmp_path):
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, _rgb(200, 200), photometric="rgb", compression="zlib")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError):
        read_image(path)


def test_label_tiff_round_trip_keeps_dtype_and_pixel_size(tmp_path):
    labels = np.arange(12, dtype=np.uint32).reshape(3, 4) * 100000
    path = write_label_tiff(tmp_path / "x" / "n.tif", labels, pixel_size_um=0.5)
    back = tifffile.imread(path)
    assert back.dtype == np.uint32 and np.array_equal(back, labels)
    with tifffile.TiffFile(path) as tif:
        from pellet_analysis.io import tiff_pixel_size_um

        assert tiff_pixel_size_um(tif) == pytest.approx(0.5)
    assert not list((tmp_path / "x").glob(".*part"))


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "result.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(path, "w") as handle:
            handle.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old\n"
    assert list(tmp_path.iterdir()) == [path]
