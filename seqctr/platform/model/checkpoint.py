"""The checkpoint format: a directory that alone rebuilds the model.

    model.safetensors            CTR model weights (without the item text table)
    item_embeddings.safetensors  the item text-embedding table, one row per item index
    config.json                  the whole ExperimentConfig
    item_index.json              feature map: item id -> row (0 = padding, 1 = unknown)
    metrics.json                 metrics at save time (val, and test once evaluated)
    optimizer.safetensors        optimiser tensors, + train_state.json (epoch, best, optimiser scalars)
    manifest.json                sha256 and size of every other file

No pickles anywhere: tensors in safetensors, everything else JSON. `verify_checkpoint` checks every
sha256 before anything is loaded, so a flipped byte or a missing file is refused with its name.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch
from safetensors.torch import load_file, save_file

from seqctr.platform.config import ExperimentConfig, config_from_dict
from seqctr.platform.storage import (
    atomic_dir,
    atomic_write_bytes,
    atomic_write_text,
    download_dir,
    filesystem_for,
    is_uri,
    join,
)

MANIFEST = "manifest.json"
TEXT_TABLE_KEY = "text_table"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing a file, fails its checksum, or cannot rebuild the model."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model behind DDP (`prepare_model`) or torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, slots in state["state"].items():
        for name, value in slots.items():
            key = f"{pid}.{name}"
            if torch.is_tensor(value):
                tensors[key] = value.detach().cpu().contiguous()
            else:
                scalars[key] = value
    return tensors, {"scalars": scalars, "param_groups": state["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    config: ExperimentConfig,
    item_index_json: str,
    metrics: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    train_state: dict[str, Any] | None = None,
    extra_json: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint directory atomically (temp folder, then one rename)."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
    text_keys = [k for k in state if k.split(".")[-1] == TEXT_TABLE_KEY]
    text_tables = {k: state.pop(k) for k in text_keys}
    with atomic_dir(path) as tmp:
        save_file(state, str(tmp / "model.safetensors"))
        save_file(text_tables, str(tmp / "item_embeddings.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        (tmp / "item_index.json").write_text(item_index_json)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
        for name, obj in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=2))
        if optimizer is not None:
            tensors, meta = _flatten_optimizer(optimizer.state_dict())
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            (tmp / "train_state.json").write_text(
                json.dumps({"optimizer": meta, **(train_state or {})}, indent=2, default=float)
            )
        files = sorted(p for p in tmp.iterdir() if p.is_file())
        manifest = {
            "format_version": FORMAT_VERSION,
            "files": {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return path


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check the manifest: every listed file present with its sha256. Returns the manifest."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path}: not a directory")
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise CheckpointError(f"checkpoint {path}: missing file {MANIFEST}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is not valid JSON ({err})") from None
    for name in ("model.safetensors", "config.json", "item_index.json"):
        if name not in manifest.get("files", {}):
            raise CheckpointError(f"checkpoint {path}: manifest does not list required file {name}")
    for name, entry in manifest["files"].items():
        file = path / name
        if not file.exists():
            raise CheckpointError(f"checkpoint {path}: missing file {name}")
        if sha256_file(file) != entry["sha256"]:
            raise CheckpointError(f"checkpoint {path}: sha256 mismatch in {name} (corrupted or modified)")
    return manifest


@dataclass
class CheckpointContents:
    """What a verified checkpoint holds, before the model is built."""

    path: Path
    config: ExperimentConfig
    item_index_json: str
    model_state: dict[str, torch.Tensor]
    text_tables: dict[str, torch.Tensor]
    metrics: dict[str, Any]
    extra_json: dict[str, Any] = field(default_factory=dict)
    train_state: dict[str, Any] = field(default_factory=dict)
    optimizer_state: dict[str, Any] | None = None

    def full_state(self) -> dict[str, torch.Tensor]:
        return {**self.model_state, **self.text_tables}


def read_checkpoint(path: str | Path, with_optimizer: bool = False) -> CheckpointContents:
    """Verify, then read every part (safetensors + JSON only; nothing is unpickled)."""
    path = Path(path)
    manifest = verify_checkpoint(path)
    files = manifest["files"]
    config = config_from_dict(json.loads((path / "config.json").read_text()))
    metrics = json.loads((path / "metrics.json").read_text()) if "metrics.json" in files else {}
    text_tables = load_file(str(path / "item_embeddings.safetensors")) if "item_embeddings.safetensors" in files else {}
    contents = CheckpointContents(
        path=path,
        config=config,
        item_index_json=(path / "item_index.json").read_text(),
        model_state=load_file(str(path / "model.safetensors")),
        text_tables=text_tables,
        metrics=metrics,
    )
    known = {"config.json", "item_index.json", "metrics.json", "train_state.json", MANIFEST}
    for name in files:
        if name.endswith(".json") and name not in known:
            contents.extra_json[name] = json.loads((path / name).read_text())
    if "train_state.json" in files:
        train_state = json.loads((path / "train_state.json").read_text())
        opt_meta = train_state.pop("optimizer", None)
        contents.train_state = train_state
        if with_optimizer and opt_meta and "optimizer.safetensors" in files:
            tensors = load_file(str(path / "optimizer.safetensors"))
            contents.optimizer_state = _unflatten_optimizer(tensors, opt_meta)
    return contents


def update_metrics(path: str | Path, metrics: dict[str, Any]) -> None:
    """Merge metrics into a checkpoint's metrics.json and refresh its manifest entry atomically.

    A checkpoint on object storage (Ray Train's storage_path may be s3://) is verified in a local
    copy, then metrics.json and the manifest are put back, the manifest last.
    """
    if not is_uri(path) or isinstance(filesystem_for(path)[0], pafs.LocalFileSystem):
        _update_local_metrics(Path(filesystem_for(path)[1]), metrics)
        return
    with tempfile.TemporaryDirectory(prefix="seqctr-ckpt-") as tmp:
        download_dir(str(path), tmp)
        _update_local_metrics(Path(tmp), metrics)
        for name in ("metrics.json", MANIFEST):
            atomic_write_bytes(join(str(path), name), (Path(tmp) / name).read_bytes())


def _update_local_metrics(path: Path, metrics: dict[str, Any]) -> None:
    manifest = verify_checkpoint(path)
    current = json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").exists() else {}
    current.update(metrics)
    atomic_write_text(path / "metrics.json", json.dumps(current, indent=2, default=float))
    file = path / "metrics.json"
    manifest["files"]["metrics.json"] = {"sha256": sha256_file(file), "bytes": file.stat().st_size}
    atomic_write_text(path / MANIFEST, json.dumps(manifest, indent=2))
