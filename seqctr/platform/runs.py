"""Run folders: every training run gets its own folder, and a pointer names the latest successful one.

    work/runs/seqctr/20261201-225300-1a2b/      one `seqctr train` (Ray Train's run: epoch_*, report/)
    work/runs/seqctr/latest.json                the last run that finished: its folder, best checkpoint
    seqctr evaluate --checkpoint work/runs/seqctr/latest

Every path may be local or a URI (s3://...), as Ray Train's storage_path may be.

A run never displaces an earlier one, and a failed run never moves the pointer, so what the README
and the demo point at (`.../latest`) is always a whole, evaluated run.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from seqctr.platform.storage import (
    absolute,
    atomic_write_text,
    basename,
    is_file,
    join,
    list_names,
    parent,
    path_type,
    read_text,
)

LATEST = "latest"
POINTER_FILE = "latest.json"


class RunError(ValueError):
    """A run reference that names nothing (no run to resume, no successful run yet)."""


def new_run_id() -> str:
    """Sortable by start time, unique across machines starting runs in the same second."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"


def run_root(storage_path: str, run_name: str) -> str:
    """`storage_path/run_name`, local paths made absolute (Ray Train wants an absolute storage path)."""
    return join(absolute(storage_path), run_name)


def newest_run(root: str) -> str | None:
    """The most recently started run folder under `root` (finished or not), for --resume."""
    import pyarrow.fs as pafs

    runs = [n for n in list_names(root) if n.count("-") >= 2 and path_type(join(root, n)) == pafs.FileType.Directory]
    return join(root, runs[-1]) if runs else None


def write_latest(root: str, record: dict[str, Any]) -> str:
    """Point `latest` at a finished run, atomically (a reader sees the old pointer or the new one)."""
    pointer = join(root, POINTER_FILE)
    atomic_write_text(pointer, json.dumps(record, indent=2, default=str))
    return pointer


def read_latest(root: str) -> dict[str, Any]:
    pointer = join(root, POINTER_FILE)
    if not is_file(pointer):
        raise RunError(f"{join(root, LATEST)}: no finished run yet ({pointer} is written when `seqctr train` ends)")
    return json.loads(read_text(pointer))


def resolve_latest(path: str) -> str | None:
    """`RUNS/NAME/latest` (local or a URI) -> the best checkpoint of that run name's latest finished run;
    None for any other path."""
    if basename(path) != LATEST or path_type(path).name != "NotFound":
        return None
    return str(read_latest(parent(path))["best_checkpoint"])
