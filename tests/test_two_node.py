"""A real two-node Ray cluster on this machine: jobs submitted with `seqctr submit` run on both nodes.

The nodes share nothing but an object store, as on a real cluster: node_b runs in its own mount
namespace (`unshare --mount`) with an empty tmpfs over the test session's temp folder, so it cannot see
any file the test or node_a writes there, and every path of the training job is on the loopback S3
server. Where a private mount namespace cannot be made (no privilege), node_b shares the disk and the
test says so.

Two `ray start --block` processes (a head and a worker node, each with its own ports, temp dir and a
custom resource naming it) form the cluster; they join over 127.0.0.1, and Ray registers both under
the host's IP, so nodes are told apart by node id. The test process only talks HTTP to the head's Jobs
and State APIs; it never calls ray.init (the session's own local Ray, if any, is untouched). Each node
is stopped through its own process tree: `ray stop` would kill every Ray process on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import typer
from typer.testing import CliRunner

from seqctr.platform.jobs import JobError, follow_job, job_client, job_status
from seqctr.platform.storage import filesystem_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RAY_BIN = Path(sys.executable).parent / "ray"
NODE_CPUS = 3  # a training worker takes 2, so one fits per node and 1 CPU is left for Ray Data
START_TIMEOUT_S = 90  # per attempt; a start is tried twice
# A guard against a hung job, not the expected time: training took 4-6 min on a loaded 2-core host.
JOB_TIMEOUT_S = float(os.environ.get("SEQCTR_TWO_NODE_JOB_TIMEOUT_S", "480"))
# Ray Data's Parquet V2 reader starts 32 footer-reader actors per read: far too many processes for a
# 2-core machine running two nodes, and they can abort under load. The V1 reader needs none.
JOB_ENV = ["--env", "RAY_DATA_USE_DATASOURCE_V2=0", "--env", "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS=1"]

PROBE = """
import ray, seqctr
ray.init()

@ray.remote(num_cpus=0)
def where():
    return ray.get_runtime_context().get_node_id()

a = ray.get(where.options(resources={"node_a": 0.01}).remote(), timeout=120)
b = ray.get(where.options(resources={"node_b": 0.01}).remote(), timeout=120)
print(f"PROBE node_a={a} node_b={b} seqctr={seqctr.__file__}")
"""


@dataclass
class TwoNodes:
    dashboard: str  # http://127.0.0.1:PORT, the Jobs / State API
    gcs_address: str  # NODE_IP:PORT, what `ray.init` and the State API inside jobs connect to
    node_ids: dict[str, str]  # "node_a" / "node_b" -> Ray node id
    hidden: Path | None  # the folder node_b cannot see (None: no private mount namespace here)


def free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def node_command(name: str, temp_dir: str, ports: list[int], head_gcs_port: int | None) -> list[str]:
    """`ray start --block` for one node; every port explicit so two nodes on one host never collide."""
    (gcs, dash, client, node_mgr, obj_mgr, agent_http, agent_grpc, runtime_env, metrics) = ports
    common = [
        str(RAY_BIN), "start", "--block", "--disable-usage-stats",
        f"--num-cpus={NODE_CPUS}", f"--resources={json.dumps({name: 1})}",
        f"--temp-dir={temp_dir}", "--object-store-memory=150000000",
        f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
        f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
        "--min-worker-port=0", "--max-worker-port=0",
    ]  # fmt: skip
    if head_gcs_port is None:
        return common + [
            "--head", f"--port={gcs}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
            f"--ray-client-server-port={client}",
        ]  # fmt: skip
    return common + [f"--address=127.0.0.1:{head_gcs_port}"]


def node_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PATH"] = f"{RAY_BIN.parent}{os.pathsep}{env.get('PATH', '')}"  # jobs find this venv's python
    env["RAY_AUTH_MODE"] = "disabled"  # a loopback test cluster; no token shared through ~/.ray
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"  # stop at once on SIGTERM
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def wait_until(check, timeout_s: float, what: str, procs: list[subprocess.Popen]):
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: `ray start` exited with {p.returncode}")
        try:
            result = check()
            if result:
                return result
        except Exception as err:  # noqa: BLE001 - not up yet
            last_error = err
        time.sleep(1)
    raise TimeoutError(f"{what}: not ready after {timeout_s}s (last error: {last_error})")


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every process (Linux /proc)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        table[int(stat.parent.name)] = (int(fields[1]), fields[19])  # ppid, starttime
    return table


def descendants(pid: int) -> dict[int, str]:
    """pid -> start time of every live process below `pid`. Ray workers start their own process
    groups, so the node's group alone does not reach them; the start time guards against pid reuse."""
    table = process_table()
    children: dict[int, list[int]] = {}
    for child, (parent, _start) in table.items():
        children.setdefault(parent, []).append(child)
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found[child] = table[child][1]
                todo.append(child)
    return found


