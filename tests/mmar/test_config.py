"""config_aiaa.json schema."""

from __future__ import annotations

import pytest

from aiaa_server.errors import InvalidModel
from aiaa_server.mmar.config import ModelType
from aiaa_server.mmar.loader import parse_config


def test_clara_4x_example_parses() -> None:
    config = parse_config({
        "version": 1, "type": "Segmentation", "labels": ["spleen"], "description": "d",
        "pre_transforms": [{"name": "monai.transforms.LoadImaged", "args": {"keys": "image"}}],
        "inference": {"input": "image", "output": "pred", "meta_data": {"roi": [128, 128, 128]},
                      "AIAA": {"name": "aiaa.inference.PyTorchInference",
                               "args": {"scanning_window": True, "roi": [160, 160, 160], "overlap": 0.25,
                                        "device": "cpu", "sw_device": "cuda"}},
                      "TRITON": {"name": "aiaa.inference.TritonInference", "triton_model_config": {
                          "platform": "pytorch_libtorch", "max_batch_size": 1,
                          "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [1, 160, 160, 160]}],
                          "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [2, 160, 160, 160]}]}}},
        "post_transforms": [], "writer": {"name": "aiaa.transforms.Writer", "args": {"image": "pred"}},
    })
    assert config.version == "1"
    assert config.type is ModelType.SEGMENTATION
    assert config.inference.args.roi == [160, 160, 160]
    assert config.inference.args.sw_device == "cuda"
    assert config.inference.TRITON is not None
    assert config.inference.TRITON.triton_model_config.input[0].dims == [1, 160, 160, 160]
    assert config.spatial_dims == 3


def test_deepgrow_dimensions_come_from_meta_data() -> None:
    assert parse_config({"type": "deepgrow", "inference": {"meta_data": {"deepgrow": "2D"}}}).spatial_dims == 2
    assert parse_config({"type": "deepgrow", "inference": {"meta_data": {"deepgrow": "3D"}}}).spatial_dims == 3
    assert parse_config({"type": "deepgrow"}).spatial_dims == 2  # absent means 2D for the clients


def test_labels_given_as_mapping_are_ordered_by_value() -> None:
    assert parse_config({"labels": {"2": "liver", "1": "spleen"}}).labels == ["spleen", "liver"]
    assert parse_config({"labels": {"liver": 2, "spleen": 1}}).labels == ["spleen", "liver"]


@pytest.mark.parametrize(
    ("raw", "word"),
    [
        ({"type": "magic"}, "type"),
        ({"inference": {"AIAA": {"args": {"scanning_window": True}}}}, "roi"),
        ({"pre_transforms": [{"args": {}}]}, "name"),
        ([1, 2], "JSON object"),
    ],
)
def test_invalid_configs_name_the_problem(raw: object, word: str) -> None:
    with pytest.raises(InvalidModel) as caught:
        parse_config(raw)
    assert word in caught.value.message
