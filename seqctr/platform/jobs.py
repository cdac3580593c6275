"""Ray Jobs: run any seqctr command on a Ray cluster (`seqctr submit`, `seqctr jobs ...`).

    seqctr submit --address http://HEAD:8265 --follow -- seqctr train --config configs/tiny.yaml

The project folder travels as the job's `working_dir` (Ray zips it, uploads it to the cluster and
unpacks it on every node, first on `sys.path`), so the cluster runs exactly the code and configs on
this machine. Ray is imported inside the functions: `seqctr --help` must not pay for it.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from seqctr.platform.runtime import WORKER_ENV

ADDRESS_ENV = "RAY_ADDRESS"
TERMINAL_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")
# Set in every job: the workers' environment (one list, runtime.WORKER_ENV), plus
# RAY_OVERRIDE_JOB_RUNTIME_ENV: the job's driver calls ray.init with its own runtime_env (the same env
# vars); without it Ray refuses to merge the two ("same environment variable keys is not allowed").
JOB_ENV_VARS = {**WORKER_ENV, "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"}
# Never shipped: environments, outputs, caches (gitwildmatch patterns relative to the working dir).
# No trailing slashes: Ray matches folder paths without one, and a matched folder is not walked at all.
DEFAULT_EXCLUDES = [
    ".venv",
    "venv",
    ".git",
    "/work",
    "/runs",
    "__pycache__",
    "*.pyc",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    ".mypy_cache",
]
# Files above this size are left out (and named): datasets and checkpoints belong in shared storage.
MAX_FILE_BYTES = 20 * 1024 * 1024
CONFIG_FLAGS = ("--config", "-c")
STORAGE_ENV = "SEQCTR_STORAGE_URI"
# Config keys moved under `--storage URI`: every node must read what another node wrote.
STORAGE_KEYS = {
    "data.samples": "samples",
    "embed.out": "embeddings",
    "train.storage_path": "runs",
    "registry.root": "registry",
}


class JobError(RuntimeError):
    """A submission or job request cannot be done; the message says what to change."""


@dataclass(frozen=True)
class JobSpec:
    """Everything `JobSubmissionClient.submit_job` receives, built and checked before any network call."""

    entrypoint: str
    runtime_env: dict[str, Any]
    skipped_files: tuple[str, ...] = ()


def resolve_address(address: str | None) -> str:
    """`--address`, else `RAY_ADDRESS` (what Ray users expect), else a clear error."""
    resolved = (address or os.environ.get(ADDRESS_ENV) or "").strip()
    if not resolved:
        raise JobError(
            f"no Ray cluster address: pass --address http://HEAD:8265 or set {ADDRESS_ENV} "
            "(for a `ray up` cluster, run `ray dashboard cluster.yaml` and use http://127.0.0.1:8265)"
        )
    return resolved


def find_project_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: the cwd) that holds the seqctr package."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "seqctr" / "__init__.py").is_file() and (folder / "pyproject.toml").is_file():
            return folder
    raise JobError(f"no seqctr project at or above {here}: run from the project root or pass --working-dir PATH")


def check_working_dir(working_dir: str | Path) -> Path:
    root = Path(working_dir).resolve()
    if not root.is_dir():
        raise JobError(f"--working-dir {working_dir}: not a folder")
    if not (root / "seqctr" / "__init__.py").is_file():
        raise JobError(
            f"--working-dir {root}: it does not contain the seqctr package (seqctr/__init__.py), "
            "so the job could not import it; pass the project root"
        )
    return root


def is_excluded(rel_path: str, excludes: list[str]) -> bool:
    """Whether a root-relative path falls under one of `excludes` ('/x' = at the root, 'x' = any level)."""
    parts = PurePosixPath(rel_path).parts
    for pattern in excludes:
        if pattern.startswith("/"):
            anchored = PurePosixPath(pattern[1:]).parts
            if len(parts) >= len(anchored) and all(
                fnmatch.fnmatchcase(part, pat) for part, pat in zip(parts, anchored, strict=False)
            ):
                return True
        elif any(fnmatch.fnmatchcase(part, pattern) for part in parts):
            return True
    return False


def large_files(root: Path, excludes: list[str], max_bytes: int = MAX_FILE_BYTES) -> list[str]:
    """Files under `root` (outside `excludes`) bigger than `max_bytes`, as root-relative POSIX paths."""
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        rel_folder = PurePosixPath(Path(folder).relative_to(root).as_posix())
        dirs[:] = [d for d in dirs if not is_excluded(str(rel_folder / d), excludes)]
        for name in files:
            rel = str(rel_folder / name)
            if not is_excluded(rel, excludes) and (Path(folder) / name).stat().st_size > max_bytes:
                found.append(rel)
    return sorted(found)


def build_runtime_env(
    working_dir: str | Path, env_vars: dict[str, str] | None = None, max_file_bytes: int = MAX_FILE_BYTES
) -> tuple[dict[str, Any], list[str]]:
    """The job's runtime_env (working_dir + excludes + env vars) and the big files it leaves out."""
    root = check_working_dir(working_dir)
    big = large_files(root, DEFAULT_EXCLUDES, max_file_bytes)
    runtime_env = {
        "working_dir": str(root),
        "excludes": DEFAULT_EXCLUDES + [f"/{path}" for path in big],
        "env_vars": {**JOB_ENV_VARS, **(env_vars or {})},
    }
    return runtime_env, big


