"""`GET /metrics`: Prometheus text format, HTTP counts by route/status, latency histograms, pool gauges."""

from __future__ import annotations

import re
import secrets

from tests.support.server import LiveServer

SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? [-+0-9.eEInf]+$')


def _value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_text_format_and_counts(server: LiveServer) -> None:
    with server.client() as client:
        before = client.get("/metrics").text
        for _ in range(3):
            assert client.get("/v1/models").status_code == 200
        assert client.get("/no/such/path").status_code == 404
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    for line in text.splitlines():
        assert line.startswith(("# HELP ", "# TYPE ")) or SAMPLE.match(line), line
    labels = {"method": "GET", "path": "/v1/models", "status": "200"}
    assert _value(text, "aiaa_http_requests_total", **labels) - _value(before, "aiaa_http_requests_total", **labels) == 3
    assert _value(text, "aiaa_http_requests_total", path="(unmatched)", status="404") >= 1
    assert "/no/such/path" not in text  # unmatched paths share one label
    count = _value(text, "aiaa_http_request_duration_seconds_count", method="GET", path="/v1/models")
    inf_bucket = _value(text, "aiaa_http_request_duration_seconds_bucket", method="GET", path="/v1/models", le="+Inf")
    assert count == inf_bucket >= 3
    for gauge in ("aiaa_inference_queue_depth", "aiaa_inference_in_flight"):
        assert f'{gauge}{{lane="interactive"}}' in text and f'{gauge}{{lane="batch"}}' in text
    assert "aiaa_inference_queue_capacity " in text and "aiaa_inference_workers " in text


def test_unknown_methods_and_paths_share_one_label_each(server: LiveServer) -> None:
    methods = [f"X{secrets.token_hex(4).upper()}" for _ in range(20)]
    paths = [f"/scan/{secrets.token_hex(4)}" for _ in range(20)]
    with server.client() as client:
        before = client.get("/metrics").text
        for method, path in zip(methods, paths):
            client.request(method, "/v1/models")
            client.request(method, path)
            client.get(path)
        text = client.get("/metrics").text
    for line in text.splitlines():
        assert line.startswith(("# HELP ", "# TYPE ")) or SAMPLE.match(line), line
    assert not any(method in text for method in methods)
    assert not any(path in text for path in paths)
    series = [line for line in text.splitlines() if line.startswith("aiaa_http_requests_total{")]
    assert {re.search(r'method="([^"]*)"', line).group(1) for line in series} <= {  # type: ignore[union-attr]
        "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "other"}
    other = sum(_value(text, "aiaa_http_requests_total", method="other", path=p) for p in ("/v1/models", "(unmatched)"))
    other_before = sum(_value(before, "aiaa_http_requests_total", method="other", path=p)
                       for p in ("/v1/models", "(unmatched)"))
    assert other - other_before == 40
