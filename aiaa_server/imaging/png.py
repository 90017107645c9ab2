"""PNG slices and masks of `/v1/mask2polygon` and `/v1/fixpolygon`, decoded and encoded with Pillow.

The size is checked from the IHDR chunk (the first 33 bytes) before Pillow parses anything: a 45-byte file
may declare 40000 × 40000 pixels. Colour images become grayscale luminance (ITU-R 601, rounded); 1/2/4-bit
grayscale keeps its raw sample values (0..2^bits-1) and 16-bit grayscale stays uint16.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

from aiaa_server.errors import InvalidImage, PayloadTooLarge
from aiaa_server.imaging.formats import PNG_MAGIC
from aiaa_server.imaging.limits import DEFAULT_LIMITS, DecodeLimits, check_png_pixels, check_shape

_IHDR_END = len(PNG_MAGIC) + 8 + 13  # signature, chunk length and type, then the 13-byte IHDR body
_SIXTEEN_BIT_GRAY = ("I;16", "I;16B", "I;16L", "I")
_SAMPLES = {0: 1, 2: 3, 3: 4, 4: 2, 6: 4}  # colour type → samples per decoded pixel (palette: RGB or RGBA)


def _ihdr(payload: bytes) -> tuple[int, int, int, int]:
    """(rows, columns, bit depth, colour type) from the IHDR chunk, which PNG requires to come first."""
    if not payload.startswith(PNG_MAGIC):
        raise InvalidImage("not a PNG file")
    if len(payload) < _IHDR_END or payload[len(PNG_MAGIC) + 4 : len(PNG_MAGIC) + 8] != b"IHDR":
        raise InvalidImage("PNG without a valid IHDR chunk")
    width, height, depth, colour = struct.unpack(">IIBB", payload[len(PNG_MAGIC) + 8 : len(PNG_MAGIC) + 18])
    return int(height), int(width), depth, colour


def png_shape(payload: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> tuple[int, int]:
    """(rows, columns) of a PNG from its header only, refused if over `limits.max_png_pixels`.

    Args:
        payload: the PNG file's bytes.
        limits: the bounds to apply (a caller allocates a mask of this shape).

    Raises:
        InvalidImage: not a PNG, or no IHDR chunk.
        PayloadTooLarge: more pixels than `limits.max_png_pixels` (`--max_png_pixels`).
    """
    rows, columns, _, _ = _ihdr(payload)
    check_png_pixels(rows, columns, limits)
    return rows, columns


def _open(payload: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(payload), formats=["PNG"])  # lazy: reads the header chunks only
    except Image.DecompressionBombError as exc:  # Pillow's own process-wide bound, below ours if raised
        raise PayloadTooLarge(f"PNG is too large for the image library: {exc}", limit="max_png_pixels") from exc
    except Exception as exc:
        raise InvalidImage(f"could not decode the PNG: {exc}") from exc
    return image


def _pixels(image: Image.Image, depth: int, colour: int) -> np.ndarray:
    """The decoded samples as [row, column] (grayscale) or [row, column, channel]."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    pixels = np.asarray(image)
    if image.mode in _SIXTEEN_BIT_GRAY:
        return pixels.astype(np.uint16, copy=False)
    if image.mode == "1":
        return pixels.astype(np.uint8)
    if colour == 0 and depth in (2, 4):  # Pillow scales low bit depths to 0..255; callers want the samples
        return (pixels // (255 // (2**depth - 1))).astype(np.uint8)
    return pixels


def decode_png(payload: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode a PNG into a 2D grayscale array, checking its declared size before decoding any pixel.

    Args:
        payload: the PNG file's bytes.
        limits: `max_png_pixels` bounds width × height; `max_voxels` / `max_bytes` bound the decoded array.

    Returns:
        Array [row, column]: uint8, or uint16 for 16-bit grayscale. Colour (RGB, RGBA, palette) becomes
        ITU-R 601 luminance rounded to the nearest integer; an alpha channel is dropped.

    Raises:
        InvalidImage: not a PNG, or corrupt / truncated image data.
        PayloadTooLarge: a declared size over the limits (the option to raise it is named).
    """
    rows, columns, depth, colour = _ihdr(payload)
    check_png_pixels(rows, columns, limits)
    check_shape((rows, columns), _SAMPLES.get(colour, 4) * (2 if depth == 16 else 1), limits, what="PNG image")
    with _open(payload) as image:
        if image.size != (columns, rows):
            raise InvalidImage("PNG header is inconsistent")
        try:
            image.load()
            pixels = _pixels(image, depth, colour)
        except Exception as exc:  # truncated or corrupt IDAT, bad palette index, ...
            raise InvalidImage(f"could not decode the PNG image data: {exc}") from exc
    if pixels.ndim == 2:
        return pixels
    if pixels.shape[2] < 3:  # gray + alpha
        return pixels[..., 0]
    luma = pixels[..., 0] * 0.299 + pixels[..., 1] * 0.587 + pixels[..., 2] * 0.114
    return np.round(luma).astype(pixels.dtype)


def encode_png(array: np.ndarray, level: int = 6) -> bytes:
    """Encode a 2D array as a grayscale PNG.

    Args:
        array: [row, column]; values are clipped to 0..255 (8-bit) or, when any value needs it or the
            dtype is uint16, to 0..65535 (16-bit).
        level: zlib compression level, 0-9.

    Returns:
        The PNG file's bytes.
    """
    image = np.asarray(array)
    if image.ndim != 2:
        raise ValueError(f"encode_png takes a 2D array, got shape {image.shape}")
    sixteen = image.size > 0 and (image.max() > 255 or image.min() < 0) or image.dtype == np.uint16
    pixels = np.clip(image, 0, 65535).astype(np.uint16) if sixteen else np.clip(image, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


__all__ = ["decode_png", "encode_png", "png_shape"]
