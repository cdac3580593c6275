"""cluster.yaml (Ray cluster launcher) and deploy/kuberay (RayJob, RayService and the Kubernetes objects
around them) are valid and safe.

cluster.yaml goes through Ray's own preparation (`prepare_config`: merge with the AWS defaults, node-type
bounds) and `validate_config` with boto3 made unusable, so nothing can reach AWS. The Kubernetes core
objects and every pod template inside the Ray resources are validated with kubernetes-validate's
strict schemas for the oldest Kubernetes targeted (render.KUBERNETES_VERSION)."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import ray
import yaml

from seqctr.platform.config import load_config

REPO = Path(__file__).resolve().parents[1]
RAY_SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
AWS_DIR = REPO / "deploy" / "aws"
UBUNTU_22_PLUS = re.compile(r"ubuntu-(2[2-9]|[3-9]\d)\.04")
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


@pytest.fixture
def no_aws(monkeypatch):
    """Any boto3 client, resource or session fails the test: the checks below must stay offline."""
    try:
        import boto3
        import boto3.session
    except ImportError:  # without boto3, Ray's AWS code cannot reach AWS at all
        return

    def refuse(*args, **kwargs):
        raise AssertionError(f"a cluster.yaml check tried to reach AWS: {args} {kwargs}")

    monkeypatch.setattr(boto3, "client", refuse)
    monkeypatch.setattr(boto3, "resource", refuse)
    monkeypatch.setattr(boto3.session, "Session", refuse)
    monkeypatch.setattr(boto3, "Session", refuse, raising=False)


def test_cluster_yaml_passes_rays_own_preparation(cluster, no_aws):
    # The non-network half of `ray up`: merge with Ray's AWS defaults, then Ray's validation.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(json.loads(json.dumps(cluster)))
    validate_config(prepared)
    assert prepared["head_node_type"] == "head.cpu"
    # The head's setup is setup_commands + head_setup_commands; the autoscaler there needs boto3, in
    # the venv whose `ray` runs it (this list replaces Ray's default that installs boto3).
    head_setup = prepared["head_setup_commands"]
    assert head_setup[: len(cluster["setup_commands"])] == cluster["setup_commands"]
    boto = [c for c in head_setup if re.search(r"pip install .*boto3", c)]
    assert boto and all(c.startswith("/home/ubuntu/venv/bin/pip ") for c in boto), head_setup
    assert not any("boto3" in c for c in prepared["worker_setup_commands"])
    # Ray's defaults do not sneak a node type, a spot market or an open dashboard in.
    assert set(prepared["available_node_types"]) == set(cluster["available_node_types"])
    for node_type in prepared["available_node_types"].values():
        assert "InstanceMarketOptions" not in node_type["node_config"]
    assert "--dashboard-host=0.0.0.0" not in " ".join(prepared["head_start_ray_commands"])


def test_rays_validation_catches_a_bad_head_type(cluster, no_aws):
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = json.loads(json.dumps(cluster))
    broken["head_node_type"] = "head.gpu"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(broken))


def test_every_node_boots_a_current_ubuntu_image(cluster):
    # No ImageId = Ray's Ubuntu 18.04 DLAMI (glibc 2.27), on which torch==2.13.0 does not install.
    for name, node_type in cluster["available_node_types"].items():
        image = node_type["node_config"].get("ImageId", "")
        ssm = re.fullmatch(r"resolve:ssm:(/aws/service/deeplearning/ami/x86_64/\S+/latest/ami-id)", image)
        assert ssm or re.fullmatch(r"ami-[0-9a-f]{8,17}", image), f"{name}: ImageId {image!r}"
        if ssm:
            assert UBUNTU_22_PLUS.search(ssm.group(1)), f"{name}: {image} is not Ubuntu 22.04+"
    # Ubuntu 22.04's python3 lacks venv until python3-venv is installed.
    assert "python3-venv" in cluster["setup_commands"][0]


def test_cpu_head_and_autoscaling_gpu_workers(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    # The head schedules no task or actor: training, Ray Data and Serve replicas land on workers.
    assert head["resources"] == {"CPU": 0}
    assert head["min_workers"] == head["max_workers"] == 0
    gpu_groups = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert list(gpu_groups) == ["worker.gpu"]
    cpu_groups = [n for n, t in types.items() if n != cluster["head_node_type"] and n not in gpu_groups]
    assert cpu_groups == ["worker.cpu"] and types["worker.cpu"]["resources"]["CPU"] > 0
    for name in ("worker.gpu", "worker.cpu"):
        group = types[name]
        assert 0 <= group["min_workers"] < group["max_workers"] <= cluster["max_workers"], name
    assert sum(types[n]["max_workers"] for n in ("worker.gpu", "worker.cpu")) <= cluster["max_workers"]


def policy(name: str) -> dict[str, Any]:
    return json.loads((AWS_DIR / name).read_text())


def test_every_node_type_names_its_instance_profile(cluster):
    # Ray gives its default role to the head only; a worker without a profile has no S3 credentials.
    profiles = {
        name: t["node_config"]["IamInstanceProfile"]["Name"] for name, t in cluster["available_node_types"].items()
    }
    assert profiles == {"head.cpu": "seqctr-head", "worker.cpu": "seqctr-worker", "worker.gpu": "seqctr-worker"}
    # The head passes the worker role on at launch; nothing else may be passed.
    head = policy("head-policy.json")["Statement"]
    passrole = [st for st in head if st["Action"] == "iam:PassRole"]
    assert [st["Resource"] for st in passrole] == ["arn:aws:iam::YOUR-ACCOUNT-ID:role/seqctr-worker"]
    ssm = [st for st in head if st["Action"] == "ssm:GetParameters"]
    assert ssm and ssm[0]["Resource"].endswith(":parameter/aws/service/deeplearning/*")
    trust = policy("ec2-trust-policy.json")["Statement"]
    assert trust == [{**trust[0], "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]


def test_s3_policy_covers_exactly_the_storage_prefix():
    statements = policy("s3-policy.json")["Statement"]
    assert all(st["Effect"] == "Allow" and "*" not in st["Action"] for st in statements)
    objects = next(st for st in statements if "s3:PutObject" in st["Action"])
    assert objects["Resource"] == "arn:aws:s3:::YOUR-BUCKET/seqctr/*"
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= set(objects["Action"])
    bucket = next(st for st in statements if "s3:ListBucket" in st["Action"])
    assert bucket["Resource"] == "arn:aws:s3:::YOUR-BUCKET"
    assert "s3:DeleteBucket" not in {a for st in statements for a in st["Action"]}


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
def documents() -> list[dict[str, Any]]:
    """Every object `kubectl apply -f deploy/kuberay/` applies (the files ending in .yaml)."""
    folder = REPO / "deploy" / "kuberay"
    return [d for p in sorted(folder.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def manifests() -> dict[str, dict[str, Any]]:
    """The Ray resources, by file name."""
    folder = REPO / "deploy" / "kuberay"
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(folder.glob("ray*.yaml"))}


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] == kind]


def cluster_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["rayClusterSpec" if manifest["kind"] == "RayJob" else "rayClusterConfig"]


def templates(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pod template of a Ray resource: head, worker groups, the RayJob's submitter."""
    spec = cluster_spec(manifest)
    found = [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]
    if manifest["kind"] == "RayJob":
        found.append(manifest["spec"]["submitterPodTemplate"])
    return found


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def k8s_validate(obj: dict[str, Any], render) -> None:
    kubernetes_validate.validate(obj, render.KUBERNETES_VERSION, strict=True)


