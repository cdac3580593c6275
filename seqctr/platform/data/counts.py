"""Leak-free counting features: how often an item (and a user) was shown and clicked before an event.

Real CTR logs reward these statistics as much as histories, and they leak easily: a count that includes
the event itself, or events of the same second, tells the model the label. The rule here is the one
histories follow (DESIGN.md "Contracts"): only strictly earlier events count.

- A user's counts are exact: the build meets all of a user's events in one partition, so the counts
  before each event's (user, second) tie group are running sums (`user_counts`).
- An item's events are spread over every partition, so its counts come from a small table of
  (item, period) aggregates that the read tasks send to the driver (`period_summary`), merged into
  cumulative counts of the periods strictly before each period (`ItemCountTable`). An event in period p
  sees the item's events of periods < p: never its own period, hence never itself or a later event;
  at most `count_period_s` stale. The table is keyed by hash64(item_id) (64 bits: collisions are
  negligible at 10^7 items) and its size is the number of (item, period) pairs with events, bounded
  by the log, not by items x periods.
- A user's counts by item value (data.features.user_item_counts, e.g. per (user, category)) are exact
  too: running sums within each (user, value) group before the event's tie group, and how many of the
  user's last K impressions before that tie group had the target's value (`user_value_counts`). The
  build knows each event's value from the item table (`ItemValueTable`, O(items), in the object store
  once); a null value, or an item the table lacks, counts nothing. Serving gets both from the request.
- Serving reads each item's counts over the whole log (`item_totals`, written by the build as
  `item_counts.parquet` and kept in the checkpoint beside the item index): the request's user counts
  come with the request (absent: a new user, zeros).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqctr.platform.model.features import hash64

ITEM_COUNTS_FILE = "item_counts.parquet"
VALUE_SEED = 0x7A1E  # salt of item-column value hashes (build and serving hash values alike)


def value_hashes(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(n,) int64 hash of each value as a string (as `pc.cast` writes it); null -> 0, which matches nothing."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    strings = pc.cast(values, pa.string()) if values.type != pa.string() else values
    out = hash64(pc.fill_null(strings, ""), VALUE_SEED).view(np.int64).copy()
    if strings.null_count:
        out[pc.is_null(strings).to_numpy(zero_copy_only=False)] = 0
    return out


def sorted_lookup(sorted_keys: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position, found) of each query in `sorted_keys` (increasing, non-empty): O(n log k), the lookup
    every hash-keyed table here uses. `position` is valid only where `found`."""
    pos = np.minimum(np.searchsorted(sorted_keys, queries), sorted_keys.size - 1)
    return pos, sorted_keys[pos] == queries


def _runs(keys: np.ndarray) -> np.ndarray:
    """Start positions of runs of equal rows in sorted `keys` (any number of columns, last axis rows)."""
    change = np.ones(keys.shape[-1], dtype=bool)
    if keys.shape[-1] > 1:
        change[1:] = np.any(keys[..., 1:] != keys[..., :-1], axis=0)
    return np.flatnonzero(change)


def period_summary(item_hash: np.ndarray, ts: np.ndarray, labels: np.ndarray, period_s: int) -> dict[str, np.ndarray]:
    """Per (item hash, period) impressions and clicks of one slice of the log, sorted by (hash, period)."""
    period = np.floor_divide(ts.astype(np.int64, copy=False), period_s)
    order = np.lexsort((period, item_hash))
    h, p = item_hash[order], period[order]
    starts = _runs(np.stack([h.view(np.int64), p]))
    clicks = np.add.reduceat((labels[order] == 1).astype(np.int64), starts) if starts.size else np.zeros(0, np.int64)
    impressions = np.diff(np.append(starts, h.size))
    return {"hash": h[starts], "period": p[starts], "impressions": impressions, "clicks": clicks}


