"""`seqctr train` as a user runs it: its own lines once each, none of Ray's chatter (slow: one training)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
TINY = str(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")
RAY_NOISE = re.compile(
    r"core_worker|PreemptionWatcher|\((RayTrainWorker|TrainController|SplitCoordinator)|INFO |Deprecat|worker processes"
)


def seqctr(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # Its own Ray temp folder, short: Ray's socket paths must stay under 108 bytes (AF_UNIX), which a
    # pytest tmp_path plus Ray's session folder names exceed.
    ray_tmp = os.environ.get("RAY_TMPDIR") or tempfile.mkdtemp(prefix="seqctr-ray-", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)  # its own local Ray, like a user's first run
    cmd = [sys.executable, "-m", "seqctr.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.xfail(
    reason="beside the session's own Ray, this second local instance makes Ray Train's PlacementGroupCleaner "
    "print 'Found multiple active Ray instances' (a Ray limitation); passes alone",
    strict=False,
)
def test_train_prints_each_epoch_once_and_none_of_rays_chatter(tmp_path):
    gen = seqctr(tmp_path, "data", "generate", "--config", TINY, "--out", "work/data")
    assert gen.returncode == 0, gen.stderr
    done = seqctr(tmp_path, "train", "--config", TINY, "--set", "train.epochs=2")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    lines = out.splitlines()
    for epoch in (0, 1):
        assert sum(line.startswith(f"[seqctr] epoch {epoch}: loss") for line in lines) == 1, out
        quarters = [line for line in lines if re.match(rf"\[seqctr\] epoch {epoch}: +\d+% loss", line)]
        assert [q.split()[3] for q in quarters] == ["25%", "50%", "75%"], out
    stages = [line for line in lines if line.startswith("[seqctr] stage ")]
    assert [s.split()[2] for s in stages] == ["1/4:", "2/4:", "3/4:", "4/4:"], out
    assert not [line for line in lines if RAY_NOISE.search(line)], out
