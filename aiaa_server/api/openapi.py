"""OpenAPI descriptions of the multipart bodies the routers read by hand (they take any part names)."""

from __future__ import annotations

from typing import Any

BINARY = {"type": "string", "format": "binary"}


def multipart_request(fields: dict[str, dict[str, Any]], **other_content: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` for a multipart/form-data request body with the given fields."""
    content: dict[str, Any] = {
        "multipart/form-data": {"schema": {"type": "object", "properties": fields}},
        **other_content,
    }
    return {"requestBody": {"content": content}}


PARAMS_AND_IMAGE = multipart_request({
    "params": {"type": "string", "description": "JSON object, e.g. {}"},
    "datapoint": {**BINARY, "description": "image (any part name)"},
})


ERROR_SCHEMA: dict[str, Any] = {
    "title": "ErrorResponse",
    "type": "object",
    "required": ["detail", "code"],
    "properties": {
        "detail": {"type": "string", "description": "what is wrong, in words"},
        "code": {"type": "string", "description": "machine-readable reason, e.g. invalid_params"},
        "details": {"type": "object", "description": "the values involved (limits, names)"},
    },
}
ERROR_RESPONSES = {
    "4XX": "the request was refused (bad input 400, unknown model or session 404, too large 413, "
           "unusable input 422, expired session 440)",
    "5XX": "the server or a model failed (503 with Retry-After when busy or Triton is away)",
}


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Describe every error answer as the JSON body the server really sends (`ErrorResponse`), replacing
    FastAPI's `HTTPValidationError`, which this server never returns."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorResponse"] = ERROR_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, description in ERROR_RESPONSES.items():
                responses.setdefault(status, {"description": description, "content": body})
    return schema
