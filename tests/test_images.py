"""Bad and unusual inputs: each decodes correctly or fails with a clear ImageError."""
import io

import numpy as np
import pytest
from PIL import Image

from pipeline.io.images import ImageError, check_min_size, decode_image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def photo(sample_image) -> Image.Image:
    return Image.fromarray(sample_image)


def test_jpeg_roundtrip(photo):
    out = decode_image(encode(photo, "JPEG", quality=95))
    assert out.shape == (photo.height, photo.width, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - np.asarray(photo).astype(int)).mean() < 3


def test_empty_file():
    with pytest.raises(ImageError, match="empty file"):
        decode_image(b"")


def test_not_an_image():
    with pytest.raises(ImageError, match="not an image"):
        decode_image(b"hello, this is a text file\n" * 10)


def test_truncated_jpeg(photo):
    data = encode(photo, "JPEG")
    with pytest.raises(ImageError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2])


def test_decompression_bomb_rejected_before_decoding():
    data = encode(Image.new("L", (4000, 4000)), "PNG")
    with pytest.raises(ImageError, match="exceeds max_pixels"):
        decode_image(data, max_pixels=1_000_000)


def test_grayscale_becomes_three_equal_channels(photo):
    out = decode_image(encode(photo.convert("L"), "PNG"))
    assert out.shape[2] == 3 and np.array_equal(out[..., 0], out[..., 2])


def test_cmyk(photo):
    out = decode_image(encode(photo.convert("CMYK"), "JPEG", quality=95))
    assert out.shape == (photo.height, photo.width, 3)
    assert np.abs(out.astype(int) - np.asarray(photo).astype(int)).mean() < 8


def test_sixteen_bit_is_rescaled_not_clipped():
    ramp = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)  # 0..65535
    img = Image.fromarray(ramp)
    assert img.mode.startswith("I;16")
    out = decode_image(encode(img, "PNG"))
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert len(np.unique(out[..., 0])) > 200  # clipping would leave two values


def test_rgba_composited_on_white():
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red, fully transparent on the left half
    rgba[:, 10:, 3] = 255
    out = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 15]) == (255, 0, 0)


def test_palette(photo):
    out = decode_image(encode(photo.convert("P"), "PNG"))
    assert out.shape == (photo.height, photo.width, 3)


def test_exif_rotation_applied(photo):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = decode_image(encode(photo, "JPEG", exif=exif.tobytes()))
    assert out.shape == (photo.width, photo.height, 3)


def test_smaller_than_one_patch():
    with pytest.raises(ImageError, match="smaller than one 14px patch"):
        check_min_size(np.zeros((10, 300, 3), np.uint8), 14)
    check_min_size(np.zeros((14, 14, 3), np.uint8), 14)