def stop_node(proc: subprocess.Popen) -> None:
    """SIGTERM the `ray start --block` leader (it stops its node's processes), then SIGKILL whatever
    it started that is still alive: its process group and every process that was below it."""
    started = descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)  # an idle node stops in a few seconds; a busy one is killed below
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    now = process_table()
    for pid, start in {**started, **descendants(proc.pid)}.items():
        if pid in now and now[pid][1] == start:  # the same process, not a reused pid
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=10)


def alive_nodes(dashboard: str) -> dict[str, tuple[str, str]]:
    """{"node_a" | "node_b": (node id, node IP)} of the nodes that are up."""
    from ray.util.state import list_nodes

    named = {}
    for node in list_nodes(address=dashboard, filters=[("state", "=", "ALIVE")]):
        for name in ("node_a", "node_b"):
            if name in node.resources_total:
                named[name] = (node.node_id, node.node_ip)
    return named


def tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


@dataclass
class LocalNode:
    """One `ray start --block` process, its ports and its temp dir."""

    name: str
    proc: subprocess.Popen
    ports: list[int]
    temp_dir: str

    @property
    def log(self) -> Path:
        return Path(self.temp_dir) / "ray-start.log"

    def stop(self) -> None:
        stop_node(self.proc)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def can_hide(folder: Path) -> bool:
    """Whether this machine lets a process mount an empty tmpfs over `folder` in its own mount namespace."""
    probe = subprocess.run(HIDE + [str(folder), "true"], capture_output=True, check=False)
    return probe.returncode == 0


# `unshare` execs sh, which mounts and execs the command: the node keeps the pid that was started.
HIDE = ["unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount -t tmpfs seqctr-hidden "$0" && exec "$@"']


def start_node(
    name: str, head: LocalNode | None, dashboard: str | None, attempts: int = 2, hide: Path | None = None
) -> LocalNode:
    """Start a node and wait until the head lists it. Ray gives a raylet 30 s to register, which a busy
    2-core machine can miss: a failed start is stopped and retried once with fresh ports."""
    errors = []
    for _ in range(attempts):
        temp_dir = tempfile.mkdtemp(prefix=f"seqctr-ray-{name[-1]}-")
        ports = free_ports(9)
        with open(Path(temp_dir) / "ray-start.log", "w") as out:
            command = node_command(name, temp_dir, ports, head.ports[0] if head else None)
            proc = subprocess.Popen(
                HIDE + [str(hide), *command] if hide else command,
                env=node_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, stopped as a unit
            )
        node = LocalNode(name, proc, ports, temp_dir)
        url = dashboard or f"http://127.0.0.1:{ports[1]}"
        try:
            watched = [proc, head.proc] if head else [proc]
            wait_until(lambda url=url: name in alive_nodes(url), START_TIMEOUT_S, name, watched)
            return node
        except (RuntimeError, TimeoutError) as err:
            errors.append(f"{err}\n--- {node.log} ---\n{tail(node.log)}")
            print(f"[two-node] {name} did not start ({err}); retrying")
            node.stop()
    raise RuntimeError("\n".join(errors))


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNodes]:
    nodes: list[LocalNode] = []
    hidden = tmp_path_factory.getbasetemp()  # every tmp_path of this session lives below it
    hidden = hidden if can_hide(hidden) else None
    if hidden is None:
        print("\n[two-node] no private mount namespace here (unshare --mount failed): node_b shares the disk")
    try:
        nodes.append(start_node("node_a", head=None, dashboard=None))
        dashboard = f"http://127.0.0.1:{nodes[0].ports[1]}"
        nodes.append(start_node("node_b", head=nodes[0], dashboard=dashboard, hide=hidden))
        alive = alive_nodes(dashboard)
        yield TwoNodes(
            dashboard=dashboard,
            gcs_address=f"{alive['node_a'][1]}:{nodes[0].ports[0]}",
            node_ids={name: node_id for name, (node_id, _ip) in alive.items()},
            hidden=hidden,
        )
    finally:
        for node in reversed(nodes):
            node.stop()


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    from seqctr.cli.main import app

    return app


