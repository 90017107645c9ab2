"""GET /v1/models through the real server (protocol section 6)."""

from __future__ import annotations

from tests.support.server import LiveServer


def test_lists_bundled_demo_and_test_models(server: LiveServer) -> None:
    with server.client() as client:
        response = client.get("/v1/models")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    models = {m["name"]: m for m in response.json()}
    assert "demo_spleen_ct_segmentation" in models
    assert "test_threshold" in models
    for model in models.values():
        assert {"name", "type", "labels", "description", "version"} <= set(model)
        assert isinstance(model["version"], str)  # the C++ client only parses strings
        assert isinstance(model["description"], str)
    assert models["demo_spleen_ct_segmentation"]["labels"] == ["spleen"]
    assert models["demo_spleen_ct_segmentation"]["type"] == "segmentation"


def test_slash_variant_answers_directly(server: LiveServer) -> None:
    with server.client() as client:
        plain = client.get("/v1/models")
        slashed = client.get("/v1/models/")
    assert slashed.status_code == 200  # no 307: the Python client never follows redirects
    assert slashed.json() == plain.json()


def test_label_filter_is_case_insensitive_exact(server: LiveServer) -> None:
    with server.client() as client:
        spleen = client.get("/v1/models", params={"label": "Spleen"}).json()
        partial = client.get("/v1/models", params={"label": "sple"}).json()
    assert "demo_spleen_ct_segmentation" in [m["name"] for m in spleen]
    assert all(any(label.lower() == "spleen" for label in m["labels"]) for m in spleen)
    assert partial == []


def test_type_filter_combines_with_label(server: LiveServer) -> None:
    with server.client() as client:
        segmentation = client.get("/v1/models", params={"type": "segmentation"}).json()
        none = client.get("/v1/models", params={"type": "annotation", "label": "bright"}).json()
    assert segmentation and all(m["type"] == "segmentation" for m in segmentation)
    assert none == []


def test_model_param_returns_one_object(server: LiveServer) -> None:
    with server.client() as client:
        response = client.get("/v1/models/", params={"model": "test_threshold"})
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body, dict)
    assert body["name"] == "test_threshold"
    assert body["labels"] == ["bright"]
    assert body["version"] == "1"  # config says 1 (int): exposed as string


def test_unknown_model_is_404_json(server: LiveServer) -> None:
    with server.client() as client:
        response = client.get("/v1/models", params={"model": "no_such_model"})
    assert response.status_code == 404
    assert "no_such_model" in response.json()["detail"]
