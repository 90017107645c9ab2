"""A 2D classification model applied to a 3D volume slice by slice: the model declares it with
`inference.meta_data.batch: "slices"` (and `spatial_dims: 2`); each slice along the volume's last array axis
(k, the axial one for scanner volumes) goes through the whole pipeline as one 2D image, and the rows of class
probabilities come back stacked, (N, C), for `classification_result` to turn into its `batch`.

Neither Clara MMAR classification configs nor MONAI bundle metadata (`network_data_format`) have a field for
this, hence a `meta_data` key of our own (shown by `GET /v1/models`, like `spatial_dims`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from aiaa_server.errors import PayloadTooLarge
from aiaa_server.imaging.io import Volume
from aiaa_server.inference.tensors import volume_to_tensor
from aiaa_server.inference.transforms import WriterOutput

SLICES = "slices"  # the only `meta_data.batch` value


class SlicePipeline(Protocol):
    """What slice batching needs of a model's pipeline (`ModelPipeline` is one)."""

    @property
    def input_key(self) -> str: ...

    def preprocess_image(self, data: dict[str, Any]) -> dict[str, Any]: ...

    def run_request(self, data: dict[str, Any]) -> WriterOutput: ...


def check_slice_count(volume: Volume, limit: int, model: str) -> int:
    """The number of slices of `volume` (its last axis), refused over `limit` before any is classified.

    Raises:
        PayloadTooLarge: (413) more slices than `limit`, naming the limit.
    """
    count = int(volume.array.shape[-1])
    if count > limit:
        raise PayloadTooLarge(
            f"model {model!r} classifies a volume slice by slice, at most {limit} slices; this image has {count}: "
            "send fewer slices (crop the volume)", model=model, slices=count, max_slices=limit)
    return count


def volume_slices(volume: Volume) -> Iterator[Volume]:
    """Each slice of a 3D `volume` along its last axis, as a 2D Volume.

    Args:
        volume: array [x, y, z] with its voxel -> RAS affine.

    Yields:
        Volume of array [x, y] (a view, no copy) whose affine places the slice where it lies in the volume
        (origin moved by k steps along the third voxel axis), named `<name>_<k>`.
    """
    for k in range(volume.array.shape[-1]):
        affine = volume.affine.copy()
        affine[:3, 3] = volume.affine[:3, 3] + k * volume.affine[:3, 2]
        yield Volume(array=volume.array[..., k], affine=affine, format=volume.format, name=f"{volume.name}_{k}")


def classify_slices(pipeline: SlicePipeline, volume: Volume, request_data: dict[str, Any]) -> WriterOutput:
    """Run the whole pipeline on each slice of `volume` (see `volume_slices`) and stack the answers.

    Args:
        pipeline: the 2D classification model's pipeline.
        volume: the 3D volume, its slice count already checked (`check_slice_count`).
        request_data: the request's params as pipeline data (copied for each slice).

    Returns:
        WriterOutput without image whose `json[json_key]` is a list of N rows, one per slice, each what the
        model left for that slice (a (1, C) answer as its one row).

    Raises:
        IncompatibleInput, ModelError: a slice fails a pre-transform, the network or a post-transform.
    """
    rows: list[Any] = []
    key = "result"
    for image in volume_slices(volume):
        data = pipeline.preprocess_image({pipeline.input_key: volume_to_tensor(image)})
        output = pipeline.run_request({**request_data, **data})
        key = output.json_key
        rows.append(_one_row(output.json.get(key)))
    return WriterOutput(image=None, json={key: rows}, json_key=key)


def _one_row(value: Any) -> Any:
    """A (1, C) answer as its row; anything else as it is (`classification_result` checks the shape)."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
        return value[0]
    return value

