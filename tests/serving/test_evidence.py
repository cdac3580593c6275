"""`seqctr evaluate --impressions`: the impression log joined with later clicks gives the exact per-variant
metrics of a log whose clicks are known (expected values worked out by hand and by brute-force pairs)."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from seqctr.cli.main import app
from seqctr.platform import storage
from seqctr.platform.data.contract import DataError
from seqctr.serving import evidence
from seqctr.serving.impressions import SCHEMA, ImpressionLog

S = 1000  # ms per second


def imp(request_id, user, at_ms, variant, role, items, scores, version="v1"):
    return [
        {
            "request_id": request_id,
            "user_id": user,
            "logged_at": at_ms,
            "variant": variant,
            "version": version,
            "role": role,
            "item_id": item,
            "position": i,
            "score": score,
        }
        for i, (item, score) in enumerate(zip(items, scores, strict=True))
    ]


# Requests (times in ms) and what each candidate's label must be under the rule (see evidence's doc):
IMPRESSIONS = [
    # r1: u1 at 1000.2 s. a: event at 1000 s (same second) -> 1; b: its only event is earlier -> 0;
    #     c: first event at 4600 s = exactly +1h -> 1 with a 1h window, 0 with 3599 s.
    *imp("r1", "u1", 1000 * S + 200, "champion", "served", ["a", "b", "c"], [0.9, 0.5, 0.2]),
    # The shadow logs 1.3 s later, but labels come from the request's time: the same labels as served.
    *imp("r1", "u1", 1001 * S + 500, "shadow", "shadow", ["a", "b", "c"], [0.1, 0.6, 0.3], "v0"),
    # r2: u2. a: first later event is a non-click (a click comes after it) -> 0; b: click -> 1.
    *imp("r2", "u2", 2000 * S, "challenger", "served", ["a", "b"], [0.7, 0.4], "v2"),
    # r3: u1 again. d: a non-click and a click at the same second -> 1; a: the click at 1000 s is earlier -> 0.
    *imp("r3", "u1", 3000 * S, "champion", "served", ["d", "a"], [0.8, 0.3]),
    # r4: no user id: left out (no_user).
    *imp("r4", None, 3500 * S, "champion", "served", ["a"], [0.99]),
    # r5: u3. e: click -> 1; f: no event at all -> a non-click.
    *imp("r5", "u3", 4000 * S, "challenger", "served", ["e", "f"], [0.6, 0.2], "v2"),
    *imp("r5", "u3", 4000 * S + 10, "shadow", "shadow", ["e", "f"], [0.5, 0.5], "v0"),
]
EVENTS = [  # (user_id, item_id, unix seconds, label)
    ("u1", "a", 1000, 1),
    ("u1", "b", 999, 1),
    ("u1", "c", 4600, 1),
    ("u2", "a", 2001, 0),
    ("u2", "a", 2002, 1),
    ("u2", "b", 2500, 1),
    ("u1", "d", 3000, 0),
    ("u1", "d", 3000, 1),
    ("u3", "e", 4100, 1),
    ("u9", "f", 4001, 1),  # another user's click on f: never joined to u3
]
LABELS = {  # (request, variant) -> labels in candidate order, with the 1h window
    ("r1", "champion"): [1, 0, 1],
    ("r1", "shadow"): [1, 0, 1],
    ("r2", "challenger"): [0, 1],
    ("r3", "champion"): [1, 0],
    ("r5", "challenger"): [1, 0],
    ("r5", "shadow"): [1, 0],
}


def write_impressions(root, rows, files: int = 2) -> str:
    """The rows as `files` Parquet parts of SCHEMA, as ImpressionLog writes them."""
    storage_root = str(root)
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    step = math.ceil(len(table) / files)
    for k in range(files):
        part = table.slice(k * step, step)
        sink = pa.BufferOutputStream()
        pq.write_table(part, sink)
        storage.atomic_write_bytes(storage.join(storage_root, f"part-{k:03d}.parquet"), sink.getvalue().to_pybytes())
    return storage_root


def write_events(path, events, timestamp_type=pa.int64()) -> str:
    users, items, ts, labels = zip(*events, strict=True)
    table = pa.table(
        {
            "user_id": pa.array(users),
            "item_id": pa.array(items),
            "timestamp": pa.array(ts, pa.int64()).cast(timestamp_type),
            "label": pa.array(labels, pa.int64()),
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.atomic_write_bytes(str(path), sink.getvalue().to_pybytes())
    return str(path)


def pair_auc(labels, scores) -> float:
    """Brute force: the share of (positive, negative) pairs ordered right, ties 1/2."""
    pos = [s for y, s in zip(labels, scores, strict=True) if y == 1]
    neg = [s for y, s in zip(labels, scores, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def by_group(report) -> dict[tuple[str, str], dict]:
    return {(row["role"], row["variant"]): row for row in report["variants"]}


@pytest.fixture
def logs(tmp_path) -> tuple[str, str]:
    return write_impressions(tmp_path / "impressions", IMPRESSIONS), write_events(tmp_path / "events.parquet", EVENTS)


def test_join_labels_every_impression_by_the_rule(logs):
    imp, ev = evidence.read_impressions(logs[0]), evidence.read_events(logs[1])
    joined = evidence.join(imp, ev[0], 3600.0, ev[1]).to_pylist()
    got: dict[tuple[str, str], list[int]] = {}
    for row in sorted(joined, key=lambda r: (r["request_id"], r["variant"])):
        if row["user_id"] is not None:
            got.setdefault((row["request_id"], row["variant"]), []).append(row["label"])
    assert got == LABELS
    r1 = [row for row in joined if row["request_id"] == "r1"]
    assert {row["request_ms"] for row in r1} == {1000 * S + 200}  # the shadow row takes the request's time
    f = next(row for row in joined if row["item_id"] == "f" and row["role"] == "served")
    assert (f["label"], f["matched"]) == (0, False)  # no later event: a non-click, and reported unmatched


def test_per_variant_metrics_are_exact(logs):
    report = evidence.evaluate_impressions(*logs, window="1h")
    groups = by_group(report)
    assert list(groups) == [("served", "challenger"), ("served", "champion"), ("shadow", "shadow")]

    champion = groups["served", "champion"]
    y, p = [1, 0, 1, 1, 0], [0.9, 0.5, 0.2, 0.8, 0.3]
    assert champion["auc"] == pytest.approx(pair_auc(y, p)) == pytest.approx(4 / 6)
    assert champion["gauc"] == pytest.approx(4 / 6)  # one user (u1): GAUC = that user's AUC
    expected_logloss = -np.mean([math.log(0.9), math.log(0.5), math.log(0.2), math.log(0.8), math.log(0.7)])
    assert champion["logloss"] == pytest.approx(expected_logloss, rel=1e-6)  # float32 scores
    assert (champion["rows"], champion["requests"], champion["users"], champion["clicks"]) == (5, 2, 1, 3)
    assert (champion["no_user"], champion["matched"], champion["versions"]) == (1, 3, ["v1"])
    assert champion["ctr"] == pytest.approx(3 / 5)

    challenger = groups["served", "challenger"]
    assert challenger["auc"] == pytest.approx(pair_auc([0, 1, 1, 0], [0.7, 0.4, 0.6, 0.2])) == pytest.approx(0.5)
    assert challenger["gauc"] == pytest.approx((0.0 * 2 + 1.0 * 2) / 4)  # u2: 0, u3: 1, two rows each
    assert (challenger["rows"], challenger["users"], challenger["clicks"], challenger["versions"]) == (4, 2, 2, ["v2"])

    shadow = groups["shadow", "shadow"]  # scored apart from the served rows of the same requests
    y, p = [1, 0, 1, 1, 0], [0.1, 0.6, 0.3, 0.5, 0.5]
    assert shadow["auc"] == pytest.approx(pair_auc(y, p)) == pytest.approx(0.5 / 6)
    assert shadow["gauc"] == pytest.approx((0.0 * 3 + 0.5 * 2) / 5)  # u1: 0 over 3 rows; u3: a tie, 1/2
    expected_logloss = -np.mean([math.log(0.1), math.log(0.4), math.log(0.3), math.log(0.5), math.log(0.5)])
    assert shadow["logloss"] == pytest.approx(expected_logloss, rel=1e-6)
    assert (shadow["rows"], shadow["requests"], shadow["clicks"], shadow["no_user"]) == (5, 2, 3, 0)


@pytest.mark.parametrize(
    ("window", "c_label"),
    [("1h", 1), ("3600", 1), ("3600s", 1), ("60m", 1), ("3599s", 0), ("0", 0)],
)
def test_the_window_is_inclusive_at_its_end(logs, window, c_label):
    imp, (ev, resolution) = evidence.read_impressions(logs[0]), evidence.read_events(logs[1])
    joined = evidence.join(imp, ev, evidence.parse_window(window), resolution).to_pylist()
    c = {row["role"]: row["label"] for row in joined if row["item_id"] == "c"}
    a = next(row["label"] for row in joined if row["request_id"] == "r1" and row["item_id"] == "a")
    assert c == {"served": c_label, "shadow": c_label}
    assert a == 1  # same second as the request: inside even a zero window


def test_event_before_the_request_never_labels_it():
    at = np.array([10_500], dtype=np.int64)  # 10.5 s
    users, items = pa.array(["u"]), pa.array(["i"])
    for event_s, expected in ((9, 0), (10, 1), (11, 1), (12, 0)):
        labels, _ = evidence.join_labels(
            users, items, at, users, items, np.array([event_s * S]), np.array([1], np.int8), 1.0
        )
        assert labels.tolist() == [expected], event_s  # [10 s, 10 s + 1 s] at the events' 1 s resolution


def test_millisecond_timestamps_compare_in_milliseconds(tmp_path, logs):
    # The same events as Parquet ms timestamps: u1/a at exactly 1000.000 s is now before r1 (1000.200 s).
    ev = write_events(tmp_path / "ms.parquet", EVENTS, pa.timestamp("ms"))
    imp, (events, resolution) = evidence.read_impressions(logs[0]), evidence.read_events(ev)
    assert resolution == 1
    joined = evidence.join(imp, events, 3600.0, resolution).to_pylist()
    a = next(row["label"] for row in joined if row["request_id"] == "r1" and row["item_id"] == "a")
    assert a == 0


def test_integer_ids_in_the_events_join_string_ids_in_the_log(tmp_path):
    rows = imp("r1", "7", 100 * S, "champion", "served", ["42", "43"], [0.8, 0.1])
    root = write_impressions(tmp_path / "imp", rows, files=1)
    events = tmp_path / "ev.parquet"
    pq.write_table(pa.table({"user_id": [7], "item_id": [42], "timestamp": [101], "label": [1]}), events)
    [row] = evidence.evaluate_impressions(root, str(events))["variants"]
    assert (row["clicks"], row["matched"], row["auc"]) == (1, 1, 1.0)


def test_join_is_vectorised_over_many_impressions():
    rng = np.random.default_rng(0)
    n = 200_000
    users = pa.array(rng.integers(0, 5000, n).astype(str))
    items = pa.array(rng.integers(0, 300, n).astype(str))
    at = rng.integers(0, 10**9, n).astype(np.int64)
    delay_s = rng.integers(0, 7200, n)
    labels, matched = evidence.join_labels(
        users, items, at, users, items, at // S * S + delay_s * S, np.ones(n, np.int8), 3600.0
    )
    # Each impression's own click is the one at its delay unless an earlier same-key event came first.
    own = delay_s <= 3600
    assert labels[own].all()
    assert matched.sum() >= own.sum()


def test_cli_prints_the_table_and_json(logs):
    runner = CliRunner()
    table = runner.invoke(app, ["evaluate", "--impressions", logs[0], "--events", logs[1], "--window", "1h"])
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split() == [
        "role", "variant", "versions", "rows", "requests", "users", "clicks", "ctr", "auc", "gauc", "logloss"
    ]  # fmt: skip
    assert lines[2].split()[:7] == ["served", "champion", "v1", "5", "2", "1", "3"]
    assert "1 rows without user_id left out" in table.output
    out = runner.invoke(app, ["evaluate", "--impressions", logs[0], "--events", logs[1], "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert by_group(report)["served", "champion"]["auc"] == pytest.approx(4 / 6)
    assert report["window_s"] == 3600.0


def test_cli_errors_name_the_file_column_and_flag(tmp_path, logs):
    runner = CliRunner()
    missing = runner.invoke(app, ["evaluate", "--impressions", str(tmp_path / "nope"), "--events", logs[1]])
    assert missing.exit_code == 2 and "nope: no such file or folder" in missing.output
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"user_id": ["u"], "item_id": ["i"], "ts": [1], "label": [1]}), bad)
    column = runner.invoke(app, ["evaluate", "--impressions", logs[0], "--events", str(bad)])
    assert column.exit_code == 2 and "bad.parquet: missing column 'timestamp'" in column.output
    window = runner.invoke(app, ["evaluate", "--impressions", logs[0], "--events", logs[1], "--window", "soon"])
    assert window.exit_code == 2 and "--window 'soon'" in window.output
    no_events = runner.invoke(app, ["evaluate", "--impressions", logs[0]])
    assert no_events.exit_code == 2 and "--impressions needs --events" in no_events.output
    neither = runner.invoke(app, ["evaluate"])
    assert neither.exit_code == 2 and "--checkpoint" in neither.output


def test_impression_log_on_s3_round_trips_through_the_join(s3_root):
    root = s3_root + "/impressions"
    log = ImpressionLog(root, flush_rows=3, flush_s=3600, max_rows=100)
    log.add("q1", "u1", "champion", "v1", "served", ["a", "b", "c"], [0.9, 0.2, 0.4])
    log.add("q1", "u1", "shadow", "v0", "shadow", ["a", "b", "c"], [0.3, 0.8, 0.1])
    log.add("q2", "u2", "challenger", "v2", "served", ["a", "b"], [0.4, 0.5])
    log.close()
    assert log.stats()["files"] == 3
    written = evidence.read_impressions(root)
    base = int(written.column("logged_at").to_numpy().min()) // S + 1  # events one second later
    events = write_events(
        s3_root + "/clicks/events.parquet", [("u1", "a", base, 1), ("u1", "b", base, 0), ("u2", "b", base + 5, 1)]
    )
    groups = by_group(evidence.evaluate_impressions(root, events, "1m"))
    assert groups["served", "champion"]["auc"] == pytest.approx(pair_auc([1, 0, 0], [0.9, 0.2, 0.4])) == 1.0
    assert groups["shadow", "shadow"]["auc"] == pytest.approx(pair_auc([1, 0, 0], [0.3, 0.8, 0.1])) == 0.5
    assert groups["served", "challenger"]["auc"] == 1.0
    assert groups["served", "challenger"]["clicks"] == 1


def test_bad_impression_log_values_are_data_errors(tmp_path):
    rows = imp("r1", "u1", 1, "champion", "served", ["a"], [1.5])
    root = write_impressions(tmp_path / "imp", rows, files=1)
    with pytest.raises(DataError, match="column 'score' must be a probability"):
        evidence.read_impressions(root)
    pq.write_table(pa.table({"request_id": ["r"]}), tmp_path / "imp" / "part-000.parquet")
    with pytest.raises(DataError, match="missing column 'user_id'"):
        evidence.read_impressions(root)
