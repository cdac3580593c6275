"""`seqctr train` as a user runs it: its own lines once each, none of Ray's chatter (slow: one training)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
TINY = str(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")
RAY_NOISE = re.compile(
    r"core_worker|PreemptionWatcher|\((RayTrainWorker|TrainController|SplitCoordinator)|INFO |Deprecat|worker processes"
)


def seqctr(cwd: Path, *args: str, ray_address: str) -> subprocess.CompletedProcess:
    # The session's Ray, joined through RAY_ADDRESS as a user joins a cluster: a second local instance on
    # the same machine would make Ray Train's placement-group cleaner (which looks its cluster up with
    # address "auto") fail with "Found multiple active Ray instances".
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    cmd = [sys.executable, "-m", "seqctr.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_train_prints_each_epoch_once_and_none_of_rays_chatter(tmp_path, ray_session):
    address = ray_session.get_runtime_context().gcs_address
    gen = seqctr(tmp_path, "data", "generate", "--config", TINY, "--out", "work/data", ray_address=address)
    assert gen.returncode == 0, gen.stderr
    done = seqctr(tmp_path, "train", "--config", TINY, "--set", "train.epochs=2", ray_address=address)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    # The session's shared cluster may warn every driver that joins it about its own worker count (other
    # tests' workers): a cluster-level line, not seqctr's output, which a user's own cluster prints alone.
    cluster_load = "(raylet)", "PYTHON worker processes have been started on node"
    lines = [line for line in out.splitlines() if not all(part in line for part in cluster_load)]
    for epoch in (0, 1):
        assert sum(line.startswith(f"[seqctr] epoch {epoch}: loss") for line in lines) == 1, out
        quarters = [line for line in lines if re.match(rf"\[seqctr\] epoch {epoch}: +\d+% loss", line)]
        assert [q.split()[3] for q in quarters] == ["25%", "50%", "75%"], out
    stages = [line for line in lines if line.startswith("[seqctr] stage ")]
    assert [s.split()[2] for s in stages] == ["1/4:", "2/4:", "3/4:", "4/4:"], out
    assert not [line for line in lines if RAY_NOISE.search(line)], out