def _job_relative_path(value: str, root: Path, flag: str) -> str:
    """A local config path as the job will see it: relative to the working dir (the job's cwd)."""
    if "://" in value:
        return value
    local = Path(value).expanduser().resolve()
    if not local.is_file():
        raise JobError(f"{flag} {value}: config file not found (looked at {local})")
    try:
        return local.relative_to(root).as_posix()
    except ValueError:
        raise JobError(
            f"{flag} {value}: the file is outside the working dir {root}, so the job would not see it; "
            "move it into the project or pass --working-dir"
        ) from None


def _seqctr_args_start(args: list[str]) -> int | None:
    """Where a seqctr command's own arguments begin (`seqctr ...`, `python -m seqctr.cli ...`), else None."""
    if Path(args[0]).name == "seqctr":
        return 1
    if len(args) >= 3 and Path(args[0]).name.startswith("python") and args[1:3] == ["-m", "seqctr.cli"]:
        return 3
    return None


def is_seqctr_command(command: list[str]) -> bool:
    return bool(command) and _seqctr_args_start(command) is not None


def storage_overrides(storage: str) -> list[str]:
    """`--set` flags that put every shared output under one URI (or one absolute shared folder)."""
    if "://" not in storage and not os.path.isabs(storage):
        raise JobError(
            f"--storage {storage}: use an object-store URI (s3://bucket/prefix) or an absolute path on a "
            "shared filesystem; a relative path would land in the job's temporary working dir"
        )
    base = storage.rstrip("/")
    overrides = []
    for key, sub in STORAGE_KEYS.items():
        overrides += ["--set", f"{key}={base}/{sub}"]
    return overrides


def build_entrypoint(command: list[str], root: Path, storage: str | None = None) -> str:
    """The shell command the job runs.

    A leading `seqctr` becomes `python -m seqctr.cli`, so the job imports the shipped package (first on
    the path) even on nodes where no `seqctr` script is installed. A seqctr command's `--config` path is
    rewritten relative to the working dir, which is the job's cwd on the cluster, and `storage` adds the
    shared-storage overrides (before the user's own `--set` flags, so those still win). Other commands
    (`python script.py`, `ray ...`) run as given.
    """
    if not command:
        raise JobError("no command to submit: add it after --, e.g. `seqctr submit -- seqctr train`")
    start = _seqctr_args_start(command)
    if start is None:
        if storage:
            raise JobError(f"--storage applies to seqctr commands only, not to {command[0]!r}")
        return shlex.join(command)
    args = ["python", "-m", "seqctr.cli", *command[start:]]
    for i in range(3, len(args)):
        arg = args[i]
        if arg in CONFIG_FLAGS:
            if i + 1 >= len(args):
                raise JobError(f"{arg} needs a value (a config YAML path)")
            args[i + 1] = _job_relative_path(args[i + 1], root, arg)
        elif arg.startswith("--config="):
            args[i] = "--config=" + _job_relative_path(arg.split("=", 1)[1], root, "--config")
    if storage:
        # After the subcommand name(s), before the first option: `seqctr data build --set ...`.
        first_option = next((i for i in range(3, len(args)) if args[i].startswith("-")), len(args))
        args[first_option:first_option] = storage_overrides(storage)
    return shlex.join(args)


