"""Validate behaviour logs and item tables against the contract (DESIGN.md "Contracts").

Bad input stops here with a `DataError` that names the file and the column (and the row where it
helps), before any Ray job spends time on it. Validation streams: it reads Parquet metadata first
and skips every row group whose statistics already prove the column valid (no nulls, values in
range); only the remaining row groups are decoded, batch by batch, with vectorised
`pyarrow.compute`. Memory stays bounded by one record batch, whatever the log size. (The price: a
data page corrupted behind an intact footer and proving statistics is caught by the reader, not here;
a truncated file loses its footer and is caught here.)
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from seqctr.platform.storage import filesystem_for, is_uri

EVENT_COLUMNS = ("user_id", "item_id", "timestamp", "label")
ITEM_COLUMNS = ("item_id", "text")
BATCH_ROWS = 65_536
MAX_UNIX_SECONDS = 253_402_300_799
"""9999-12-31T23:59:59Z. A later "unix seconds" value is almost surely milliseconds or microseconds
(today in ms is ~1.7e12): refused, so a unit mistake cannot pass silently and skew every time split.
A bound, not the wall clock, so validating the same log always gives the same answer."""


class DataError(ValueError):
    """Input data breaks the contract; the message names the file and the column (and row)."""


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.split("/") if part)


def list_parquet_files(path: str) -> list[str]:
    """Parquet files under `path`: one file, a folder (recursive; hidden `.`/`_` entries skipped, as
    Spark/Ray write `_SUCCESS` and temp folders there) or a pyarrow.fs URI. Sorted, so runs agree."""
    fs, inner = filesystem_for(path)
    try:
        info = fs.get_file_info(inner)
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"{path}: cannot access ({err})") from None
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{path}: no such file or folder")
    if info.type == pafs.FileType.File:
        found = [inner]
    else:
        selector = pafs.FileSelector(inner, recursive=True)
        found = [
            f.path
            for f in fs.get_file_info(selector)
            if f.type == pafs.FileType.File
            and f.path.lower().endswith(".parquet")
            and not _hidden(posixpath.relpath(f.path, inner))
        ]
        if not found:
            raise DataError(f"{path}: empty dataset: the folder holds no *.parquet files")
    found.sort()
    if is_uri(path):
        scheme = str(path).split("://", 1)[0]
        return [f"{scheme}://{p}" for p in found]
    return found


def open_parquet(file: str) -> pq.ParquetFile:
    """Open one Parquet file (path or URI); a non-Parquet or truncated file is a DataError."""
    fs, inner = filesystem_for(file)
    try:
        return pq.ParquetFile(fs.open_input_file(inner))
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"{file}: not a Parquet file, or truncated/corrupt ({err})") from None


# ---------------------------------------------------------------------------------------------
# Column type rules
# ---------------------------------------------------------------------------------------------


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _is_string(t: pa.DataType) -> bool:
    t = _value_type(t)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_id(t: pa.DataType) -> bool:
    return _is_string(t) or pa.types.is_integer(_value_type(t))


def _is_timestamp(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_timestamp(t)


def _is_label(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_floating(t)


EVENT_TYPES: dict[str, tuple[Callable[[pa.DataType], bool], str]] = {
    "user_id": (_is_id, "string or integer"),
    "item_id": (_is_id, "string or integer"),
    "timestamp": (_is_timestamp, "int64 unix seconds or a Parquet timestamp"),
    "label": (_is_label, "integer, bool or float with values 0/1"),
}
ITEM_TYPES: dict[str, tuple[Callable[[pa.DataType], bool], str]] = {
    "item_id": (_is_id, "string or integer"),
    "text": (_is_string, "string"),
    "category": (_is_id, "string or integer"),
}


def _check_schema(
    file: str,
    schema: pa.Schema,
    required: tuple[str, ...],
    rules: dict[str, tuple[Callable[[pa.DataType], bool], str]],
) -> None:
    missing = [c for c in required if c not in schema.names]
    if missing:
        raise DataError(
            f"{file}: missing column {', '.join(repr(c) for c in missing)} "
            f"(required: {', '.join(required)}; found: {', '.join(schema.names)})"
        )
    for name, (ok, expected) in rules.items():
        if name in schema.names and not ok(schema.field(name).type):
            raise DataError(f"{file}: column '{name}' has type {schema.field(name).type}, expected {expected}")


def _check_same_types(file: str, schema: pa.Schema, seen: dict[str, tuple[str, pa.DataType]]) -> None:
    """Every file must agree on each contract column's type, or Ray cannot read them as one dataset."""
    for name, (first_file, first_type) in seen.items():
        if name in schema.names and schema.field(name).type != first_type:
            raise DataError(
                f"{file}: column '{name}' has type {schema.field(name).type} but {first_file} has "
                f"{first_type}; all files of a dataset must use the same type"
            )


