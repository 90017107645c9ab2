"""Offline checks of deploy/: the Dockerfile, the compose file and the Kubernetes manifests must agree with
each other and with the server's real settings, so they cannot rot silently (no Docker or cluster here)."""

from __future__ import annotations

import json
import os
import re
import runpy
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from aiaa_server.settings import Settings, settings_from_cli

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.30"
YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
MANIFESTS = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_objects() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in load_all(path)]


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def settings_with_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], argv: list[str]) -> Settings:
    """What the server would run with: these AIAA_* variables and these CLI flags (as `aiaa-server` parses)."""
    for key in [k for k in os.environ if k.startswith("AIAA_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    return settings_from_cli(argv)


# -- Dockerfile -------------------------------------------------------------------------------------------


def dockerfile_instructions(path: Path = DEPLOY / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not pending):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line.strip())
        pending = ""
    instructions = []
    for entry in logical:
        keyword, _, rest = entry.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_values(keyword: str) -> list[str]:
    return [rest for key, rest in dockerfile_instructions() if key == keyword]


def dockerfile_args() -> dict[str, str]:
    args = {}
    for rest in dockerfile_values("ARG"):
        name, _, default = rest.partition("=")
        args[name] = default
    return args


def dockerfile_env() -> dict[str, str]:
    args = dockerfile_args()
    env: dict[str, str] = {}
    for rest in dockerfile_values("ENV"):
        for pair in shlex.split(rest):
            key, _, value = pair.partition("=")
            env[key] = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value)
    return env


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list), f"use the exec (JSON) form: {rest}"
    return value


def test_dockerfile_command_is_a_valid_server_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    (entrypoint,) = dockerfile_values("ENTRYPOINT")
    assert exec_form(entrypoint) == ["aiaa-server"]
    assert 'aiaa-server = "aiaa_server.cli:main"' in (REPO / "pyproject.toml").read_text()
    (cmd,) = dockerfile_values("CMD")
    settings = settings_with_env(monkeypatch, dockerfile_env(), exec_form(cmd))
    assert settings.host == "0.0.0.0"
    (expose,) = dockerfile_values("EXPOSE")
    assert int(expose) == settings.port
    (volume,) = dockerfile_values("VOLUME")
    assert exec_form(volume) == [str(settings.workspace)]
    assert settings.device == "cpu"  # the default build is the CPU one


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = dockerfile_values("USER")
    assert users and users[-1] not in ("root", "0")
    assert any("useradd" in run and users[-1] in run for run in dockerfile_values("RUN"))


def test_dockerfile_builds_cpu_and_cuda_variants() -> None:
    args = dockerfile_args()
    assert {"BASE_IMAGE", "TORCH_VERSION", "TORCH_INDEX_URL", "DEVICE"} <= set(args)
    assert args["TORCH_INDEX_URL"].endswith("/cpu")
    assert any("${TORCH_INDEX_URL}" in run and "torch==${TORCH_VERSION}" in run for run in dockerfile_values("RUN"))
    assert dockerfile_instructions()[0] == ("ARG", "BASE_IMAGE=" + args["BASE_IMAGE"])
    assert "FROM ${BASE_IMAGE}" in [f"FROM {rest}" for rest in dockerfile_values("FROM")]


