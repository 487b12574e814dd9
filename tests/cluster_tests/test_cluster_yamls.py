"""Every YAML in cluster/: valid for Ray's own launcher schema (or KubeRay's RayJob shape),
able to hold a trial of the siim experiment, token auth on, nothing open to the world."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

from pneumotune.search.config import load_experiment

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
YAMLS = sorted(CLUSTER.glob("*.yaml"))
LAUNCHER = [p for p in YAMLS if "provider" in (yaml.safe_load(p.read_text()) or {})]
KUBERAY = CLUSTER / "kuberay-rayjob.yaml"

# vCPUs and GPUs of the instance types the YAMLs use (provider documentation): the
# explicit `resources:` of a node type must say what the machine has.
MACHINE_SHAPES: dict[str, tuple[int, int]] = {
    "m5.2xlarge": (8, 0),
    "m5.4xlarge": (16, 0),
    "g4dn.2xlarge": (8, 1),
    "g5.2xlarge": (8, 1),
    "g5.4xlarge": (16, 1),
    "n2-standard-8": (8, 0),
    "n2-standard-16": (16, 0),
    "g2-standard-8": (8, 1),
    "g2-standard-16": (16, 1),
}
WORLD = ("0.0.0.0/0", "::/0")
IAP_RANGE = "35.235.240.0/20"  # Google's IAP TCP forwarding source range


def test_every_yaml_is_a_launcher_config_or_the_rayjob():
    assert {p.name for p in LAUNCHER} == {"aws-gpu.yaml", "gcp-gpu.yaml"}
    assert set(YAMLS) == {*LAUNCHER, KUBERAY}


def _prepared(path: Path) -> dict[str, Any]:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load(path.read_text()))
    validate_config(config)
    return config


def _machine(node_type: dict[str, Any]) -> str:
    node_config = node_type["node_config"]
    return node_config.get("InstanceType") or node_config["machineType"]


def _workers(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: spec
        for name, spec in config["available_node_types"].items()
        if name != config["head_node_type"]
    }


def _strings(node: Any):
    """Every string anywhere in a parsed YAML document (keys and values)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif isinstance(node, str):
        yield node


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_yaml_passes_rays_own_validation(path):
    config = _prepared(path)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    workers = _workers(config)
    gpu_workers = {n: s for n, s in workers.items() if s["resources"].get("GPU", 0) > 0}
    assert gpu_workers, "no GPU worker type"
    for name, spec in gpu_workers.items():
        assert spec["min_workers"] == 0 < spec["max_workers"], f"{name} does not autoscale"


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_resources_say_what_the_machines_have(path):
    config = _prepared(path)
    for name, spec in config["available_node_types"].items():
        machine = _machine(spec)
        assert machine in MACHINE_SHAPES, f"{name}: add the shape of {machine} to this test"
        cpus, gpus = MACHINE_SHAPES[machine]
        assert spec["resources"].get("CPU") == cpus, (name, machine)
        assert spec["resources"].get("GPU", 0) == gpus, (name, machine)


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_gpu_workers_hold_a_trial_of_the_siim_experiment(path):
    res = load_experiment("siim").resources
    config = _prepared(path)
    fits = []
    for name, spec in _workers(config).items():
        cpus, gpus = spec["resources"].get("CPU", 0), spec["resources"].get("GPU", 0)
        # One trial worker = res.cpu CPUs + res.gpu GPUs; a fractional gpu shares a GPU.
        per_node = math.floor(cpus / res.cpu)
        if res.gpu > 0:
            per_node = min(per_node, math.floor(gpus / res.gpu + 1e-9))
        # A multi-worker trial spreads its workers over the nodes of one type.
        if per_node >= 1 and per_node * spec["max_workers"] >= res.workers_per_trial:
            fits.append(name)
    assert fits, f"no worker type of {path.name} can hold a siim trial asking for {res}"


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_nothing_is_open_to_the_world(path):
    raw = yaml.safe_load(path.read_text())
    assert not [s for s in _strings(raw) if any(w in s for w in WORLD)]
    config = _prepared(path)
    provider = config["provider"]["type"]
    node_types = config["available_node_types"]
    if provider == "aws":
        # Ray creates a security group for any node type without SecurityGroupIds and
        # opens SSH to 0.0.0.0/0 in it (ray/autoscaler/_private/aws/config.py,
        # _create_default_ssh_inbound_rules): every node type must bring its own group.
        for name, spec in node_types.items():
            assert spec["node_config"].get("SecurityGroupIds"), name
        extra = config["provider"].get("security_group", {}).get("IpPermissions", [])
        assert not [r for r in extra if any(w in str(r) for w in WORLD)]
    elif provider == "gcp":
        # Ray creates no firewall rule on GCP; it picks the project's first subnetwork
        # when none is given, usually the default network, whose default-allow-ssh rule
        # is open to 0.0.0.0/0. Every node type names its own subnetwork instead.
        for name, spec in node_types.items():
            interfaces = spec["node_config"].get("networkInterfaces") or []
            assert interfaces, name
            for interface in interfaces:
                subnetwork = interface.get("subnetwork", "")
                assert subnetwork and not subnetwork.endswith("/default"), (name, subnetwork)
        # SSH arrives through IAP (no address of the user's has to be allowed).
        assert "start-iap-tunnel" in config["auth"].get("ssh_proxy_command", "")
        assert config["auth"].get("ssh_proxy_use_node_id") is True
    else:
        pytest.fail(f"no ingress rule check for provider {provider!r}")


