"""Per-variant evidence: the impression log joined with the clicks that came later, scored per variant.

    seqctr evaluate --impressions work/impressions --events work/clicks --window 1h [--json]

The join rule (one label per impression row, i.e. per request x variant x candidate):

- An impression's time is its *request's* time: the earliest `logged_at` of the rows that share its
  `request_id`. (A shadow logs after the response, a little later than the served rows; taking the
  request's time gives the served and the shadow rows of one request the same label.)
- Times are compared at the events' resolution: int64 unix seconds (or a Parquet timestamp in seconds)
  truncate the impression time to its second, so a click logged in the same second counts; finer
  Parquet timestamps compare in milliseconds.
- The impression's label is the `label` of the **first event of the same user_id and item_id at or after
  that time, no later than time + window** (both ends inclusive). Events at that same first timestamp
  count as a click if any of them is one. One event may label several impressions (a user shown the
  same item by two requests before acting on it).
- An impression with no such event is a **non-click** (label 0): the user saw it and did not act within
  the window. (So a window shorter than the click delay, or an events log that ends early, reads as
  non-clicks; the report gives `matched` beside `clicks` to show how much of the log the events cover.)
- Rows without a `user_id` cannot be attributed to a user's clicks: left out of the metrics, counted
  as `no_user`.

Metrics (seqctr.platform.model.metrics.evaluate) are computed per (role, variant): served and shadow
rows apart, since a shadow's scores were never shown and so never influenced the clicks. GAUC groups by
user_id. The join is vectorised (one dictionary encoding of the (user, item) keys, one sort of the events,
one searchsorted); it reads only the needed columns of both logs into memory (local paths or pyarrow.fs
URIs such as s3://).
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqctr.platform.data.contract import DataError, list_parquet_files, open_parquet
from seqctr.platform.model import metrics

IMPRESSION_COLUMNS = ("request_id", "user_id", "logged_at", "variant", "version", "role", "item_id", "score")
EVENT_COLUMNS = ("user_id", "item_id", "timestamp", "label")
ROLES = ("served", "shadow")
METRICS = ("ctr", "auc", "gauc", "logloss", "calibration")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_KEY_SEP = "\x1f"  # unit separator: cannot be confused with an id character


def parse_window(text: str | float) -> float:
    """Seconds from `90`, `90s`, `30m`, `1h`, `2d` or `1.5h`; a ValueError names --window."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
    if not match:
        raise ValueError(f"--window {text!r}: expected a duration such as 90s, 30m, 1h or 2d")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


# ----------------------------------------------------------------------------- reading


def _read(path: str, columns: tuple[str, ...], what: str) -> tuple[pa.Table, list[str]]:
    """The `columns` of every Parquet file under `path` as one table; a missing column names the file."""
    files = list_parquet_files(path)
    tables = []
    for file in files:
        pf = open_parquet(file)
        names = pf.schema_arrow.names
        missing = [c for c in columns if c not in names]
        if missing:
            raise DataError(
                f"{file}: missing column {', '.join(repr(c) for c in missing)} of the {what} "
                f"(required: {', '.join(columns)}; found: {', '.join(names)})"
            )
        try:
            tables.append(pf.read(columns=list(columns)))
        except (OSError, pa.ArrowException) as err:
            raise DataError(f"{file}: cannot read the {what} ({err})") from None
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowException, TypeError) as err:
        raise DataError(f"{path}: the files of the {what} disagree on column types ({err})") from None
    if table.num_rows == 0:
        raise DataError(f"{path}: empty {what}: 0 rows in {len(files)} file(s)")
    return table, files


def _as_string(table: pa.Table, name: str, path: str) -> pa.Array:
    col = table.column(name).combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_integer(col.type)):
        raise DataError(f"{path}: column '{name}' has type {col.type}, expected string or integer")
    return pc.cast(col, pa.string())


