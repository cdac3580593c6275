"""Behaviour log -> CTR samples (history, target, label) and global time splits, on Ray.

`build_and_write` (the `seqctr data build` path) is a two-stage shuffle in plain Ray tasks. Read
tasks each read a slice of the log (whole row groups), normalise it, summarise it for the time split
and the item index (a timestamp sketch, the distinct item ids) and cut it into partitions by a
stable hash of the user id. The driver merges the small summaries into the split boundaries, then
one task per partition turns all its users' events into samples in one vectorised numpy call
(`samples_from_events`) and writes its rows of each split as one Parquet file. The log is read once;
the driver never holds it; between the rounds it sits in the object store, as in any shuffle (Ray
spills it to disk beyond the store's size). Why not Ray Data's groupby here: on 1M events (2 cores) its fixed costs
(file listing, operator start-up, a second read pass for the scan, the partitioned write) were ~90% of
the build, while the shuffle and the per-shard numpy were ~10% (see bench/build_speed.py --breakdown).
`build_samples` keeps the Ray Data form (Dataset in, Dataset out) for callers that compose datasets.

Sample of an event (DESIGN.md "Contracts"): `history` = the same user's earlier *positive* events
(timestamp strictly smaller: an event never sees a click made at the same second), oldest first,
the most recent `max_seq_len` of them; `history_ts` = their timestamps (the model reads each click's
age at the event's `timestamp`: clicks of the current session reveal its intent); `target` = the
event's item; `label`. Splits are chosen by global time so no later event lands in an earlier split.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from seqctr.platform.config import ConfigError, FeaturesConfig
from seqctr.platform.data.contract import (
    EVENT_COLUMNS,
    DataError,
    list_parquet_files,
    open_parquet,
    to_unix_seconds,
    validate_events,
    validate_items,
)
from seqctr.platform.data.counts import (
    ITEM_COUNTS_FILE,
    ItemCountTable,
    ItemValueTable,
    period_summary,
    user_counts,
    user_value_counts,
)
from seqctr.platform.model.features import INDEX_FILE, ItemIndex, hash64
from seqctr.platform.model.side import (
    COUNT_COLUMNS,
    ITEM_CLICKS,
    ITEM_IMPRESSIONS,
    USER_CLICKS,
    USER_IMPRESSIONS,
    user_item_count_columns,
)
from seqctr.platform.progress import Progress
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

SAMPLES_FORMAT = "seqctr.samples/v2"  # v2: history_ts beside history (side and count columns: optional)
SUCCESS_FILE = "_SUCCESS"
SPLITS = ("train", "val", "test")
SKETCH_POINTS = 2048  # timestamp summary points per block: split fractions are exact to ~1/2048
ROWS_PER_READ = 250_000  # target events per read task (whole row groups)
ROWS_PER_PARTITION = 250_000  # target events per samples + write task (one vectorised call each)
MAX_PARTITIONS = 1_000  # read tasks x partitions objects cross the store; beyond this, fewer and larger

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

SideKinds = dict[str, str]  # event side column -> "categorical" | "numeric" (data.features.event)


def side_kinds(features: FeaturesConfig | None) -> SideKinds:
    return {spec.name: spec.kind for spec in features.event} if features else {}


def samples_schema(side: SideKinds | None = None, counts: bool = False, user_item: tuple[str, ...] = ()) -> pa.Schema:
    """The samples' columns: the contract's, then each side column, then the counting columns."""
    fields = list(SAMPLES_SCHEMA)
    for name, kind in (side or {}).items():
        fields.append(pa.field(name, pa.string() if kind == "categorical" else pa.float64()))
    if counts:
        fields += [pa.field(name, pa.int64()) for name in COUNT_COLUMNS]
    for column in user_item:
        fields += [pa.field(name, pa.int64()) for name in user_item_count_columns(column)]
    return pa.schema(fields)


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


def normalise_events(batch: pa.Table, side: SideKinds | None = None) -> pa.Table:
    """Contract types: ids as strings, timestamp as int64 seconds, label as int8, p_true float64; side
    columns as strings (categorical; null stays null) or float64 (numeric; null becomes NaN).

    Only the contract columns (and p_true, and the `side` columns) are kept, whichever the batch has."""
    names = [name for name in _NORMALISE if name in batch.column_names]
    columns = {name: _NORMALISE[name](batch.column(name)) for name in names}
    for name, kind in (side or {}).items():
        col = batch.column(name)
        if kind == "categorical":
            columns[name] = pc.cast(col, pa.string())
        else:
            columns[name] = pc.fill_null(pc.cast(col, pa.float64()), float("nan"))
    return pa.table(columns)


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


def samples_from_events(
    events: pa.Table,
    max_seq_len: int,
    side: SideKinds | None = None,
    item_counts: ItemCountTable | None = None,
    item_values: ItemValueTable | None = None,
) -> pa.Table:
    """Samples of every event in `events` (any number of complete users), sorted by user, time.

    Rows are stably sorted by (user_id, timestamp, item_id): the item tie-break makes the order
    of same-second events independent of how a shuffle delivered them. For the row at sorted
    position i, the positives strictly earlier in its user are the positives between the user's
    first row and the first row of i's (user, timestamp) tie group, so equal timestamps never leak.
    With `cpos` = running count of positives, that range is positives cpos[user_start] ..
    cpos[tie_start] - 1, of which the last max_seq_len are kept.

    `side` columns are carried as they are; with `item_counts` (the build's table of the whole log)
    each row also gets its user's and its item's impressions and clicks before it (counts.py), and with
    `item_values` its user's counts by the target's value of each user_item_counts column.
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
    for name in side or {}:
        columns[name] = events.column(name).take(take_order)
    if item_counts is not None:
        user_imp, user_clk = user_counts(new_user, new_tie, positive)
        item_imp, item_clk = item_counts.before(hash64(items), ts)
        for name, values in (
            (USER_IMPRESSIONS, user_imp),
            (USER_CLICKS, user_clk),
            (ITEM_IMPRESSIONS, item_imp),
            (ITEM_CLICKS, item_clk),
        ):
            columns[name] = pa.array(values, type=pa.int64())
    if item_values is not None:
        values = item_values.of(hash64(items))  # (n, F)
        for f, column in enumerate(item_values.columns):
            by_value = user_value_counts(user_code, ts, values[:, f], positive, item_values.recent)
            for k, name in enumerate(user_item_count_columns(column)):
                columns[name] = pa.array(by_value[:, k], type=pa.int64())
    return pa.table(columns)


def _add_user_shard(batch: pa.Table, num_shards: int) -> pa.Table:
    """`_shard` = hash64(user_id) % num_shards: stable in every process, vectorised (no call per user)."""
    shard = (hash64(batch.column("user_id")) % np.uint64(num_shards)).astype(np.int64)
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
    default of 200 is slow on small logs).
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