def test_dockerfile_copies_existing_paths_that_the_ignore_file_lets_through() -> None:
    allowed = [line[1:] for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")]
    copies = [rest.split() for rest in dockerfile_values("COPY")]
    sources = [source for parts in copies for source in parts[:-1]]
    assert "models" in sources, "the demo MMARs must be bundled"
    for source in sources:
        assert (REPO / source).exists(), source
        assert any(pattern.rstrip("*").rstrip("/") == source for pattern in allowed), f"{source} is ignored"


def test_dockerfile_healthcheck_probes_health_on_the_exposed_port() -> None:
    (healthcheck,) = dockerfile_values("HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert "--start-period" in options
    argv = exec_form(command)
    script = argv[-1]
    assert script == "/opt/aiaa-server/deploy/healthcheck.py"
    assert any(rest.split() == ["deploy/healthcheck.py", "./deploy/healthcheck.py"] for rest in dockerfile_values("COPY"))
    assert "WORKDIR /opt/aiaa-server" in [f"WORKDIR {w}" for w in dockerfile_values("WORKDIR")]
    namespace = runpy.run_path(str(DEPLOY / "healthcheck.py"))
    (expose,) = dockerfile_values("EXPOSE")
    assert namespace["health_url"](dockerfile_env()) == f"http://127.0.0.1:{expose}/health"
    tls_env = {**dockerfile_env(), "AIAA_SSL_CERTFILE": "/certs/tls.crt"}
    assert namespace["health_url"](tls_env).startswith("https://")


# -- YAML: syntax and lint -----------------------------------------------------------------------------


def test_there_is_yaml_to_check() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in YAML_FILES}
    assert {"docker-compose.yml", "k8s/kustomization.yaml", "k8s/aiaa-server.yaml", "k8s/triton.yaml",
            "k8s/redis.yaml", "k8s/workspace-pvc.yaml"} <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_yaml_parses(path: Path) -> None:
    docs = load_all(path)
    assert docs and all(isinstance(doc, dict) for doc in docs)


def test_yamllint() -> None:
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig(file=str(DEPLOY / "yamllint.yaml"))
    problems = [f"{path.relative_to(REPO)}:{p.line}:{p.column} {p.message}"
                for path in YAML_FILES for p in linter.run(path.read_text(), config, str(path))]
    assert not problems, "\n".join(problems)


# -- Kubernetes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.relative_to(K8S).as_posix())
def test_manifests_match_the_kubernetes_schemas(path: Path) -> None:
    import kubernetes_validate  # in the test extra; validates offline against bundled schemas

    for doc in load_all(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    listed = set(kustomization["resources"])
    top_level = {p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == top_level
    assert {i["name"] for i in kustomization["images"]} == {"aiaa-server"}


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in pod_spec(deployment)["containers"] if c["name"] == name]
    return found


def port_number(container_spec: dict[str, Any], name: str) -> int:
    (found,) = [p["containerPort"] for p in container_spec["ports"] if p["name"] == name]
    return found


def service_port(service: dict[str, Any], name: str) -> int:
    (found,) = [p["port"] for p in service["spec"]["ports"] if p["name"] == name]
    return found


def test_services_select_their_pods() -> None:
    for service in [o for o in k8s_objects() if o["kind"] == "Service"]:
        deployment = find("Deployment", service["metadata"]["name"])
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ports = {p["name"] for c in pod_spec(deployment)["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


def aiaa_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The aiaa-server pod's settings: the image's ENV and CMD plus the ConfigMap."""
    deployment = find("Deployment", "aiaa-server")
    spec = container(deployment, "aiaa-server")
    assert "command" not in spec and "args" not in spec, "the pod runs the image's ENTRYPOINT and CMD"
    env = dict(dockerfile_env())
    for source in spec["envFrom"]:
        env.update(find("ConfigMap", source["configMapRef"]["name"])["data"])
    for variable in spec.get("env", []):
        env[variable["name"]] = variable["value"]
    unknown = {k for k in env if k.startswith("AIAA_") and k[5:].lower() not in Settings.model_fields}
    assert not unknown, f"not server settings: {unknown}"
    (cmd,) = dockerfile_values("CMD")
    return settings_with_env(monkeypatch, env, exec_form(cmd))


def test_aiaa_server_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = aiaa_settings(monkeypatch)
    deployment = find("Deployment", "aiaa-server")
    spec = container(deployment, "aiaa-server")
    assert port_number(spec, "http") == settings.port == service_port(find("Service", "aiaa-server"), "http")
    assert spec["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert spec["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert spec["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert pod_spec(deployment)["securityContext"]["runAsNonRoot"] is True

    mounts = {m["name"]: m["mountPath"] for m in spec["volumeMounts"]}
    assert mounts["workspace"] == str(settings.workspace)
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    pvc = find("PersistentVolumeClaim", volumes["workspace"]["persistentVolumeClaim"]["claimName"])
    if deployment["spec"]["replicas"] > 1:
        assert "ReadWriteMany" in pvc["spec"]["accessModes"], "replicas share the workspace"
        assert settings.session_store.startswith("redis://"), "replicas need a shared session store"


def test_aiaa_server_reaches_triton_and_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = aiaa_settings(monkeypatch)
    assert settings.engine == "triton" and settings.triton_protocol == "grpc"
    host, port = settings.triton_url.split(":")
    assert service_port(find("Service", host), "grpc") == int(port)
    redis_host, redis_port = re.match(r"redis://([^:/]+):(\d+)/\d+$", settings.session_store).groups()
    assert service_port(find("Service", redis_host), "redis") == int(redis_port)


def test_triton_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = aiaa_settings(monkeypatch)
    deployment = find("Deployment", "triton")
    spec = container(deployment, "triton")
    assert spec["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert spec["resources"]["requests"]["nvidia.com/gpu"] == spec["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert "--model-control-mode=explicit" in spec["args"]
    assert f"--model-repository={settings.triton_models_dir}" in spec["args"]
    assert f"--grpc-port={port_number(spec, 'grpc')}" in spec["args"]
    mounts = {m["name"]: m["mountPath"] for m in spec["volumeMounts"]}
    assert mounts["workspace"] == str(settings.workspace)
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    assert volumes["workspace"]["persistentVolumeClaim"]["claimName"] == "aiaa-workspace"
    assert spec["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    (init,) = pod_spec(deployment)["initContainers"]
    assert str(settings.triton_models_dir) in init["command"]


def test_redis_keeps_nothing_on_disk() -> None:
    spec = container(find("Deployment", "redis"), "redis")
    assert spec["args"][:4] == ["--save", "", "--appendonly", "no"]


# -- docker compose -------------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_aiaa_server(monkeypatch: pytest.MonkeyPatch) -> None:
    service = compose()["services"]["aiaa-server"]
    assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / service["build"]["context"]).resolve() == REPO
    assert set(service["build"].get("args", {})) <= set(dockerfile_args())
    (cmd,) = dockerfile_values("CMD")
    argv = service.get("command", exec_form(cmd))
    settings = settings_with_env(monkeypatch, {**dockerfile_env(), **service["environment"]}, argv)
    assert settings.engine == "triton"
    _published, container_port = service["ports"][0].split(":")
    assert int(container_port) == settings.port
    assert f"workspace:{settings.workspace}" in service["volumes"]
    assert service["healthcheck"]["test"] == ["CMD", "python", "/opt/aiaa-server/deploy/healthcheck.py"]


def test_compose_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    document = compose()
    aiaa, triton = document["services"]["aiaa-server"], document["services"]["triton"]
    settings = settings_with_env(monkeypatch, {**dockerfile_env(), **aiaa["environment"]}, [])
    assert "workspace" in document["volumes"]
    assert "workspace:/workspace" in triton["volumes"] and "workspace:/workspace" in aiaa["volumes"]
    command = triton["command"]
    assert command[0] == "tritonserver" and "--model-control-mode=explicit" in command
    assert f"--model-repository=/workspace/{settings.triton_models_dir.relative_to(settings.workspace)}" in command
    host, port = aiaa["environment"]["AIAA_TRITON_URL"].split(":")
    assert host == "triton" and f"--grpc-port={port}" in command and port in triton["expose"]
    assert triton["depends_on"]["aiaa-server"]["condition"] == "service_healthy"
    assert triton["image"] == container(find("Deployment", "triton"), "triton")["image"]
    (gpu,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["capabilities"] == ["gpu"]


def test_readme_names_every_deploy_file() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for name in ("Dockerfile", "docker-compose.yml", "kustomization.yaml", "--ssl_certfile", "--session_store",
                 "/health", "/ready", "Slicer"):
        assert name in readme, name

