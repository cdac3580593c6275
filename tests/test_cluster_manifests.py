"""cluster.yaml (Ray cluster launcher) and deploy/kuberay (RayJob, RayService) are valid and safe."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from seqctr.platform.config import load_config

REPO = Path(__file__).resolve().parents[1]
RAY_SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
PRIVATE_PORTS = {6379: "GCS", 8265: "dashboard / Jobs API", 10001: "Ray Client"}
WORLD = {"0.0.0.0/0", "::/0"}


def load_render():
    spec = importlib.util.spec_from_file_location("kuberay_render", REPO / "deploy" / "kuberay" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def ray_schema() -> dict[str, Any]:
    return json.loads(RAY_SCHEMA.read_text())


@pytest.fixture(scope="module")
def render():
    return load_render()


def ports_open_to_world(cfg: dict[str, Any]) -> list[str]:
    """Private Ray ports that a security-group rule opens to any address."""
    found = []
    for rule in cfg["provider"].get("security_group", {}).get("IpPermissions", []):
        cidrs = {r.get("CidrIp") for r in rule.get("IpRanges", [])} | {
            r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])
        }
        if not cidrs & WORLD:
            continue
        all_ports = rule.get("IpProtocol") == "-1" or rule.get("FromPort", -1) == -1
        for port, name in PRIVATE_PORTS.items():
            if all_ports or rule["FromPort"] <= port <= rule["ToPort"]:
                found.append(f"{port} ({name})")
    return found


def ray_pin() -> str:
    match = re.search(r'"ray\[[^\]]*\]==([\d.]+)"', (REPO / "pyproject.toml").read_text())
    assert match, "pyproject.toml has no pinned ray"
    return match.group(1)


# ------------------------------------------------------------------------------------------ cluster.yaml
def test_cluster_yaml_matches_rays_schema(cluster, ray_schema):
    jsonschema.validate(cluster, ray_schema)


def test_schema_check_catches_a_typo(cluster, ray_schema):
    broken = json.loads(json.dumps(cluster))
    broken["available_node_types"]["worker.gpu"]["min_worker"] = 1  # typo of min_workers
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        jsonschema.validate(broken, ray_schema)


def test_cpu_head_and_autoscaling_gpu_workers(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] > 0
    gpu_groups = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert list(gpu_groups) == ["worker.gpu"]
    group = gpu_groups["worker.gpu"]
    assert 0 <= group["min_workers"] < group["max_workers"] <= cluster["max_workers"]


def test_nodes_install_the_synced_project_with_its_pins(cluster):
    remote = next(r for r, local in cluster["file_mounts"].items() if Path(local) == Path("."))
    install = re.search(r"(\S+)/pip install -q -e '(\S+)'", " ".join(cluster["setup_commands"]))
    assert install and install.group(2) == remote
    # Every Ray command on the nodes runs from the venv that holds those pins.
    for command in cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]:
        assert f"{install.group(1)}/ray " in command, command


def test_private_ports_are_not_open_to_the_internet(cluster):
    assert ports_open_to_world(cluster) == []
    head_start = " ".join(cluster["head_start_ray_commands"])
    args = dict(a.split("=", 1) for a in shlex.split(head_start) if a.startswith("--") and "=" in a)
    assert args["--dashboard-host"] == "127.0.0.1"  # reachable only through `ray dashboard` (SSH)
    ports = (args["--port"], args["--dashboard-port"], args["--ray-client-server-port"])
    assert ports == ("6379", "8265", "10001")


def test_port_check_flags_an_open_dashboard(cluster):
    opened = json.loads(json.dumps(cluster))
    opened["provider"]["security_group"]["IpPermissions"] = [
        {"FromPort": 8000, "ToPort": 9000, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"FromPort": 6379, "ToPort": 6379, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "10.0.0.0/8"}]},
    ]
    assert ports_open_to_world(opened) == ["8265 (dashboard / Jobs API)"]


# ------------------------------------------------------------------------------------------ KubeRay
def manifests() -> dict[str, dict[str, Any]]:
    folder = REPO / "deploy" / "kuberay"
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(folder.glob("*.yaml"))}


def cluster_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["rayClusterSpec" if manifest["kind"] == "RayJob" else "rayClusterConfig"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_manifests_are_up_to_date_with_the_renderer(render):
    for path, text in render.rendered_files().items():
        assert path.read_text() == text, f"{path.name} is stale: run python deploy/kuberay/render.py"


def test_kuberay_required_fields():
    found = manifests()
    assert {m["kind"] for m in found.values()} == {"RayJob", "RayService"}
    for name, manifest in found.items():
        assert manifest["apiVersion"] == "ray.io/v1", name
        assert manifest["metadata"]["name"], name
        spec = cluster_spec(manifest)
        assert spec["rayVersion"] == ray.__version__ == ray_pin(), name
        assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0", name
        assert spec["workerGroupSpecs"], name
        for group in spec["workerGroupSpecs"]:
            assert group["groupName"] and isinstance(group["rayStartParams"], dict), name
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name
        images = {c["image"] for c in containers(spec)}
        assert len(images) == 1 and ":" in images.pop(), f"{name}: one tagged image for every group"
        for c in containers(spec):
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name}/{c['name']} {kind}"


def test_rayjob_trains_on_gpu_workers_from_the_image():
    job = manifests()["rayjob-train.yaml"]
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    args = shlex.split(job["spec"]["entrypoint"])
    assert args[:4] == ["python", "-m", "seqctr.cli", "train"]
    config = args[args.index("--config") + 1]
    overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    cfg = load_config(REPO / Path(config).relative_to("/app"), overrides)  # /app = the repo in the image
    assert (cfg.train.num_workers, cfg.train.use_gpu) == (2, True)
    shared = [cfg.data.samples, cfg.embed.out, cfg.train.storage_path, cfg.registry.root]
    assert all(p.startswith("s3://") for p in shared), shared
    worker = cluster_spec(job)["workerGroupSpecs"][0]
    assert worker["replicas"] >= cfg.train.num_workers
    assert worker["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["RAY_TRAIN_V2_ENABLED"] == "1"


def test_rayservice_serves_configs_serve_yaml(render):
    from ray.serve.schema import ServeDeploySchema

    service = manifests()["rayservice.yaml"]
    served = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert served == render.render_serve_config(REPO / "configs" / "serve.yaml")
    ServeDeploySchema.model_validate(served)
    source = yaml.safe_load((REPO / "configs" / "serve.yaml").read_text())
    # The same applications; only the proxy host (pod IP) and the registry (shared storage) differ.
    assert served["http_options"] == {**source["http_options"], "host": "0.0.0.0"}
    for app, src in zip(served["applications"], source["applications"], strict=True):
        assert app["import_path"] == src["import_path"] == "seqctr.serving.app:build_app"
        assert app["deployments"] == src["deployments"]
        assert app["args"]["config"] == src["args"]["config"]
        cfg = load_config(REPO / app["args"]["config"], app["args"]["overrides"])
        assert cfg.registry.root == "s3://YOUR-BUCKET/seqctr/registry"


def test_render_rejects_a_serve_config_without_applications(render, tmp_path):
    bad = tmp_path / "serve.yaml"
    bad.write_text("http_options: {port: 8000}\n")
    with pytest.raises(ValueError, match=f"{re.escape(str(bad))}: expected a Serve config"):
        render.render_serve_config(bad)


def test_dockerfile_uses_the_pinned_ray():
    dockerfile = (REPO / "deploy" / "kuberay" / "Dockerfile").read_text()
    base = re.search(r"^FROM rayproject/ray:([\d.]+)-py311", dockerfile, re.M)
    assert base and base.group(1) == ray_pin()
