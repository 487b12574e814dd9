"""Every YAML in cluster/: valid for Ray's own launcher schema (or the shape of the KubeRay
manifests), able to hold a trial of the siim experiment, token auth on, nothing open to
the world, and the first-try traps of a real launch closed (issue 15): OS Login and the
project SSH key on GCP, a scoped head role, file-mount ownership, zones, conversion on
CPU nodes, apt locks, the CUDA of the image, the shared volume of the RayJob, and each
node's copy of the arrays (PNEUMOTUNE_CACHE) on its own disk.

Where a check depends on what Ray itself does, it reads or calls the installed Ray
(pinned by pyproject.toml), so a Ray upgrade that changes the behaviour fails here."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shlex
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

from pneumotune.search.config import load_experiment

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
YAMLS = sorted(CLUSTER.glob("*.yaml"))
RAY_PRIVATE = Path(ray.__file__).parent / "autoscaler" / "_private"


def _documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


LAUNCHER = [p for p in YAMLS if "provider" in _documents(p)[0]]
KUBERAY = CLUSTER / "kuberay-rayjob.yaml"
KUBERAY_DATA = CLUSTER / "kuberay-data.yaml"
GCP_HEAD_ROLE = CLUSTER / "gcp-head-role.yaml"
AWS_HEAD_POLICY = CLUSTER / "aws-head-policy.json"

# vCPUs and GPUs of the instance types the YAMLs use (provider documentation): the
# explicit `resources:` of a node type must say what the machine has.
MACHINE_SHAPES: dict[str, tuple[int, int]] = {
    "m5.2xlarge": (8, 0),
    "m5.4xlarge": (16, 0),
    "c6i.4xlarge": (16, 0),
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
# The user of Ray's images: docker/base-deps/Dockerfile of ray-project/ray, ARG RAY_UID=1000
# and ARG RAY_GID=100 (`useradd ... ray --uid $RAY_UID --gid $RAY_GID`, passwordless sudo).
RAY_UID, RAY_GID = 1000, 100
APT_LOCK = "-o DPkg::Lock::Timeout=600"


def test_every_yaml_is_a_launcher_config_or_a_kuberay_manifest_or_the_gcp_role():
    assert {p.name for p in LAUNCHER} == {"aws-gpu.yaml", "gcp-gpu.yaml"}
    assert set(YAMLS) == {*LAUNCHER, KUBERAY, KUBERAY_DATA, GCP_HEAD_ROLE}


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


def _init_commands(config: dict[str, Any], node_type: str) -> list[str]:
    """The host commands a node of this type runs (a node type's own list replaces the
    global one: ray/autoscaler/_private/autoscaler.py, _get_node_type_specific_fields)."""
    spec = config["available_node_types"][node_type]
    return spec.get("initialization_commands", config["initialization_commands"])


def _setup_commands(config: dict[str, Any], node_type: str) -> list[str]:
    """The container setup commands of a node type (prepare_config merged setup_commands
    into head_setup_commands / worker_setup_commands; a node type's own list wins)."""
    if node_type == config["head_node_type"]:
        return config["head_setup_commands"]
    spec = config["available_node_types"][node_type]
    return spec.get("worker_setup_commands", config["worker_setup_commands"])


def _all_commands(config: dict[str, Any]) -> list[str]:
    commands = [
        *config["initialization_commands"],
        *config["head_setup_commands"],
        *config["worker_setup_commands"],
        *config["head_start_ray_commands"],
        *config["worker_start_ray_commands"],
    ]
    for spec in config["available_node_types"].values():
        commands += spec.get("initialization_commands", [])
        commands += spec.get("worker_setup_commands", [])
    return commands


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_yaml_passes_rays_own_validation(path):
    config = _prepared(path)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    workers = _workers(config)
    gpu_workers = {n: s for n, s in workers.items() if s["resources"].get("GPU", 0) > 0}
    assert gpu_workers, "no GPU worker type"
    for name, spec in workers.items():
        assert spec["min_workers"] == 0 < spec["max_workers"], f"{name} does not autoscale"
    # The global cap leaves room for every worker type at once.
    assert config["max_workers"] >= sum(s["max_workers"] for s in workers.values())


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


# --- item 7: the image's CUDA is TensorFlow's, and a worker says whether TF sees its GPU


def _tensorflow_build_info() -> dict[str, Any]:
    """TensorFlow's build_info (CUDA and cuDNN its wheels are built against), read from
    the installed file without importing TensorFlow."""
    spec = importlib.util.find_spec("tensorflow")
    assert spec and spec.submodule_search_locations
    path = Path(spec.submodule_search_locations[0]) / "python" / "platform" / "build_info.py"
    cuda = re.search(r"'cuda_version', '([\d.]+)'", path.read_text())
    cudnn = re.search(r"'cudnn_version', '(\d+)'", path.read_text())
    assert cuda and cudnn, path
    return {"cuda": cuda.group(1), "cudnn": cudnn.group(1)}


def _cuda_image() -> str:
    """rayproject/ray:<ray>-py311-cu<major><minor>: the tag scheme of Ray's images
    (ci/ray_ci/docker_container.py, _get_platform_tag: cu12.5.1-cudnn -> -cu125; the -gpu
    alias is GPU_PLATFORM, cu12.1.1-cudnn8, not TensorFlow's CUDA)."""
    major, minor = _tensorflow_build_info()["cuda"].split(".")[:2]
    return f"rayproject/ray:{ray.__version__}-py311-cu{major}{minor}"


def test_tensorflow_is_built_for_cuda_12_5_and_cudnn_9():
    info = _tensorflow_build_info()
    assert info["cuda"].startswith("12.5") and info["cudnn"] == "9", info


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_image_is_rays_cuda_image_of_tensorflows_cuda(path):
    config = _prepared(path)
    image = config["docker"]["image"]
    assert image == _cuda_image(), image
    assert not image.endswith("-gpu"), "the -gpu alias is CUDA 12.1 + cuDNN 8"
    # Tune writes checkpoints from workers: they must see the head's storage path.
    assert "--volume /mnt/pneumotune:/mnt/pneumotune" in config["docker"]["run_options"]
    for name in _workers(config):
        assert any("/mnt/pneumotune" in c for c in _init_commands(config, name)), name


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_every_gpu_worker_prints_what_tensorflow_sees(path):
    config = _prepared(path)
    for name, spec in _workers(config).items():
        setup = " ".join(_setup_commands(config, name))
        if spec["resources"].get("GPU", 0) > 0:
            assert "[gpu]" in setup, name
            assert "tf.config.list_physical_devices('GPU')" in setup, name
        else:
            assert "[gpu]" not in setup, f"{name} trains nothing: no CUDA wheels"


def test_dockerfile_builds_on_the_same_image_with_the_gpu_extra():
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(rf"^FROM {re.escape(_cuda_image())}$", text, re.M)
    assert 'pip install --no-cache-dir ".[gpu]"' in text


# --- item 3: GCP with OS Login on; the project-wide SSH key


def _gcp() -> dict[str, Any]:
    return _prepared(CLUSTER / "gcp-gpu.yaml")


def _metadata(node_type: dict[str, Any]) -> dict[str, str]:
    items = node_type["node_config"].get("metadata", {}).get("items", [])
    return {item["key"]: item["value"] for item in items}


def test_gcp_nodes_turn_os_login_off_and_accept_only_the_clusters_key():
    config = _gcp()
    user = config["auth"]["ssh_user"]
    for name, spec in config["available_node_types"].items():
        metadata = _metadata(spec)
        # OS Login ignores metadata keys; an instance value overrides the project's.
        assert metadata.get("enable-oslogin") == "FALSE", name
        assert metadata.get("block-project-ssh-keys") == "TRUE", name
        # The key Ray logs in with, for the user it logs in as.
        assert metadata.get("ssh-keys") == "REPLACE_ME_SSH_PUBLIC_KEY", name
    # The README's sed turns the placeholder into "<user>:<public key>": the user it names.
    readme = (CLUSTER / "README.md").read_text()
    assert f"REPLACE_ME_SSH_PUBLIC_KEY|{user}:" in readme


def test_gcp_uses_a_key_of_its_own_so_ray_leaves_project_metadata_alone():
    config = _gcp()
    assert config["auth"].get("ssh_private_key", "").startswith("~/.ssh/")
    # Ray writes its key into the project's ssh-keys (every VM of the project) unless
    # auth.ssh_private_key is set: _configure_key_pair returns at once then.
    source = (RAY_PRIVATE / "gcp" / "config.py").read_text()
    body = source[source.index("def _configure_key_pair") :]
    assert re.search(r'if "ssh_private_key" in config\["auth"\]:\s*\n\s*return config', body[:2000])


# --- item 4: the head's scoped role / service account


def _aws() -> dict[str, Any]:
    return _prepared(CLUSTER / "aws-gpu.yaml")


def _aws_policy() -> dict[str, Any]:
    return json.loads(AWS_HEAD_POLICY.read_text())


def _statement_actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def test_aws_head_runs_as_the_scoped_instance_profile_and_workers_as_none():
    config = _aws()
    head = config["available_node_types"][config["head_node_type"]]["node_config"]
    assert head["IamInstanceProfile"] == {"Name": "pneumotune-ray-head"}
    for name, spec in _workers(config).items():
        assert "IamInstanceProfile" not in spec["node_config"], f"{name} calls no AWS API"
    # A head profile in the config stops Ray from creating its default role
    # (AmazonEC2FullAccess + AmazonS3FullAccess): _configure_iam_role returns at once.
    source = (RAY_PRIVATE / "aws" / "config.py").read_text()
    body = source[source.index("def _configure_iam_role") :]
    assert re.search(
        r'if "IamInstanceProfile" in head_node_config:\s*\n.*\n\s*return config', body[:1500]
    )
    assert "AmazonEC2FullAccess" in body[:4000]  # ... which is what it would do otherwise


def test_aws_head_policy_is_what_the_autoscaler_calls_and_one_bucket():
    config = _aws()
    policy = _aws_policy()
    statements = policy["Statement"]
    actions = {a for s in statements if s["Effect"] == "Allow" for a in _statement_actions(s)}
    # No service-wide wildcard, no IAM at all (workers get no role: no iam:PassRole).
    assert not [a for a in actions if a.endswith("*") or a.startswith("iam:")], actions
    # Every EC2 call of Ray's AWS node provider (the autoscaler on the head), read from the
    # installed Ray: allowed, or not made with this YAML.
    source = (RAY_PRIVATE / "aws" / "node_provider.py").read_text()
    provider_class = source[source.index("class AWSNodeProvider") :]
    calls = set(
        re.findall(r"self\.ec2(?:_fail_fast)?\.(?:meta\.client\.)?(\w+(?:\.\w+)?)", provider_class)
    )
    calls |= {f"node.{m}()" for m in re.findall(r"\bnode\.(\w+)\(\)", provider_class)}
    needed = {
        "create_instances": "ec2:RunInstances",
        "create_tags": "ec2:CreateTags",
        "instances.filter": "ec2:DescribeInstances",
        "terminate_instances": "ec2:TerminateInstances",
        "node.terminate()": "ec2:TerminateInstances",
    }
    not_made = {
        # cache_stopped_nodes: false below
        "stop_instances",
        "start_instances",
        "node.stop()",
        "node.wait_until_stopped()",
        # only with a CloudWatch agent config
        "describe_images",
    }
    assert config["provider"]["cache_stopped_nodes"] is False
    assert "cloudwatch" not in config["provider"]
    unknown = calls - set(needed) - not_made
    assert not unknown, f"review the head policy for {unknown}"
    assert {needed[c] for c in calls if c in needed} <= actions
    # RunInstances only for the worker instance types of the YAML.
    deny = [s for s in statements if s["Effect"] == "Deny"]
    assert len(deny) == 1 and _statement_actions(deny[0]) == ["ec2:RunInstances"]
    allowed_types = deny[0]["Condition"]["StringNotEquals"]["ec2:InstanceType"]
    worker_types = {spec["node_config"]["InstanceType"] for spec in _workers(config).values()}
    assert set(allowed_types) == worker_types
    # Terminate / retag only this cluster's instances (Ray tags them ray-cluster-name).
    tags_source = (Path(ray.__file__).parent / "autoscaler" / "tags.py").read_text()
    assert 'TAG_RAY_CLUSTER_NAME = "ray-cluster-name"' in tags_source
    for statement in statements:
        if "ec2:TerminateInstances" in _statement_actions(statement):
            condition = statement["Condition"]["StringEquals"]
            assert condition == {"ec2:ResourceTag/ray-cluster-name": config["cluster_name"]}
    # S3: one bucket, list + read + write, nothing else.
    s3 = [s for s in statements if any(a.startswith("s3:") for a in _statement_actions(s))]
    resources = {
        r
        for s in s3
        for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])
    }
    assert resources == {"arn:aws:s3:::REPLACE_ME_BUCKET", "arn:aws:s3:::REPLACE_ME_BUCKET/*"}
    assert {a for s in s3 for a in _statement_actions(s)} == {
        "s3:ListBucket",
        "s3:GetObject",
        "s3:PutObject",
    }


