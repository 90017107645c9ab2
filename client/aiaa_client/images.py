"""Image inputs and outputs. numpy and nibabel are imported lazily: JSON-only calls need neither."""

from __future__ import annotations

import gzip
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

# A file path, or (array indexed [i, j, k], 4x4 voxel-to-RAS affine) as nibabel uses them.
ArrayImage = tuple["np.ndarray", "np.ndarray"]
ImageInput = str | os.PathLike | ArrayImage


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"this call needs {module}: pip install {module}") from exc


def is_array_input(image: object) -> bool:
    return isinstance(image, tuple) and len(image) == 2 and hasattr(image[0], "shape")


def nifti_image(array: np.ndarray, affine: np.ndarray, like: Any = None) -> Any:
    """A Nifti1Image whose qform and sform both hold `affine` (what Slicer and ITK read)."""
    nib = _require("nibabel")
    np_ = _require("numpy")
    array = np_.asarray(array)
    if array.dtype == np_.bool_:
        array = array.astype(np_.uint8)
    if array.dtype == np_.float16 or array.dtype == np_.int64 or array.dtype == np_.uint64:
        array = array.astype(np_.float32 if array.dtype == np_.float16 else np_.int32)
    header = like.header.copy() if like is not None else None
    image = nib.Nifti1Image(array, np_.asarray(affine, dtype=float), header=header)
    if header is not None:
        image.header.set_data_dtype(array.dtype)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return image


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray, like: Any = None) -> Path:
    _require("nibabel").save(nifti_image(array, affine, like), str(path))
    return path


@contextmanager
def image_file(image: ImageInput) -> Iterator[Path]:
    """A path to upload: the caller's file as is, or an array written to a temporary .nii.gz."""
    if not is_array_input(image):
        path = Path(os.fspath(image))  # type: ignore[arg-type]
        if not path.is_file():
            raise FileNotFoundError(f"no such image file: {path}")
        yield path
        return
    array, affine = image  # type: ignore[misc]
    with tempfile.TemporaryDirectory(prefix="aiaa-client-") as folder:
        yield save_nifti(Path(folder) / "image.nii.gz", array, affine)


def load_nifti(path: str | os.PathLike) -> Any:
    return _require("nibabel").load(os.fspath(path))


def nifti_from_bytes(data: bytes) -> Any:
    nib = _require("nibabel")
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return nib.Nifti1Image.from_bytes(data)


def array_and_affine(data: bytes) -> ArrayImage:
    """Decode a NIfTI result (plain or gzipped) into (array, affine)."""
    image = nifti_from_bytes(data)
    return _require("numpy").asanyarray(image.dataobj), image.affine


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    np_ = _require("numpy")
    norms = np_.linalg.norm(np_.asarray(affine, dtype=float)[:3, :3], axis=0)
    return float(norms[0]), float(norms[1]), float(norms[2])
