"""Behaviour log -> CTR samples (history, target, label) and global time splits, with Ray Data.

The whole build is distributed: the driver validates files from their metadata, then holds only
small things (a timestamp sketch, the distinct item ids). Events are hash-shuffled by a stable
user shard (`groupby("_shard").map_groups`), and all users of a shard become samples in one
vectorised numpy call (`samples_from_events`). Splits are chosen by global time so no later event
ever lands in an earlier split; `build_and_write` writes them in one streaming pass as Parquet.

Sample of an event (DESIGN.md "Contracts"): `history` = the same user's earlier *positive* events
(timestamp strictly smaller: an event never sees a click made at the same second), oldest first,
the most recent `max_seq_len` of them; `history_ts` = their timestamps (the model reads each click's
age at the event's `timestamp`: clicks of the current session reveal its intent); `target` = the
event's item; `label`.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from seqctr.platform.data.contract import (
    EVENT_COLUMNS,
    DataError,
    list_parquet_files,
    open_parquet,
    to_unix_seconds,
    validate_events,
    validate_items,
)
from seqctr.platform.model.features import ItemIndex
from seqctr.platform.storage import (
    atomic_write_text,
    file_stamps,
    filesystem_for,
    is_file,
    is_uri,
    join,
    output_dir,
    read_text,
)

SAMPLES_FORMAT = "seqctr.samples/v2"  # v2: history_ts beside history
SUCCESS_FILE = "_SUCCESS"
SPLITS = ("train", "val", "test")
SKETCH_POINTS = 2048  # timestamp summary points per block: split fractions are exact to ~1/2048
ROWS_PER_PARTITION = 250_000  # target events per hash-shuffle partition
ROWS_PER_SHARD = 50_000  # target events per vectorised samples_from_events call

SAMPLES_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("timestamp", pa.int64()),
        ("history", pa.list_(pa.string())),
        ("history_ts", pa.list_(pa.int64())),
        ("target", pa.string()),
        ("label", pa.int8()),
    ]
)


# ---------------------------------------------------------------------------------------------
# Reading events
# ---------------------------------------------------------------------------------------------


def _ray_paths(files: list[str]) -> tuple[list[str], Any]:
    """Ray's read_parquet wants one filesystem plus paths inside it."""
    if not files or not is_uri(files[0]):
        return files, None
    fs, _ = filesystem_for(files[0])
    return [filesystem_for(f)[1] for f in files], fs


_NORMALISE: dict[str, Callable[[Any], Any]] = {
    "user_id": lambda c: pc.cast(c, pa.string()),
    "item_id": lambda c: pc.cast(c, pa.string()),
    "timestamp": to_unix_seconds,
    "label": lambda c: pc.cast(c, pa.int8()),
    "p_true": lambda c: pc.cast(c, pa.float64()),
}


def normalise_events(batch: pa.Table) -> pa.Table:
    """Contract types: ids as strings, timestamp as int64 seconds, label as int8, p_true float64.

    Only the contract columns (and p_true) are kept, whichever of them the batch has."""
    names = [name for name in _NORMALISE if name in batch.column_names]
    return pa.table({name: _NORMALISE[name](batch.column(name)) for name in names})


def read_events(path: str) -> ray.data.Dataset:
    """Validate a behaviour log, then read it with Ray Data in the contract's types.

    Extra columns are dropped at the read (projection), except `p_true` when every file has it.
    """
    validate_events(path)
    return _read_event_files(list_parquet_files(path))


def _read_event_files(files: list[str], columns: list[str] | None = None) -> ray.data.Dataset:
    """Read (only `columns`, default the contract's plus p_true) and normalise already validated files."""
    if columns is None:
        columns = list(EVENT_COLUMNS)
        if all("p_true" in open_parquet(f).schema_arrow.names for f in files):
            columns.append("p_true")
    paths, fs = _ray_paths(files)
    ds = ray.data.read_parquet(paths, filesystem=fs).select_columns(columns)  # projection pushdown
    return ds.map_batches(normalise_events, batch_format="pyarrow", batch_size=None)