def test_aws_key_pair_is_the_projects_own():
    # Ray's default key pair (ray-autoscaler_<region>) is shared by every Ray cluster of
    # the account in the region, and its private key is copied to each head.
    assert _aws()["provider"]["key_pair"] == {"key_name": "pneumotune-ray"}


def test_gcp_head_runs_as_its_own_service_account_and_workers_as_none():
    config = _gcp()
    head = config["available_node_types"][config["head_node_type"]]["node_config"]
    (account,) = head["serviceAccounts"]
    assert account["email"] == "pneumotune-head@REPLACE_ME_PROJECT.iam.gserviceaccount.com"
    for name, spec in _workers(config).items():
        assert not spec["node_config"].get("serviceAccounts"), f"{name} calls no Google API"
    # `ray up` starts the head with its node_config laid over Ray's defaults (which name
    # the ray-autoscaler-sa-v1 account): ours replaces it.
    source = (RAY_PRIVATE / "commands.py").read_text()
    assert 'head_node_config.update(head_config["node_config"])' in source


def test_gcp_head_role_is_what_the_autoscaler_calls():
    config = _gcp()
    role = yaml.safe_load(GCP_HEAD_ROLE.read_text())
    permissions = set(role["includedPermissions"])
    assert not [p for p in permissions if "*" in p or not p.startswith("compute.")]
    # Nothing about networks or firewall rules, no IAM, no storage (the bucket is granted
    # on the bucket), unlike Ray's default roles/compute.admin + storage.objectAdmin.
    assert not [p for p in permissions if p.split(".")[1] in ("firewalls", "networks")]
    # Every Compute Engine call of Ray's GCPCompute (the autoscaler on the head), read from
    # the installed Ray, and what instances.insert checks for the body of our workers
    # (a boot disk from an image, a subnetwork with an external address, metadata, labels).
    source = (RAY_PRIVATE / "gcp" / "node.py").read_text()
    compute = source[source.index("class GCPCompute(") : source.index("class GCPTPU(")]
    calls = set(re.findall(r"\.(\w+)\(\)\s*\.(\w+)\(", compute))
    needed = {
        ("instances", "list"): {"compute.instances.list"},
        ("instances", "get"): {"compute.instances.get"},
        ("instances", "setLabels"): {"compute.instances.setLabels"},
        ("instances", "delete"): {"compute.instances.delete"},
        ("zoneOperations", "get"): {"compute.zoneOperations.get"},
        ("instances", "insert"): {
            "compute.instances.create",
            "compute.disks.create",
            "compute.images.useReadOnly",
            "compute.subnetworks.use",
            "compute.subnetworks.useExternalIp",
            "compute.instances.setMetadata",
            "compute.instances.setLabels",
        },
    }
    not_made = {("instances", "stop"), ("instances", "start")}  # cache_stopped_nodes off
    assert not config["provider"].get("cache_stopped_nodes", False)
    unknown = calls - set(needed) - not_made
    assert not unknown, f"review the head role for {unknown}"
    assert set().union(*(needed[c] for c in calls if c in needed)) == permissions
    # A worker with a service account would need iam.serviceAccounts.actAs as well.
    assert "compute.instances.setServiceAccount" not in permissions


