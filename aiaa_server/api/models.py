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
def list_models(
    services: ServicesDep,
    label: Annotated[str | None, Query(description="keep models whose labels contain this organ name")] = None,
    type: Annotated[str | None, Query(description="keep models of this type, e.g. segmentation")] = None,
    model: Annotated[str | None, Query(description="return just this model, as one object")] = None,
) -> list[ModelInfo] | ModelInfo:
    if model is not None:
        return services.registry.get(model).info
    return services.registry.infos(label=label, model_type=type)
