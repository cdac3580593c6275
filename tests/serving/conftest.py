"""Fixtures of the serving tests (helpers live in serving_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from serving_helpers import write_checkpoint


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Two models: "a" with target attention, "b" with the default config (attention off)."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "a": write_checkpoint(root / "a", seed=0, attention=True),
        "b": write_checkpoint(root / "b", seed=1, attention=False),
    }