def test_manifests_are_up_to_date_with_the_renderer(render):
    for path, text in render.rendered_files().items():
        assert path.read_text() == text, f"{path.name} is stale: run python deploy/kuberay/render.py"


def test_kubectl_applies_namespace_account_and_policies_before_the_ray_resources():
    kinds = [d["kind"] for d in documents()]
    assert kinds == ["Namespace", "ServiceAccount", "NetworkPolicy", "NetworkPolicy", "RayJob", "RayService"]
    namespace = by_kind("Namespace")[0]["metadata"]["name"]
    assert all(d["metadata"]["namespace"] == namespace for d in documents() if d["kind"] != "Namespace")
    # The token never sits in git: the example is not applied (kubectl reads .yaml/.yml/.json only).
    assert not list((REPO / "deploy" / "kuberay").glob("*secret*.y*ml"))


def test_core_objects_are_valid_kubernetes(render):
    for obj in by_kind("Namespace") + by_kind("ServiceAccount") + by_kind("NetworkPolicy"):
        k8s_validate(obj, render)
    k8s_validate(render.render_token_secret_example(), render)


def test_pod_templates_are_valid_kubernetes(render):
    for name, manifest in manifests().items():
        for i, template in enumerate(templates(manifest)):
            k8s_validate(
                {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"t{i}"}, "template": template}, render
            )
        # The autoscaler sidecar KubeRay adds: its options, as a container of a pod.
        options = cluster_spec(manifest)["autoscalerOptions"]
        sidecar = {"name": "autoscaler", "image": "rayproject/ray:2.60.0", **options}
        k8s_validate(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name.split(".")[0]},
                "spec": {"containers": [sidecar]},
            },
            render,
        )