# ---------------------------------------------------------------------------------------------
# Value checks: statistics first, then vectorised scans of what statistics cannot prove
# ---------------------------------------------------------------------------------------------


def _stats(pf: pq.ParquetFile, row_group: int, name: str) -> Any:
    meta = pf.metadata.row_group(row_group)
    for i in range(meta.num_columns):
        column = meta.column(i)
        if column.path_in_schema == name:
            return column.statistics
    return None


def _stats_prove_valid(stats: Any, t: pa.DataType, kind: str) -> bool:
    """True when row-group statistics alone prove the column valid, so its data need not be decoded."""
    if stats is None or not stats.has_null_count or stats.null_count != 0:
        return False
    if kind == "id":
        return True
    if not stats.has_min_max:
        return False
    if kind == "timestamp" and pa.types.is_integer(t):
        return stats.min >= 0 and stats.max <= MAX_UNIX_SECONDS
    if kind == "label" and pa.types.is_integer(t):
        return stats.min >= 0 and stats.max <= 1
    if kind == "label" and pa.types.is_boolean(t):
        return True
    return False  # floats (NaN, 0.5) and timestamp types are scanned


def _first(mask: pa.Array | pa.ChunkedArray) -> int:
    return int(pc.index(mask, True).as_py())


def _check_utf8(file: str, name: str, col: pa.Array, offset: int) -> None:
    """Parquet strings must be UTF-8, but writers can store any bytes, and Arrow reads them unchecked:
    invalid bytes would pass validation and crash the embedding job far from their source (a
    UnicodeDecodeError inside a Ray task). Checked in C++; only a failing batch is walked to find the row."""
    try:
        col.validate(full=True)
    except pa.ArrowInvalid:
        for row, raw in enumerate(pc.cast(col, pa.binary()).to_pylist()):
            try:
                (raw or b"").decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{file}: column '{name}': invalid UTF-8 at row {offset + row} ({err.reason} at byte "
                    f"{err.start}); texts must be UTF-8 strings"
                ) from None
        raise


def _check_values(file: str, name: str, kind: str, col: pa.Array, offset: int) -> None:
    """Vectorised checks of one record batch column; `offset` = row number of its first row."""
    if col.null_count:
        row = offset + _first(pc.is_null(col))
        what = {"id": "null id", "text": "null text", "timestamp": "null timestamp", "label": "null label"}
        raise DataError(f"{file}: column '{name}': {what[kind]} at row {row}")
    t = col.type
    if kind == "timestamp":
        values = pc.cast(col, pa.int64()) if pa.types.is_timestamp(t) else col
        negative = pc.less(values, 0)
        if pc.any(negative).as_py():
            row = _first(negative)
            raise DataError(
                f"{file}: column '{name}': negative timestamp {col[row].as_py()} at row {offset + row} "
                "(expected unix seconds >= 0)"
            )
        seconds = to_unix_seconds(col)
        too_late = pc.greater(seconds, MAX_UNIX_SECONDS)
        if pc.any(too_late).as_py():
            row = _first(too_late)
            raise DataError(
                f"{file}: column '{name}': timestamp {seconds[row].as_py()} at row {offset + row} is after year 9999 "
                "(milliseconds or microseconds? expected unix seconds)"
            )
    elif kind == "label" and not pa.types.is_boolean(t):
        if pa.types.is_floating(t):
            nan = pc.is_nan(col)
            if pc.any(nan).as_py():
                raise DataError(f"{file}: column '{name}': NaN label at row {offset + _first(nan)}")
        bad = pc.and_(pc.not_equal(col, 0), pc.not_equal(col, 1))
        if pc.any(bad).as_py():
            row = _first(bad)
            raise DataError(
                f"{file}: column '{name}': label {col[row].as_py()} at row {offset + row}, labels must be 0 or 1"
            )
    elif kind == "text":
        text = pc.cast(col, pa.string()) if pa.types.is_dictionary(t) else col
        _check_utf8(file, name, text, offset)
        stripped = pc.utf8_trim_whitespace(text)
        empty = pc.equal(pc.utf8_length(stripped), 0)
        if pc.any(empty).as_py():
            raise DataError(f"{file}: column '{name}': empty text at row {offset + _first(empty)}")


