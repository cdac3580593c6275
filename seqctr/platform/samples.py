"""Behaviour log -> CTR samples (history, target, label) and global time splits, with Ray Data.

The whole build is distributed: the driver validates files from their metadata, then holds only
small things (a timestamp sketch, the unique item ids). Events are hash-shuffled by user
(`groupby("user_id").map_groups`), and each user's events become samples with a vectorised numpy
function (`samples_from_events`). Splits are chosen by global time so no later event ever lands
in an earlier split; `build_and_write` writes them once, streaming, as Parquet folders.

Sample of an event (DESIGN.md "Contracts"): `history` = the same user's earlier *positive* events
(timestamp strictly smaller: an event never sees a click made at the same second), oldest first,
the most recent `max_seq_len` of them; `target` = the event's item; `label`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from seqctr.platform.features import ItemIndex
from seqctr.platform.io import atomic_dir, atomic_write_text, filesystem_for, is_uri
from seqctr.platform.schema import (
    EVENT_COLUMNS,
    DataError,
    list_parquet_files,
    open_parquet,
    to_unix_seconds,
    validate_events,
    validate_items,
)

SAMPLES_FORMAT = "seqctr.samples/v1"
SUCCESS_FILE = "_SUCCESS"
SPLITS = ("train", "val", "test")
SKETCH_POINTS = 2048  # timestamp summary points per block: split fractions are exact to ~1/2048
ROWS_PER_PARTITION = 250_000  # target events per user-shuffle partition

EVENTS_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64()), ("label", pa.int8())]
)
SAMPLES_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("timestamp", pa.int64()),
        ("history", pa.list_(pa.string())),
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


def normalise_events(batch: pa.Table) -> pa.Table:
    """Contract types: ids as strings, timestamp as int64 seconds, label as int8 (+ p_true float64)."""
    columns = {
        "user_id": pc.cast(batch.column("user_id"), pa.string()),
        "item_id": pc.cast(batch.column("item_id"), pa.string()),
        "timestamp": to_unix_seconds(batch.column("timestamp")),
        "label": pc.cast(batch.column("label"), pa.int8()),
    }
    if "p_true" in batch.column_names:
        columns["p_true"] = pc.cast(batch.column("p_true"), pa.float64())
    return pa.table(columns)


def read_events(path: str) -> ray.data.Dataset:
    """Validate a behaviour log, then read it with Ray Data in the contract's types.

    Extra columns are dropped at the read (projection), except `p_true` when every file has it.
    """
    validate_events(path)
    files = list_parquet_files(path)
    columns = list(EVENT_COLUMNS)
    if all("p_true" in open_parquet(f).schema_arrow.names for f in files):
        columns.append("p_true")
    paths, fs = _ray_paths(files)
    ds = ray.data.read_parquet(paths, filesystem=fs, columns=columns)
    return ds.map_batches(normalise_events, batch_format="pyarrow", batch_size=None)


# ---------------------------------------------------------------------------------------------
# Samples: one vectorised function for any set of users
# ---------------------------------------------------------------------------------------------


def _starts(new_group: np.ndarray) -> np.ndarray:
    """For each row, the index of the first row of its run (runs start where new_group is True)."""
    idx = np.where(new_group, np.arange(new_group.size), 0)
    return np.maximum.accumulate(idx) if idx.size else idx


def samples_from_events(events: pa.Table, max_seq_len: int) -> pa.Table:
    """Samples of every event in `events` (one or many complete users), sorted by user, time.

    Rows are stably sorted by (user_id, timestamp, item_id): the item tie-break makes the order
    of same-second events independent of how a shuffle delivered them. For the row at sorted
    position i, the positives strictly earlier in its user are the positives between the user's
    first row and the first row of i's (user, timestamp) tie group, so equal timestamps never leak.
    With `cpos` = running count of positives, that range is positives cpos[user_start] ..
    cpos[tie_start] - 1, of which the last max_seq_len are kept.
    """
    if max_seq_len < 1:
        raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
    order = pc.sort_indices(
        events, sort_keys=[("user_id", "ascending"), ("timestamp", "ascending"), ("item_id", "ascending")]
    )
    events = events.take(order)
    n = events.num_rows
    users = events.column("user_id")
    ts = events.column("timestamp").to_numpy().astype(np.int64, copy=False)
    labels = events.column("label").to_numpy().astype(np.int8, copy=False)
    items = events.column("item_id").combine_chunks()

    new_user = np.ones(n, dtype=bool)
    if n > 1:
        new_user[1:] = pc.not_equal(users.slice(1), users.slice(0, n - 1)).to_numpy(zero_copy_only=False)
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
    history = pa.ListArray.from_arrays(
        pa.array(offsets, type=pa.int32()), positive_items.take(pa.array(take, type=pa.int64()))
    )
    columns = {
        "user_id": users,
        "timestamp": pa.array(ts, type=pa.int64()),
        "history": history,
        "target": items,
        "label": pa.array(labels, type=pa.int8()),
    }
    if "p_true" in events.column_names:
        columns["p_true"] = events.column("p_true")
    return pa.table(columns)


def shuffle_partitions(rows: int) -> int:
    """User-shuffle partitions for a log of `rows` events (Ray's default, 200, is slow on tiny logs)."""
    return int(np.clip(rows // ROWS_PER_PARTITION, 1, 200))


def build_samples(
    events: ray.data.Dataset, max_seq_len: int, num_partitions: int | None = None
) -> ray.data.Dataset:
    """Samples of every event (see module docstring), distributed: hash-shuffle by user, then one
    vectorised `samples_from_events` call per user group. `num_partitions`: shuffle partitions
    (default: Ray's; see `shuffle_partitions`)."""
    return events.groupby("user_id", num_partitions=num_partitions).map_groups(
        samples_from_events, batch_format="pyarrow", fn_kwargs={"max_seq_len": max_seq_len}
    )


# ---------------------------------------------------------------------------------------------
# Global time split
# ---------------------------------------------------------------------------------------------


def _timestamp_sketch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A mergeable rank summary of one block: SKETCH_POINTS evenly spaced order statistics, each
    weighted by the rows it stands for (exact when the block is smaller)."""
    ts = np.sort(np.asarray(batch["timestamp"], dtype=np.int64))
    if ts.size <= SKETCH_POINTS:
        return {"timestamp": ts, "weight": np.ones(ts.size)}
    picks = ((np.arange(SKETCH_POINTS) + 0.5) * ts.size / SKETCH_POINTS).astype(np.int64)
    return {"timestamp": ts[picks], "weight": np.full(SKETCH_POINTS, ts.size / SKETCH_POINTS)}


def time_boundaries(ds: ray.data.Dataset, train_fraction: float, val_fraction: float) -> tuple[int, int]:
    """(t_val, t_test): train = timestamp < t_val, val = t_val <= timestamp < t_test, test = the rest.

    Why this way: every block sends a weighted sketch of its sorted timestamps (2048 points) to the
    driver, so its memory is bounded by the number of blocks and no count pass is needed; rank
    error is at most 1/2048 of the log. A boundary is a timestamp, so all events of one second land
    in the same split (a later event never lands in an earlier split). Between "the timestamp at the
    target rank" and "the next second" the one whose share is nearer the target fraction wins.
    """
    if not (0 < train_fraction and 0 < val_fraction and train_fraction + val_fraction < 1):
        raise ValueError(f"need 0 < train_fraction, val_fraction and a sum < 1 (got {train_fraction}, {val_fraction})")
    sketch = ds.select_columns(["timestamp"]).map_batches(_timestamp_sketch, batch_format="numpy", batch_size=None)
    parts = list(sketch.iter_batches(batch_format="numpy", batch_size=None))
    if not parts:
        raise DataError("time split: the dataset is empty (column 'timestamp')")
    values = np.concatenate([p["timestamp"] for p in parts]).astype(np.int64)
    weights = np.concatenate([p["weight"] for p in parts]).astype(np.float64)
    order = np.argsort(values, kind="stable")
    values, weights = values[order], weights[order]
    below = np.concatenate([[0.0], np.cumsum(weights)])  # below[k] = weight of values[:k]
    total = below[-1]

    def boundary(fraction: float) -> int:
        target = fraction * total
        k = min(int(np.searchsorted(below[1:], target, side="right")), values.size - 1)
        candidates = (int(values[k]), int(values[k]) + 1)
        share = [below[np.searchsorted(values, c, side="left")] for c in candidates]
        return candidates[int(abs(share[1] - target) < abs(share[0] - target))]

    t_val = boundary(train_fraction)
    return t_val, max(t_val, boundary(train_fraction + val_fraction))


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
