"""`GET /v1/models` (and `/v1/models/`): list, filter by label/type, or fetch one with `?model=`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from aiaa_server.api.deps import ServicesDep
from aiaa_server.api.openapi import errors
from aiaa_server.mmar.loader import ModelInfo

router = APIRouter(tags=["models"])


@router.get(
    "/v1/models",
    response_model=list[ModelInfo] | ModelInfo,
    responses=errors(404),
    summary="List models (or one model with ?model=NAME)",
)
@router.get("/v1/models/", response_model=list[ModelInfo] | ModelInfo, include_in_schema=False)
async def list_models(
    services: ServicesDep,
    label: Annotated[str | None, Query(description="keep models whose labels contain this organ name")] = None,
    type: Annotated[str | None, Query(description="keep models of this type, e.g. segmentation")] = None,
    model: Annotated[str | None, Query(description="return just this model, as one object")] = None,
) -> list[ModelInfo] | ModelInfo:
    # async: answered on the event loop without a hop to the thread pool, which busy workers slow down
    if model is not None:
        return _with_version(services, services.registry.get(model).info)
    return [_with_version(services, info) for info in services.registry.infos(label=label, model_type=type)]


def _with_version(services: ServicesDep, info: ModelInfo) -> ModelInfo:
    """A trained version being served shows its number and validation Dice (`trained_version`, `validation_dice`)."""
    figures = services.training.serving_figures(info.name)
    return ModelInfo(**{**info.model_dump(), **figures}) if figures else info
