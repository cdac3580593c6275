"""Shared fixtures: one local Ray instance for the whole test session, the tiny config, and a real
S3-protocol server (moto's server mode) on loopback for the object-store paths."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DATA_USE_DATASOURCE_V2", "0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The S3 server's address and dummy credentials go into the environment before anything starts (the
# session's Ray workers and the two-node test's nodes inherit them), exactly as a user points pyarrow and
# boto3 at MinIO: AWS_ENDPOINT_URL and the standard credential variables. The server itself starts only
# when a test asks for it (`s3_root`).
S3_PORT = _free_port()
os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{S3_PORT}"
os.environ["AWS_ACCESS_KEY_ID"] = "seqctr-test"
os.environ["AWS_SECRET_ACCESS_KEY"] = "seqctr-test"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

import torch  # noqa: E402

from seqctr.platform.config import CONFIGS_DIR, ExperimentConfig, load_config  # noqa: E402

# Tiny models on a shared 2-core machine run far faster on one thread than on two.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance, started once per test session and shared by every test."""
    import ray

    from seqctr.platform.runtime import init_ray

    init_ray(num_cpus=4)
    yield ray
    ray.shutdown()


@pytest.fixture
def tiny_config() -> ExperimentConfig:
    return load_config(CONFIGS_DIR / "tiny.yaml")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server (a real HTTP S3 API; pyarrow's and boto3's real clients talk to it), once per session."""
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(S3_PORT)], stdout=out, stderr=out
        )
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", S3_PORT), timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto S3 server did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.2)
    yield os.environ["AWS_ENDPOINT_URL"]
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_root(s3_server: str) -> str:
    """A fresh, empty bucket on the S3 server: `s3://BUCKET`."""
    import boto3

    bucket = f"seqctr-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}"
