"""Run folders: every training run gets its own folder, and a pointer names the latest successful one.

    work/runs/seqctr/20261201-225300-1a2b/      one `seqctr train` (Ray Train's run: epoch_*, report/)
    work/runs/seqctr/latest.json                the last run that finished: its folder, best checkpoint
    seqctr evaluate --checkpoint work/runs/seqctr/latest

A run never displaces an earlier one, and a failed run never moves the pointer, so what the README
and the demo point at (`.../latest`) is always a whole, evaluated run.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

from seqctr.platform.storage import atomic_write_text

LATEST = "latest"
POINTER_FILE = "latest.json"


class RunError(ValueError):
    """A run reference that names nothing (no run to resume, no successful run yet)."""


def new_run_id() -> str:
    """Sortable by start time, unique across machines starting runs in the same second."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def run_root(storage_path: str, run_name: str) -> Path:
    return Path(storage_path) / run_name


def newest_run(root: Path) -> Path | None:
    """The most recently started run folder under `root` (finished or not), for --resume."""
    runs = sorted(p for p in root.glob("*-*-*") if p.is_dir()) if root.is_dir() else []
    return runs[-1] if runs else None


def write_latest(root: Path, record: dict[str, Any]) -> Path:
    """Point `latest` at a finished run, atomically (a reader sees the old pointer or the new one)."""
    pointer = root / POINTER_FILE
    atomic_write_text(pointer, json.dumps(record, indent=2, default=str))
    return pointer


def read_latest(root: Path) -> dict[str, Any]:
    pointer = root / POINTER_FILE
    if not pointer.is_file():
        raise RunError(f"{root / LATEST}: no finished run yet ({pointer} is written when `seqctr train` ends)")
    return json.loads(pointer.read_text())


def resolve_latest(path: str) -> str | None:
    """`RUNS/NAME/latest` -> the best checkpoint of that run name's latest finished run; None otherwise."""
    candidate = Path(path)
    if candidate.name != LATEST or candidate.exists() or "://" in path:
        return None
    return str(read_latest(candidate.parent)["best_checkpoint"])
