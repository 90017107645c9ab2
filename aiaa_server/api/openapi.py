"""The OpenAPI document: request bodies the routers read by hand, the answers they really send, the errors.

The routers parse their bodies themselves (any part names, `params` as a text field, a file part, a urlencoded
field or a JSON body), so FastAPI never validates a body against a model. Each route describes its body and
its 200 answer here (`openapi_extra`), its error statuses with `errors(...)` (`responses=`), and
`complete_schema` finishes the document: the params and result models as components, 500 on every operation,
and FastAPI's own validation-error schema (which this server never sends) removed.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from aiaa_server.api.responses import OUTPUT_MODES
from aiaa_server.api.schemas import SCHEMA_MODELS, ClassificationResult, ResultParams

BINARY = {"type": "string", "format": "binary"}
REF_PREFIX = "#/components/schemas/"
PARAMS_TEXT = ("JSON object, as a text field (or a .json file part, or `null`/empty for {}); lists may also be "
               "JSON-encoded strings (older clients)")
ANY_PART_NAME = ("recognised by the file name's extension and the bytes; the first file part is used whatever its "
                 "name (`datapoint` from the Python client, `image` from the C++ client, `file`, `image0`...)")
IMAGE_PART = f"the image, NIfTI (.nii, .nii.gz) or NRRD, {ANY_PART_NAME}; leave it out with `session_id`"
MASK_PART = f"the image, PNG (2D) or NIfTI/NRRD (3D), {ANY_PART_NAME}"


class ErrorResponse(BaseModel):
    """The JSON body of every error answer."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"detail": "model 'spleen' not found", "code": "not_found", "details": {"model": "spleen"}},
    ]})

    detail: str = Field(description="what is wrong, in words")
    code: str = Field(description="machine-readable reason, e.g. invalid_params, not_found, session_expired")
    details: dict[str, Any] = Field(default_factory=dict, description="the values involved (names, limits); "
                                    "absent when there are none")


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "bad request: invalid params, query values, image or body (the detail names the problem)",
    401: "admin access needs the bearer token (--admin_token)",
    403: "admin access is not allowed from this address (--admin_hosts)",
    404: "unknown model or session",
    408: "the request body stalled (--body_timeout)",
    409: "the model is served from a read-only folder and cannot be deleted",
    413: "too large: the body, a decoded image or an archive is over a limit",
    422: "well formed but unusable: a query value of the wrong type, an image the model cannot take, or a "
         "model that cannot be loaded",
    440: "session expired (Clara's status): create a new session and retry",
    500: "the server or a model failed (see GET /logs)",
    501: "not supported by this server (NGC downloads, PACS pulls)",
    503: "busy (the inference queue is full) or a backend (Triton, the session store) is away; retry after "
         "Retry-After seconds",
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` for the error statuses a route can answer, each with the `ErrorResponse` JSON body
    (also on routes whose own answers are not JSON)."""
    return {status: error_response(status) for status in statuses}


def error_response(status: int) -> dict[str, Any]:
    """One error status as OpenAPI describes it: its `ErrorResponse` body (and `Retry-After` with 503)."""
    body = {"application/json": {"schema": ref(ErrorResponse)}}
    return {"description": ERROR_DESCRIPTIONS[status], "content": body,
            **({"headers": RETRY_AFTER} if status == 503 else {})}


def ref(model: type[BaseModel]) -> dict[str, str]:
    """A reference to `model`'s component schema."""
    return {"$ref": REF_PREFIX + model.__name__}


def multipart_request(fields: dict[str, dict[str, Any]], **other_content: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` for a multipart/form-data request body with the given fields."""
    content: dict[str, Any] = {
        "multipart/form-data": {"schema": {"type": "object", "properties": fields}},
        **other_content,
    }
    return {"requestBody": {"content": content}}


def params_field(model: type[BaseModel], example: dict[str, Any]) -> dict[str, Any]:
    """The `params` form field: a string holding JSON that `model` describes."""
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": ref(model),
            "description": f"{PARAMS_TEXT}; see {model.__name__}", "examples": [json.dumps(example)]}


def params_request(model: type[BaseModel], example: dict[str, Any], summary: str, *, image_part: str,
                   plain_bodies: bool) -> dict[str, Any]:
    """A request body of `params` (as `model` describes it) and one file part (`image_part` describes it); with
    `plain_bodies` the params alone also come as a urlencoded field or as a JSON body (useful with `session_id`)."""
    params = params_field(model, example)
    image = {**BINARY, "description": image_part}
    examples = {"example": {"summary": summary, "value": {"params": json.dumps(example)}}}
    content: dict[str, Any] = {"multipart/form-data": {
        "schema": {"type": "object", "properties": {"params": params, "datapoint": image, "image": image}},
        "examples": examples,
    }}
    if plain_bodies:
        content["application/x-www-form-urlencoded"] = {
            "schema": {"type": "object", "properties": {"params": params}}, "examples": examples}
        content["application/json"] = {
            "schema": ref(model), "examples": {"example": {"summary": summary, "value": example}}}
    description = "multipart/form-data: `params` and one file part"
    if plain_bodies:
        description += "; urlencoded (a `params` field) or JSON (the params object): the params alone, with session_id"
    return {"requestBody": {"description": description, "content": content}}


def _query(name: str, description: str, schema: dict[str, Any], *, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


def inference_parameters(model_example: str) -> list[dict[str, Any]]:
    """`model` (required), `session_id` and `output` of the inference routes."""
    return [
        _query("model", "model name (GET /v1/models); missing: 400, unknown: 404",
               {"type": "string", "examples": [model_example]}, required=True),
        _query("session_id", "use the image stored in this session (PUT /session/) instead of an upload; "
               "unknown or expired: 440", {"type": "string"}),
        _query("output", "all: multipart params + image (default); image: the result file alone; json: the params "
               "alone; fhir: a classification model's answer as a FHIR R4 Observation (any case; other values: "
               "400)", {"type": "string", "enum": list(OUTPUT_MODES), "default": "all"}),
    ]


def result_multipart(params_model: type[BaseModel], image: str) -> dict[str, Any]:
    """A fixed-length multipart/form-data answer: the `params` JSON part and one `image` file part."""
    return {
        "schema": {"type": "object", "required": ["params", "image"], "properties": {
            "params": ref(params_model), "image": {**BINARY, "description": image}}},
        "encoding": {"params": {"contentType": "application/json"},
                     "image": {"contentType": "application/octet-stream"}},
    }


def inference_operation(params_model: type[BaseModel], example: dict[str, Any], model_example: str,
                        classification: bool = False) -> dict[str, Any]:
    """`openapi_extra` of an inference route: query parameters, body, and the 200 answers of each output mode
    (with `classification`, also a classification model's: JSON, DICOM SR, FHIR Observation)."""
    image_file = {**BINARY, "description": "output=image: the result file alone (NIfTI or NRRD, as asked by "
                  "result_extension; default the input's format), named in Content-Disposition"}
    content = {
        "multipart/form-data": result_multipart(
            ResultParams, "the result mask on the input's grid (label k = the model's labels[k-1])"),
        "application/octet-stream": {"schema": image_file},
        "application/json": {"schema": ref(ResultParams)},
    }
    if classification:
        content["application/json"] = {"schema": {"oneOf": [ref(ResultParams), ref(ClassificationResult)]}}
        content["application/dicom"] = {"schema": {**BINARY, "description": "a classification model with "
                                        "result_extension .dcm: a DICOM SR (TID 1500) of the source series"}}
        content["application/fhir+json"] = {"schema": {"type": "object", "description": "output=fhir: a FHIR R4 "
                                            "Observation (classification models)"}}
    summary = f"{model_example} with {params_model.__name__}"
    return {
        "parameters": inference_parameters(model_example),
        **params_request(params_model, example, summary, image_part=IMAGE_PART, plain_bodies=True),
        "responses": {"200": {
            "description": "output=all (default): multipart/form-data (params + image part); output=image: the "
                           "file; output=json, or a model without an image result: application/json",
            "content": content,
        }},
    }


def polygon_operation(params_model: type[BaseModel], example: dict[str, Any], answer: dict[str, Any],
                      description: str) -> dict[str, Any]:
    """`openapi_extra` of a polygon route: `params` + one image part in, `answer` (a content map) out."""
    summary = f"{params_model.__name__} example"
    return {**params_request(params_model, example, summary, image_part=MASK_PART, plain_bodies=False),
            "responses": {"200": {"description": description, "content": answer}}}


def complete_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the params and result models as components and a 500 answer to every operation; drop FastAPI's
    validation-error schema, which this server never sends (its 422 answers are `ErrorResponse`s)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    _, definitions = models_json_schema([(model, "validation") for model in SCHEMA_MODELS],
                                        ref_template=REF_PREFIX + "{model}")
    components.update(definitions.get("$defs", {}))
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    components["ErrorResponse"] = ErrorResponse.model_json_schema(ref_template=REF_PREFIX + "{model}")
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            for status in [s for s, answer in responses.items() if "HTTPValidationError" in json.dumps(answer)]:
                del responses[status]
            responses.setdefault("500", error_response(500))
    return schema
