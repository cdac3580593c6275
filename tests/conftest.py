"""Shared fixtures: one local Ray instance for the whole test session, the tiny config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DATA_USE_DATASOURCE_V2", "0")

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
