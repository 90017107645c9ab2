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
