"""PNG decoding with Pillow: sizes checked from the header before decoding (security issue item 4), every colour
type decoded as before (luminance for colour, raw samples for low bit depths, uint16 kept)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from aiaa_server.errors import InvalidImage, PayloadTooLarge
from aiaa_server.imaging.formats import PNG_MAGIC
from aiaa_server.imaging.limits import DecodeLimits
from aiaa_server.imaging.png import decode_png, encode_png, png_shape


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_claiming(width: int, height: int) -> bytes:
    """45 bytes: signature, an IHDR of `width` × `height` 8-bit grayscale, an empty IDAT. No pixels at all."""
    return PNG_MAGIC + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IDAT", b"")


def pillow_png(array: np.ndarray, mode: str | None = None, **save: object) -> bytes:
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save)
    return buffer.getvalue()


def test_40000_squared_header_is_refused_before_decoding() -> None:
    bomb = png_header_claiming(40000, 40000)
    assert len(bomb) == 45
    with pytest.raises(PayloadTooLarge, match="--max_png_pixels") as refused:
        decode_png(bomb)
    assert refused.value.details["limit"] == "max_png_pixels"
    with pytest.raises(PayloadTooLarge, match="--max_png_pixels"):
        png_shape(bomb)  # /v1/fixpolygon allocates a mask of this shape


def test_the_limit_is_per_call_and_exact() -> None:
    payload = encode_png(np.zeros((20, 30), np.uint8))
    assert decode_png(payload, limits=DecodeLimits(max_png_pixels=600)).shape == (20, 30)
    with pytest.raises(PayloadTooLarge, match="600"):
        decode_png(payload, limits=DecodeLimits(max_png_pixels=599))
    assert decode_png(payload).shape == (20, 30)  # nothing global was changed


def test_a_header_within_the_limit_but_without_pixels_is_a_400() -> None:
    with pytest.raises(InvalidImage):
        decode_png(png_header_claiming(300, 200))
    with pytest.raises(InvalidImage):
        decode_png(png_header_claiming(0, 5))
    with pytest.raises(InvalidImage, match="not a PNG"):
        decode_png(b"GIF89a" + b"\0" * 40)
    with pytest.raises(InvalidImage, match="IHDR"):
        decode_png(PNG_MAGIC + chunk(b"IEND", b""))


def test_rgb_and_rgba_become_rounded_itu601_luminance() -> None:
    rgb = np.random.default_rng(4).integers(0, 256, size=(9, 11, 3)).astype(np.uint8)
    expected = np.round(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114).astype(np.uint8)
    np.testing.assert_array_equal(decode_png(pillow_png(rgb)), expected)
    rgba = np.concatenate([rgb, np.full((9, 11, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(decode_png(pillow_png(rgba)), expected)
    palette = pillow_png(rgb, mode="P")
    decoded = decode_png(palette)
    assert decoded.shape == (9, 11) and decoded.dtype == np.uint8


def test_gray_alpha_keeps_the_gray_channel() -> None:
    gray = np.arange(30, dtype=np.uint8).reshape(5, 6)
    np.testing.assert_array_equal(decode_png(pillow_png(gray, mode="LA")), gray)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_low_bit_depth_grayscale_keeps_its_sample_values(bits: int) -> None:
    samples = np.random.default_rng(bits).integers(0, 2**bits, size=(6, 9)).astype(np.uint8)
    if bits == 1:
        payload = pillow_png(samples.astype(bool))
    else:
        payload = pillow_png((samples * (255 // (2**bits - 1))).astype(np.uint8), bits=bits)
    assert payload[24] == bits  # IHDR bit depth: really a low-bit-depth file
    np.testing.assert_array_equal(decode_png(payload), samples)


@pytest.mark.parametrize("values", [np.array([[0, 1, 2], [255, 7, 0]], dtype=np.uint8),
                                    np.array([[0, 1000], [65535, 3]], dtype=np.uint16)])
def test_encode_writes_8_or_16_bit_grayscale(values: np.ndarray) -> None:
    payload = encode_png(values)
    assert payload[24:26] == bytes([values.dtype.itemsize * 8, 0])  # IHDR: bit depth, colour type 0 (gray)
    assert png_shape(payload) == values.shape
    decoded = decode_png(payload)
    assert decoded.dtype == values.dtype
    np.testing.assert_array_equal(decoded, values)


def test_encode_clips_and_switches_to_16_bit_when_values_need_it() -> None:
    np.testing.assert_array_equal(decode_png(encode_png(np.array([[-5, 300]]))), [[0, 300]])
    small = encode_png(np.array([[3, 200]], np.int64))
    assert small[24] == 8 and decode_png(small).tolist() == [[3, 200]]
    with pytest.raises(ValueError, match="2D"):
        encode_png(np.zeros((2, 2, 2)))


def test_truncated_image_data_is_a_400() -> None:
    payload = encode_png(np.random.default_rng(5).integers(0, 255, size=(64, 64)).astype(np.uint8), level=0)
    with pytest.raises(InvalidImage):
        decode_png(payload[: len(payload) // 2])