# ---------------------------------------------------------------------------------------------
# Global time split
# ---------------------------------------------------------------------------------------------


def _sketch(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SKETCH_POINTS evenly spaced order statistics of `ts`, each weighted by the rows it stands for
    (every value with weight 1 when there are fewer): mergeable across blocks, see boundaries_from_sketch."""
    ts = np.sort(ts.astype(np.int64, copy=False))
    if ts.size <= SKETCH_POINTS:
        return ts, np.ones(ts.size)
    picks = ((np.arange(SKETCH_POINTS) + 0.5) * ts.size / SKETCH_POINTS).astype(np.int64)
    return ts[picks], np.full(SKETCH_POINTS, ts.size / SKETCH_POINTS)


def _block_summary(batch: pa.Table, with_items: bool) -> pa.Table:
    """One row per block: the `_sketch` of its timestamps and, when asked, its distinct item ids."""
    values, weights = _sketch(batch.column("timestamp").to_numpy())
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


def _item_values(items_path: str, names: tuple[str, ...], recent: int) -> ItemValueTable:
    """The item table's values of the user_item_counts columns (a file lacking one: a DataError naming both)."""
    ids: list[pa.Array] = []
    columns: dict[str, list[pa.Array]] = {name: [] for name in names}
    for file in list_parquet_files(items_path):
        parquet = open_parquet(file)
        missing = [n for n in names if n not in parquet.schema_arrow.names]
        if missing:
            raise DataError(
                f"{file}: column {missing[0]!r} (data.features.user_item_counts) is missing; for a table without it, "
                "leave it out of data.features.user_item_counts and data.features.item (the default config reads "
                "category: --set data.features.item=[] --set data.features.user_item_counts=[])"
            )
        for batch in parquet.iter_batches(columns=["item_id", *names], batch_size=65_536):
            ids.append(pc.cast(batch.column("item_id"), pa.string()))
            for name in names:
                try:  # values hash as strings (counts.value_hashes), so every file's type agrees
                    columns[name].append(pc.cast(batch.column(name), pa.string()))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                    raise DataError(f"{file}: column {name!r} needs scalar values ({err})") from None

    def joined(parts: list[pa.Array]) -> pa.Array:
        return pa.chunked_array(parts).combine_chunks() if parts else pa.array([], pa.string())

    return ItemValueTable.from_columns(joined(ids), {n: joined(columns[n]) for n in names}, names, recent)


# ---------------------------------------------------------------------------------------------
# The build as two rounds of Ray tasks: read + partition, then samples + write per partition
# ---------------------------------------------------------------------------------------------


def _check_side_columns(file: str, schema: pa.Schema, side: SideKinds) -> None:
    """Every side column in every file, numeric ones of a numeric type: else a DataError naming both."""
    for name, kind in side.items():
        if name not in schema.names:
            raise DataError(f"{file}: column {name!r} (data.features.event) is missing")
        t = schema.field(name).type
        if kind == "numeric" and not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
            raise DataError(f"{file}: column {name!r} is {t}, but data.features.event declares it numeric")
        if kind == "categorical" and (pa.types.is_nested(t) or pa.types.is_binary(t)):
            raise DataError(f"{file}: column {name!r} is {t}; a categorical side column needs scalar values")


def _plan_reads(
    files: list[str], rows_per_unit: int, side: SideKinds | None = None
) -> tuple[list[list[tuple[str, list[int]]]], list[str]]:
    """(read units, columns to read), from the files' footers alone.

    A unit is a list of (file, row groups) of about `rows_per_unit` events: small files share a unit,
    a big file's row groups are spread over several, and a row group is never split (a file of one
    10M-row group is one task). Columns: the contract's, plus p_true when every file has it, plus the
    `side` columns (checked in every file)."""
    units: list[list[tuple[str, list[int]]]] = []
    current: list[tuple[str, list[int]]] = []
    rows, with_p_true = 0, True
    for file in files:
        parquet = open_parquet(file)
        with_p_true &= "p_true" in parquet.schema_arrow.names
        _check_side_columns(file, parquet.schema_arrow, side or {})
        groups: list[int] = []
        for g in range(parquet.metadata.num_row_groups):
            groups.append(g)
            rows += parquet.metadata.row_group(g).num_rows
            if rows >= rows_per_unit:
                units.append([*current, (file, groups)])
                current, groups, rows = [], [], 0
        if groups:
            current.append((file, groups))
    if current:
        units.append(current)
    columns = [*EVENT_COLUMNS, "p_true"] if with_p_true else list(EVENT_COLUMNS)
    return units, columns + list(side or {})


def _partition_count(rows: int) -> int:
    """Reduce tasks: about ROWS_PER_PARTITION events each, and at least one per CPU (so all cores work)."""
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return int(np.clip(-(-rows // ROWS_PER_PARTITION), max(1, cpus), MAX_PARTITIONS))


def _read_and_partition(
    unit: list[tuple[str, list[int]]],
    columns: list[str],
    num_partitions: int,
    side: SideKinds | None = None,
    count_period_s: int | None = None,
) -> list[Any]:
    """Read task: [summary, partition 0, ..., partition P-1] of one slice of the log.

    Partition = hash64(user_id) % P (stable in every process), so each user's events meet in one
    reduce task whichever files they came from. Each partition is a copy of its rows (a `take`, not a
    slice of the whole block, so the object store carries only those rows). With `count_period_s`, the
    summary also carries the slice's (item, period) counts (counts.period_summary)."""
    tables = [open_parquet(file).read_row_groups(groups, columns=columns) for file, groups in unit]
    events = normalise_events(pa.concat_tables(tables) if len(tables) > 1 else tables[0], side)
    values, weights = _sketch(events.column("timestamp").to_numpy())
    summary = {
        "rows": events.num_rows,
        "sketch_ts": values,
        "sketch_weight": weights,
        "items": pc.unique(events.column("item_id")),
    }
    if count_period_s:
        labels = events.column("label").to_numpy(zero_copy_only=False)
        ts = events.column("timestamp").to_numpy()
        summary["item_periods"] = period_summary(hash64(events.column("item_id")), ts, labels, count_period_s)
    part = (hash64(events.column("user_id")) % np.uint64(num_partitions)).astype(np.int64)
    order = np.argsort(part, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(part, minlength=num_partitions))])
    pieces = [events.take(pa.array(order[bounds[k] : bounds[k + 1]])) for k in range(num_partitions)]
    return [summary, *pieces]


def _train_stats(samples: pa.Table, mask: np.ndarray, side: SideKinds) -> dict[str, list[float]]:
    """[count, sum, sum of squares] of each numeric side column over the train rows (NaN skipped), and
    [rows, clicks] of the labels: mergeable across partitions into the train split's statistics."""
    stats = {"_label": [float(mask.sum()), float(samples.column("label").to_numpy()[mask].sum())]}
    for name, kind in side.items():
        if kind == "numeric":
            values = samples.column(name).to_numpy(zero_copy_only=False)[mask]
            values = values[np.isfinite(values)]
            stats[name] = [float(values.size), float(values.sum()), float(np.square(values).sum())]
    return stats


def _samples_and_write(
    folder: str,
    k: int,
    max_seq_len: int,
    t_val: int,
    t_test: int,
    side: SideKinds,
    item_counts: ItemCountTable | None,
    item_values: ItemValueTable | None,
    *pieces: pa.Table,
) -> dict[str, Any]:
    """Reduce task: samples of every user of partition `k`, each split written as `folder/<split>/part-k`.

    Returns rows and bytes per split and the train rows' statistics (`_train_stats`). Rerunning it (a
    retried task) rewrites the same files."""
    samples = samples_from_events(pa.concat_tables(pieces), max_seq_len, side, item_counts, item_values)
    ts = samples.column("timestamp").to_numpy()
    fs, base = filesystem_for(folder)
    masks = {"train": ts < t_val, "val": (ts >= t_val) & (ts < t_test), "test": ts >= t_test}
    out: dict[str, Any] = {"train_stats": _train_stats(samples, masks["train"], side)}
    for split, mask in masks.items():
        out[split] = rows = int(mask.sum())
        out[f"{split}_bytes"] = 0
        if rows:
            path = f"{base}/{split}/part-{k:05d}.parquet"
            pq.write_table(samples.filter(pa.array(mask)), path, filesystem=fs)
            out[f"{split}_bytes"] = fs.get_file_info(path).size
    return out


def _wait_all(refs: list[ray.ObjectRef], progress: Progress, rows_of: Callable[[Any], int]) -> list[Any]:
    """ray.get of every ref in order, advancing `progress` by `rows_of(result)` as each one lands."""
    position = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=progress.every_s)
        for ref in ready:
            results[position[ref]] = value = ray.get(ref)
            progress.advance(rows_of(value))
        if not ready:
            progress.advance(0)
    return results


def _read_phase(
    files: list[str], rows: int, say: Callable[[str], None], side: SideKinds, count_period_s: int | None
) -> tuple[list[list[ray.ObjectRef]], np.ndarray, np.ndarray, set[str], ItemCountTable | None]:
    """Start the read tasks; wait for their summaries. Returns (each task's partition refs, sketch
    timestamps, sketch weights, distinct item ids, the item count table when asked); the partitions
    stay in the object store."""
    if not ray.is_initialized():
        ray.init()
    num_partitions = _partition_count(rows)
    units, columns = _plan_reads(files, ROWS_PER_READ, side)
    read = ray.remote(_read_and_partition).options(num_returns=num_partitions + 1)
    outputs = [read.remote(unit, columns, num_partitions, side, count_period_s) for unit in units]
    say(f"reading {rows:,} events in {len(units)} task(s) into {num_partitions} partition(s) by user")
    summaries = _wait_all([out[0] for out in outputs], Progress(say, "read", rows, "events"), lambda s: s["rows"])
    event_ids: set[str] = set()
    for summary in summaries:
        event_ids.update(summary["items"].to_pylist())
    values = np.concatenate([s["sketch_ts"] for s in summaries])
    weights = np.concatenate([s["sketch_weight"] for s in summaries])
    counts = None
    if count_period_s:
        counts = ItemCountTable.merge([s.pop("item_periods") for s in summaries], count_period_s)
    return [out[1:] for out in outputs], values, weights, event_ids, counts


def _write_phase(
    partitions: list[list[ray.ObjectRef]],
    folder: str,
    max_seq_len: int,
    t_val: int,
    t_test: int,
    rows: int,
    say: Callable[[str], None],
    side: SideKinds,
    item_counts: ItemCountTable | None,
    item_values: ItemValueTable | None = None,
) -> dict[str, Any]:
    """One samples + write task per partition (fed that partition from every read task); a split
    that got no rows gets an empty file with the schema. Returns rows and bytes per split and the
    train split's statistics (feature means and standard deviations, click rate)."""
    fs, base = filesystem_for(folder)
    for split in SPLITS:
        fs.create_dir(f"{base}/{split}", recursive=True)
    write = ray.remote(_samples_and_write)
    counts_ref = ray.put(item_counts) if item_counts is not None else None  # once in the store, not per task
    values_ref = ray.put(item_values) if item_values is not None else None
    written = [
        write.remote(
            folder, k, max_seq_len, t_val, t_test, side, counts_ref, values_ref, *(parts[k] for parts in partitions)
        )
        for k in range(len(partitions[0]))
    ]
    partitions.clear()  # drop the driver's refs: each partition is freed once its task has read it
    results = _wait_all(written, Progress(say, "samples", rows, "samples"), lambda r: sum(r[s] for s in SPLITS))
    totals: dict[str, Any] = {key: sum(r[key] for r in results) for key in results[0] if key != "train_stats"}
    schema = samples_schema(side, item_counts is not None, item_values.columns if item_values is not None else ())
    for split in SPLITS:
        if totals[split] == 0:
            pq.write_table(schema.empty_table(), f"{base}/{split}/empty.parquet", filesystem=fs)
    totals["train_stats"] = _merged_stats([r["train_stats"] for r in results])
    return totals


def _merged_stats(parts: list[dict[str, list[float]]]) -> dict[str, Any]:
    """Per numeric side column {mean, std} of the train split (std 1 when it has no spread), and the
    train click rate `ctr` (what the counting features' smoothed CTRs shrink towards)."""
    summed = {key: np.sum([p[key] for p in parts], axis=0) for key in parts[0]}
    rows, clicks = summed.pop("_label")
    out: dict[str, Any] = {"ctr": float(clicks / rows) if rows else 0.0, "numeric": {}}
    for name, (count, total, squares) in summed.items():
        mean = total / count if count else 0.0
        var = squares / count - mean**2 if count else 0.0
        std = float(np.sqrt(var)) if var > 1e-12 else 1.0
        out["numeric"][name] = {"mean": float(mean), "std": std}
    return out


def _output_paths(out: str, counts: bool = False) -> dict[str, str]:
    paths = {split: join(out, split) for split in SPLITS} | {"item_index": join(out, INDEX_FILE)}
    return paths | ({"item_counts": join(out, ITEM_COUNTS_FILE)} if counts else {})


def build_and_write(
    events_path: str,
    out: str,
    max_seq_len: int,
    train_fraction: float,
    val_fraction: float,
    items_path: str | None = None,
    progress: Callable[[str], None] | None = _stage,
    features: FeaturesConfig | None = None,
) -> dict[str, Any]:
    """Events -> `out/{train,val,test}/*.parquet` + `out/item_index.parquet` + `out/_SUCCESS` (meta).

    `features` (data.features): its event side columns are carried into the samples; with `counts`,
    every sample gets its leak-free counting columns and `out/item_counts.parquet` is the serving
    feature table (counts.py). The train split's feature statistics go into the report.

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
    params: dict[str, Any] = {
        "max_seq_len": max_seq_len,
        "train_fraction": train_fraction,
        "val_fraction": val_fraction,
    }
    side = side_kinds(features)
    count_period_s = features.count_period_s if features and features.counts else None
    if side or count_period_s:  # absent otherwise, so builds without features keep their fingerprint
        params["features"] = {"event": side, "count_period_s": count_period_s}
    user_item = tuple(features.user_item_counts) if features and count_period_s else ()
    if user_item:
        if not items_path:
            raise ConfigError("data.features.user_item_counts needs the item table (data.items)")
        params["features"] |= {"user_item_counts": list(user_item), "recent_impressions": features.recent_impressions}
    fingerprint = build_fingerprint(events_files, items_files, params)
    meta_path = join(out_dir, SUCCESS_FILE)
    if is_file(meta_path):
        meta = json.loads(read_text(meta_path))
        if meta.get("fingerprint") == fingerprint:
            say(f"reusing {out_dir}: inputs and parameters unchanged")
            seconds = time.perf_counter() - start  # samples_per_s stays the original build's
            paths = _output_paths(out_dir, bool(count_period_s))
            return {**meta["report"], "paths": paths, "cached": True, "seconds": seconds}

    say(f"validating {len(events_files)} event file(s) in {events_path}")
    summary = validate_events(events_path)
    if items_path:
        validate_items(items_path)
    rows = int(summary["rows"])
    stages = {"validate": time.perf_counter() - start}
    partitions, sketch_ts, sketch_weight, event_ids, item_counts = _read_phase(
        events_files, rows, say, side, count_period_s
    )
    t_val, t_test = boundaries_from_sketch(sketch_ts, sketch_weight, train_fraction, val_fraction)
    table_ids, event_only = _item_ids(items_path, event_ids)
    index = ItemIndex.from_ids(table_ids).extend(event_only)
    item_values = _item_values(items_path, user_item, features.recent_impressions) if user_item else None
    stages["read"] = time.perf_counter() - start - sum(stages.values())
    say(f"building samples (max_seq_len={max_seq_len}) and writing splits to {out_dir}")
    with output_dir(out_dir, SUCCESS_FILE) as tmp:
        written = _write_phase(partitions, tmp, max_seq_len, t_val, t_test, rows, say, side, item_counts, item_values)
        split_rows = {split: written[split] for split in SPLITS}
        index.save(join(tmp, INDEX_FILE))
        if item_counts is not None:
            fs, inner = filesystem_for(join(tmp, ITEM_COUNTS_FILE))
            pq.write_table(item_counts.item_totals(index.id_array), inner, filesystem=fs)
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
            "bytes_written": sum(written[f"{split}_bytes"] for split in SPLITS),
            "train_stats": written["train_stats"],
            "paths": _output_paths(out_dir, item_counts is not None),
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