# --- item 5: file mounts readable by the container's uid 1000, whatever the SSH user's uid


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_file_mounts_are_made_readable_for_the_container_user(path):
    from ray.autoscaler.sdk import get_docker_host_mount_location

    config = _prepared(path)
    # Where Ray puts file_mounts on the host (and bind-mounts them from).
    host_dir = f"{get_docker_host_mount_location(config['cluster_name'])}/home/ray"
    assert all(target.startswith("/home/ray/") for target in config["file_mounts"])
    make_readable = f"sudo chgrp -R {RAY_GID} {host_dir} && sudo chmod -R g+rX {host_dir}"
    for name in config["available_node_types"]:
        commands = _init_commands(config, name)
        # Before anything that could use the mounts (initialization commands run after
        # the file sync and before `docker run`: ray/autoscaler/_private/updater.py).
        assert commands[0] == make_readable, name
        # The SSH user stays the owner: Ray's next sync runs `chown -R <ssh user>` on that
        # directory without sudo, which fails on files chowned to another uid.
        assert not [c for c in commands if "chown" in c and "/tmp/ray_tmp_mount" in c], name
    runner = (RAY_PRIVATE / "command_runner.py").read_text()
    assert re.search(
        r'&& chown -R "\s*f"\{self\.ssh_command_runner\.ssh_user\} \{host_mount_location\}',
        runner,
    )
    # The container never writes into the package mount (pip builds in a private copy).
    for name in config["available_node_types"]:
        setup = _setup_commands(config, name)
        assert not [
            c for c in setup if re.search(r"pip install .*-e\s+\S*/home/ray/pneumotune\b", c)
        ]
        src, copy = "/home/ray/pneumotune", "/home/ray/pneumotune-src"
        assert setup[0] == f"rm -rf {copy} && cp -r {src} {copy}", name
        assert any("pip install" in c and copy in c for c in setup), name
    # The shared NFS directory belongs to the container's user.
    assert any(
        f"sudo chown {RAY_UID}:{RAY_GID} /mnt/pneumotune" in c
        for c in config["initialization_commands"]
    )


