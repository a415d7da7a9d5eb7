"""The cluster deployment files (docker/compose.ray.yaml, docker/kuberay/raycluster.yaml) and the README section
that names them: parsed, never run (no docker, no Kubernetes, no network)."""

import json
import re
import shlex
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (it comes with the cluster extra's Ray)")

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker" / "compose.ray.yaml"
KUBERAY = REPO / "docker" / "kuberay" / "raycluster.yaml"
RESOURCE = "swapwatch_sessions"


def _interpolate(text: str) -> str:
    """Compose's variable interpolation with every variable unset: ``${V:-default}`` (nested too) gives the
    default, ``${V:?error}`` and ``${V}`` a placeholder, ``$$`` a literal ``$``."""
    pattern = re.compile(r"\$\{(\w+)(?::?([-?])((?:[^{}]|\{[^{}]*\})*))?\}")
    while True:
        text, n = pattern.subn(lambda m: _interpolate(m.group(3)) if m.group(2) == "-" else f"<{m.group(1)}>",
                               text)
        if not n:
            return text.replace("$$", "$")


def _shell_words(command) -> list[str]:
    """A container command as the words its program receives (``sh -c SCRIPT``: the script's words)."""
    words = [command] if isinstance(command, str) else list(command)
    if words[:2] in (["sh", "-c"], ["bash", "-c"]):
        words = words[2:]
    return [w for part in words for w in shlex.split(_interpolate(part))]


def _option(words: list[str], name: str) -> str | None:
    for i, word in enumerate(words):
        if word == name and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(name + "="):
            return word[len(name) + 1:]
    return None


def _ray_resources(words: list[str]) -> dict:
    value = _option(words, "--resources")
    assert value is not None, f"no --resources in {words}"
    return json.loads(value)


def _serve_words(words: list[str]) -> list[str]:
    """The words after `swapwatch serve` (the part of the script that runs the front end)."""
    for i in range(len(words) - 1):
        if words[i:i + 2] == ["swapwatch", "serve"]:
            return words[i + 2:]
    raise AssertionError(f"no `swapwatch serve` in {words}")


# ---- docker compose ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_has_head_worker_and_front(compose):
    services = compose["services"]
    assert {"ray-head", "ray-worker", "front"} <= set(services)
    head = _shell_words(services["ray-head"]["command"])
    assert head[:3] == ["ray", "start", "--head"] and _option(head, "--port") == "6379"


def test_compose_worker_joins_the_head_and_offers_sessions(compose):
    words = _shell_words(compose["services"]["ray-worker"]["command"])
    assert "ray start" in " ".join(words) and "--head" not in words
    assert _option(words, "--address") == "ray-head:6379"
    assert "--block" in words  # the container lives as long as the Ray node
    assert _ray_resources(words) == {RESOURCE: 4}


def test_compose_front_runs_serve_on_the_cluster(compose):
    front = compose["services"]["front"]
    words = _shell_words(front["command"])
    # The front end's container joins as a Ray node that takes no work, then runs the driver.
    assert _option(words, "--address") == "ray-head:6379"
    assert _option(words, "--num-cpus") == "0" and _option(words, "--num-gpus") == "0"
    assert "--resources" not in words
    serve = _serve_words(words)
    assert _option(serve, "--ray") == "ray-head:6379"
    assert _option(serve, "--host") == "0.0.0.0" and _option(serve, "--port") == "8080"
    worker = _ray_resources(_shell_words(compose["services"]["ray-worker"]["command"]))
    assert worker[RESOURCE] % int(_option(serve, "--sessions-per-host")) == 0
    assert any(str(p).endswith(":8080") for p in front["ports"])


def test_compose_ray_services_share_image_and_auth(compose):
    services = compose["services"]
    ray_services = [services[name] for name in ("ray-head", "ray-worker", "front")]
    assert len({s["image"] for s in ray_services}) == 1
    for service in ray_services:
        assert service["build"]["args"]["EXTRAS"] == "cluster"
        assert service["build"]["dockerfile"] == "docker/Dockerfile.cpu"
        env = service["environment"]
        # One token for every Ray process, from the environment of `docker compose`.
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?")
    # The GPU reservation is there to uncomment.
    assert "capabilities: [gpu]" in COMPOSE.read_text()


def test_dockerfiles_take_extras():
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (REPO / "docker" / name).read_text()
        assert re.search(r"^ARG EXTRAS=", text, re.MULTILINE), name
        assert "${EXTRAS:+" in text, name


# ---- KubeRay -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kuberay() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(KUBERAY.read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), "one object of each kind"
    return by_kind


def test_raycluster_head_and_gpu_workers(kuberay):
    cluster = kuberay["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert spec["rayVersion"] == "2.60.0"
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["template"]["spec"]["containers"]
    groups = spec["workerGroupSpecs"]
    assert len(groups) == 1
    group = groups[0]
    assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    params = group["rayStartParams"]
    # KubeRay pastes the value into a shell command line: `--resources="{\"swapwatch_sessions\": 4}"`.
    resources = _ray_resources(shlex.split("--resources=" + params["resources"]))
    assert resources == {RESOURCE: 4}
    container = group["template"]["spec"]["containers"][0]
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    assert int(params["num-gpus"]) == int(gpus) == 1


def test_raycluster_probes_and_auth_do_not_need_the_dashboard(kuberay):
    spec = kuberay["RayCluster"]["spec"]
    containers = [spec["headGroupSpec"]["template"]["spec"]["containers"][0],
                  spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]]
    for container in containers:
        for probe in ("readinessProbe", "livenessProbe"):
            assert "tcpSocket" in container[probe], (container["name"], probe)
    worker_port = int(spec["workerGroupSpecs"][0]["rayStartParams"]["node-manager-port"])
    assert containers[1]["livenessProbe"]["tcpSocket"]["port"] == worker_port
    front = kuberay["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    for env in (containers[0]["env"], containers[1]["env"], spec["autoscalerOptions"]["env"], front["env"]):
        values = {e["name"]: e for e in env}
        assert values["RAY_AUTH_MODE"]["value"] == "token"
        assert values["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "swapwatch-ray-token",
                                                                          "key": "auth_token"}
    assert len({c["image"] for c in containers + [front]}) == 1


def test_front_deployment_connects_to_the_head_service(kuberay):
    head_service = kuberay["RayCluster"]["metadata"]["name"] + "-head-svc"  # KubeRay's name for it
    deployment = kuberay["Deployment"]
    assert deployment["apiVersion"] == "apps/v1"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    words = _shell_words(container["command"] + container["args"])
    assert _option(words, "--address") == f"{head_service}:6379"
    assert _option(words, "--num-cpus") == "0"
    serve = _serve_words(words)
    assert _option(serve, "--ray") == f"{head_service}:6379"
    params = kuberay["RayCluster"]["spec"]["workerGroupSpecs"][0]["rayStartParams"]
    units = _ray_resources(shlex.split("--resources=" + params["resources"]))[RESOURCE]
    assert units == int(_option(serve, "--sessions-per-host")) * int(params["num-gpus"])
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = kuberay["Service"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in ("http", 8080)


# ---- README ------------------------------------------------------------------------------------------------


def test_readme_section_names_both_files():
    text = (REPO / "README.md").read_text()
    command_line = text.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    assert "\n### Running on a Ray cluster\n" in command_line
    section = command_line.split("\n### Running on a Ray cluster\n", 1)[1].split("\n### ", 1)[0]
    for needle in ("docker/compose.ray.yaml", "docker/kuberay/raycluster.yaml", "--ray local", RESOURCE,
                   "--sessions-per-host", "host-lost", "monitor --ray", "--sources", "RAY_AUTH_TOKEN"):
        assert needle in section, needle
