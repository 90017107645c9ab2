"""`GET /metrics`: Prometheus text format, HTTP counts by route/status, latency histograms, pool gauges."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

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


def test_process_and_platform_metrics_are_exposed(server: LiveServer) -> None:
    with server.client() as client:
        text = client.get("/metrics").text
    assert "# TYPE process_cpu_seconds_total counter" in text
    assert _value(text, "process_cpu_seconds_total") > 0
    assert "python_info{" in text
    assert "# TYPE aiaa_http_requests_total counter" in text
    assert "# TYPE aiaa_http_request_duration_seconds histogram" in text
    assert "# TYPE aiaa_inference_queue_depth gauge" in text


def test_multiprocess_mode_renders_every_process_from_the_shared_folder(tmp_path: Path) -> None:
    # prometheus-client reads PROMETHEUS_MULTIPROC_DIR when first imported, hence a fresh interpreter.
    script = textwrap.dedent("""
        import multiprocessing

        from aiaa_server.metrics import HttpMetrics, MetricsRegistry

        def worker():
            HttpMetrics(MetricsRegistry()).record("GET", "/v1/models", 200, 0.01)

        if __name__ == "__main__":
            for _ in range(2):
                process = multiprocessing.get_context("spawn").Process(target=worker)
                process.start()
                process.join()
            print(MetricsRegistry().render())
    """)
    (tmp_path / "metrics_dir").mkdir()
    (tmp_path / "scrape.py").write_text(script)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics_dir"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = subprocess.run([sys.executable, str(tmp_path / "scrape.py")], env=env, capture_output=True, text=True,
                            timeout=120, check=True)
    text = result.stdout
    assert _value(text, "aiaa_http_requests_total", method="GET", path="/v1/models", status="200") == 2
    assert _value(text, "aiaa_http_request_duration_seconds_count", method="GET", path="/v1/models") == 2
    assert "process_cpu_seconds_total" not in text  # per-process collectors do not apply across processes
