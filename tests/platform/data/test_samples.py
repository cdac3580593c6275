"""Samples (history, target, label) and the global time split: exact histories, no leaks, Ray end to end."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqctr.platform.data.contract import DataError
from seqctr.platform.data.samples import (
    boundaries_from_sketch,
    build_and_write,
    build_fingerprint,
    build_samples,
    read_events,
    read_samples,
    samples_from_events,
    split_by_time,
)
from seqctr.platform.model.features import ItemIndex

# (user, item, timestamp, label), deliberately out of order.
HAND_LOG = [
    ("A", "i6", 5, 1),
    ("A", "i1", 1, 1),
    ("B", "x1", 2, 0),
    ("A", "i5", 3, 0),  # same second as the clicks on i3, i4: must not see them
    ("A", "i3", 3, 1),
    ("C", "c2", 4, 0),  # same second as C's only click
    ("A", "i2", 2, 0),
    ("A", "i4", 3, 1),
    ("C", "c1", 4, 1),
    ("A", "i7", 6, 0),
    ("B", "x0", 1, 0),
    ("C", "c3", 9, 0),
]
SAMPLE_COLUMNS = ["user_id", "timestamp", "history", "history_ts", "target", "label"]
EXPECTED = {  # (user, item) -> history with max_seq_len = 10
    ("A", "i1"): [],
    ("A", "i2"): ["i1"],
    ("A", "i3"): ["i1"],
    ("A", "i4"): ["i1"],
    ("A", "i5"): ["i1"],
    ("A", "i6"): ["i1", "i3", "i4"],
    ("A", "i7"): ["i1", "i3", "i4", "i6"],
    ("B", "x0"): [],  # a user without positives has empty histories
    ("B", "x1"): [],
    ("C", "c1"): [],
    ("C", "c2"): [],
    ("C", "c3"): ["c1"],
}


def _table(log: list[tuple], **extra) -> pa.Table:
    users, items, ts, labels = zip(*log, strict=True) if log else ([], [], [], [])
    columns = {
        "user_id": pa.array(list(users), type=pa.string()),
        "item_id": pa.array(list(items), type=pa.string()),
        "timestamp": pa.array(list(ts), type=pa.int64()),
        "label": pa.array(list(labels), type=pa.int8()),
    }
    return pa.table(columns | extra)


def _brute_force(log: list[tuple], max_seq_len: int) -> list[tuple]:
    """The contract, literally: earlier positives of the same user, oldest first (ties by item), last N."""
    out = []
    for user, item, ts, label in log:
        earlier = sorted((t, i) for u, i, t, lab in log if u == user and lab == 1 and t < ts)
        kept = earlier[-max_seq_len:]
        out.append((user, int(ts), item, int(label), tuple(i for _, i in kept), tuple(int(t) for t, _ in kept)))
    return sorted(out)


def _rows(table: pa.Table) -> list[tuple]:
    d = table.to_pydict()
    return sorted(
        (u, int(t), i, int(lab), tuple(h), tuple(hts))
        for u, t, i, lab, h, hts in zip(
            d["user_id"], d["timestamp"], d["target"], d["label"], d["history"], d["history_ts"], strict=True
        )
    )


def test_hand_written_log_exact_histories():
    out = samples_from_events(_table(HAND_LOG), max_seq_len=10)
    got = {
        (u, i): h
        for u, i, h in zip(*(out.column(c).to_pylist() for c in ("user_id", "target", "history")), strict=True)
    }
    assert got == EXPECTED
    assert out.column_names == SAMPLE_COLUMNS
    assert out.schema.field("history").type == pa.list_(pa.string())
    # history_ts: the click time of each history item, strictly before the event.
    when = {(u, i): t for u, i, t, _ in HAND_LOG}
    for u, _i, t, h, hts in zip(
        *(out.column(c).to_pylist() for c in ("user_id", "target", "timestamp", "history", "history_ts")), strict=True
    ):
        assert hts == [when[(u, x)] for x in h] and all(c < t for c in hts)
    # Sorted by user, then time, then item.
    assert out.column("target").to_pylist() == ["i1", "i2", "i3", "i4", "i5", "i6", "i7", "x0", "x1", "c1", "c2", "c3"]


def test_max_seq_len_keeps_the_most_recent():
    out = samples_from_events(_table(HAND_LOG), max_seq_len=2)
    got = dict(zip(out.column("target").to_pylist(), out.column("history").to_pylist(), strict=True))
    assert got["i7"] == ["i4", "i6"]
    assert got["i6"] == ["i3", "i4"]
    assert got["i2"] == ["i1"]


def test_p_true_travels_with_its_row():
    table = _table(HAND_LOG, p_true=pa.array([0.1 * i for i in range(len(HAND_LOG))]))
    out = samples_from_events(table, max_seq_len=3)
    by_target = dict(zip(out.column("target").to_pylist(), out.column("p_true").to_pylist(), strict=True))
    assert by_target["i6"] == 0.0 and by_target["c3"] == pytest.approx(1.1)


def test_empty_input():
    out = samples_from_events(_table([]), max_seq_len=3)
    assert out.num_rows == 0 and out.column_names == SAMPLE_COLUMNS


events_strategy = st.lists(
    st.tuples(st.sampled_from(["u0", "u1", "u2"]), st.sampled_from("abcde"), st.integers(0, 6), st.integers(0, 1)),
    max_size=30,
)


@settings(max_examples=15, deadline=None)
@given(log=events_strategy, max_seq_len=st.integers(1, 4))
def test_property_histories_match_brute_force(log, max_seq_len):
    out = samples_from_events(_table(log), max_seq_len)
    assert _rows(out) == _brute_force(log, max_seq_len)
    clicks = {(u, i, t) for u, i, t, lab in log if lab == 1}
    for user, ts, _target, _label, history, history_ts in _rows(out):
        for item, t in zip(history, history_ts, strict=True):  # a click of the same user strictly before
            assert t < ts and (user, item, t) in clicks


@settings(max_examples=15, deadline=None)
@given(
    ts=st.lists(st.integers(0, 50), min_size=1, max_size=60),
    train=st.floats(0.1, 0.7),
    val=st.floats(0.05, 0.25),
)
def test_property_split_never_puts_a_later_event_earlier(ts, train, val):
    values = np.array(ts, dtype=np.int64)
    t_val, t_test = boundaries_from_sketch(values, np.ones(values.size), train, val)
    split = np.where(values < t_val, 0, np.where(values < t_test, 1, 2))
    for a in range(3):
        for b in range(a + 1, 3):
            if (split == a).any() and (split == b).any():
                assert values[split == a].max() < values[split == b].min()
    if len(set(ts)) == len(ts):  # distinct timestamps: the train share is within one row of the target
        assert abs((split == 0).sum() - train * len(ts)) <= 1


def test_boundaries_reject_bad_input():
    with pytest.raises(DataError, match="empty"):
        boundaries_from_sketch(np.zeros(0, np.int64), np.zeros(0), 0.8, 0.1)
    with pytest.raises(ValueError, match="sum < 1"):
        boundaries_from_sketch(np.arange(5), np.ones(5), 0.8, 0.2)


def test_fingerprint_changes_with_params_and_files(tmp_path):
    path = tmp_path / "e.parquet"
    pq.write_table(_table(HAND_LOG), path)
    params = {"max_seq_len": 3, "train_fraction": 0.8, "val_fraction": 0.1}
    first = build_fingerprint([str(path)], [], params)
    assert build_fingerprint([str(path)], [], params) == first
    assert build_fingerprint([str(path)], [], params | {"max_seq_len": 4}) != first
    pq.write_table(_table(HAND_LOG[:-1]), path)
    assert build_fingerprint([str(path)], [], params) != first


# ------------------------------------------------------------------------------------------- Ray


def test_ray_read_events_and_build_samples_int_ids_and_timestamp_type(ray_session, tmp_path):
    users = {"A": 1, "B": 2, "C": 3}
    items = {name: 100 + k for k, name in enumerate(sorted({i for _, i, _, _ in HAND_LOG}))}
    table = pa.table(
        {
            "user_id": pa.array([users[u] for u, _, _, _ in HAND_LOG], type=pa.int64()),
            "item_id": pa.array([items[i] for _, i, _, _ in HAND_LOG], type=pa.int32()),
            "timestamp": pa.array([t * 1000 + 999 for _, _, t, _ in HAND_LOG], type=pa.timestamp("ms")),
            "label": pa.array([bool(lab) for *_, lab in HAND_LOG]),
            "extra": pa.array(["x"] * len(HAND_LOG)),
        }
    )
    pq.write_table(table, tmp_path / "events.parquet")
    events = read_events(str(tmp_path / "events.parquet"))
    samples = pa.concat_tables(
        build_samples(events, max_seq_len=10).iter_batches(batch_format="pyarrow", batch_size=None)
    )
    # Normalised: ids as strings, milliseconds floored to unix seconds, bool labels as int8.
    assert samples.schema.field("user_id").type == pa.string() and samples.schema.field("label").type == pa.int8()
    first = samples.sort_by([("user_id", "ascending"), ("timestamp", "ascending")]).slice(0, 1).to_pylist()[0]
    assert first == {
        "user_id": "1",
        "timestamp": 1,
        "history": [],
        "history_ts": [],
        "target": str(items["i1"]),
        "label": 1,
    }
    name = {str(v): k for k, v in items.items()}
    user = {str(v): k for k, v in users.items()}
    got = {
        (user[u], name[t]): [name[i] for i in h]
        for u, t, h in zip(*(samples.column(c).to_pylist() for c in ("user_id", "target", "history")), strict=True)
    }
    assert got == EXPECTED


def _random_log(seed: int, n: int = 400) -> list[tuple]:
    rng = np.random.default_rng(seed)
    return [
        (f"u{rng.integers(8)}", f"i{rng.integers(15)}", int(rng.integers(0, 120)), int(rng.random() < 0.4))
        for _ in range(n)
    ]


def test_ray_build_and_write_end_to_end(ray_session, tmp_path):
    log = _random_log(0)
    table = _table(log, p_true=pa.array(np.linspace(0, 1, len(log))), session=pa.array(np.arange(len(log))))
    (tmp_path / "events").mkdir()
    pq.write_table(table.slice(0, 150), tmp_path / "events" / "part-0.parquet")
    pq.write_table(table.slice(150), tmp_path / "events" / "part-1.parquet")
    items = pa.table({"item_id": ["i3", "zz_unused", "i1"], "text": ["three", "unused", "one"]})
    pq.write_table(items, tmp_path / "items.parquet")
    out = tmp_path / "samples"
    messages: list[str] = []

    report = build_and_write(
        str(tmp_path / "events"),
        str(out),
        5,
        0.6,
        0.2,
        items_path=str(tmp_path / "items.parquet"),
        progress=messages.append,
    )
    assert report["cached"] is False and report["events"] == len(log)
    assert sum(report["rows"].values()) == len(log) and min(report["rows"].values()) > 0
    assert abs(report["rows"]["train"] / len(log) - 0.6) < 0.05
    assert any("building samples" in m for m in messages)
    assert (out / "_SUCCESS").exists() and not list(tmp_path.glob(".samples*"))

    splits = {s: pq.read_table(out / s) for s in ("train", "val", "test")}
    assert _rows(pa.concat_tables(splits.values()).select(SAMPLE_COLUMNS)) == _brute_force(log, 5)
    assert splits["train"].column_names == [*SAMPLE_COLUMNS, "p_true"]
    t_val, t_test = report["boundaries"]["val_from"], report["boundaries"]["test_from"]
    ts = {s: np.asarray(t.column("timestamp")) for s, t in splits.items()}
    assert ts["train"].max() < t_val <= ts["val"].min() and ts["val"].max() < t_test <= ts["test"].min()
    for s, t in splits.items():
        assert t.num_rows == report["rows"][s]

    index = ItemIndex.load(str(out / "item_index.parquet"))
    event_items = sorted({i for _, i, _, _ in log} - {"i1", "i3"})
    assert index.ids == ["i1", "i3", "zz_unused", *event_items]
    assert json.loads((out / "_SUCCESS").read_text())["params"]["max_seq_len"] == 5

    again = build_and_write(
        str(tmp_path / "events"), str(out), 5, 0.6, 0.2, items_path=str(tmp_path / "items.parquet"), progress=None
    )
    assert again["cached"] is True and again["rows"] == report["rows"]

    val = read_samples(str(out), "val")
    assert val.count() == report["rows"]["val"]
    with pytest.raises(DataError, match="no _SUCCESS"):
        read_samples(str(tmp_path / "events"), "train")
    with pytest.raises(ValueError, match="split must be one of"):
        read_samples(str(out), "dev")


def test_ray_bad_log_stops_before_any_work(ray_session, tmp_path):
    pq.write_table(_table(HAND_LOG).drop_columns(["label"]), tmp_path / "e.parquet")
    with pytest.raises(DataError, match="missing column 'label'"):
        build_and_write(str(tmp_path / "e.parquet"), str(tmp_path / "out"), 5, 0.8, 0.1, progress=None)
    assert not (tmp_path / "out").exists()


def test_ray_split_by_time_no_leak(ray_session):
    import ray

    samples = samples_from_events(_table(_random_log(1, 300)), 3)
    splits = split_by_time(ray.data.from_arrow(samples).materialize(), 0.7, 0.15)
    ts = {name: np.array([r["timestamp"] for r in ds.take_all()]) for name, ds in splits.items()}
    assert sum(len(v) for v in ts.values()) == samples.num_rows
    assert ts["train"].max() < ts["val"].min() and ts["val"].max() < ts["test"].min()
    assert abs(len(ts["train"]) / samples.num_rows - 0.7) < 0.05


def test_plan_reads_keeps_row_groups_whole_and_finds_p_true(tmp_path):
    from seqctr.platform.data.samples import _plan_reads

    log = _random_log(2, 100)
    pq.write_table(_table(log), tmp_path / "a.parquet", row_group_size=30)  # 4 row groups: 30, 30, 30, 10
    pq.write_table(_table(log[:20]), tmp_path / "b.parquet")
    files = [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    units, columns = _plan_reads(files, rows_per_unit=50)
    assert units == [[(files[0], [0, 1])], [(files[0], [2, 3]), (files[1], [0])]]
    assert "p_true" not in columns
    pq.write_table(_table(log, p_true=pa.array(np.zeros(len(log)))), tmp_path / "a.parquet")
    assert _plan_reads(files, 50)[1] == ["user_id", "item_id", "timestamp", "label"]  # b has none
    assert "p_true" in _plan_reads(files[:1], 50)[1]


def test_build_progress_counts_rate_and_eta_with_the_shared_progress_lines():
    from seqctr.platform.data.samples import Progress  # the build's: platform/progress.py, as embed's

    lines: list[str] = []
    progress = Progress(lines.append, "read", total=1000, unit="events", every_s=0.0)
    progress.advance(0)  # nothing done yet: the ETA is unknown, not infinite
    progress.advance(250)
    progress.advance(750)  # done: no line (the stage's own summary follows)
    assert len(lines) == 2 and lines[0].endswith("ETA ?") and lines[1].startswith("read: 250/1,000 events (25%), ")
    assert "events/s, ETA" in lines[1]


def test_ray_build_over_many_read_and_partition_tasks_is_exact(ray_session, tmp_path, monkeypatch):
    """Small tasks force every user's events to cross files, row groups and read tasks."""
    from seqctr.platform.data import samples as samples_module

    monkeypatch.setattr(samples_module, "ROWS_PER_READ", 70)
    monkeypatch.setattr(samples_module, "ROWS_PER_PARTITION", 60)
    log = _random_log(3, 500)
    (tmp_path / "events").mkdir()
    pq.write_table(_table(log[:320]), tmp_path / "events" / "a.parquet", row_group_size=40)
    pq.write_table(_table(log[320:]), tmp_path / "events" / "b.parquet", row_group_size=25)
    messages: list[str] = []
    report = build_and_write(str(tmp_path / "events"), str(tmp_path / "out"), 4, 0.7, 0.15, progress=messages.append)
    assert any("in 7 task(s) into 9 partition(s)" in m for m in messages)
    splits = {s: pq.read_table(tmp_path / "out" / s) for s in ("train", "val", "test")}
    assert _rows(pa.concat_tables(splits.values())) == _brute_force(log, 4)
    assert {s: t.num_rows for s, t in splits.items()} == report["rows"]
    assert report["bytes_written"] == sum(f.stat().st_size for f in (tmp_path / "out").glob("*/part-*.parquet"))
    for file in (tmp_path / "out").glob("*/part-*.parquet"):  # each file is sorted by user, then time
        t = pq.read_table(file)
        keys = list(zip(t.column("user_id").to_pylist(), t.column("timestamp").to_pylist(), strict=True))
        assert keys == sorted(keys)


def test_ray_build_reads_and_writes_s3_directly(ray_session, s3_root, tmp_path):
    """Read tasks read the log from the store and the write tasks write the splits there: no local copy."""
    from seqctr.platform.storage import filesystem_for

    log = _random_log(4, 300)
    fs, bucket = filesystem_for(s3_root)
    pq.write_table(_table(log), f"{bucket}/logs/events/part-0.parquet", filesystem=fs)
    out = f"{s3_root}/samples"
    report = build_and_write(f"{s3_root}/logs/events", out, 3, 0.6, 0.2, progress=None)
    assert report["paths"]["train"] == f"{out}/train"
    splits = [pq.read_table(f"{bucket}/samples/{s}", filesystem=fs) for s in ("train", "val", "test")]
    assert _rows(pa.concat_tables(splits)) == _brute_force(log, 3)
    assert fs.get_file_info(f"{bucket}/samples/_SUCCESS").size > 0
    assert read_samples(out, "test").count() == report["rows"]["test"]
    assert not list(tmp_path.iterdir())
