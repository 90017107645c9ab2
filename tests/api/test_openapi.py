"""`/openapi.json` is a contract a client can be built from: real answers of a real server are checked against
the published document (the status is declared for the route, the content type is declared for that status,
JSON bodies and multipart `params` parts validate against the declared schema, `$ref`s resolved in the
document), the params models are published with descriptions and examples, and each endpoint's published
example request works as published."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from aiaa_server.imaging.png import encode_png
from tests.support.multipart import parse_multipart
from tests.support.server import LiveServer
from tests.support.volumes import cube_volume, lps_affine, save_nifti

SPEC_URI = "urn:aiaa-server:openapi"
INFERENCE_ROUTES = ("/v1/segmentation", "/v1/inference", "/v1/dextr3d", "/v1/deepgrow")
PARAMS_MODELS = {
    "/v1/segmentation": "SegmentationParams", "/v1/inference": "InferenceParams", "/v1/dextr3d": "Dextr3dParams",
    "/v1/deepgrow": "DeepgrowParams", "/v1/mask2polygon": "Mask2PolygonParams", "/v1/fixpolygon": "FixPolygonParams",
}
RESULT_OPTIONS = ("result_extension", "result_dtype", "result_compress")


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes

    @classmethod
    def of(cls, response: httpx.Response) -> Answer:
        return cls(response.status_code, response.headers.get("content-type", ""), response.content)

    @property
    def media_type(self) -> str:
        return self.content_type.split(";")[0].strip().lower()


class Contract:
    """The published document, and checks of real answers against it."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.registry = Registry().with_resource(SPEC_URI, DRAFT202012.create_resource(spec))

    def operation(self, method: str, path: str) -> dict[str, Any]:
        return self.spec["paths"][path][method]

    def validate(self, instance: Any, *pointer: str) -> None:
        """`instance` against the schema at `pointer` (path segments) of the document."""
        escaped = "/".join(part.replace("~", "~0").replace("/", "~1") for part in pointer)
        Draft202012Validator({"$ref": f"{SPEC_URI}#/{escaped}"}, registry=self.registry).validate(instance)

    def check(self, method: str, path: str, answer: Answer) -> None:
        """The status is declared for the route, the content type for the status, the body matches its schema."""
        responses = self.operation(method, path)["responses"]
        status = str(answer.status)
        assert status in responses, f"{method.upper()} {path} answered {status}, declared: {sorted(responses)}"
        content = responses[status].get("content", {})
        assert answer.media_type in content, f"{method.upper()} {path} {status}: {answer.content_type} not in {list(content)}"
        where = ("paths", path, method, "responses", status, "content", answer.media_type, "schema")
        if answer.media_type == "application/json":
            self.validate(json.loads(answer.body), *where)
        elif answer.media_type == "multipart/form-data":
            parts = parse_multipart(answer.content_type, answer.body)
            self.validate(parts.params, *where, "properties", "params")


@pytest.fixture(scope="module")
def contract(server: LiveServer) -> Contract:
    with server.client() as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    return Contract(response.json())


@pytest.fixture()
def cube(tmp_path: Path) -> Path:
    image, _ = cube_volume()  # (96, 80, 40), the shape the published examples are written for
    return save_nifti(tmp_path / "cube.nii.gz", image, lps_affine((0.8, 0.9, 2.5)))


def upload(server: LiveServer, path: str, file: Path | None, params: str | None = "{}", **query: str) -> Answer:
    data = {} if params is None else {"params": params}
    with server.client() as client:
        if file is None:
            return Answer.of(client.post(path, params=query, data=data))
        with open(file, "rb") as handle:
            return Answer.of(client.post(path, params=query, data=data, files={"datapoint": (file.name, handle)}))


def error_of(answer: Answer) -> dict[str, Any]:
    assert answer.media_type == "application/json"
    return json.loads(answer.body)


# ------------------------------------------------------------------ the document itself


def test_params_models_are_published_with_descriptions_and_examples(contract: Contract) -> None:
    components = contract.spec["components"]["schemas"]
    for name in (*PARAMS_MODELS.values(), "ResultOptions", "ResultParams", "ErrorResponse"):
        model = components[name]
        assert model.get("examples"), f"{name} has no example"
        for field, schema in model.get("properties", {}).items():
            assert schema.get("description"), f"{name}.{field} has no description"
            if name != "ErrorResponse":
                assert schema.get("examples"), f"{name}.{field} has no example"
                contract.validate(schema["examples"][0], "components", "schemas", name, "properties", field)
        for example in model["examples"]:
            contract.validate(example, "components", "schemas", name)
    assert set(components["DeepgrowParams"]["properties"]) >= {"foreground", "background", "current_point",
                                                               "spatial_size", *RESULT_OPTIONS}
    assert "points" in components["Dextr3dParams"]["required"]
    contract.validate({"current_point": [1, 2, 3]}, "components", "schemas", "DeepgrowParams")  # both forms
    contract.validate({"current_point": [[1, 2, 3]]}, "components", "schemas", "DeepgrowParams")
    assert components["ErrorResponse"]["required"] == ["detail", "code"]
    assert "HTTPValidationError" not in components


