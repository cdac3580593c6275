"""Atomic writes: all or nothing, and files as readable as any other file the platform writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from seqctr.platform.storage import atomic_dir, atomic_write_text, file_stamps


def test_atomic_write_gives_a_whole_file_with_the_usual_mode(tmp_path: Path):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, '{"auc": 0.8}')
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    assert target.read_text() == '{"auc": 0.8}'
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failed_folder_write_leaves_the_old_folder(tmp_path: Path):
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        (tmp / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "a").write_text("new")
        raise RuntimeError("crash mid-write")
    assert (final / "a").read_text() == "old" and sorted(os.listdir(tmp_path)) == ["out"]


def test_file_stamps_change_when_a_file_is_rewritten(tmp_path: Path):
    f = tmp_path / "part-0.parquet"
    f.write_bytes(b"abc")
    first = file_stamps([str(f)])
    os.utime(f, ns=(first[0][2] + 1_000_000, first[0][2] + 1_000_000))
    assert file_stamps([str(f)]) != first and first[0][1] == 3