def test_kubernetes_validation_catches_a_typo(render):
    template = json.loads(json.dumps(templates(manifests()["rayservice.yaml"])[0]))
    template["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_validate(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"}, "template": template}, render
        )


def test_kuberay_required_fields():
    found = manifests()
    assert {m["kind"] for m in found.values()} == {"RayJob", "RayService"}
    for name, manifest in found.items():
        assert manifest["apiVersion"] == "ray.io/v1", name
        assert manifest["metadata"]["name"], name
        spec = cluster_spec(manifest)
        assert spec["rayVersion"] == ray.__version__ == ray_pin(), name
        assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0", name
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", name
        assert spec["workerGroupSpecs"], name
        for group in spec["workerGroupSpecs"]:
            assert group["groupName"] and isinstance(group["rayStartParams"], dict), name
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name


def test_every_container_has_requests_and_limits():
    for name, manifest in manifests().items():
        all_containers = [c for t in templates(manifest) for c in t["spec"]["containers"]]
        all_containers.append({"name": "autoscaler", **cluster_spec(manifest)["autoscalerOptions"]})
        for c in all_containers:
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name}/{c['name']} {kind}"


def test_every_pod_and_container_runs_unprivileged(render):
    for name, manifest in manifests().items():
        sidecar = cluster_spec(manifest)["autoscalerOptions"]["securityContext"]
        for template in templates(manifest):
            pod = template["spec"]["securityContext"]
            assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 1000, name
            assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
            for ctx in [c["securityContext"] for c in template["spec"]["containers"]] + [sidecar]:
                assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 1000, name
                assert ctx["allowPrivilegeEscalation"] is False, name
                assert ctx["capabilities"] == {"drop": ["ALL"]}, name
                assert not ctx.get("privileged"), name
    namespace = by_kind("Namespace")[0]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_pods_run_as_the_shipped_service_account(render):
    (account,) = by_kind("ServiceAccount")
    assert account["metadata"]["name"] == render.SERVICE_ACCOUNT == "seqctr"
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+", role), role
    # IRSA hands out a projected token; the autoscaler sidecar needs the account's token too.
    assert account.get("automountServiceAccountToken", True) is True
    for name, manifest in manifests().items():
        for template in templates(manifest):
            assert template["spec"]["serviceAccountName"] == "seqctr", name


def test_token_authentication_uses_the_documented_secret(render):
    secret = render.render_token_secret_example()
    for name, manifest in manifests().items():
        auth = cluster_spec(manifest)["authOptions"]
        assert auth == {"mode": "token", "secretName": secret["metadata"]["name"]}, name
    assert list(secret["stringData"]) == ["auth_token"]  # the key KubeRay reads
    example = yaml.safe_load((REPO / "deploy" / "kuberay" / "secret-ray-token.yaml.example").read_text())
    assert example == secret


