"""Atomic writes: all or nothing, and files as readable as any other file the platform writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from seqctr.platform.storage import (
    absolute,
    atomic_dir,
    atomic_write_text,
    basename,
    file_stamps,
    is_file,
    join,
    list_names,
    output_dir,
    parent,
    read_text,
)


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


@pytest.mark.parametrize("where", ["local", "s3"])
def test_output_dir_is_trusted_only_once_its_marker_is_written(where: str, tmp_path: Path, request) -> None:
    """A folder on object storage cannot be renamed into place: its old marker goes first, the new one
    last, and a failed write leaves neither old nor half-new contents that a reader would trust."""
    root = str(tmp_path) if where == "local" else request.getfixturevalue("s3_root")
    final = join(root, "samples")
    with output_dir(final, "_SUCCESS") as target:
        atomic_write_text(join(target, "part-0.parquet"), "old")
        atomic_write_text(join(target, "_SUCCESS"), "{}")
    assert list_names(final) == ["_SUCCESS", "part-0.parquet"] and read_text(join(final, "part-0.parquet")) == "old"

    with pytest.raises(RuntimeError, match="crash mid-write"), output_dir(final, "_SUCCESS") as target:
        atomic_write_text(join(target, "part-0.parquet"), "half")
        raise RuntimeError("crash mid-write")
    if where == "local":  # renamed into place: the old folder is untouched
        assert read_text(join(final, "part-0.parquet")) == "old" and is_file(join(final, "_SUCCESS"))
    else:  # written in place: no marker, so no reader takes what is there for a build
        assert not is_file(join(final, "_SUCCESS")) and list_names(final) == []

    with pytest.raises(RuntimeError, match="did not write its marker"), output_dir(final, "_SUCCESS") as target:
        atomic_write_text(join(target, "part-0.parquet"), "new")


def test_uri_paths_keep_their_scheme() -> None:
    assert join("s3://b/runs", "seqctr", "latest.json") == "s3://b/runs/seqctr/latest.json"
    assert parent("s3://b/runs/seqctr/") == "s3://b/runs" and basename("s3://b/runs/seqctr/") == "seqctr"
    assert absolute("s3://b/runs/") == "s3://b/runs"
