"""Run folders and the `latest` pointer: a run has its own folder, only a finished run moves the pointer."""

from __future__ import annotations

from pathlib import Path

import pytest

from seqctr.platform.runs import RunError, new_run_id, newest_run, read_latest, resolve_latest, write_latest


def test_run_ids_sort_by_start_time_and_do_not_collide():
    ids = {new_run_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i.split("-")) == 3 for i in ids)


def test_latest_resolves_to_the_pointed_checkpoint(tmp_path: Path):
    root = tmp_path / "runs" / "seqctr"
    with pytest.raises(RunError, match="no finished run yet"):
        resolve_latest(str(root / "latest"))
    (root / "20260101-000000-aaaa").mkdir(parents=True)
    (root / "20260102-000000-bbbb").mkdir()
    assert newest_run(root) == str(root / "20260102-000000-bbbb")
    write_latest(root, {"run_id": "20260101-000000-aaaa", "best_checkpoint": "/ck/epoch_001"})
    assert read_latest(root)["run_id"] == "20260101-000000-aaaa"  # the newest folder may be unfinished
    assert resolve_latest(str(root / "latest")) == "/ck/epoch_001"
    assert resolve_latest(str(root / "20260101-000000-aaaa")) is None  # not a pointer: left as it is
