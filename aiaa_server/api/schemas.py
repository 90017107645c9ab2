"""The documented shapes of each endpoint's `params` and results, published in `/openapi.json`.

Requests are never validated against these models: `params` keeps being parsed leniently where it is used
(`inference.params`, `inference.interactive`, `services.polygon_params`), which also takes what older clients
send (lists as JSON-encoded strings, one flat `[x, y, z]` for a list of points, `null` params). The result
options are the real `ResultOptions`, the polygon params the real `Mask2PolygonParams` / `FixPolygonParams`.

The examples are one working request per endpoint: the tests send them to a server with the bundled demo
models (`DEMO_*`) and a (96, 80, 40) volume.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, RootModel

from aiaa_server.inference.classification import ClassificationResult
from aiaa_server.inference.interactive import MIN_DEXTR3D_POINTS
from aiaa_server.inference.params import ResultOptions
from aiaa_server.services.polygon_params import FixPolygonParams, Mask2PolygonParams

DEMO_SEGMENTATION = "demo_spleen_ct_segmentation"
DEMO_DEEPGROW = "demo_deepgrow_3d"
DEMO_DEXTR3D = "demo_dextr3d_annotation"

Point = Annotated[list[float], Field(
    min_length=2, max_length=3,
    description="[x, y, z]: 0-based voxel indices of the image sent (NIfTI/ITK index order, not world "
                "coordinates); numbers are rounded",
)]
IntPoint = Annotated[list[int], Field(min_length=2, max_length=3, description="[x, y, z] voxel indices")]

SEGMENTATION_EXAMPLE: dict[str, Any] = {"result_extension": ".nrrd", "result_dtype": "uint16", "result_compress": True}
INFERENCE_EXAMPLE: dict[str, Any] = {"result_dtype": "uint16"}
DEEPGROW_EXAMPLE: dict[str, Any] = {
    "foreground": [[45, 35, 20]], "background": [[10, 10, 20]], "current_point": [[45, 35, 20]],
}
DEXTR3D_EXAMPLE: dict[str, Any] = {
    "points": [[30, 35, 20], [59, 35, 20], [45, 20, 20], [45, 49, 20], [45, 35, 10], [45, 35, 29]],
}


class SegmentationParams(ResultOptions):
    """`params` of `/v1/segmentation`: `{}` from most clients; OHIF adds the result options. Other keys are
    passed to the model's pipeline."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [SEGMENTATION_EXAMPLE]})


class InferenceParams(ResultOptions):
    """`params` of `/v1/inference`: any JSON object, passed to the model's pipeline. DeepGrow and pipeline
    models read the keys of `DeepgrowParams`, annotation models those of `Dextr3dParams`."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [INFERENCE_EXAMPLE]})


class DeepgrowParams(ResultOptions):
    """`params` of `/v1/deepgrow` (and of `/v1/inference` on a deepgrow or pipeline model): the clicks, at
    least one in all. A list may also arrive as one flat `[x, y, z]` or as a JSON-encoded string."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [DEEPGROW_EXAMPLE]})

    foreground: list[Point] = Field(
        default_factory=list, description="clicks inside the structure; missing or null: []",
        examples=[DEEPGROW_EXAMPLE["foreground"]],
    )
    background: list[Point] = Field(
        default_factory=list, description="clicks outside the structure; missing or null: []",
        examples=[DEEPGROW_EXAMPLE["background"]],
    )
    current_point: Point | list[Point] | None = Field(
        None, description="the newest click, as [[x, y, z]] (Slicer, OHIF) or [x, y, z] (the AIAA test runner); "
        "absent (C++ client): DeepGrow 2D takes the slice of the other clicks", examples=[[[45, 35, 20]]],
    )
    spatial_size: list[int] | None = Field(
        None, description="Slicer's ROI size; accepted and passed to the pipeline (the bundled DeepGrow "
        "transforms crop with the size in the model's config)", examples=[[128, 192, 192]],
    )


class Dextr3dParams(ResultOptions):
    """`params` of `/v1/dextr3d`: the boundary (extreme) points. The crop (pad in mm, roi in voxels) and the
    heat-map sigma are the model's settings (`padding`, `roi`, `sigma` in `GET /v1/models`), not request params;
    the image may be the client's 128³ crop or the full volume."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [DEXTR3D_EXAMPLE]})

    points: list[Point] = Field(
        min_length=MIN_DEXTR3D_POINTS, description=f"at least {MIN_DEXTR3D_POINTS} points on the structure's "
        "boundary (its extreme points along each axis)", examples=[DEXTR3D_EXAMPLE["points"]],
    )


class ResultParams(BaseModel):
    """The `params` part of an image result, and the body of `output=json` and of image-less results
    (classification models: e.g. `{"prediction": [...]}`). Keys are present when the model reports them."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [
        {"points": [[30, 35, 20], [59, 35, 20], [45, 20, 20], [45, 49, 20], [45, 35, 10], [45, 35, 29]],
         "bbox": [[30, 20, 10], [59, 49, 29]]},
        {"prediction": ["label-3"]},
    ]})

    points: list[IntPoint] = Field(
        default_factory=list, description="extreme points of the foreground (min and max along each axis), "
        "[x, y, z] voxel indices of the input; [] when empty", examples=[[[30, 35, 20], [59, 35, 20]]],
    )
    bbox: list[IntPoint] = Field(
        default_factory=list, description="[[min x, y, z], [max x, y, z]] (inclusive) of the foreground; [] when empty",
        examples=[[[30, 20, 10], [59, 49, 29]]],
    )
    crop: list[list[int]] = Field(
        default_factory=list, description="DeepGrow: [[x0, x1], [y0, y1], [z0, z1]] (end-exclusive), the box of "
        "the input the result covers (Slicer replaces the segment only there)", examples=[[[5, 90], [0, 80], [0, 40]]],
    )


class FixPolygonResult(BaseModel):
    """The `params` part of a `/v1/fixpolygon` result."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"poly": [[[12, 9], [13, 28], [32, 29], [30, 10]]]}]})

    poly: list[Any] = Field(description="the polygons after the move, nested like the request's `poly`",
                            examples=[[[[12, 9], [13, 28], [32, 29], [30, 10]]]])


class MaskPolygons(RootModel[list[list[list[Annotated[list[int], Field(min_length=2, max_length=2)]]]]]):
    """`/v1/mask2polygon`'s answer: per z slice (one for a 2D mask), its polygons of [x, y] pixel vertices."""

    model_config = ConfigDict(json_schema_extra={"examples": [[[[[10, 10], [10, 30], [30, 30], [30, 10]]], []]]})


SCHEMA_MODELS: tuple[type[BaseModel], ...] = (
    ResultOptions, SegmentationParams, InferenceParams, DeepgrowParams, Dextr3dParams, Mask2PolygonParams,
    FixPolygonParams, ResultParams, FixPolygonResult, MaskPolygons, ClassificationResult,
)
