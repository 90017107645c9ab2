"""Turning decoded volumes into MONAI MetaTensors that remember the grid the client sent."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor

from aiaa_server.imaging.io import Volume

ORIGINAL_AFFINE = "aiaa_original_affine"
ORIGINAL_SHAPE = "aiaa_original_shape"
_KEPT_INTEGERS = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16))  # what CPU index_select takes


def volume_to_tensor(volume: Volume, keep_integers: bool = False) -> MetaTensor:
    """Float32 MetaTensor, no channel, carrying the input affine and shape for restoring results later.

    Args:
        volume: the decoded image.
        keep_integers: keep an integer voxel type (int16 CT stays int16, half the bytes of float32) for a
            pipeline that converts later on a smaller grid (see `ModelPipeline.input_tensor`).

    Returns:
        (X, Y, Z) (or (X, Y)) float32 MetaTensor in NIfTI index order (a C-order copy; with `keep_integers`
        the stored integer array itself, in any memory order), whose affine is the volume's voxel → RAS affine (float64) and whose
        meta keeps it and the shape under ORIGINAL_AFFINE / ORIGINAL_SHAPE for `Restored`.
    """
    stored = np.dtype(volume.array.dtype.name)  # native byte order
    integer = keep_integers and stored in _KEPT_INTEGERS
    # at most one copy; a kept integer array is not copied into C order (NIfTI data is Fortran-ordered): the
    # resampling reads it through strides
    array = np.asarray(volume.array, dtype=stored) if integer else np.asarray(volume.array, np.float32, order="C")
    if not array.flags.writeable:  # a read-only memory map: tensors must own writable memory
        array = array.copy()
    affine = torch.as_tensor(volume.affine, dtype=torch.float64)
    meta = {
        "filename_or_obj": volume.name,
        "original_channel_dim": "no_channel",
        "spatial_shape": np.asarray(array.shape),
        "space": "RAS",
        ORIGINAL_AFFINE: volume.affine.copy(),
        ORIGINAL_SHAPE: tuple(int(s) for s in array.shape),
    }
    return MetaTensor(torch.from_numpy(array), affine=affine, meta=meta)


def plain_tensor(value: object) -> torch.Tensor:
    """`value` as a plain torch.Tensor: a MetaTensor without its meta, an array converted, a tensor as is."""
    if isinstance(value, MetaTensor):
        return value.as_tensor()
    if isinstance(value, torch.Tensor):
        return value
    return torch.as_tensor(np.asarray(value))
