"""The phantom value type, its organ labels, and NIfTI output."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Label value of every organ present in :attr:`Phantom.labels` (0 = background
#: / unlabelled tissue such as fat, muscle, bowel, lung, ribs).
ORGAN_LABELS: dict[str, int] = {
    "spleen": 1,
    "liver": 2,
    "left_kidney": 3,
    "right_kidney": 4,
    "aorta": 5,
    "spine": 6,
    "stomach": 7,
    "inferior_vena_cava": 8,
    "pancreas": 9,
}


@dataclass(frozen=True)
class Phantom:
    """A synthetic CT volume and its label map.

    Attributes:
        image: float32 CT values in Hounsfield units, indexed ``[i, j, k]``
            (NIfTI voxel order).
        labels: uint8 label map of the same shape, values from
            :data:`ORGAN_LABELS` (0 = background).
        affine: 4x4 float64 voxel -> RAS millimetre matrix (NIfTI convention).
    """

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three array axes."""
        norms = np.linalg.norm(np.asarray(self.affine, dtype=np.float64)[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(I, J, K)``."""
        return tuple(int(s) for s in self.image.shape)  # type: ignore[return-value]


def save_nifti(phantom: Phantom, path: str | Path, labels: bool = False) -> Path:
    """Write the phantom image (int16 HU) or its label map (uint8) as NIfTI.

    The phantom affine is stored as both qform and sform (code 1, scanner); parent directories are created.

    Args:
        phantom: the phantom to write.
        path: output file (``.nii`` or ``.nii.gz``).
        labels: write the label map instead of the image.

    Returns:
        The written path.
    """
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if labels:
        data = np.asarray(phantom.labels, dtype=np.uint8)
    else:
        data = np.clip(np.rint(phantom.image), -32768, 32767).astype(np.int16)
    affine = np.asarray(phantom.affine, dtype=np.float64)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return path