def read_impressions(path: str) -> pa.Table:
    """The impression log's columns the join needs (seqctr.serving.impressions.SCHEMA)."""
    table, _ = _read(path, IMPRESSION_COLUMNS, "impression log")
    for name in ("request_id", "item_id", "variant", "role", "logged_at"):
        if table.column(name).null_count:
            raise DataError(f"{path}: column '{name}' of the impression log has nulls")
    if not pa.types.is_integer(table.schema.field("logged_at").type):
        raise DataError(
            f"{path}: column 'logged_at' has type {table.schema.field('logged_at').type}, expected int64 ms"
        )
    score = table.column("score").to_numpy().astype(np.float64)
    bad = ~np.isfinite(score) | (score < 0) | (score > 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: column 'score' must be a probability in [0, 1], found {score[row]!r} at row {row}")
    roles = set(pc.unique(table.column("role")).to_pylist())
    if roles - set(ROLES):
        raise DataError(f"{path}: column 'role' must be served or shadow, found {sorted(roles - set(ROLES))}")
    return table


def read_events(path: str) -> tuple[pa.Table, int]:
    """(user_id, item_id as strings; time_ms int64; label 0/1 int8) and the events' resolution in ms."""
    table, _ = _read(path, EVENT_COLUMNS, "events log")
    for name in ("user_id", "item_id", "timestamp", "label"):
        if table.column(name).null_count:
            raise DataError(f"{path}: column '{name}' of the events log has nulls")
    ts = table.column("timestamp").combine_chunks()
    if pa.types.is_timestamp(ts.type):
        per_ms = {"s": (1000, 1), "ms": (1, 1), "us": (1, 1_000), "ns": (1, 1_000_000)}[ts.type.unit]
        ticks = pc.cast(ts, pa.int64()).to_numpy()
        time_ms = ticks * per_ms[0] // per_ms[1]
        resolution = per_ms[0]
    elif pa.types.is_integer(ts.type):
        time_ms, resolution = pc.cast(ts, pa.int64()).to_numpy() * 1000, 1000
    else:
        raise DataError(f"{path}: column 'timestamp' has type {ts.type}, expected int64 unix seconds or a timestamp")
    label = table.column("label").combine_chunks()
    if not (pa.types.is_integer(label.type) or pa.types.is_boolean(label.type) or pa.types.is_floating(label.type)):
        raise DataError(f"{path}: column 'label' has type {label.type}, expected 0/1")
    y = label.to_numpy(zero_copy_only=False).astype(np.float64)
    bad = ~np.isin(y, (0.0, 1.0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: column 'label' must be 0 or 1, found {y[row]!r} at row {row}")
    out = pa.table(
        {
            "user_id": _as_string(table, "user_id", path),
            "item_id": _as_string(table, "item_id", path),
            "time_ms": pa.array(time_ms, pa.int64()),
            "label": pa.array(y.astype(np.int8)),
        }
    )
    return out, resolution


# ----------------------------------------------------------------------------- the join (pure)


def request_times(request_ids: pa.Array | pa.ChunkedArray, logged_at: np.ndarray) -> np.ndarray:
    """(n,) each row's request time: the earliest logged_at among the rows of its request_id."""
    codes = pc.dictionary_encode(pa.chunked_array([request_ids]).combine_chunks()).indices.to_numpy()
    first = np.full(int(codes.max()) + 1 if len(codes) else 0, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, codes, logged_at)
    return first[codes]


def _key_codes(users: list[pa.Array], items: list[pa.Array]) -> list[np.ndarray]:
    """One integer code per (user, item) pair, shared across the given arrays (null pair -> -1)."""
    keys = [pc.binary_join_element_wise(u, i, _KEY_SEP) for u, i in zip(users, items, strict=True)]
    encoded = pc.dictionary_encode(pa.chunked_array(keys, pa.string()).combine_chunks()).indices
    codes = pc.fill_null(encoded, -1).to_numpy().astype(np.int64)
    bounds = np.cumsum([0, *(len(k) for k in keys)])
    return [codes[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def join_labels(
    imp_users: pa.Array,
    imp_items: pa.Array,
    imp_ms: np.ndarray,
    ev_users: pa.Array,
    ev_items: pa.Array,
    ev_ms: np.ndarray,
    ev_labels: np.ndarray,
    window_s: float,
    resolution_ms: int = 1000,
) -> tuple[np.ndarray, np.ndarray]:
    """(label, matched) per impression under the module's rule (no user -> label 0, matched False)."""
    imp_code, ev_code = _key_codes([imp_users, ev_users], [imp_items, ev_items])
    start = imp_ms // resolution_ms * resolution_ms  # the impression time at the events' resolution
    end = start + int(round(window_s * 1000))
    # Dense time ranks make (key, time) one int64 that sorts lexicographically: code * n_times + rank.
    times, rank = np.unique(np.concatenate([start, ev_ms]), return_inverse=True)
    n_times = len(times)
    imp_key = imp_code * n_times + rank[: len(start)]
    ev_key = ev_code * n_times + rank[len(start) :]
    order = np.lexsort((-ev_labels.astype(np.int64), ev_key))  # by key and time; clicks first on a tie
    ev_key, ev_code, ev_ms, ev_labels = ev_key[order], ev_code[order], ev_ms[order], ev_labels[order]
    labels = np.zeros(len(start), dtype=np.int8)
    matched = np.zeros(len(start), dtype=bool)
    if len(ev_key) == 0:
        return labels, matched
    at = np.minimum(np.searchsorted(ev_key, imp_key, side="left"), len(ev_key) - 1)
    matched = (imp_code >= 0) & (ev_code[at] == imp_code) & (ev_ms[at] >= start) & (ev_ms[at] <= end)
    labels[matched] = ev_labels[at[matched]]
    return labels, matched


def join(impressions: pa.Table, events: pa.Table, window_s: float, resolution_ms: int = 1000) -> pa.Table:
    """The impression rows with `label` (0/1), `matched` and `request_ms` (the request's time) added."""
    imp_ms = request_times(impressions.column("request_id"), impressions.column("logged_at").to_numpy())
    labels, matched = join_labels(
        impressions.column("user_id").combine_chunks(),
        impressions.column("item_id").combine_chunks(),
        imp_ms,
        events.column("user_id").combine_chunks(),
        events.column("item_id").combine_chunks(),
        events.column("time_ms").to_numpy(),
        events.column("label").to_numpy(),
        window_s,
        resolution_ms,
    )
    return (
        impressions.append_column("request_ms", pa.array(imp_ms, pa.int64()))
        .append_column("label", pa.array(labels))
        .append_column("matched", pa.array(matched))
    )


# ----------------------------------------------------------------------------- the report


def _finite(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _codes(col: pa.ChunkedArray) -> np.ndarray:
    """Integer codes of a string column (null -> -1): np.unique and GAUC's grouping on ints, not objects."""
    return pc.fill_null(pc.dictionary_encode(col.combine_chunks()).indices, -1).to_numpy().astype(np.int64)


def variant_metrics(joined: pa.Table) -> list[dict[str, Any]]:
    """One row per (role, variant): counts, AUC / GAUC / logloss / calibration (None where undefined)."""
    role = joined.column("role").to_numpy(zero_copy_only=False)
    variant = joined.column("variant").to_numpy(zero_copy_only=False)
    users, requests = _codes(joined.column("user_id")), _codes(joined.column("request_id"))
    label = joined.column("label").to_numpy()
    matched = joined.column("matched").to_numpy(zero_copy_only=False)
    score = joined.column("score").to_numpy().astype(np.float64)
    versions = joined.column("version").to_numpy(zero_copy_only=False)
    pairs = joined.select(["role", "variant"]).group_by(["role", "variant"]).aggregate([]).to_pylist()
    groups = sorted(((p["role"], p["variant"]) for p in pairs), key=lambda g: (ROLES.index(g[0]), g[1]))
    rows = []
    for r, v in groups:
        group = (role == r) & (variant == v)
        use = group & (users >= 0)
        out: dict[str, Any] = {
            "role": r,
            "variant": v,
            "versions": sorted(set(versions[use if use.any() else group].tolist())),
            "rows": int(use.sum()),
            "requests": int(len(np.unique(requests[use]))),
            "users": int(len(np.unique(users[use]))),
            "matched": int(matched[use].sum()),
            "clicks": int(label[use].sum()),
            "no_user": int((group & (users < 0)).sum()),
        }
        if use.any():
            m = metrics.evaluate(label[use], score[use], users[use])
            out.update({k: _finite(m[k]) for k in METRICS})
        else:
            out.update(dict.fromkeys(METRICS))
        rows.append(out)
    return rows


def evaluate_impressions(impressions: str, events: str, window: str | float = "1h") -> dict[str, Any]:
    """Read both logs, join (see the module doc) and return {impressions, events, window_s, rows, variants}."""
    window_s = parse_window(window)
    imp = read_impressions(impressions)
    ev, resolution = read_events(events)
    joined = join(imp, ev, window_s, resolution)
    return {
        "impressions": impressions,
        "events": events,
        "window_s": window_s,
        "impression_rows": imp.num_rows,
        "event_rows": ev.num_rows,
        "variants": variant_metrics(joined),
    }


def format_table(report: dict[str, Any]) -> str:
    """The per-variant table `seqctr evaluate --impressions` prints."""
    head = ("role", "variant", "versions", "rows", "requests", "users", "clicks", "ctr", "auc", "gauc", "logloss")
    lines = [head]
    for row in report["variants"]:
        lines.append(
            (
                row["role"],
                row["variant"] or "(single)",
                ",".join(row["versions"]),
                str(row["rows"]),
                str(row["requests"]),
                str(row["users"]),
                str(row["clicks"]),
                *("-" if row[k] is None else f"{row[k]:.4f}" for k in ("ctr", "auc", "gauc", "logloss")),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    no_user = sum(row["no_user"] for row in report["variants"])
    text.append(
        f"{report['impression_rows']} impression rows joined with {report['event_rows']} events within "
        f"{report['window_s']:g}s" + (f"; {no_user} rows without user_id left out" if no_user else "")
    )
    return "\n".join(text)