def build_job_spec(
    command: list[str],
    working_dir: str | Path,
    env_vars: dict[str, str] | None = None,
    storage: str | None = None,
) -> JobSpec:
    runtime_env, big = build_runtime_env(working_dir, env_vars)
    entrypoint = build_entrypoint(command, Path(runtime_env["working_dir"]), storage)
    return JobSpec(entrypoint=entrypoint, runtime_env=runtime_env, skipped_files=tuple(big))


def parse_env(items: list[str] | None) -> dict[str, str]:
    """`--env KEY=VALUE` flags as a dict; a malformed one names itself."""
    env: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise JobError(f"--env {item}: expected KEY=VALUE")
        env[key.strip()] = value
    return env


def job_client(address: str | None) -> Any:
    """A `JobSubmissionClient` for the cluster; an unreachable cluster is one clear error."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    resolved = resolve_address(address)
    try:
        return JobSubmissionClient(resolved)
    except AuthenticationError as err:
        raise JobError(
            f"the Ray cluster at {resolved} requires a token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN "
            f"(or ~/.ray/auth_token) to the cluster's token ({err})"
        ) from None
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise JobError(f"cannot reach the Ray Jobs API at {resolved}: {err}") from None


def submit(client: Any, spec: JobSpec, submission_id: str | None = None) -> str:
    """Submit the job; returns its submission id (the id every other command takes)."""
    try:
        return client.submit_job(
            entrypoint=spec.entrypoint,
            runtime_env=spec.runtime_env,
            submission_id=submission_id,
            metadata={"submitted_by": "seqctr"},
        )
    except RuntimeError as err:
        raise JobError(f"the cluster refused the job: {err}") from None


def _call(fn: Callable[..., Any], job_id: str, *args: Any) -> Any:
    try:
        return fn(job_id, *args)
    except RuntimeError as err:
        raise JobError(f"job {job_id}: {err}") from None


def job_status(client: Any, job_id: str) -> str:
    return str(_call(client.get_job_status, job_id).value)


def iter_job_logs(client: Any, job_id: str) -> Iterator[str]:
    """Log chunks as the job writes them, until it ends (a synchronous view of `tail_job_logs`)."""
    _call(client.get_job_status, job_id)  # an unknown id fails here, with its name
    loop = asyncio.new_event_loop()
    stream = client.tail_job_logs(job_id)
    try:
        while True:
            try:
                yield loop.run_until_complete(stream.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(stream.aclose())
        loop.close()


def follow_job(
    client: Any,
    job_id: str,
    write: Callable[[str], None],
    poll_s: float = 1.0,
    timeout_s: float | None = None,
) -> str:
    """Stream the job's logs through `write` until it ends; returns its final status."""
    import time

    try:
        for chunk in iter_job_logs(client, job_id):
            write(chunk)
    except (RuntimeError, OSError) as err:  # the log stream broke: the status still tells the outcome
        write(f"[seqctr] log stream interrupted ({err}); waiting for the job to end\n")
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while (status := job_status(client, job_id)) not in TERMINAL_STATUSES:
        if deadline is not None and time.monotonic() > deadline:
            raise JobError(f"job {job_id} still {status} after {timeout_s:.0f}s")
        time.sleep(poll_s)
    return status
