"""Decoding real image files of every PIL mode, and describing the files that fail."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from kedro_torch.pytorch.images import check_file, decode
from tests.image_files import (
    jpeg_bytes,
    write_empty_file,
    write_text_as_jpeg,
    write_truncated_jpeg,
)


def saved(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def pixel(data: bytes, channels: int) -> list[int]:
    """The top-left pixel after decoding to 4x4 pixels."""
    pixels, _ = decode(data, 4, channels)
    assert pixels.shape == (channels, 4, 4)
    assert pixels.dtype == np.uint8
    return pixels[:, 0, 0].tolist()


def uniform(mode: str, value, fmt: str) -> bytes:
    return saved(Image.new(mode, (4, 4), value), fmt)


def palette_image(transparent: bool) -> bytes:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    return saved(image, "PNG", **({"transparency": 0} if transparent else {}))


# (file bytes, expected pixel as RGB, expected pixel as grey)
MODES = {
    "L": (uniform("L", 100, "PNG"), [100, 100, 100], [100]),
    "1": (uniform("1", 1, "PNG"), [255, 255, 255], [255]),
    "LA opaque": (uniform("LA", (30, 255), "PNG"), [30, 30, 30], [30]),
    "LA transparent": (uniform("LA", (30, 0), "PNG"), [255, 255, 255], [255]),
    "P": (palette_image(transparent=False), [255, 0, 0], [76]),
    "P transparent": (palette_image(transparent=True), [255, 255, 255], [255]),
    "RGB": (uniform("RGB", (10, 20, 30), "PNG"), [10, 20, 30], [18]),
    "RGBA opaque": (uniform("RGBA", (10, 20, 30, 255), "PNG"), [10, 20, 30], [18]),
    # Half-transparent red over white: (255, 128, 128) within rounding.
    "RGBA half": (uniform("RGBA", (255, 0, 0, 128), "PNG"), [255, 127, 127], [165]),
    "RGBA transparent": (uniform("RGBA", (255, 0, 0, 0), "PNG"), [255, 255, 255], [255]),
    "CMYK": (uniform("CMYK", (0, 255, 255, 0), "TIFF"), [255, 0, 0], [76]),
    # 16 and 32 bits are scaled to 8 bits: 32896 / 257 = 128, not clipped to 255.
    "I;16": (saved(Image.fromarray(np.full((4, 4), 32896, np.uint16)), "PNG"),
             [128, 128, 128], [128]),
    "I;16 dark": (saved(Image.fromarray(np.full((4, 4), 1000, np.uint16)), "TIFF"),
                  [4, 4, 4], [4]),
    "I": (saved(Image.fromarray(np.full((4, 4), 32896, np.int32)), "TIFF"), [128, 128, 128],
          [128]),
}


@pytest.mark.parametrize("name", list(MODES))
def test_every_mode_converts_to_rgb_and_grey(name):
    data, rgb, grey = MODES[name]
    assert Image.open(io.BytesIO(data)).mode == name.split()[0]
    assert pixel(data, 3) == pytest.approx(rgb, abs=1)
    assert pixel(data, 1) == pytest.approx(grey, abs=1)


def test_32_bit_values_beyond_16_bits_scale_by_the_image_maximum():
    values = np.array([[0, 500_000], [1_000_000, 250_000]], dtype=np.int32)
    pixels, mode = decode(saved(Image.fromarray(values), "TIFF"), 2, 1)
    assert mode == "I"
    assert pixels[0].tolist() == [[0, 128], [255, 64]]


def test_jpeg_is_decoded_at_reduced_scale_to_the_requested_size():
    pixels, mode = decode(jpeg_bytes(size=256), 32, 3)
    assert mode == "RGB"
    assert pixels.shape == (3, 32, 32)


def test_exif_orientation_is_applied():
    image = np.zeros((16, 16), dtype=np.uint8)
    image[:, :4] = 255  # a white left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = saved(Image.fromarray(image), "JPEG", exif=exif, quality=95)
    pixels, _ = decode(data, 16, 1)
    assert pixels[0, :4].mean() > 200  # the left edge is now the top edge
    assert pixels[0, 8:, :].mean() < 50


def test_a_good_file_is_hashed_summed_and_kept_on_request(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (4, 4), (255, 0, 10)).save(path)
    check = check_file(str(path), 4, 3, keep_pixels=True)
    assert check.reason is None
    assert check.mode == "RGB"
    assert len(check.content_hash) == 32
    assert check.pixels.shape == (3, 4, 4)
    assert check.pixel_sum.tolist() == [255 * 16, 0, 10 * 16]
    assert check.pixel_sumsq.tolist() == [255**2 * 16, 0, 100 * 16]
    assert check_file(str(path), 4, 3, keep_pixels=False).pixels is None


@pytest.mark.parametrize(
    ("write", "reason"),
    [
        (write_truncated_jpeg, "cannot decode: image file is truncated"),
        (write_empty_file, "empty file (0 bytes)"),
        (write_text_as_jpeg, "not an image"),
    ],
)
def test_a_broken_file_is_described_not_raised(tmp_path, write, reason):
    check = check_file(str(write(tmp_path / "broken.jpg")), 8, 3, keep_pixels=True)
    assert check.reason.startswith(reason)
    assert check.pixels is None
    assert not check.missing


def test_a_missing_file_is_marked_missing(tmp_path):
    check = check_file(str(tmp_path / "gone.png"), 8, 3, keep_pixels=False)
    assert check.missing
    assert check.reason == "no file at this path"


@pytest.mark.parametrize("size", [37, 150])
def test_large_images_resize_like_pil(size):
    """Larger images take torchvision's resize, smaller ones PIL's: same pixels."""
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (120, 200, 3), dtype=np.uint8))
    pixels, _ = decode(saved(image, "PNG"), size, 3)
    expected = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))
    assert np.abs(pixels.transpose(1, 2, 0).astype(int) - expected).max() <= 1