def ingress_ports(policy: dict[str, Any], labels: dict[str, str]) -> dict[str, set[int] | str]:
    """What each kind of peer may reach: 'all' ports or a set of ports."""
    found: dict[str, set[int] | str] = {}
    for rule in policy["spec"]["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])} or "all"
        peers = rule.get("from")
        if not peers:
            key = "anyone"
        elif all(p.get("podSelector", {}).get("matchLabels") == labels and "namespaceSelector" not in p for p in peers):
            key = "own pods"
        elif all(
            p.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
            == "kuberay-operator"
            for p in peers
        ):
            key = "operator"
        else:
            key = "other"
        found[key] = ports
    return found


def test_network_policies_admit_only_serve_from_outside():
    policies = {p["metadata"]["name"]: p for p in by_kind("NetworkPolicy")}
    for name, manifest in manifests().items():
        instance = manifest["metadata"]["name"]
        policy = policies[instance]
        labels = policy["spec"]["podSelector"]["matchLabels"]
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        # It selects every pod of the resource, and only those.
        for template in templates(manifest):
            assert template["metadata"]["labels"] == labels, name
        expected = {"own pods": "all", "operator": {8265}}
        if manifest["kind"] == "RayService":
            expected["anyone"] = {8000}
        assert ingress_ports(policy, labels) == expected, name


def test_network_policy_check_flags_an_open_dashboard():
    policy = json.loads(json.dumps(by_kind("NetworkPolicy")[1]))
    labels = policy["spec"]["podSelector"]["matchLabels"]
    policy["spec"]["ingress"][-1]["ports"].append({"protocol": "TCP", "port": 8265})
    assert ingress_ports(policy, labels)["anyone"] == {8000, 8265}


def test_gpu_workers_run_the_gpu_image(render):
    for name, manifest in manifests().items():
        spec = cluster_spec(manifest)
        head_image = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
        assert head_image == render.IMAGE and ":" in head_image, name
        for group in spec["workerGroupSpecs"]:
            for c in group["template"]["spec"]["containers"]:
                gpu = int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
                assert c["image"] == (f"{head_image}-gpu" if gpu else head_image), f"{name}/{group['groupName']}"
    job = manifests()["rayjob-train.yaml"]
    assert job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["image"] == render.IMAGE


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
    submitter = job["spec"]["submitterPodTemplate"]["spec"]
    assert submitter["restartPolicy"] == "Never" and "command" not in submitter["containers"][0]


def test_rayservice_serves_configs_serve_yaml(render):
    from ray.serve.schema import ServeDeploySchema

    service = manifests()["rayservice.yaml"]
    served = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert served == render.render_serve_config(REPO / "configs" / "serve.yaml")
    ServeDeploySchema.model_validate(served)
    source = yaml.safe_load((REPO / "configs" / "serve.yaml").read_text())
    # The same applications; only the proxy host (pod IP) and the registry (shared storage) differ.
    assert served["http_options"] == {**source["http_options"], "host": "0.0.0.0"}
    assert served["http_options"]["port"] == render.SERVE_PORT
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


def test_render_options_reach_the_manifests(render):
    files = render.rendered_files(
        "s3://b/p", "reg.example/seqctr:1.2", "reg.example/seqctr:1.2-cuda", "arn:aws:iam::123456789012:role/r"
    )
    text = "".join(files.values())
    assert "YOUR-BUCKET" not in text and "YOUR-ORG" not in text and "111122223333" not in text
    assert "reg.example/seqctr:1.2-cuda" in files[render.RAYJOB_FILE]


def test_dockerfile_builds_cpu_and_gpu_images_on_the_pinned_ray():
    dockerfile = (REPO / "deploy" / "kuberay" / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=rayproject/ray:([\d.]+)-py311$", dockerfile, re.M)
    assert base and base.group(1) == ray_pin()
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", dockerfile, re.M)
    gpu = re.search(r"--build-arg BASE_IMAGE=rayproject/ray:([\d.]+)-py311-gpu", dockerfile)
    assert gpu and gpu.group(1) == ray_pin()
    assert re.search(r"^USER 1000(:100)?$", dockerfile, re.M)  # runAsNonRoot needs a numeric user