@pytest.mark.parametrize("path", sorted(PARAMS_MODELS))
def test_each_params_field_names_its_model_and_the_body_stays_free_form(contract: Contract, path: str) -> None:
    body = contract.operation("post", path)["requestBody"]
    assert not body.get("required", False)  # with session_id the body may be empty
    multipart = body["content"]["multipart/form-data"]
    params = multipart["schema"]["properties"]["params"]
    assert params["type"] == "string" and params["contentMediaType"] == "application/json"
    assert params["contentSchema"] == {"$ref": f"#/components/schemas/{PARAMS_MODELS[path]}"}
    assert multipart["schema"]["properties"]["datapoint"]["format"] == "binary"
    assert multipart["schema"]["properties"]["image"]["format"] == "binary"
    example = multipart["examples"]["example"]["value"]["params"]
    contract.validate(json.loads(example), "components", "schemas", PARAMS_MODELS[path])


@pytest.mark.parametrize("path", INFERENCE_ROUTES)
def test_model_is_required_and_output_an_enum(contract: Contract, path: str) -> None:
    operation = contract.operation("post", path)
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert parameters["model"]["required"] is True
    assert parameters["output"]["schema"]["enum"] == ["all", "image", "json", "fhir"]
    assert parameters["session_id"]["required"] is False
    assert set(operation["requestBody"]["content"]) == {
        "multipart/form-data", "application/x-www-form-urlencoded", "application/json"}
    reports = {"application/dicom", "application/fhir+json"} if path == "/v1/inference" else set()  # classifiers
    assert set(operation["responses"]["200"]["content"]) == {
        "multipart/form-data", "application/octet-stream", "application/json", *reports}
    assert set(operation["responses"]) == {"200", "400", "404", "408", "413", "422", "440", "500", "503"}


def test_every_reference_resolves_and_no_status_ranges(contract: Contract) -> None:
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            refs.extend([node["$ref"]] if isinstance(node.get("$ref"), str) else [])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(contract.spec)
    resolver = contract.registry.resolver(base_uri=SPEC_URI)
    assert refs
    for ref in set(refs):
        assert resolver.lookup(ref).contents is not None
    for path_item in contract.spec["paths"].values():
        for operation in path_item.values():
            assert not {"4XX", "5XX", "default"} & set(operation["responses"])
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    assert list(response["content"]) == ["application/json"]


def test_metrics_are_documented_as_prometheus_text(contract: Contract, server: LiveServer) -> None:
    assert list(contract.operation("get", "/metrics")["responses"]["200"]["content"]) == ["text/plain"]
    with server.client() as client:
        answer = Answer.of(client.get("/metrics"))
    assert answer.status == 200 and answer.media_type == "text/plain"
    contract.check("get", "/metrics", answer)


# ------------------------------------------------------------------ real answers against the document


def test_models_health_ready_logs(contract: Contract, server: LiveServer) -> None:
    with server.client() as client:
        contract.check("get", "/v1/models", Answer.of(client.get("/v1/models")))
        one = Answer.of(client.get("/v1/models", params={"model": "test_threshold"}))
        unknown = Answer.of(client.get("/v1/models", params={"model": "no_such_model"}))
        contract.check("get", "/health", Answer.of(client.get("/health")))
        contract.check("get", "/ready", Answer.of(client.get("/ready")))
        contract.check("get", "/logs", Answer.of(client.get("/logs", params={"lines": 3})))
        bad_lines = Answer.of(client.get("/logs", params={"lines": "many"}))
    contract.check("get", "/v1/models", one)
    assert json.loads(one.body)["name"] == "test_threshold"
    contract.check("get", "/v1/models", unknown)
    assert unknown.status == 404
    contract.check("get", "/logs", bad_lines)
    assert bad_lines.status == 422


@pytest.mark.parametrize("output", [None, "all", "image", "json", "IMAGE"])
def test_segmentation_answers_match_the_document(contract: Contract, server: LiveServer, cube: Path,
                                                 output: str | None) -> None:
    query = {"model": "test_threshold_native", **({"output": output} if output else {})}
    answer = upload(server, "/v1/segmentation", cube, **query)
    assert answer.status == 200
    expected = {None: "multipart/form-data", "all": "multipart/form-data", "image": "application/octet-stream",
                "IMAGE": "application/octet-stream", "json": "application/json"}[output]
    assert answer.media_type == expected
    contract.check("post", "/v1/segmentation", answer)


def test_missing_model_is_400_naming_it(contract: Contract, server: LiveServer, cube: Path) -> None:
    for path in INFERENCE_ROUTES:
        answer = upload(server, path, cube)
        contract.check("post", path, answer)
        assert answer.status == 400, path
        error = error_of(answer)
        assert "model" in error["detail"] and error["details"] == {"parameter": "model"}
    unknown = upload(server, "/v1/segmentation", cube, model="no_such_model")
    contract.check("post", "/v1/segmentation", unknown)
    assert unknown.status == 404 and error_of(unknown)["code"] == "not_found"