def ray_job_cli(*args: str) -> subprocess.CompletedProcess:
    """Ray's own `ray job ...` CLI, as the README tells users to run it."""
    return subprocess.run(
        [str(RAY_BIN), "job", *args], env=node_env(), capture_output=True, text=True, timeout=120, check=False
    )


def run_cli(cli: typer.Typer, *args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def submit(
    cli: typer.Typer, cluster: TwoNodes, command: list[str], follow: bool = False, flags: tuple[str, ...] = ()
) -> tuple[str, str]:
    """Submit through `seqctr submit`; returns (job id, CLI output)."""
    flags = (*flags, "--follow") if follow else flags
    result = run_cli(cli, "submit", "--address", cluster.dashboard, *flags, *JOB_ENV, "--", *command)
    job_id = next(line for line in result.output.splitlines() if line.startswith("raysubmit_"))
    if follow:
        assert result.exit_code == 0, result.output[-4000:]
    return job_id, result.output


def wait_for_job(cluster: TwoNodes, job_id: str, timeout_s: float = JOB_TIMEOUT_S) -> str:
    """Poll until the job ends (bounded): a job still running at the deadline is stopped, the test fails."""
    client = job_client(cluster.dashboard)
    deadline = time.monotonic() + timeout_s
    while (status := job_status(client, job_id)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            logs = client.get_job_logs(job_id)
            pytest.fail(f"job {job_id} still {status} after {timeout_s}s; logs:\n{logs[-4000:]}")
        time.sleep(2)
    return status


def test_a_submitted_job_runs_tasks_on_both_nodes(two_nodes, cli, monkeypatch):
    monkeypatch.chdir(REPO)
    job_id, output = submit(cli, two_nodes, ["python", "-c", PROBE], follow=True)
    probe = next(line for line in output.splitlines() if line.startswith("PROBE "))
    fields = dict(item.split("=", 1) for item in probe.split()[1:])
    assert {"node_a": fields["node_a"], "node_b": fields["node_b"]} == two_nodes.node_ids
    assert fields["node_a"] != fields["node_b"]
    # The job imported the shipped copy of the project, not this checkout.
    assert "working_dir_files" in fields["seqctr"] and not fields["seqctr"].startswith(str(REPO))
    print(f"\n[two-node] probe job {job_id}: {probe}")

    # The README sends users to Ray's own CLI for everything after submit.
    logs = ray_job_cli("logs", job_id, "--address", two_nodes.dashboard)
    assert logs.returncode == 0 and probe in logs.stdout, logs.stderr[-2000:]
    status = ray_job_cli("status", job_id, "--address", two_nodes.dashboard)
    assert "succeeded" in (status.stdout + status.stderr).lower()


def test_stop_a_running_job(two_nodes, cli, monkeypatch):
    monkeypatch.chdir(REPO)
    sleeper = "import time; print('sleeping', flush=True); time.sleep(600)"
    job_id, _ = submit(cli, two_nodes, ["python", "-c", sleeper])
    client = job_client(two_nodes.dashboard)
    deadline = time.monotonic() + 120
    while job_status(client, job_id) != "RUNNING":
        assert time.monotonic() < deadline, f"job {job_id} never started"
        time.sleep(1)
    stopped = ray_job_cli("stop", "--no-wait", job_id, "--address", two_nodes.dashboard)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert wait_for_job(two_nodes, job_id, timeout_s=60) == "STOPPED"
    # `seqctr submit --follow`'s log follower ends with the job's status and exit code 1 for STOPPED.
    lines: list[str] = []
    assert follow_job(client, job_id, lines.append) == "STOPPED" and "sleeping" in "".join(lines)
    with pytest.raises(JobError, match="raysubmit_doesnotexist"):
        follow_job(client, "raysubmit_doesnotexist", lines.append)


def test_seqctr_train_puts_one_worker_on_each_node(two_nodes, cli, monkeypatch, tmp_path_factory, s3_root):
    from ray.util.state import list_actors

    from seqctr.platform.config import CONFIGS_DIR, load_config
    from seqctr.platform.data.synthetic import generate_synthetic
    from seqctr.platform.storage import upload_dir

    monkeypatch.chdir(REPO)
    local = tmp_path_factory.mktemp("two-node-local")  # node_a's disk only: node_b sees an empty tmpfs here
    # A smaller log than tiny.yaml's: this test is about where workers run, not what they learn.
    synthetic = load_config(CONFIGS_DIR / "tiny.yaml", ["data.synthetic.events=4000"]).data.synthetic
    data = generate_synthetic(synthetic, local / "data")
    upload_dir(data["events_path"], f"{s3_root}/data/events")
    upload_dir(local / "data" / "items", f"{s3_root}/data/items")
    command = [
        "seqctr", "train", "--config", "configs/tiny.yaml",
        "--set", "train.num_workers=2",
        "--set", "train.cpus_per_worker=2",  # > NODE_CPUS / 2: two workers cannot share a node
        "--set", "train.epochs=1",
        "--set", "train.torch_threads=1",  # two DDP workers share 2 real cores
        "--set", "model.text=false",  # id embeddings only: no BERT stage, the test is about placement
        "--set", f"data.events={s3_root}/data/events",
        "--set", f"data.items={s3_root}/data/items",
    ]  # fmt: skip
    # --storage: samples, embeddings, runs and the registry on the S3 server, the only thing both nodes share.
    # RAY_ADDRESS: Ray Train's placement-group cleaner looks its cluster up with address "auto", which
    # fails when a machine runs several Ray instances (this test's nodes, the session's local Ray).
    flags = ("--storage", f"{s3_root}/seqctr", "--env", f"RAY_ADDRESS={two_nodes.gcs_address}")
    job_id, _ = submit(cli, two_nodes, command, flags=flags)
    status = wait_for_job(two_nodes, job_id)
    chunks: list[str] = []
    client = job_client(two_nodes.dashboard)
    assert follow_job(client, job_id, chunks.append) == "SUCCEEDED" and status == "SUCCEEDED", "".join(chunks)[-5000:]
    followed_output = "".join(chunks)

    jobs = client.list_jobs()
    ray_job_id = next(j.job_id for j in jobs if j.submission_id == job_id)
    workers = list_actors(
        address=two_nodes.dashboard,
        filters=[("class_name", "=", "RayTrainWorker"), ("job_id", "=", ray_job_id)],
        detail=True,
    )
    by_node = {name: sorted(w.pid for w in workers if w.node_id == node) for name, node in two_nodes.node_ids.items()}
    started = re.findall(r"pid=(\d+)\) world_rank=(\d+)", followed_output)  # the controller's log
    ranks = {int(pid): int(rank) for pid, rank in started}
    placement = {name: [(pid, ranks.get(pid)) for pid in pids] for name, pids in by_node.items()}
    print(f"\n[two-node] train job {job_id}: (pid, world_rank) by node {placement}, ids {two_nodes.node_ids}")
    assert len(workers) == 2 and all(len(pids) == 1 for pids in by_node.values()), by_node
    fs, base = filesystem_for(f"{s3_root}/seqctr/runs/seqctr")
    stored = [i.path for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))]
    assert [p for p in stored if p.endswith("/model.safetensors")], "no checkpoint in the object store"
    assert any(p.endswith("/latest.json") for p in stored)
    if two_nodes.hidden is not None:  # and node_b really could not read what node_a's side wrote locally
        probe = HIDDEN_PROBE.format(folder=str(local / "data"))
        _, output = submit(cli, two_nodes, ["python", "-c", probe], follow=True)
        seen = json.loads(next(line for line in output.splitlines() if line.startswith("SEEN "))[5:])
        assert seen["node_a"] == ["events", "items"] and seen["node_b"] == [], seen


HIDDEN_PROBE = """
import json, os, ray
ray.init()

@ray.remote(num_cpus=0)
def listing(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []

folder = {folder!r}
seen = {{n: ray.get(listing.options(resources={{n: 0.01}}).remote(folder)) for n in ("node_a", "node_b")}}
print("SEEN " + json.dumps(seen))
"""