def _scan_file(file: str, pf: pq.ParquetFile, kinds: dict[str, str]) -> dict[str, Any]:
    """Check every value of `kinds` columns in one file; returns rows and the timestamp range."""
    schema = pf.schema_arrow
    row_offset = 0
    ts_min: int | None = None
    ts_max: int | None = None
    for rg in range(pf.num_row_groups):
        rg_rows = pf.metadata.row_group(rg).num_rows
        to_scan = [
            name
            for name, kind in kinds.items()
            if not _stats_prove_valid(_stats(pf, rg, name), schema.field(name).type, kind)
        ]
        if "timestamp" in kinds and "timestamp" not in to_scan:
            stats = _stats(pf, rg, "timestamp")
            ts_min = stats.min if ts_min is None else min(ts_min, stats.min)
            ts_max = stats.max if ts_max is None else max(ts_max, stats.max)
        if to_scan:
            offset = row_offset
            try:
                batches = pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[rg], columns=to_scan)
                for batch in batches:
                    for name in to_scan:
                        col = batch.column(name)
                        _check_values(file, name, kinds[name], col, offset)
                        if name == "timestamp" and len(col):
                            secs = to_unix_seconds(col)
                            lo, hi = pc.min(secs).as_py(), pc.max(secs).as_py()
                            ts_min = lo if ts_min is None else min(ts_min, lo)
                            ts_max = hi if ts_max is None else max(ts_max, hi)
                    offset += batch.num_rows
            except (OSError, pa.ArrowException) as err:
                raise DataError(
                    f"{file}: cannot read column(s) {', '.join(to_scan)} of row group {rg}: "
                    f"truncated or corrupt ({err})"
                ) from None
        row_offset += rg_rows
    return {"rows": row_offset, "ts_min": ts_min, "ts_max": ts_max}


def to_unix_seconds(col: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """int64 unix seconds from an integer column or any Parquet timestamp unit (floored)."""
    t = col.type
    if not pa.types.is_timestamp(t):
        return pc.cast(col, pa.int64())
    per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[t.unit]
    ticks = pc.cast(col, pa.int64())
    # Integer division truncates toward zero; validation rejects negative times, so this floors.
    return ticks if per_second == 1 else pc.divide(ticks, per_second)


def _validate(
    path: str,
    required: tuple[str, ...],
    rules: dict[str, tuple[Callable[[pa.DataType], bool], str]],
    kinds: dict[str, str],
) -> dict[str, Any]:
    files = list_parquet_files(path)
    seen: dict[str, tuple[str, pa.DataType]] = {}
    rows = 0
    ts_min: int | None = None
    ts_max: int | None = None
    optional_everywhere = {name: True for name in rules if name not in required}
    for file in files:
        pf = open_parquet(file)
        schema = pf.schema_arrow
        _check_schema(file, schema, required, rules)
        _check_same_types(file, schema, seen)
        for name in rules:
            if name in schema.names:
                seen.setdefault(name, (file, schema.field(name).type))
            elif name in optional_everywhere:
                optional_everywhere[name] = False
        present = {name: kind for name, kind in kinds.items() if name in schema.names}
        result = _scan_file(file, pf, present)
        rows += result["rows"]
        if result["ts_min"] is not None:
            ts_min = result["ts_min"] if ts_min is None else min(ts_min, result["ts_min"])
            ts_max = result["ts_max"] if ts_max is None else max(ts_max, result["ts_max"])
    if rows == 0:
        raise DataError(f"{path}: empty dataset: 0 rows in {len(files)} file(s) (column '{required[0]}')")
    summary: dict[str, Any] = {
        "rows": rows,
        "files": len(files),
        "schema": {name: str(t) for name, (_, t) in seen.items()},
        "optional_columns": sorted(n for n, ok in optional_everywhere.items() if ok and n in seen),
    }
    if "timestamp" in kinds:
        summary["min_timestamp"], summary["max_timestamp"] = ts_min, ts_max
    return summary


def validate_events(path: str) -> dict[str, Any]:
    """Check a behaviour log; returns {rows, files, schema, optional_columns, min/max_timestamp}."""
    kinds = {"user_id": "id", "item_id": "id", "timestamp": "timestamp", "label": "label"}
    return _validate(path, EVENT_COLUMNS, EVENT_TYPES, kinds)


def validate_items(path: str) -> dict[str, Any]:
    """Check an item table (item_id, text[, category]); returns {rows, files, schema, optional_columns}."""
    kinds = {"item_id": "id", "text": "text"}  # category: type-checked only, nulls allowed
    summary = _validate(path, ITEM_COLUMNS, ITEM_TYPES, kinds)
    check_unique_item_ids(list_parquet_files(path))
    return summary


def check_unique_item_ids(files: list[str]) -> None:
    """One row per item: a repeated item_id (across all files, as a string) is an error naming both places.

    Why: every stage reads an item's columns by id (its text vector, its side columns, its value for
    the counts by category), and a repeated id would let two of them keep different rows."""
    per_file = [pc.cast(open_parquet(f).read(columns=["item_id"]).column("item_id"), pa.string()) for f in files]
    every = pa.chunked_array([chunk for ids in per_file for chunk in ids.chunks], pa.string())
    if pc.count_distinct(every).as_py() == len(every):  # the usual case, vectorised; else find the first repeat
        return
    seen: dict[str, str] = {}
    for file, ids in zip(files, per_file, strict=True):
        for row, item_id in enumerate(ids.to_pylist()):
            if item_id in seen:
                raise DataError(
                    f"{file}: column 'item_id': duplicate id {item_id!r} at row {row} (first seen in {seen[item_id]})"
                )
            seen[item_id] = file
