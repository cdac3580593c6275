"""Ray Jobs submission: what is shipped, what runs, and the errors a user sees (no cluster needed).

Submitting to a real cluster, `--follow` and Ray's own `ray job logs|stop` are tested against a two-node Ray
cluster in tests/test_two_node.py.
"""

from __future__ import annotations

import shlex
import socket
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from seqctr.platform.jobs import (
    DEFAULT_EXCLUDES,
    JOB_ENV_VARS,
    JobError,
    build_entrypoint,
    build_job_spec,
    build_runtime_env,
    find_project_root,
    is_excluded,
    large_files,
    parse_env,
    resolve_address,
    storage_overrides,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli() -> typer.Typer:
    from seqctr.cli.main import app

    return app


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A minimal project: the package, a config, plus things that must never be shipped."""
    (tmp_path / "seqctr").mkdir()
    (tmp_path / "seqctr" / "__init__.py").write_text("")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'seqctr'\n")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "run.yaml").write_text("name: run\n")
    for folder in (".venv/lib", "work/data", ".git", "seqctr/__pycache__"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / ".venv" / "lib" / "big.so").write_bytes(b"x" * 4096)
    (tmp_path / "work" / "data" / "events.parquet").write_bytes(b"x" * 4096)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "dump.bin").write_bytes(b"x" * 4096)
    return tmp_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------ address
def test_address_flag_wins_over_env(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://env-head:8265")
    assert resolve_address("http://flag-head:8265") == "http://flag-head:8265"
    assert resolve_address(None) == "http://env-head:8265"


def test_no_address_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(JobError, match=r"pass --address http://HEAD:8265 or set RAY_ADDRESS"):
        resolve_address(None)


# ------------------------------------------------------------------------------------------ entrypoint
def test_seqctr_command_runs_the_shipped_package():
    command = ["seqctr", "train", "--config", "configs/tiny.yaml", "--set", "train.lr=1e-3"]
    entry = build_entrypoint(command, REPO)
    assert shlex.split(entry) == [
        "python", "-m", "seqctr.cli", "train", "--config", "configs/tiny.yaml", "--set", "train.lr=1e-3",
    ]  # fmt: skip


def test_config_paths_become_relative_to_the_working_dir(monkeypatch):
    monkeypatch.chdir(REPO / "configs")
    entry = build_entrypoint(["seqctr", "train", "-c", "tiny.yaml"], REPO)
    assert shlex.split(entry)[-1] == "configs/tiny.yaml"
    absolute = str(REPO / "configs" / "tiny.yaml")
    entry = build_entrypoint(["/usr/bin/seqctr", "tune", f"--config={absolute}"], REPO)
    assert shlex.split(entry) == ["python", "-m", "seqctr.cli", "tune", "--config=configs/tiny.yaml"]


def test_config_outside_the_working_dir_is_refused(tmp_path):
    outside = tmp_path / "mine.yaml"
    outside.write_text("name: x\n")
    with pytest.raises(JobError, match=rf"--config {outside}: the file is outside the working dir {REPO}"):
        build_entrypoint(["seqctr", "train", "--config", str(outside)], REPO)
    with pytest.raises(JobError, match=r"--config configs/nope.yaml: config file not found"):
        build_entrypoint(["seqctr", "train", "--config", "configs/nope.yaml"], REPO)
    with pytest.raises(JobError, match=r"-c needs a value"):
        build_entrypoint(["seqctr", "train", "-c"], REPO)


def test_other_commands_run_as_given():
    command = ["python", "-c", "print('hi there')"]  # -c is python's flag here, not --config
    assert shlex.split(build_entrypoint(command, REPO)) == command
    already = ["python3", "-m", "seqctr.cli", "train", "-c", "configs/tiny.yaml"]
    assert shlex.split(build_entrypoint(already, REPO)) == ["python", *already[1:]]
    with pytest.raises(JobError, match="no command to submit"):
        build_entrypoint([], REPO)


def test_storage_puts_shared_outputs_under_one_uri_and_user_sets_still_win():
    entry = build_entrypoint(
        ["seqctr", "data", "build", "--set", "data.samples=s3://other/samples"], REPO, storage="s3://b/seqctr/"
    )
    assert shlex.split(entry) == [
        "python", "-m", "seqctr.cli", "data", "build",
        "--set", "data.samples=s3://b/seqctr/samples",
        "--set", "embed.out=s3://b/seqctr/embeddings",
        "--set", "train.storage_path=s3://b/seqctr/runs",
        "--set", "registry.root=s3://b/seqctr/registry",
        "--set", "data.samples=s3://other/samples",
    ]  # fmt: skip
    with pytest.raises(JobError, match=r"--storage shared/out: use an object-store URI"):
        storage_overrides("shared/out")
    with pytest.raises(JobError, match=r"--storage applies to seqctr commands only, not to 'python'"):
        build_entrypoint(["python", "x.py"], REPO, storage="/shared")


# ------------------------------------------------------------------------------------------ runtime env
@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        (".venv", True),
        (".venv/lib/x.so", True),
        ("work/data/a.parquet", True),
        ("seqctr/work/helper.py", False),  # '/work' is anchored at the project root
        ("seqctr/__pycache__/cli.cpython-311.pyc", True),
        ("seqctr.egg-info/PKG-INFO", True),
        ("seqctr/platform/jobs.py", False),
        ("configs/tiny.yaml", False),
    ],
)
def test_excludes(path, excluded):
    assert is_excluded(path, DEFAULT_EXCLUDES) is excluded


def test_runtime_env_ships_the_project_without_outputs_or_big_files(project):
    env, skipped = build_runtime_env(project, {"EXTRA": "1"}, max_file_bytes=1024)
    assert env["working_dir"] == str(project)
    assert skipped == ["notes/dump.bin"]  # .venv and work/ are excluded before any size check
    assert env["excludes"] == DEFAULT_EXCLUDES + ["/notes/dump.bin"]
    assert env["env_vars"] == {**JOB_ENV_VARS, "EXTRA": "1"}
    assert env["env_vars"]["RAY_TRAIN_V2_ENABLED"] == "1" and env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert large_files(project, DEFAULT_EXCLUDES, max_bytes=10_000) == []


def test_job_spec_of_a_project(project, monkeypatch):
    monkeypatch.chdir(project / "configs")
    command = ["seqctr", "train", "--config", "run.yaml"]
    spec = build_job_spec(command, project, {"A": "b"}, storage="/shared/x")
    args = shlex.split(spec.entrypoint)
    assert args[:4] == ["python", "-m", "seqctr.cli", "train"]
    assert args[-2:] == ["--config", "configs/run.yaml"]
    assert "train.storage_path=/shared/x/runs" in args
    assert spec.runtime_env["env_vars"]["A"] == "b"


def test_working_dir_must_hold_the_package(tmp_path):
    with pytest.raises(JobError, match=rf"--working-dir {tmp_path}: it does not contain the seqctr package"):
        build_runtime_env(tmp_path)
    with pytest.raises(JobError, match=r"--working-dir .*missing: not a folder"):
        build_runtime_env(tmp_path / "missing")


def test_project_root_is_found_from_a_subfolder(project, tmp_path_factory):
    assert find_project_root(project / "configs") == project
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    with pytest.raises(JobError, match=rf"no seqctr project at or above {elsewhere}"):
        find_project_root(elsewhere)


def test_parse_env():
    assert parse_env(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(JobError, match="--env NOVALUE: expected KEY=VALUE"):
        parse_env(["NOVALUE"])


# ------------------------------------------------------------------------------------------ CLI errors
def test_submit_without_address_exits_2_with_the_fix(cli, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(REPO)
    # No `--`: everything after the first positional belongs to the submitted command.
    command = ["seqctr", "train", "--config", "configs/tiny.yaml", "--set", "a=1"]
    result = CliRunner().invoke(cli, ["submit", *command])
    assert result.exit_code == 2
    assert "error: no Ray cluster address: pass --address http://HEAD:8265" in result.output


def test_unreachable_cluster_exits_2(cli, monkeypatch):
    monkeypatch.chdir(REPO)
    address = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(cli, ["submit", "--address", address, "--", "seqctr", "train"])
    assert result.exit_code == 2, result.output
    assert f"error: cannot reach the Ray Jobs API at {address}" in result.output


def test_submit_reports_a_bad_config_before_contacting_the_cluster(cli, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{free_port()}")
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(cli, ["submit", "--", "seqctr", "train", "--config", "configs/absent.yaml"])
    assert result.exit_code == 2
    assert "error: --config configs/absent.yaml: config file not found" in result.output


def test_storage_env_applies_to_seqctr_commands_only(cli, monkeypatch):
    monkeypatch.setenv("SEQCTR_STORAGE_URI", "relative/out")  # invalid on purpose: shows where it is used
    monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{free_port()}")
    monkeypatch.chdir(REPO)
    train = CliRunner().invoke(cli, ["submit", "--", "seqctr", "train"])
    assert train.exit_code == 2 and "error: --storage relative/out: use an object-store URI" in train.output
    other = CliRunner().invoke(cli, ["submit", "--", "python", "-c", "print(1)"])
    assert other.exit_code == 2 and "error: cannot reach the Ray Jobs API" in other.output
