"""Leak-free counting features: every count equals a brute-force count of strictly earlier events."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from seqctr.platform.data.counts import ItemCountTable, ItemValueTable, period_summary, value_hashes
from seqctr.platform.data.samples import samples_from_events
from seqctr.platform.model.features import hash64
from seqctr.platform.model.side import COUNT_COLUMNS, user_item_count_columns

PERIOD_S = 100


def _log(n: int = 3000, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "user_id": pa.array(rng.integers(0, 40, n).astype(str)),
            "item_id": pa.array(rng.integers(0, 30, n).astype(str)),
            "timestamp": pa.array(rng.integers(0, 2000, n), pa.int64()),  # many same-second ties
            "label": pa.array((rng.random(n) < 0.3).astype(np.int8)),
        }
    )


def _table(log: pa.Table, slices: int = 3) -> ItemCountTable:
    """As the build does it: one summary per read task (here interleaved slices), merged."""
    h = hash64(log.column("item_id"))
    ts, labels = log.column("timestamp").to_numpy(), log.column("label").to_numpy()
    parts = [period_summary(h[k::slices], ts[k::slices], labels[k::slices], PERIOD_S) for k in range(slices)]
    return ItemCountTable.merge(parts, PERIOD_S)


def test_every_count_equals_a_brute_force_count_of_strictly_earlier_events():
    log = _log()
    samples = samples_from_events(log, max_seq_len=5, item_counts=_table(log)).to_pydict()
    events = log.to_pydict()
    users, items = np.array(events["user_id"]), np.array(events["item_id"])
    ts, labels = np.array(events["timestamp"]), np.array(events["label"])
    for row in range(0, len(samples["target"]), 7):
        u, i, t = samples["user_id"][row], samples["target"][row], samples["timestamp"][row]
        user_before = (users == u) & (ts < t)  # strictly earlier seconds: a tie never counts
        item_before = (items == i) & (ts // PERIOD_S < t // PERIOD_S)  # earlier periods only
        assert samples["count_user_impressions"][row] == user_before.sum()
        assert samples["count_user_clicks"][row] == labels[user_before].sum()
        assert samples["count_item_impressions"][row] == item_before.sum()
        assert samples["count_item_clicks"][row] == labels[item_before].sum()


def test_an_events_own_label_never_reaches_its_own_counts():
    log = _log(800, seed=1)
    flipped = log.set_column(3, "label", pa.array(1 - log.column("label").to_numpy(), pa.int8()))
    a = samples_from_events(log, 5, item_counts=_table(log)).to_pydict()
    b = samples_from_events(flipped, 5, item_counts=_table(flipped)).to_pydict()
    # Flip every label: each earlier event is a click in exactly one of the two logs, so a row's clicks in
    # both add up to its impressions; its own label (flipped too) would break the sum if it counted.
    for user_imp, clicks_a, clicks_b in zip(
        a["count_user_impressions"], a["count_user_clicks"], b["count_user_clicks"], strict=True
    ):
        assert clicks_a + clicks_b == user_imp  # each earlier event is a click in exactly one of the logs
    for item_imp, clicks_a, clicks_b in zip(
        a["count_item_impressions"], a["count_item_clicks"], b["count_item_clicks"], strict=True
    ):
        assert clicks_a + clicks_b == item_imp


def test_the_table_does_not_depend_on_how_the_log_was_sliced():
    log = _log(1000, seed=2)
    one, five = _table(log, 1), _table(log, 5)
    assert np.array_equal(one.keys, five.keys) and np.array_equal(one.clicks_before, five.clicks_before)
    totals = one.item_totals(pa.array(["3", "not-an-item"]))
    items, labels = np.array(log.column("item_id").to_pylist()), log.column("label").to_numpy()
    assert totals.column("impressions").to_pylist() == [int((items == "3").sum()), 0]
    assert totals.column("clicks").to_pylist() == [int(labels[items == "3"].sum()), 0]


def test_an_event_missing_from_the_table_is_an_error_not_a_silent_zero():
    log = _log(200)
    table = _table(log.slice(0, 100))
    with pytest.raises(ValueError, match="missing from the count table"):
        table.before(hash64(pa.array(["never-seen"])), np.array([5]))


def test_samples_without_counts_have_no_count_columns():
    out = samples_from_events(_log(100), 3)
    assert not set(COUNT_COLUMNS) & set(out.column_names)


def _values(recent: int = 4) -> ItemValueTable:
    """Items 0..29 in categories by id % 4; item 7 has a null category (counts nothing)."""
    ids = pa.array([str(i) for i in range(30)])
    category = pa.array([None if i == 7 else f"c{i % 4}" for i in range(30)])
    return ItemValueTable.from_columns(ids, {"category": category}, ("category",), recent)


@pytest.mark.parametrize("recent", [1, 4, 40])  # 40: longer than most users' histories here
def test_user_counts_by_item_value_equal_a_brute_force_count_of_strictly_earlier_events(recent):
    log = _log(2500, seed=3)
    samples = samples_from_events(log, 5, item_counts=_table(log), item_values=_values(recent)).to_pydict()
    imp_col, clk_col, recent_col = user_item_count_columns("category")
    events = log.to_pydict()
    users, items = np.array(events["user_id"]), np.array(events["item_id"]).astype(int)
    ts, labels = np.array(events["timestamp"]), np.array(events["label"])
    cat = np.where(items == 7, -1, items % 4)
    checked_recent = 0
    for row in range(0, len(samples["target"]), 5):
        u, i, t = samples["user_id"][row], int(samples["target"][row]), samples["timestamp"][row]
        if i == 7:  # null value: nothing counts
            assert (samples[imp_col][row], samples[clk_col][row], samples[recent_col][row]) == (0, 0, 0)
            continue
        before = (users == u) & (ts < t)  # strictly earlier seconds: a tie never counts
        same = before & (cat == i % 4)
        assert samples[imp_col][row] == same.sum()
        assert samples[clk_col][row] == labels[same].sum()
        # the last `recent` impressions before the tie group, in the build's order (time, then item id)
        earlier = np.flatnonzero(before)
        last = earlier[np.lexsort((items[earlier].astype(str), ts[earlier]))][-recent:]
        assert samples[recent_col][row] == (cat[last] == i % 4).sum()
        checked_recent += samples[recent_col][row] > 0
    assert checked_recent > 20  # the recent count was non-zero often enough to mean something


def test_value_hashes_read_a_value_as_a_string_and_null_as_nothing():
    hashes = value_hashes(pa.array([1, None, 1]))
    assert hashes[0] == hashes[2] == value_hashes(pa.array(["1"]))[0] and hashes[1] == 0
    table = _values()
    found = table.of(hash64(pa.array(["5", "7", "not-an-item"])))[:, 0]
    assert found[0] == value_hashes(pa.array(["c1"]))[0] and found[1] == 0 and found[2] == 0