# --- item 8: spot GPUs spread over zones (AWS)


def test_aws_workers_spread_over_three_zones():
    config = _aws()
    zones = [z.strip() for z in config["provider"]["availability_zone"].split(",")]
    assert len(zones) >= 2 and len(set(zones)) == len(zones)
    assert all(z.startswith(config["provider"]["region"]) for z in zones)
    head = config["available_node_types"][config["head_node_type"]]["node_config"]
    for name, spec in _workers(config).items():
        subnets = spec["node_config"]["SubnetIds"]
        assert len(subnets) == len(zones) == len(set(subnets)), name
        assert subnets[0] == head["SubnetIds"][0], name
    # Ray's AWS provider moves to the next subnet of the list when a launch fails
    # (e.g. InsufficientInstanceCapacity), trying each at least once.
    source = (RAY_PRIVATE / "aws" / "node_provider.py").read_text()
    assert "subnet_idx += 1" in source
    assert "max_tries = max(BOTO_CREATE_MAX_RETRIES, len(subnet_ids))" in source


# --- item 9: conversion on the cluster starts CPU workers, never GPU ones


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_cpu_demand_starts_cpu_workers_and_trials_start_gpu_workers(path):
    """Ray's own autoscaler decision (v1, the cluster launcher's) for the demand of
    `pneumotune convert` on a full head (one-CPU tasks) and of siim trials."""
    from ray.autoscaler._private.node_provider_availability_tracker import (
        NodeAvailabilitySummary,
    )
    from ray.autoscaler._private.resource_demand_scheduler import (
        _default_utilization_scorer,
        get_nodes_for,
    )

    config = _prepared(path)
    head = config["head_node_type"]
    scorer = partial(
        _default_utilization_scorer,
        node_availability_summary=NodeAvailabilitySummary(node_availabilities={}),
    )
    node_types = config["available_node_types"]
    cpu_types = {n for n, s in _workers(config).items() if s["resources"].get("GPU", 0) == 0}
    gpu_types = set(_workers(config)) - cpu_types
    assert cpu_types and gpu_types

    def launched(types, demand):
        added, _ = get_nodes_for(types, {head: 1}, head, config["max_workers"], demand, scorer)
        return {t for t, n in added.items() if n}

    conversion = [{"CPU": 1}] * 16  # 2 x 16 tasks, 16 of them beyond the head's CPUs
    assert launched(node_types, conversion) <= cpu_types
    # Without the CPU type the same demand would start spot GPU workers.
    without_cpu = {n: s for n, s in node_types.items() if n not in cpu_types}
    assert launched(without_cpu, conversion) <= gpu_types
    res = load_experiment("siim").resources
    trials = [{"CPU": res.cpu, "GPU": res.gpu}] * 4
    assert launched(node_types, trials) <= gpu_types


