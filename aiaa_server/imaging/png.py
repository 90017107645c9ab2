"""A small PNG codec (zlib + numpy): enough for the 2D slices and masks of `/v1/fixpolygon`.

Decodes non-interlaced PNGs of every colour type at bit depth 8 or 16 (and 1/2/4-bit grayscale/palette);
colour images become grayscale luminance. Encodes 8/16-bit grayscale.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from aiaa_server.errors import InvalidImage
from aiaa_server.imaging.formats import PNG_MAGIC

_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type → samples per pixel


def _chunks(payload: bytes) -> list[tuple[bytes, bytes]]:
    if not payload.startswith(PNG_MAGIC):
        raise InvalidImage("not a PNG file")
    chunks, offset = [], len(PNG_MAGIC)
    while offset + 8 <= len(payload):
        (length,) = struct.unpack(">I", payload[offset : offset + 4])
        kind = payload[offset + 4 : offset + 8]
        chunks.append((kind, payload[offset + 8 : offset + 8 + length]))
        offset += 12 + length
        if kind == b"IEND":
            break
    return chunks


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _unfilter(raw: bytes, height: int, stride: int, bpp: int) -> np.ndarray:
    data = np.frombuffer(raw, dtype=np.uint8)
    if data.size < height * (stride + 1):
        raise InvalidImage("PNG image data is truncated")
    rows = data[: height * (stride + 1)].reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.int32)
    previous = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        if kind == 0:
            current = line
        elif kind == 1:  # Sub: running sum per byte lane
            current = np.cumsum(np.pad(line, (0, -stride % bpp)).reshape(-1, bpp), axis=0).ravel()[:stride] & 0xFF
        elif kind == 2:
            current = (line + previous) & 0xFF
        elif kind in (3, 4):  # Average, Paeth: each pixel depends on the one decoded before it
            current = np.zeros(stride, dtype=np.int32)
            for x in range(0, stride, bpp):
                left = current[x - bpp : x] if x else np.zeros(min(bpp, stride), dtype=np.int32)
                up = previous[x : x + bpp]
                if kind == 3:
                    current[x : x + bpp] = (line[x : x + bpp] + (left[: len(up)] + up) // 2) & 0xFF
                else:
                    up_left = previous[x - bpp : x] if x else np.zeros(min(bpp, stride), dtype=np.int32)
                    current[x : x + bpp] = (line[x : x + bpp] + _paeth(left[: len(up)], up, up_left[: len(up)])) & 0xFF
        else:
            raise InvalidImage(f"PNG uses unknown filter type {kind}")
        out[y] = current
        previous = current
    return out.astype(np.uint8)


def decode_png(payload: bytes) -> np.ndarray:
    """PNG bytes → 2D array [row, column] (grayscale; colour converted to luminance)."""
    chunks = _chunks(payload)
    header = next((body for kind, body in chunks if kind == b"IHDR"), None)
    if header is None or len(header) < 13:
        raise InvalidImage("PNG without a valid IHDR chunk")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header[:13])
    if colour not in _CHANNELS or interlace:
        raise InvalidImage("interlaced or unknown-colour-type PNGs are not supported")
    channels = _CHANNELS[colour]
    if depth not in (8, 16) and not (channels == 1 and depth in (1, 2, 4)):
        raise InvalidImage(f"PNG bit depth {depth} is not supported for colour type {colour}")
    try:
        raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    except zlib.error as exc:
        raise InvalidImage(f"corrupt PNG image data: {exc}") from exc
    stride = (width * channels * depth + 7) // 8
    rows = _unfilter(raw, height, stride, max(1, channels * depth // 8))
    if depth < 8:
        bits = np.unpackbits(rows, axis=1).reshape(height, -1, depth)
        weights = 1 << np.arange(depth - 1, -1, -1)
        pixels = (bits * weights).sum(axis=2)[:, :width].astype(np.uint8)[..., None]
    elif depth == 16:
        pixels = rows.view(">u2").astype(np.uint16).reshape(height, width, channels)
    else:
        pixels = rows.reshape(height, width, channels)
    if colour == 3:
        palette = next((body for kind, body in chunks if kind == b"PLTE"), b"")
        rgb = np.frombuffer(palette, dtype=np.uint8).reshape(-1, 3)
        if rgb.size == 0 or pixels.max() >= len(rgb):
            raise InvalidImage("PNG palette is missing or too short")
        pixels = rgb[pixels[..., 0]]
    if pixels.shape[2] >= 3:  # ITU-R 601 luma, like most viewers
        luma = pixels[..., 0] * 0.299 + pixels[..., 1] * 0.587 + pixels[..., 2] * 0.114
        return np.round(luma).astype(pixels.dtype)
    return pixels[..., 0]


def png_shape(payload: bytes) -> tuple[int, int]:
    """(rows, columns) from the header only."""
    header = next((body for kind, body in _chunks(payload) if kind == b"IHDR"), None)
    if header is None or len(header) < 8:
        raise InvalidImage("PNG without a valid IHDR chunk")
    width, height = struct.unpack(">II", header[:8])
    return int(height), int(width)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def encode_png(array: np.ndarray, level: int = 6) -> bytes:
    """2D array [row, column] → grayscale PNG (16-bit if the values need it, else 8-bit)."""
    image = np.asarray(array)
    if image.ndim != 2:
        raise ValueError(f"encode_png takes a 2D array, got shape {image.shape}")
    sixteen = image.size > 0 and (image.max() > 255 or image.min() < 0) or image.dtype == np.uint16
    pixels = np.clip(image, 0, 65535).astype(">u2") if sixteen else np.clip(image, 0, 255).astype(np.uint8)
    height, width = image.shape
    rows = np.concatenate([np.zeros((height, 1), dtype=np.uint8), pixels.view(np.uint8).reshape(height, -1)], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 16 if sixteen else 8, 0, 0, 0, 0)
    return b"".join([PNG_MAGIC, _chunk(b"IHDR", header), _chunk(b"IDAT", zlib.compress(rows.tobytes(), level)),
                     _chunk(b"IEND", b"")])


__all__ = ["decode_png", "encode_png", "png_shape"]
