"""Slice batches of a 2D classifier: which configs may declare them, the slices' geometry, the summary."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from aiaa_server.errors import PayloadTooLarge
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import Volume
from aiaa_server.inference.classification import classification_result
from aiaa_server.inference.slice_batch import check_slice_count, volume_slices
from aiaa_server.inference.transforms import WriterOutput
from aiaa_server.mmar.config import MAX_BATCH_SLICES, AIAAConfig
from tests.support.mmars import classification_config


def _config(spatial_dims: int = 2, kind: str = "classification", **meta: object) -> AIAAConfig:
    config = classification_config(spatial_dims=spatial_dims)
    config["type"] = kind
    config["inference"]["meta_data"].update(meta)
    return AIAAConfig.model_validate(config)


def test_declared_limit_and_default() -> None:
    assert _config(batch="slices", max_slices=8).slice_batch_limit == 8
    assert _config(batch="slices").slice_batch_limit == MAX_BATCH_SLICES
    assert _config().slice_batch_limit is None


@pytest.mark.parametrize(("config", "words"), [
    ({"batch": "volumes"}, 'only value is "slices"'),
    ({"max_slices": 4}, 'only value is "slices"'),
    ({"batch": "slices", "spatial_dims": 3}, "2D classification models only"),
    ({"batch": "slices", "kind": "segmentation"}, "2D classification models only"),
    ({"batch": "slices", "max_slices": 0}, "max_slices"),
    ({"batch": "slices", "max_slices": MAX_BATCH_SLICES + 1}, "max_slices"),
    ({"batch": "slices", "max_slices": True}, "max_slices"),
])
def test_misdeclared_batches_fail_at_load(config: dict, words: str) -> None:
    spatial_dims = config.pop("spatial_dims", 2)
    kind = config.pop("kind", "classification")
    with pytest.raises(ValidationError, match=words):
        _config(spatial_dims, kind, **config)


def test_slices_keep_their_place_in_the_volume() -> None:
    affine = np.array([[0.5, 0, 0, 10], [0, 0.7, 0, -20], [0, 0, 3.0, 5], [0, 0, 0, 1]])
    array = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    slices = list(volume_slices(Volume(array=array, affine=affine, format=ImageFormat.NIFTI_GZ, name="ct")))
    assert [s.name for s in slices] == ["ct_0", "ct_1"]
    np.testing.assert_array_equal(slices[1].array, array[:, :, 1])
    assert slices[1].affine[:3, 3].tolist() == [10.0, -20.0, 8.0]
    assert slices[1].affine[:3, :3].tolist() == affine[:3, :3].tolist()


def test_slice_count_is_bounded_before_any_work() -> None:
    volume = Volume(array=np.zeros((2, 2, 5), np.float32), affine=np.eye(4), format=ImageFormat.NIFTI_GZ)
    assert check_slice_count(volume, 5, "m") == 5
    with pytest.raises(PayloadTooLarge, match="at most 4 slices") as refused:
        check_slice_count(volume, 4, "m")
    assert refused.value.details == {"model": "m", "slices": 5, "max_slices": 4}


def test_summary_counts_and_means() -> None:
    output = WriterOutput(image=None, json={"pred": [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]}, json_key="pred")
    summary = classification_result(output, ["a", "b"], "m", "1").summary
    assert summary is not None
    assert (summary.images, summary.counts, summary.prediction) == (3, {"a": 2, "b": 1}, "a")
    assert summary.mean_probabilities == pytest.approx({"a": 1.7 / 3, "b": 1.3 / 3})
