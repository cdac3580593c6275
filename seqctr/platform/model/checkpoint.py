"""The checkpoint format: a directory that alone rebuilds the model.

    model.safetensors            CTR model weights (without the item text table)
    item_embeddings.safetensors  the item text-embedding table, one row per item index; or, in a
                                 training run, a reference by sha256 to ../tables/SHA.safetensors
    config.json                  the whole ExperimentConfig
    item_index.parquet           feature map: item id -> row (0 = padding, 1 = unknown); older
                                 checkpoints have item_index.json, still read
    metrics.json                 metrics at save time (val, and test once evaluated)
    optimizer.safetensors        optimiser tensors, + train_state.json (epoch, best, optimiser scalars)
    manifest.json                sha256 and size of every other file

No pickles anywhere: tensors in safetensors, everything else JSON or Parquet. `verify_checkpoint` checks
every sha256 before anything is loaded, so a flipped byte or a missing file is refused with its name.

Why shared tables: the frozen text table is catalogue-sized (1M items x 384 float32 = 1.5 GB) and never
changes within a run, so copying it into every epoch's checkpoint (times keep_best, plus registry
copies) would dominate storage. A run writes it once as `tables/SHA.safetensors` (content-addressed)
and each checkpoint's manifest lists it under "shared" with its sha256. It is found in a `tables/`
folder of the checkpoint's parent or grandparent (a run: RUN/epoch_001 -> RUN/tables; a Tune trial:
TRIALS/ID/epoch_001 -> TRIALS/tables; a registry version: NAME/versions/v0003 -> NAME/tables) and
verified like every other file.
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
from safetensors.torch import load_file, save, save_file

from seqctr.platform.config import ExperimentConfig, config_from_dict
from seqctr.platform.model.features import INDEX_FILE, LEGACY_INDEX_FILE, ItemIndex
from seqctr.platform.model.side import ITEM_TABLE_KEYS
from seqctr.platform.storage import (
    atomic_dir,
    atomic_write_bytes,
    atomic_write_text,
    download_dir,
    filesystem_for,
    is_file,
    is_uri,
    join,
    parent,
    read_bytes,
)

MANIFEST = "manifest.json"
TEXT_TABLE_KEY = "text_table"
TABLES_FILE = "item_embeddings.safetensors"
TABLES_DIR = "tables"
SHARED_SEARCH_DEPTH = 2  # the parent's and the grandparent's tables/ folder
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing a file, fails its checksum, or cannot rebuild the model."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_at(location: str) -> str:
    """sha256 of a local file or an object, streamed."""
    fs, inner = filesystem_for(location)
    digest = hashlib.sha256()
    with fs.open_input_stream(inner) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shared_table_name(sha256: str) -> str:
    return f"{sha256}.safetensors"


def find_shared(checkpoint: str, sha256: str, tables_dir: str | None = None) -> str | None:
    """Where the shared table `sha256` of `checkpoint` (a local path or a URI) lives: the nearest
    `tables/` folder among its ancestors that holds it, else `tables_dir` (the run's, for a copy Ray
    downloaded elsewhere), or None."""
    folder = str(checkpoint).rstrip("/")
    candidates = []
    for _ in range(SHARED_SEARCH_DEPTH):
        folder = parent(folder)
        candidates.append(join(folder, TABLES_DIR, shared_table_name(sha256)))
    if tables_dir:
        candidates.append(join(tables_dir, shared_table_name(sha256)))
    return next((c for c in candidates if is_file(c)), None)


class SharedTables:
    """A run's item tables, written once to FOLDER/SHA.safetensors and referenced by every checkpoint.

    Serialised and hashed once per tensor (the frozen table is the same object every epoch), so a
    checkpoint costs the weights only.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._done: dict[tuple[int, ...], dict[str, Any]] = {}

    def publish(self, tables: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Write `tables` (state key -> tensor) if not there yet; returns its manifest entry."""
        key = tuple(sorted((t.data_ptr(), *t.shape) for t in tables.values()))
        if key not in self._done:
            data = save(tables)
            sha = hashlib.sha256(data).hexdigest()
            target = join(self.folder, shared_table_name(sha))
            if not is_file(target):
                atomic_write_bytes(target, data)
            self._done[key] = {"sha256": sha, "bytes": len(data), "path": f"{TABLES_DIR}/{shared_table_name(sha)}"}
        return self._done[key]


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
    item_index: str | bytes,
    metrics: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    train_state: dict[str, Any] | None = None,
    extra_json: dict[str, Any] | None = None,
    shared_tables: SharedTables | None = None,
) -> Path:
    """Write a complete checkpoint directory atomically (temp folder, then one rename).

    `item_index`: the index's Parquet bytes (item_index.parquet) or its JSON text (item_index.json).
    With `shared_tables`, the text table is written once to the run's tables folder and referenced.
    """
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
    # Item-aligned tables (text embeddings, item side columns, item counts) change only with the data,
    # so with `shared_tables` they are stored once per run and referenced by checksum.
    text_keys = [k for k in state if k.split(".")[-1] in (TEXT_TABLE_KEY, *ITEM_TABLE_KEYS)]
    text_tables = {k: state.pop(k) for k in text_keys}
    shared = {}
    if shared_tables is not None and text_tables:
        shared[TABLES_FILE] = shared_tables.publish(text_tables)
    with atomic_dir(path) as tmp:
        save_file(state, str(tmp / "model.safetensors"))
        if not shared:
            save_file(text_tables, str(tmp / TABLES_FILE))
        (tmp / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        if isinstance(item_index, bytes):
            (tmp / INDEX_FILE).write_bytes(item_index)
        else:
            (tmp / LEGACY_INDEX_FILE).write_text(item_index)
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
        if shared:
            manifest["shared"] = shared
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return path


def verify_checkpoint(path: str | Path, shared: bool = True, tables_dir: str | None = None) -> dict[str, Any]:
    """Check the manifest: every listed file present with its sha256 (and, with `shared`, every
    shared table it references). Returns the manifest."""
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
    files = manifest.get("files", {})
    for name in ("model.safetensors", "config.json"):
        if name not in files:
            raise CheckpointError(f"checkpoint {path}: manifest does not list required file {name}")
    if INDEX_FILE not in files and LEGACY_INDEX_FILE not in files:
        raise CheckpointError(f"checkpoint {path}: manifest does not list required file {INDEX_FILE}")
    for name, entry in files.items():
        file = path / name
        if not file.exists():
            raise CheckpointError(f"checkpoint {path}: missing file {name}")
        if sha256_file(file) != entry["sha256"]:
            raise CheckpointError(f"checkpoint {path}: sha256 mismatch in {name} (corrupted or modified)")
    for name, entry in manifest.get("shared", {}).items() if shared else ():
        found = find_shared(str(path), entry["sha256"], tables_dir)
        if found is None:
            raise CheckpointError(
                f"checkpoint {path}: shared {name} ({entry['path']}, sha256 {entry['sha256'][:12]}...) not found "
                f"in the {TABLES_DIR}/ folder of its run (looked {SHARED_SEARCH_DEPTH} folders up); copy the run's "
                f"{TABLES_DIR}/ folder with the checkpoint"
            )
        if _sha256_at(found) != entry["sha256"]:
            raise CheckpointError(f"checkpoint {path}: sha256 mismatch in shared {name} {found} (corrupted/modified)")
    return manifest


def _local_copy(location: str) -> str:
    """`location` itself when local; an object-store table is read into a temporary file first."""
    if not is_uri(location) or isinstance(filesystem_for(location)[0], pafs.LocalFileSystem):
        return filesystem_for(location)[1]
    target = Path(tempfile.mkdtemp(prefix="seqctr-table-")) / "table.safetensors"
    target.write_bytes(read_bytes(location))
    return str(target)


def fetch_shared(source: str, local: Path) -> None:
    """Download the shared tables of the checkpoint `source` (a URI) beside its local copy `local`, into
    `local`'s parent's tables/ folder, where `find_shared` looks; tables already there are kept."""
    manifest = json.loads((local / MANIFEST).read_text())
    for name, entry in manifest.get("shared", {}).items():
        target = local.parent / TABLES_DIR / shared_table_name(entry["sha256"])
        if target.is_file() and sha256_file(target) == entry["sha256"]:
            continue
        found = find_shared(source, entry["sha256"])
        if found is None:
            raise CheckpointError(f"checkpoint {source}: shared {name} ({entry['path']}) not found in its run")
        atomic_write_bytes(target, read_bytes(found))


def shared_files(path: str | Path, tables_dir: str | None = None) -> dict[str, str]:
    """Shared table name in the manifest -> where it lives, for a verified checkpoint."""
    manifest = json.loads((Path(path) / MANIFEST).read_text())
    found = {}
    for name, entry in manifest.get("shared", {}).items():
        location = find_shared(str(path), entry["sha256"], tables_dir)
        if location is None:
            raise CheckpointError(f"checkpoint {path}: shared {name} ({entry['path']}) not found")
        found[name] = location
    return found


@dataclass
class CheckpointContents:
    """What a verified checkpoint holds, before the model is built."""

    path: Path
    config: ExperimentConfig
    item_index_data: bytes  # item_index.parquet (or an older checkpoint's item_index.json)
    model_state: dict[str, torch.Tensor]
    text_tables: dict[str, torch.Tensor]
    metrics: dict[str, Any]
    extra_json: dict[str, Any] = field(default_factory=dict)
    train_state: dict[str, Any] = field(default_factory=dict)
    optimizer_state: dict[str, Any] | None = None

    def full_state(self) -> dict[str, torch.Tensor]:
        return {**self.model_state, **self.text_tables}

    @property
    def index(self) -> ItemIndex:
        return ItemIndex.from_bytes(self.item_index_data, source=f"{self.path}: item index")


def read_checkpoint(
    path: str | Path, with_optimizer: bool = False, tables_dir: str | None = None
) -> CheckpointContents:
    """Verify, then read every part (safetensors + JSON only; nothing is unpickled). `tables_dir`: where
    else shared tables may be (see find_shared)."""
    path = Path(path)
    manifest = verify_checkpoint(path, tables_dir=tables_dir)
    files = manifest["files"]
    config = config_from_dict(json.loads((path / "config.json").read_text()))
    metrics = json.loads((path / "metrics.json").read_text()) if "metrics.json" in files else {}
    text_tables = load_file(str(path / TABLES_FILE)) if TABLES_FILE in files else {}
    if TABLES_FILE in manifest.get("shared", {}):
        text_tables = load_file(_local_copy(shared_files(path, tables_dir)[TABLES_FILE]))
    index_file = INDEX_FILE if INDEX_FILE in files else LEGACY_INDEX_FILE
    contents = CheckpointContents(
        path=path,
        config=config,
        item_index_data=(path / index_file).read_bytes(),
        model_state=load_file(str(path / "model.safetensors")),
        text_tables=text_tables,
        metrics=metrics,
    )
    known = {"config.json", LEGACY_INDEX_FILE, "metrics.json", "train_state.json", MANIFEST}
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
    manifest = verify_checkpoint(path, shared=False)  # only metrics.json changes; the shared entry is kept
    current = json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").exists() else {}
    current.update(metrics)
    atomic_write_text(path / "metrics.json", json.dumps(current, indent=2, default=float))
    file = path / "metrics.json"
    manifest["files"]["metrics.json"] = {"sha256": sha256_file(file), "bytes": file.stat().st_size}
    atomic_write_text(path / MANIFEST, json.dumps(manifest, indent=2))