def test_unknown_output_is_400_naming_the_accepted_values(contract: Contract, server: LiveServer,
                                                          cube: Path) -> None:
    answer = upload(server, "/v1/segmentation", cube, model="test_threshold_native", output="pdf")
    contract.check("post", "/v1/segmentation", answer)
    assert answer.status == 400
    assert "all, image, json" in error_of(answer)["detail"]


def test_unusable_image_expired_session_and_oversized_body(contract: Contract, server: LiveServer,
                                                           tmp_path: Path) -> None:
    flat = save_nifti(tmp_path / "slice.nii.gz", np.zeros((64, 64), dtype=np.int16), np.eye(4))
    incompatible = upload(server, "/v1/segmentation", flat, model="test_threshold")
    contract.check("post", "/v1/segmentation", incompatible)
    assert incompatible.status == 422
    expired = upload(server, "/v1/deepgrow", None, json.dumps({"foreground": [[1, 2, 3]]}),
                     model="demo_deepgrow_3d", session_id="00000000-0000-0000-0000-000000000000")
    contract.check("post", "/v1/deepgrow", expired)
    assert expired.status == 440
    oversized = declared_only(server, "/v1/segmentation?model=test_threshold", 5 * 2**30)
    contract.check("post", "/v1/segmentation", oversized)
    assert oversized.status == 413


def declared_only(server: LiveServer, target: str, length: int) -> Answer:
    """A multipart POST that declares `length` bytes and sends none of them: refused from its headers."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.putrequest("POST", target)
        connection.putheader("Content-Type", "multipart/form-data; boundary=xyz")
        connection.putheader("Content-Length", str(length))
        connection.endheaders()
        response = connection.getresponse()
        return Answer(response.status, response.getheader("content-type", ""), response.read())
    finally:
        connection.close()


@pytest.mark.parametrize("path", sorted(PARAMS_MODELS))
def test_published_example_requests_work(contract: Contract, server: LiveServer, cube: Path, tmp_path: Path,
                                         path: str) -> None:
    operation = contract.operation("post", path)
    params = operation["requestBody"]["content"]["multipart/form-data"]["examples"]["example"]["value"]["params"]
    query = {p["name"]: p["schema"]["examples"][0] for p in operation.get("parameters", []) if p["required"]}
    answer = upload(server, path, example_file(path, cube, tmp_path), params, **query)
    assert answer.status == 200, answer.body[:500]
    contract.check("post", path, answer)


def example_file(path: str, cube: Path, tmp_path: Path) -> Path:
    """What each example request uploads: a volume, a mask, or a PNG slice."""
    if path == "/v1/fixpolygon":
        png = tmp_path / "slice.png"
        png.write_bytes(encode_png(np.zeros((64, 64), dtype=np.uint8)))
        return png
    if path == "/v1/mask2polygon":
        _, mask = cube_volume()
        return save_nifti(tmp_path / "mask.nii.gz", mask, np.eye(4))
    return cube


def test_sessions_and_a_json_body_click(contract: Contract, server: LiveServer, cube: Path) -> None:
    with server.client() as client, open(cube, "rb") as handle:
        created = Answer.of(client.put("/session/", params={"expiry": 0}, files={"image": (cube.name, handle)}))
        contract.check("put", "/session/", created)
        session_id = json.loads(created.body)["session_id"]
        contract.check("get", "/session/{session_id}", Answer.of(client.get(f"/session/{session_id}")))
        click = Answer.of(client.post("/v1/deepgrow", params={"model": "demo_deepgrow_3d", "session_id": session_id},
                                      json={"foreground": [[45, 35, 20]], "current_point": [45, 35, 20]}))
        contract.check("post", "/v1/deepgrow", click)
        assert click.status == 200 and click.media_type == "multipart/form-data"
        contract.check("delete", "/session/{session_id}", Answer.of(client.delete(f"/session/{session_id}")))
        gone = Answer.of(client.get(f"/session/{session_id}"))
        no_image = Answer.of(client.put("/session/", content=b"{}", headers={"content-type": "application/json"}))
    contract.check("get", "/session/{session_id}", gone)
    assert gone.status == 404
    contract.check("put", "/session/", no_image)
    assert no_image.status == 400


def test_polygon_errors_match_the_document(contract: Contract, server: LiveServer, cube: Path) -> None:
    no_file = upload(server, "/v1/mask2polygon", None, json.dumps({"more_points": 10}))
    contract.check("post", "/v1/mask2polygon", no_file)
    assert no_file.status == 400
    bad_params = upload(server, "/v1/fixpolygon", cube, json.dumps({"vertex_offset": [1, 2]}))
    contract.check("post", "/v1/fixpolygon", bad_params)
    assert bad_params.status == 400 and "poly" in error_of(bad_params)["detail"]