@dataclass
class ItemCountTable:
    """Cumulative item counts of the periods strictly before each (item, period) that had events."""

    hashes: np.ndarray  # (M,) uint64, sorted unique item hashes
    keys: np.ndarray  # (N,) int64, sorted: item code * span + (period - first_period)
    impressions_before: np.ndarray  # (N,) int64
    clicks_before: np.ndarray  # (N,) int64
    totals_impressions: np.ndarray  # (M,) int64, over the whole log
    totals_clicks: np.ndarray  # (M,) int64
    first_period: int
    span: int
    period_s: int

    @classmethod
    def merge(cls, summaries: list[dict[str, np.ndarray]], period_s: int) -> ItemCountTable:
        """The read tasks' summaries -> one table (the same (item, period) may come from several tasks)."""
        h = np.concatenate([s["hash"] for s in summaries]) if summaries else np.zeros(0, np.uint64)
        p = np.concatenate([s["period"] for s in summaries]) if summaries else np.zeros(0, np.int64)
        imp = np.concatenate([s["impressions"] for s in summaries]) if summaries else np.zeros(0, np.int64)
        clk = np.concatenate([s["clicks"] for s in summaries]) if summaries else np.zeros(0, np.int64)
        order = np.lexsort((p, h))
        h, p, imp, clk = h[order], p[order], imp[order], clk[order]
        starts = _runs(np.stack([h.view(np.int64), p])) if h.size else np.zeros(0, np.int64)
        if h.size:
            imp, clk = np.add.reduceat(imp, starts), np.add.reduceat(clk, starts)
            h, p = h[starts], p[starts]
        hashes, code = np.unique(h, return_inverse=True)
        first = int(p.min()) if p.size else 0
        span = int(p.max()) - first + 1 if p.size else 1
        item_start = np.searchsorted(code, np.arange(hashes.size))  # first row of each item (rows sorted)

        def before(counts: np.ndarray) -> np.ndarray:  # exclusive running sum within each item
            exclusive = np.cumsum(counts) - counts
            return exclusive - exclusive[item_start][code] if counts.size else exclusive

        before_imp, before_clk = before(imp), before(clk)
        totals_imp = np.bincount(code, weights=imp, minlength=hashes.size).astype(np.int64)
        totals_clk = np.bincount(code, weights=clk, minlength=hashes.size).astype(np.int64)
        return cls(
            hashes=hashes,
            keys=code.astype(np.int64) * span + (p - first),
            impressions_before=before_imp.astype(np.int64),
            clicks_before=before_clk.astype(np.int64),
            totals_impressions=totals_imp,
            totals_clicks=totals_clk,
            first_period=first,
            span=span,
            period_s=period_s,
        )

    def before(self, item_hash: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(impressions, clicks) of each event's item in periods before its own; every event of the
        log that built the table has its (item, period) row. Cost grows with len(item_hash) only."""
        if item_hash.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        code = np.searchsorted(self.hashes, item_hash)
        period = np.floor_divide(ts.astype(np.int64, copy=False), self.period_s) - self.first_period
        key = np.minimum(code, self.hashes.size - 1).astype(np.int64) * self.span + period
        pos = np.minimum(np.searchsorted(self.keys, key), self.keys.size - 1)
        found = (code < self.hashes.size) & (self.keys[pos] == key)
        if not found.all():
            raise ValueError(f"item counts: {int((~found).sum())} event(s) missing from the count table")
        return self.impressions_before[pos], self.clicks_before[pos]

    def item_totals(self, item_ids: pa.Array) -> pa.Table:
        """The serving feature table: item_id, impressions, clicks over the whole log (0 for an item
        without events). Whole log, val and test periods included: what live traffic after the log may
        know. Replaying the log's own test period through serving therefore scores with counts that
        include those events' clicks; evaluate a split offline (`seqctr evaluate`) for leak-free figures."""
        h = hash64(item_ids)
        imp = np.zeros(h.size, np.int64)
        clk = np.zeros(h.size, np.int64)
        if self.hashes.size:
            code, known = sorted_lookup(self.hashes, h)
            imp[known], clk[known] = self.totals_impressions[code[known]], self.totals_clicks[code[known]]
        return pa.table(
            {"item_id": item_ids, "impressions": pa.array(imp, pa.int64()), "clicks": pa.array(clk, pa.int64())}
        )


def user_counts(new_user: np.ndarray, new_tie: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(impressions, clicks) of each row's user strictly before the row's (user, second) tie group, for
    rows sorted by (user, timestamp): `new_user` / `new_tie` mark the first row of each user / tie group."""
    n = new_user.size
    idx = np.arange(n)
    user_start = np.maximum.accumulate(np.where(new_user, idx, 0)) if n else idx
    tie_start = np.maximum.accumulate(np.where(new_tie, idx, 0)) if n else idx
    cpos = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(positive, out=cpos[1:])
    return (tie_start - user_start).astype(np.int64), cpos[tie_start] - cpos[user_start]


@dataclass
class ItemValueTable:
    """Each item's value hash (`value_hashes`) in every user_item_counts column, keyed by hash64(item_id)."""

    hashes: np.ndarray  # (M,) uint64, sorted unique item hashes
    values: np.ndarray  # (M, F) int64, 0 = null
    columns: tuple[str, ...]
    recent: int  # data.features.recent_impressions

    @classmethod
    def from_columns(
        cls, item_ids: pa.Array, columns: dict[str, pa.Array], names: tuple[str, ...], recent: int
    ) -> ItemValueTable:
        h = hash64(item_ids)
        hashes, first = np.unique(h, return_index=True)  # a repeated id keeps its first row
        values = np.stack([value_hashes(columns[n]) for n in names], axis=1) if names else np.zeros((h.size, 0))
        return cls(hashes=hashes, values=values[first].astype(np.int64), columns=names, recent=recent)

    def of(self, item_hash: np.ndarray) -> np.ndarray:
        """(n, F) value hashes of items by hash64(item_id); 0 for an item the table lacks."""
        out = np.zeros((item_hash.size, len(self.columns)), np.int64)
        if self.hashes.size and item_hash.size:
            code, known = sorted_lookup(self.hashes, item_hash)
            out[known] = self.values[code[known]]
        return out


def user_value_counts(
    user_code: np.ndarray, ts: np.ndarray, values: np.ndarray, positive: np.ndarray, recent: int
) -> np.ndarray:
    """(n, 3) per row: the user's impressions and clicks of items with the row's value strictly before
    the row's (user, second) tie group, and how many of the user's last `recent` impressions before that
    tie group had the value; rows sorted by (user, timestamp), `values` (n,) int64 with 0 = null."""
    n = values.size
    out = np.zeros((n, 3), np.int64)
    if n == 0:
        return out
    order = np.lexsort((np.arange(n), values, user_code))  # (user, value) groups, time order inside
    u, v, t = user_code[order], values[order], ts[order]
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = (u[1:] != u[:-1]) | (v[1:] != v[:-1])
    new_tie = new_group.copy()
    new_tie[1:] |= t[1:] != t[:-1]
    imp, clk = user_counts(new_group, new_tie, positive[order])
    out[order, 0], out[order, 1] = imp, clk
    idx = np.arange(n)
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = user_code[1:] != user_code[:-1]
    tie = new_user.copy()
    tie[1:] |= ts[1:] != ts[:-1]
    user_start = np.maximum.accumulate(np.where(new_user, idx, 0))
    tie_start = np.maximum.accumulate(np.where(tie, idx, 0))
    # The last `recent` impressions before row i's tie group are rows [lo, tie_start) of its user; those
    # sharing i's value are the rows of i's (user, value) group in that range: two binary searches in
    # the groups' sorted (group, row) keys, so the cost is O(n log n) whatever `recent` is.
    group_base = (np.cumsum(new_group) - 1) * (n + 1)  # (n,) each sorted row's (user, value) group, scaled
    keys = group_base + order  # ascending: groups in order, rows in time order inside each
    base = np.empty(n, np.int64)
    base[order] = group_base
    lo = np.maximum(user_start, tie_start - recent)
    out[:, 2] = np.searchsorted(keys, base + tie_start) - np.searchsorted(keys, base + lo)
    out[values == 0] = 0  # a null value (or an item the table lacks) counts nothing
    return out