# ---------------------------------------------------------------------------------------------
# Samples: one vectorised function for any set of users
# ---------------------------------------------------------------------------------------------


def _starts(new_group: np.ndarray) -> np.ndarray:
    """For each row, the index of the first row of its run (runs start where new_group is True)."""
    idx = np.where(new_group, np.arange(new_group.size), 0)
    return np.maximum.accumulate(idx) if idx.size else idx


def _sorted_codes(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """int64 code per row that sorts like the strings themselves (sorts only the unique values)."""
    encoded = pc.dictionary_encode(column)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    rank = np.empty(len(encoded.dictionary), dtype=np.int64)
    rank[pc.sort_indices(encoded.dictionary).to_numpy()] = np.arange(rank.size)
    return rank[encoded.indices.to_numpy(zero_copy_only=False)]


def samples_from_events(events: pa.Table, max_seq_len: int) -> pa.Table:
    """Samples of every event in `events` (any number of complete users), sorted by user, time.

    Rows are stably sorted by (user_id, timestamp, item_id): the item tie-break makes the order
    of same-second events independent of how a shuffle delivered them. For the row at sorted
    position i, the positives strictly earlier in its user are the positives between the user's
    first row and the first row of i's (user, timestamp) tie group, so equal timestamps never leak.
    With `cpos` = running count of positives, that range is positives cpos[user_start] ..
    cpos[tie_start] - 1, of which the last max_seq_len are kept.
    """
    if max_seq_len < 1:
        raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
    user_code = _sorted_codes(events.column("user_id"))
    ts = events.column("timestamp").to_numpy().astype(np.int64, copy=False)
    order = np.lexsort((_sorted_codes(events.column("item_id")), ts, user_code))
    n = events.num_rows
    user_code, ts = user_code[order], ts[order]
    labels = events.column("label").to_numpy().astype(np.int8, copy=False)[order]
    take_order = pa.array(order, type=pa.int64())
    items = events.column("item_id").take(take_order).combine_chunks()

    new_user = np.ones(n, dtype=bool)
    new_user[1:] = user_code[1:] != user_code[:-1]
    new_tie = new_user.copy()
    new_tie[1:] |= ts[1:] != ts[:-1]
    positive = labels == 1
    cpos = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(positive, out=cpos[1:])

    hi = cpos[_starts(new_tie)]  # positives before this row's tie group (all earlier users too)
    lo = np.maximum(cpos[_starts(new_user)], hi - max_seq_len)  # ... minus those of earlier users
    lengths = hi - lo
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    take = np.repeat(lo - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
    positive_items = items.filter(pa.array(positive))
    take_positive = pa.array(take, type=pa.int64())
    list_offsets = pa.array(offsets, type=pa.int32())
    history = pa.ListArray.from_arrays(list_offsets, positive_items.take(take_positive))
    history_ts = pa.ListArray.from_arrays(list_offsets, pa.array(ts[positive][take], type=pa.int64()))
    columns = {
        "user_id": events.column("user_id").take(take_order),
        "timestamp": pa.array(ts, type=pa.int64()),
        "history": history,
        "history_ts": history_ts,
        "target": items,
        "label": pa.array(labels, type=pa.int8()),
    }
    if "p_true" in events.column_names:
        columns["p_true"] = events.column("p_true").take(take_order)
    return pa.table(columns)


def _add_user_shard(batch: pa.Table, num_shards: int) -> pa.Table:
    """`_shard` = crc32(user_id) % num_shards: stable everywhere, hashed once per distinct user."""
    encoded = pc.dictionary_encode(batch.column("user_id"))
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    per_user = np.fromiter(
        (zlib.crc32(u.encode("utf-8")) % num_shards for u in encoded.dictionary.to_pylist()),
        dtype=np.int64,
        count=len(encoded.dictionary),
    )
    shard = per_user[encoded.indices.to_numpy(zero_copy_only=False)]
    return batch.append_column("_shard", pa.array(shard, type=pa.int64()))


def _shard_samples(group: pa.Table, max_seq_len: int) -> pa.Table:
    return samples_from_events(group.drop_columns(["_shard"]), max_seq_len)


def build_samples(
    events: ray.data.Dataset, max_seq_len: int, num_shards: int = 256, num_partitions: int | None = None
) -> ray.data.Dataset:
    """Samples of every event (see module docstring), distributed end to end.

    `groupby(...).map_groups` guarantees that each group arrives whole in one call. Grouping by the
    user id itself would cost one Python call per user (millions on a real log), so events are
    grouped by a stable user shard instead (`num_shards` groups; every user's events share one)
    and `samples_from_events` handles all users of a shard in one vectorised call. Raise
    `num_shards` if a shard (log rows / num_shards) does not fit a worker's memory.
    `num_partitions`: hash-shuffle partitions (default: the cluster's CPUs, at most 200; Ray's own
    default of 200 is slow on small logs; see `shuffle_partitions`).
    """
    if max_seq_len < 1:
        raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
    sharded = events.map_batches(
        _add_user_shard, batch_format="pyarrow", batch_size=None, fn_kwargs={"num_shards": num_shards}
    )
    if num_partitions is None:
        num_partitions = max(1, min(200, int(ray.cluster_resources().get("CPU", 1))))
    return sharded.groupby("_shard", num_partitions=num_partitions).map_groups(
        _shard_samples, batch_format="pyarrow", fn_kwargs={"max_seq_len": max_seq_len}
    )


def shuffle_partitions(rows: int) -> int:
    """Hash-shuffle partitions for a log of `rows` events (Ray's default, 200, is slow on tiny logs)."""
    return int(np.clip(rows // ROWS_PER_PARTITION, 1, 200))


def shards_for(rows: int) -> int:
    """User shards for a log of `rows` events: about ROWS_PER_SHARD events per vectorised call."""
    return int(np.clip(rows // ROWS_PER_SHARD, 1, 1_000_000))


# ---------------------------------------------------------------------------------------------
# Global time split
# ---------------------------------------------------------------------------------------------


def _block_summary(batch: pa.Table, with_items: bool) -> pa.Table:
    """One row per block: a mergeable rank sketch of its timestamps (SKETCH_POINTS evenly spaced
    order statistics, each weighted by the rows it stands for; exact when the block is smaller)
    and, when asked, the block's distinct item ids."""
    ts = np.sort(batch.column("timestamp").to_numpy().astype(np.int64, copy=False))
    if ts.size <= SKETCH_POINTS:
        values, weights = ts, np.ones(ts.size)
    else:
        picks = ((np.arange(SKETCH_POINTS) + 0.5) * ts.size / SKETCH_POINTS).astype(np.int64)
        values, weights = ts[picks], np.full(SKETCH_POINTS, ts.size / SKETCH_POINTS)
    row = {
        "sketch_ts": pa.array([values], type=pa.list_(pa.int64())),
        "sketch_weight": pa.array([weights], type=pa.list_(pa.float64())),
    }
    if with_items:
        row["items"] = pa.array([pc.unique(batch.column("item_id")).to_pylist()], type=pa.list_(pa.string()))
    return pa.table(row)


def summarise_events(ds: ray.data.Dataset, with_items: bool = False) -> tuple[np.ndarray, np.ndarray, set[str]]:
    """(sketch timestamps, sketch weights, distinct item ids) in one streaming pass over `ds`.

    The driver receives one small row per block, never the log itself; item ids (when asked) are the
    union of per-block distinct ids, so its memory is bounded by the catalogue size.
    """
    columns = ["timestamp", "item_id"] if with_items else ["timestamp"]
    summary = ds.select_columns(columns).map_batches(
        _block_summary, batch_format="pyarrow", batch_size=None, fn_kwargs={"with_items": with_items}
    )
    values: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    items: set[str] = set()
    for batch in summary.iter_batches(batch_format="pyarrow", batch_size=None):
        values.append(pc.list_flatten(batch.column("sketch_ts")).to_numpy())
        weights.append(pc.list_flatten(batch.column("sketch_weight")).to_numpy())
        if with_items:
            items.update(pc.list_flatten(batch.column("items")).to_pylist())
    if not values:
        return np.zeros(0, np.int64), np.zeros(0), items
    return np.concatenate(values), np.concatenate(weights), items


def _check_fractions(train_fraction: float, val_fraction: float) -> None:
    if not (0 < train_fraction and 0 < val_fraction and train_fraction + val_fraction < 1):
        raise ValueError(
            f"need 0 < train_fraction, 0 < val_fraction and a sum < 1 (got {train_fraction}, {val_fraction})"
        )


def boundaries_from_sketch(
    values: np.ndarray, weights: np.ndarray, train_fraction: float, val_fraction: float
) -> tuple[int, int]:
    """(t_val, t_test) from weighted timestamps (a sketch, or every timestamp with weight 1).

    A boundary is a timestamp: train = ts < t_val, val = t_val <= ts < t_test, test = ts >= t_test,
    so all events of one second land in the same split. Of "the timestamp at the target rank" and
    "the next second", the one whose share of the weight is nearer the target fraction wins.
    """
    _check_fractions(train_fraction, val_fraction)
    if values.size == 0:
        raise DataError("time split: the dataset is empty (column 'timestamp')")
    order = np.argsort(values, kind="stable")
    values = np.asarray(values, dtype=np.int64)[order]
    below = np.concatenate([[0.0], np.cumsum(np.asarray(weights, dtype=np.float64)[order])])  # weight of values[:k]

    def boundary(fraction: float) -> int:
        target = fraction * below[-1]
        k = min(int(np.searchsorted(below[1:], target, side="right")), values.size - 1)  # value at the target rank
        candidates = (int(values[k]), int(values[k]) + 1)
        share = [below[np.searchsorted(values, c, side="left")] for c in candidates]
        return candidates[int(abs(share[1] - target) < abs(share[0] - target))]

    t_val = boundary(train_fraction)
    return t_val, max(t_val, boundary(train_fraction + val_fraction))


def time_boundaries(ds: ray.data.Dataset, train_fraction: float, val_fraction: float) -> tuple[int, int]:
    """(t_val, t_test) of a global time split of `ds` (see `boundaries_from_sketch`).

    Why a sketch: every block sends SKETCH_POINTS weighted order statistics of its timestamps to the
    driver, so the driver's memory is bounded by the number of blocks, no count pass is needed, and
    the split fractions are off by at most 1/SKETCH_POINTS of the log (exact on small logs).
    """
    _check_fractions(train_fraction, val_fraction)
    values, weights, _ = summarise_events(ds)
    return boundaries_from_sketch(values, weights, train_fraction, val_fraction)


def _split_name(batch: pa.Table, t_val: int, t_test: int) -> pa.Table:
    ts = batch.column("timestamp").to_numpy()
    names = np.where(ts < t_val, "train", np.where(ts < t_test, "val", "test"))
    return batch.append_column("split", pa.array(names, type=pa.string()))


def split_by_time(samples: ray.data.Dataset, train_fraction: float, val_fraction: float) -> dict[str, Any]:
    """{"train", "val", "test"} datasets of a global time split (see `time_boundaries`).

    The boundaries need one pass over `samples`, and each split one more: materialize an expensive
    lazy dataset first (build_and_write avoids both by taking the boundaries from the events and
    writing the splits in one partitioned pass).
    """
    from ray.data.expressions import col

    t_val, t_test = time_boundaries(samples, train_fraction, val_fraction)
    ts = col("timestamp")
    return {
        "train": samples.filter(expr=ts < t_val),
        "val": samples.filter(expr=(ts >= t_val) & (ts < t_test)),
        "test": samples.filter(expr=ts >= t_test),
    }


# ---------------------------------------------------------------------------------------------
# The whole pipeline
# ---------------------------------------------------------------------------------------------


def _stage(message: str) -> None:
    print(f"[seqctr.data] {message}", file=sys.stderr, flush=True)


def build_fingerprint(events_files: list[str], items_files: list[str], params: dict[str, Any]) -> str:
    """sha256 over input files (path, size, mtime), the build parameters and the output format."""
    payload = {
        "format": SAMPLES_FORMAT,
        "events": file_stamps(events_files),
        "items": file_stamps(items_files),
        "params": params,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def _item_ids(items_path: str | None, event_ids: set[str]) -> tuple[list[str], list[str]]:
    """(item-table ids, ids seen only in the events), each sorted so every build assigns the same rows."""
    table_ids: set[str] = set()
    if items_path:
        for file in list_parquet_files(items_path):
            for batch in open_parquet(file).iter_batches(columns=["item_id"], batch_size=65_536):
                table_ids.update(pc.cast(batch.column("item_id"), pa.string()).to_pylist())
    return sorted(table_ids), sorted(event_ids - table_ids)


def _write_splits(samples: ray.data.Dataset, folder: str, t_val: int, t_test: int) -> dict[str, int]:
    """Write all splits in one streaming pass (partitioned by a split column), then move the hive
    folders' files `_parts/split=train/*` to `train/`. Ray Data's writers write straight to `folder`
    (a local path or a URI), so a multi-node build needs no shared disk. A split that got no rows gets
    an empty file with the schema."""
    fs, base = filesystem_for(folder)
    parts = f"{base}/_parts"
    samples.map_batches(
        _split_name, batch_format="pyarrow", batch_size=None, fn_kwargs={"t_val": t_val, "t_test": t_test}
    ).write_parquet(parts, partition_cols=["split"], filesystem=fs)
    rows: dict[str, int] = {}
    for split in SPLITS:
        src, dst = f"{parts}/split={split}", f"{base}/{split}"
        fs.create_dir(dst, recursive=True)
        listed = fs.get_file_info(pafs.FileSelector(src, allow_not_found=True))
        for info in sorted((i for i in listed if i.path.endswith(".parquet")), key=lambda i: i.path):
            fs.move(info.path, f"{dst}/{info.base_name}")  # a rename locally, copy + delete on S3
        files = [i.path for i in fs.get_file_info(pafs.FileSelector(dst)) if i.path.endswith(".parquet")]
        if not files:
            pq.write_table(SAMPLES_SCHEMA.empty_table(), f"{dst}/empty.parquet", filesystem=fs)
        rows[split] = sum(pq.read_metadata(f, filesystem=fs).num_rows for f in files)
    fs.delete_dir(parts)
    return rows


def _output_paths(out: str) -> dict[str, str]:
    return {split: join(out, split) for split in SPLITS} | {"item_index": join(out, "item_index.json")}


def build_and_write(
    events_path: str,
    out: str,
    max_seq_len: int,
    train_fraction: float,
    val_fraction: float,
    items_path: str | None = None,
    progress: Callable[[str], None] | None = _stage,
) -> dict[str, Any]:
    """Events -> `out/{train,val,test}/*.parquet` + `out/item_index.json` + `out/_SUCCESS` (meta).

    `out` may be a local path (built beside it and renamed into place) or a URI (written in place,
    `_SUCCESS` last: storage.output_dir); either way readers never trust half a build.
    A rerun whose inputs (file sizes, mtimes) and parameters match `out/_SUCCESS` reuses it.
    Returns rows per split, boundary timestamps, seconds, samples_per_s, paths, cached.
    """
    say = progress or (lambda _message: None)
    _check_fractions(train_fraction, val_fraction)
    if max_seq_len < 1:
        raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
    start = time.perf_counter()
    out_dir = out.rstrip("/") if is_uri(out) else str(Path(out).resolve())
    events_files = list_parquet_files(events_path)
    items_files = list_parquet_files(items_path) if items_path else []
    params = {"max_seq_len": max_seq_len, "train_fraction": train_fraction, "val_fraction": val_fraction}
    fingerprint = build_fingerprint(events_files, items_files, params)
    meta_path = join(out_dir, SUCCESS_FILE)
    if is_file(meta_path):
        meta = json.loads(read_text(meta_path))
        if meta.get("fingerprint") == fingerprint:
            say(f"reusing {out_dir}: inputs and parameters unchanged")
            seconds = time.perf_counter() - start  # samples_per_s stays the original build's
            return {**meta["report"], "paths": _output_paths(out_dir), "cached": True, "seconds": seconds}

    say(f"validating {len(events_files)} event file(s) in {events_path}")
    summary = validate_events(events_path)
    if items_path:
        validate_items(items_path)
    rows = int(summary["rows"])
    stages = {"validate": time.perf_counter() - start}
    say(f"{rows} events; scanning timestamps and item ids for the time split and the item index")
    sketch_ts, sketch_weight, event_ids = summarise_events(
        _read_event_files(events_files, ["timestamp", "item_id"]), with_items=True
    )
    t_val, t_test = boundaries_from_sketch(sketch_ts, sketch_weight, train_fraction, val_fraction)
    table_ids, event_only = _item_ids(items_path, event_ids)
    index = ItemIndex.from_ids(table_ids).extend(event_only)
    stages["scan"] = time.perf_counter() - start - sum(stages.values())
    say(f"building samples (max_seq_len={max_seq_len}) and writing splits to {out_dir}")
    events = _read_event_files(events_files)
    samples = build_samples(events, max_seq_len, num_shards=shards_for(rows), num_partitions=shuffle_partitions(rows))
    with output_dir(out_dir, SUCCESS_FILE) as tmp:
        split_rows = _write_splits(samples, tmp, t_val, t_test)
        index.save(join(tmp, "item_index.json"))
        stages["samples"] = time.perf_counter() - start - sum(stages.values())
        seconds = time.perf_counter() - start
        report = {
            "rows": split_rows,
            "events": rows,
            "boundaries": {"val_from": t_val, "test_from": t_test},
            "items": len(index) - 2,
            "items_only_in_events": len(event_only),
            "seconds": seconds,
            "samples_per_s": sum(split_rows.values()) / max(seconds, 1e-9),
            "stage_seconds": {k: round(v, 3) for k, v in stages.items()},
            "paths": _output_paths(out_dir),
            "cached": False,
        }
        meta = {"format": SAMPLES_FORMAT, "fingerprint": fingerprint, "params": params, "report": report}
        atomic_write_text(join(tmp, SUCCESS_FILE), json.dumps(meta, indent=2) + "\n")
    say(
        f"wrote train/val/test = {split_rows['train']}/{split_rows['val']}/{split_rows['test']} samples "
        f"in {seconds:.1f}s ({report['samples_per_s']:.0f} samples/s)"
    )
    if split_rows["val"] == 0 or split_rows["test"] == 0:
        say("warning: a split is empty (too few distinct timestamps for these fractions)")
    return report


def read_samples(samples_dir: str, split: str) -> ray.data.Dataset:
    """One split of a finished `build_and_write` folder as a Ray Dataset."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    fs, inner = filesystem_for(samples_dir)
    if fs.get_file_info(f"{inner}/{SUCCESS_FILE}").type.name == "NotFound":
        raise DataError(f"{samples_dir}: not a finished samples folder (no {SUCCESS_FILE}); run `seqctr data build`")
    paths, ray_fs = _ray_paths(list_parquet_files(f"{samples_dir.rstrip('/')}/{split}"))
    return ray.data.read_parquet(paths, filesystem=ray_fs)