# --- item 10: apt at first boot waits for unattended-upgrades instead of failing


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_every_apt_get_waits_for_the_dpkg_lock(path):
    config = _prepared(path)
    calls = 0
    for command in _all_commands(config):
        for match in re.finditer(r"apt-get\b(.*?)\b(update|install|upgrade|remove)\b", command):
            calls += 1
            assert APT_LOCK in match.group(1), command
    assert calls >= 2


# --- item 6: the KubeRay volume, its loader, and the pods' user


def _rayjob() -> dict[str, Any]:
    return yaml.safe_load(KUBERAY.read_text())


def _kuberay_data() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in _documents(KUBERAY_DATA)}


def _pod_specs(job: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = job["spec"]["rayClusterSpec"]
    return [
        cluster["headGroupSpec"]["template"]["spec"],
        *[group["template"]["spec"] for group in cluster["workerGroupSpecs"]],
    ]


def _claims(pod_spec: dict[str, Any]) -> dict[str, str]:
    """volume name -> claim name"""
    return {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod_spec.get("volumes", [])
        if "persistentVolumeClaim" in v
    }


def _mounts(container: dict[str, Any]) -> dict[str, str]:
    """volume name -> mount path"""
    return {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}


def test_kuberay_rayjob_runs_the_search_on_a_gpu_worker_group():
    job = _rayjob()
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


def test_kuberay_claim_is_read_write_many_and_every_pod_mounts_it():
    data = _kuberay_data()
    assert set(data) == {"PersistentVolumeClaim", "Job"}
    claim = data["PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    name = claim["metadata"]["name"]
    for pod in [*_pod_specs(_rayjob()), data["Job"]["spec"]["template"]["spec"]]:
        volumes = {v: c for v, c in _claims(pod).items() if c == name}
        assert volumes, pod
        for container in pod["containers"]:
            assert {_mounts(container).get(v) for v in volumes} == {"/mnt/pneumotune"}


def test_kuberay_loader_hands_the_volume_to_the_pods_user():
    loader = _kuberay_data()["Job"]["spec"]["template"]["spec"]
    # Root, once: a fresh NFS volume belongs to root and fsGroup does not apply to NFS.
    assert loader["securityContext"]["runAsUser"] == 0
    (container,) = loader["containers"]
    script = container["command"][-1]
    chown = re.search(r"chown -R (\d+):(\d+) \"\$D\"", script)
    assert chown and "D=/mnt/pneumotune" in script
    uid, gid = int(chown.group(1)), int(chown.group(2))
    assert (uid, gid) == (RAY_UID, RAY_GID)
    # It moves the uploaded dataset to where the RayJob's search reads it.
    entrypoint = shlex.split(_rayjob()["spec"]["entrypoint"])
    data_path = entrypoint[entrypoint.index("--data") + 1]
    storage = entrypoint[entrypoint.index("--storage") + 1]
    assert '"$D/datasets/siim"' in script and data_path == "/mnt/pneumotune/datasets/siim"
    assert storage.startswith("/mnt/pneumotune/")
    assert script.index("mv ") < script.index("chown -R")
    # Every Ray pod runs as that user.
    for pod in _pod_specs(_rayjob()):
        context = pod["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid), context
        assert context.get("runAsNonRoot") is True


# --- each node's copy of the arrays (PNEUMOTUNE_CACHE): node-local, the container user's

SHARED = Path("/mnt/pneumotune")  # the NFS share / ReadWriteMany volume of every node
SIIM_LABELLED = 12_089  # labelled SIIM images: the rows of a node's copy
# The image (~20 GB) and pip wheels (~6 GB) on a GPU worker's root disk (YAML comments).
IMAGE_AND_WHEELS = 26e9
_QUANTITY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}


def _quantity(value: Any) -> float:
    """A Kubernetes quantity (``40Gi``, ``8``) in bytes or units."""
    match = re.fullmatch(r"([\d.]+)([A-Za-z]*)", str(value))
    assert match and match.group(2) in ("", *_QUANTITY), value
    return float(match.group(1)) * _QUANTITY.get(match.group(2), 1)


def _run_options(config: dict[str, Any], node_type: str) -> list[str]:
    """The `docker run` options of a node type, as Ray builds them: the docker section
    with the node type's own laid over it (autoscaler.py, _get_node_specific_docker_config),
    run_options + head_run_options / worker_run_options (command_runner.py, run_init)."""
    docker = {**config["docker"], **config["available_node_types"][node_type].get("docker", {})}
    role = "head" if node_type == config["head_node_type"] else "worker"
    return [*docker.get("run_options", []), *docker.get(f"{role}_run_options", [])]


def _docker_env_and_volumes(options: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """``--env K=V`` -> {K: V}; ``--volume HOST:CONTAINER`` -> {CONTAINER: HOST}."""
    tokens = shlex.split(" ".join(options))
    env: dict[str, str] = {}
    volumes: dict[str, str] = {}
    for i, token in enumerate(tokens):
        for flags, out in ((("--env", "-e"), env), (("--volume", "-v"), volumes)):
            value = None
            if token in flags and i + 1 < len(tokens):
                value = tokens[i + 1]
            elif token.startswith(tuple(f"{f}=" for f in flags)):
                value = token.split("=", 1)[1]
            if value is None:
                continue
            if out is env:
                key, _, val = value.partition("=")
                env[key] = val
            else:
                host, container = value.split(":")[:2]
                volumes[container] = host
    return env, volumes


def _nfs_mount_targets(commands: list[str]) -> list[Path]:
    return [
        Path(m.group(1))
        for c in commands
        for m in re.finditer(r"mount -t nfs\w*(?: -o \S+)? \S+ (\S+)", c)
    ]


def _disk_bytes(node_config: dict[str, Any]) -> float:
    """The root / boot disk of a node type, in bytes (GB, the smaller unit of the two)."""
    if "BlockDeviceMappings" in node_config:
        return node_config["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] * 1e9
    (boot,) = [d for d in node_config["disks"] if d.get("boot")]
    return int(boot["initializeParams"]["diskSizeGb"]) * 1e9


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_every_node_keeps_its_array_cache_on_its_own_disk(path):
    from pneumotune.data.node_cache import CACHE_ENV, size_bytes

    config = _prepared(path)
    for name, spec in config["available_node_types"].items():
        env, volumes = _docker_env_and_volumes(_run_options(config, name))
        cache = env.get(CACHE_ENV)
        # Set in the container, so every trial (and the driver) of the node sees it.
        assert cache and cache.startswith("/"), (name, cache)
        # Bind-mounted from the same path of the host (not left in the container's layer,
        # which `docker rm` of a re-`ray up` drops), ...
        host = volumes.get(cache)
        assert host == cache, (name, volumes)
        # ... which is the host's own disk: not the shared volume, not an NFS mount.
        commands = _init_commands(config, name)
        for shared in [SHARED, *_nfs_mount_targets(commands)]:
            assert not Path(host).is_relative_to(shared), (name, host, shared)
        # Created owned by the container's user before docker starts (docker would make a
        # missing bind-mount source as root, and the trials could not write there).
        assert f"sudo mkdir -p {host} && sudo chown {RAY_UID}:{RAY_GID} {host}" in commands, name
        # A GPU worker's disk holds the image, the wheels and SIIM's 512 + 1024 px copies.
        if spec["resources"].get("GPU", 0) > 0:
            copies = size_bytes(SIIM_LABELLED, 512) + size_bytes(SIIM_LABELLED, 1024)
            assert _disk_bytes(spec["node_config"]) > IMAGE_AND_WHEELS + copies, name
    # Ray runs every initialization command on the host, before it starts the container
    # (the second run_init, sync_run_yet=True, is `docker run`).
    updater = (RAY_PRIVATE / "updater.py").read_text()
    init = updater.index("for cmd in self.initialization_commands")
    docker_run = updater.index("sync_run_yet=True")
    assert init < docker_run and 'run_env="host"' in updater[init:docker_run]


def test_kuberay_gpu_pods_keep_their_array_cache_in_an_empty_dir():
    from pneumotune.data.node_cache import CACHE_ENV, DISK_MARGIN, size_bytes

    groups = _rayjob()["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert groups
    copies = size_bytes(SIIM_LABELLED, 512) + size_bytes(SIIM_LABELLED, 1024)
    for group in groups:
        pod = group["template"]["spec"]
        empty_dirs = {v["name"]: v["emptyDir"] for v in pod["volumes"] if "emptyDir" in v}
        for container in pod["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            cache = env.get(CACHE_ENV)
            assert cache and cache.startswith("/"), (group["groupName"], env)
            assert not Path(cache).is_relative_to(SHARED), cache
            (volume,) = [v for v, p in _mounts(container).items() if p == cache]
            # Node-local disk of the pod's own, not tmpfs (which would count the whole
            # copy as the pod's memory, pages the kernel cannot drop).
            assert volume in empty_dirs, volume
            spec = empty_dirs[volume]
            assert spec.get("medium", "") != "Memory", spec
            # Room for SIIM's 512 + 1024 px copies: the kubelet evicts a pod whose
            # emptyDir outgrows sizeLimit, and the copy's own check sees the node's disk.
            limit = _quantity(spec["sizeLimit"])
            assert limit >= copies + DISK_MARGIN, spec
            # The scheduler places the pod on a node with that much local disk.
            resources = container["resources"]
            for kind in ("requests", "limits"):
                assert _quantity(resources[kind]["ephemeral-storage"]) >= limit, resources


def test_rays_memory_monitor_leaves_the_page_cache_out(tmp_path):
    """A pod's memory limit counts the page cache of the copy its trials map; Ray's memory
    monitor (which kills tasks at its threshold) subtracts file pages from the cgroup's
    usage (ray._private.utils.get_cgroup_used_memory, the logic of the raylet's
    memory_monitor_utils.cc), so a resident copy does not make it kill trials."""
    from ray._private.utils import get_cgroup_used_memory

    stat, current = tmp_path / "memory.stat", tmp_path / "memory.current"
    stat.write_text("anon 3000\nfile 7000\nactive_file 5000\ninactive_file 2000\n")
    current.write_text("10000\n")
    used = get_cgroup_used_memory(str(stat), str(current), "inactive_file", "active_file")
    assert used == 10000 - 5000 - 2000


# --------------------------------------------------------------------------- NFS, RunInstances


def _exports(path: Path) -> list[str]:
    """The client specs of the /etc/exports line the head writes."""
    commands = yaml.safe_load(path.read_text())["initialization_commands"]
    lines = [re.search(r"echo '(/mnt/pneumotune [^']*)'", c) for c in commands]
    (line,) = [m.group(1) for m in lines if m]
    return line.split()[1:]


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_the_nfs_export_reaches_the_clusters_own_subnets_only(path):
    """NFS (sec=sys) believes any uid a client claims: the export list must name the
    cluster's subnets, not every private address (10/8 and 172.16/12 before)."""
    readme = (CLUSTER / "README.md").read_text()
    clients = _exports(path)
    for client in clients:
        network, options = re.fullmatch(r"([^(]+)\(([^)]*)\)", client).groups()
        assert "root_squash" in options.split(",") and "no_root_squash" not in options
        assert "insecure" not in options.split(","), client
        if path.name.startswith("aws"):
            # Filled by the README's sed with the three subnets' CIDR blocks.
            assert re.fullmatch(r"REPLACE_ME_CIDR_[ABC]", network), client
            assert f"s|{network}|$(cidr $SUBNET_{network[-1]})|g" in readme
        else:
            # The subnetwork the README creates, and the firewall admits, for the nodes.
            assert network == "10.42.0.0/24"
            assert "--range=10.42.0.0/24" in readme and "--source-ranges=10.42.0.0/24" in readme
    if path.name.startswith("aws"):
        assert sorted(c.split("(")[0] for c in clients) == [
            "REPLACE_ME_CIDR_A", "REPLACE_ME_CIDR_B", "REPLACE_ME_CIDR_C"
        ]  # fmt: skip


def test_aws_head_launches_only_into_the_clusters_region_subnets_and_group():
    config = _aws()
    launches = [
        s
        for s in _aws_policy()["Statement"]
        if s["Effect"] == "Allow" and "ec2:RunInstances" in _statement_actions(s)
    ]
    resources = [
        r
        for s in launches
        for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])
    ]
    # Every resource names the region; none is a wildcard over resource types.
    assert all(r.startswith("arn:aws:ec2:REPLACE_ME_REGION:") for r in resources), resources
    assert "*" not in resources
    node_configs = [spec["node_config"] for spec in config["available_node_types"].values()]
    kinds: dict[str, set[str]] = {}
    for arn in resources:
        kind, _, name = arn.split(":", 5)[5].partition("/")
        kinds.setdefault(kind, set()).add(name)
    # RunInstances needs an allow on each resource it touches: a subnet, group or image
    # not listed here cannot be launched into or with.
    assert kinds["subnet"] == {s for n in node_configs for s in n["SubnetIds"]}
    assert kinds["security-group"] == {g for n in node_configs for g in n["SecurityGroupIds"]}
    assert kinds["image"] == {n["ImageId"] for n in node_configs}
    assert kinds["key-pair"] == {config["provider"]["key_pair"]["key_name"]}
    region = next(s for s in launches if "Condition" in s)["Condition"]["StringEquals"]
    assert region == {"aws:RequestedRegion": "REPLACE_ME_REGION"}
    # The README fills every placeholder of the policy, the region with the YAML's.
    readme = (CLUSTER / "README.md").read_text()
    sed = readme[readme.index('sed -e "s/REPLACE_ME_BUCKET') :].split(
        "> /tmp/pneumotune-head-policy.json"
    )[0]
    for token in set(re.findall(r"[a-z]*-?REPLACE_ME\w*", AWS_HEAD_POLICY.read_text())):
        assert f"s/{token}/" in sed, token
    assert f"export AWS_REGION={config['provider']['region']}" in readme


def test_kuberay_loader_leaves_the_volume_writable_by_its_owner_only():
    """`search --resume` refuses a results folder that group or others can write."""
    script = (CLUSTER / "kuberay-data.yaml").read_text()
    chmods = re.findall(r"chmod -R (\S+)", script)
    assert chmods and all(m.endswith("go-w") for m in chmods), chmods
    assert "g+rwX" not in script and "g+w" not in script