def _start_commands(config: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (kind, cmd)
        for kind in ("head_start_ray_commands", "worker_start_ray_commands")
        for cmd in config[kind]
        if "ray start" in cmd
    ]


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_dashboard_stays_on_localhost(path):
    config = _prepared(path)
    starts = _start_commands(config)
    assert {kind for kind, _ in starts} == {"head_start_ray_commands", "worker_start_ray_commands"}
    for kind, cmd in starts:
        assert "--dashboard-host=127.0.0.1" in cmd, (kind, cmd)
        assert not re.search(r"--dashboard-host[= ]0\.0\.0\.0", cmd), (kind, cmd)


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_token_auth_reaches_every_node(path):
    config = _prepared(path)
    for kind, cmd in _start_commands(config):
        assert "RAY_AUTH_MODE=token" in cmd, (kind, cmd)
        token_path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", cmd)
        assert token_path, (kind, cmd)
        # The token file is copied from the user's machine to that path on every node
        # (file_mounts reach workers through the head).
        assert config["file_mounts"].get(token_path.group(1)) == "~/.ray/auth_token"
    run_options = " ".join(config["docker"]["run_options"])
    # Every process in the container (job entrypoints, `ray attach` sessions) agrees.
    assert "--env RAY_AUTH_MODE=token" in run_options
    assert "RAY_AUTH_MODE=disabled" not in yaml.safe_dump(config)


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_image_is_rays_gpu_image_of_this_ray(path):
    config = _prepared(path)
    image = config["docker"]["image"]
    assert image == f"rayproject/ray:{ray.__version__}-py311-gpu", image
    # Tune writes checkpoints from workers: they must see the head's storage path.
    assert "--volume /mnt/pneumotune:/mnt/pneumotune" in config["docker"]["run_options"]
    for name, spec in _workers(config).items():
        assert any("/mnt/pneumotune" in c for c in spec["initialization_commands"]), name


def test_dockerfile_builds_on_the_same_image_with_the_gpu_extra():
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray.__version__)}-py311-gpu$", text, re.M)
    assert 'pip install --no-cache-dir ".[gpu]"' in text


def test_kuberay_rayjob_runs_the_search_on_a_gpu_worker_group():
    job = yaml.safe_load(KUBERAY.read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    entrypoint = spec["entrypoint"].split()
    assert entrypoint[:2] == ["pneumotune", "search"]
    assert "--address auto" in spec["entrypoint"] and "--config siim" in spec["entrypoint"]

    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"]["mode"] == "token"
    head = cluster["headGroupSpec"]
    # No public Service: ClusterIP only, no ingress.
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert not head.get("enableIngress", False)
    gpu_groups = [
        group
        for group in cluster["workerGroupSpecs"]
        if any(
            int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) > 0
            for c in group["template"]["spec"]["containers"]
        )
    ]
    assert gpu_groups, "no GPU worker group"
    res = load_experiment("siim").resources
    for group in gpu_groups:
        assert group["minReplicas"] == 0 < group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= res.gpu
        assert float(limits["cpu"]) >= res.cpu
