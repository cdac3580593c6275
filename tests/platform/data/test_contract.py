"""Validation of behaviour logs and item tables: every contract breach is a DataError naming file + column."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqctr.platform.data.contract import DataError, list_parquet_files, validate_events, validate_items


def _events(**overrides) -> pa.Table:
    columns = {
        "user_id": pa.array(["u1", "u1", "u2", "u2"]),
        "item_id": pa.array(["i1", "i2", "i1", "i3"]),
        "timestamp": pa.array([100, 200, 150, 160], type=pa.int64()),
        "label": pa.array([1, 0, 0, 1], type=pa.int8()),
    }
    columns.update(overrides)
    return pa.table({k: v for k, v in columns.items() if v is not None})


def _write(tmp_path: Path, table: pa.Table, name: str = "events.parquet", **kwargs) -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, **kwargs)
    return str(path)


def _fails(path: str, *patterns: str, items: bool = False) -> None:
    with pytest.raises(DataError) as info:
        (validate_items if items else validate_events)(path)
    message = str(info.value)
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in {message!r}"


def test_valid_log_summary(tmp_path):
    path = _write(tmp_path, _events(extra=pa.array(["x"] * 4)))
    summary = validate_events(path)
    assert summary["rows"] == 4 and summary["files"] == 1
    assert summary["min_timestamp"] == 100 and summary["max_timestamp"] == 200
    assert summary["schema"]["user_id"] == "string"


def test_accepted_types(tmp_path):
    table = _events(
        user_id=pa.array([1, 1, 2, 2], type=pa.int64()),
        item_id=pa.array([10, 20, 10, 30], type=pa.int32()),
        timestamp=pa.array([100_000, 200_000, 150_000, 160_000], type=pa.timestamp("ms")),
        label=pa.array([True, False, False, True]),
    )
    assert validate_events(_write(tmp_path, table))["min_timestamp"] == 100
    floats = _events(label=pa.array([1.0, 0.0, 0.0, 1.0]), user_id=pa.array(["a", "b", "c", "d"]).dictionary_encode())
    assert validate_events(_write(tmp_path, floats, "floats.parquet"))["rows"] == 4


def test_folder_recursive_skips_hidden(tmp_path):
    _write(tmp_path, _events(), "log/day=1/a.parquet")
    _write(tmp_path, _events(), "log/day=2/b.parquet")
    _write(tmp_path, _events(label=pa.array([7, 7, 7, 7], type=pa.int8())), "log/_tmp/bad.parquet")
    _write(tmp_path, _events(label=pa.array([7, 7, 7, 7], type=pa.int8())), "log/.hidden.parquet")
    (tmp_path / "log" / "_SUCCESS").write_text("")
    files = list_parquet_files(str(tmp_path / "log"))
    assert [Path(f).name for f in files] == ["a.parquet", "b.parquet"]
    assert validate_events(str(tmp_path / "log"))["rows"] == 8


def test_uri_paths(tmp_path):
    path = _write(tmp_path, _events())
    assert list_parquet_files(f"file://{tmp_path}") == [f"file://{path}"]
    assert validate_events(f"file://{path}")["rows"] == 4


def test_missing_path_and_empty_folder(tmp_path):
    _fails(str(tmp_path / "nope"), "nope: no such file or folder")
    (tmp_path / "empty").mkdir()
    _fails(str(tmp_path / "empty"), "empty: empty dataset")


def test_not_parquet(tmp_path):
    path = tmp_path / "events.parquet"
    path.write_text("user_id,item_id\nu1,i1\n")
    _fails(str(path), re.escape(str(path)), "not a Parquet file")


def test_truncated_parquet(tmp_path):
    path = _write(tmp_path, _events())
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    _fails(path, re.escape(path), "truncated")


def test_missing_column(tmp_path):
    path = _write(tmp_path, _events(label=None))
    _fails(path, re.escape(path), "missing column 'label'")


def test_wrong_types(tmp_path):
    path = _write(tmp_path, _events(timestamp=pa.array(["100", "200", "150", "160"])), "a.parquet")
    _fails(path, re.escape(path), "column 'timestamp' has type string", "int64 unix seconds")
    path = _write(tmp_path, _events(timestamp=pa.array([1.5, 2.0, float("nan"), 3.0])), "b.parquet")
    _fails(path, "column 'timestamp' has type double")
    path = _write(tmp_path, _events(user_id=pa.array([1.0, 2.0, 3.0, 4.0])), "c.parquet")
    _fails(path, "column 'user_id' has type double, expected string or integer")
    path = _write(tmp_path, _events(label=pa.array(["1", "0", "0", "1"])), "d.parquet")
    _fails(path, "column 'label' has type string")


def test_types_must_agree_across_files(tmp_path):
    first = _write(tmp_path, _events(), "log/a.parquet")
    second = _write(tmp_path, _events(user_id=pa.array([1, 2, 3, 4])), "log/b.parquet")
    _fails(str(tmp_path / "log"), re.escape(second), "column 'user_id' has type int64 but", re.escape(first))


def test_null_ids(tmp_path):
    path = _write(tmp_path, _events(user_id=pa.array(["u1", "u1", None, "u2"])))
    _fails(path, re.escape(path), "column 'user_id': null id at row 2")
    path = _write(tmp_path, _events(item_id=pa.array(["i1", None, "i1", "i3"])), "b.parquet")
    _fails(path, "column 'item_id': null id at row 1")


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        (pa.array([1, 0, 2, 1], type=pa.int8()), "label 2 at row 2, labels must be 0 or 1"),
        (pa.array([1, -1, 0, 1], type=pa.int64()), "label -1 at row 1"),
        (pa.array([1.0, 0.0, float("nan"), 1.0]), "NaN label at row 2"),
        (pa.array([1.0, 0.5, 0.0, 1.0]), "label 0.5 at row 1"),
        (pa.array([1, None, 0, 1], type=pa.int8()), "null label at row 1"),
    ],
)
def test_bad_labels(tmp_path, label, expected):
    path = _write(tmp_path, _events(label=label))
    _fails(path, re.escape(path), "column 'label'", re.escape(expected))


def test_bad_timestamps(tmp_path):
    path = _write(tmp_path, _events(timestamp=pa.array([100, -5, 150, 160])))
    _fails(path, re.escape(path), "column 'timestamp': negative timestamp -5 at row 1")
    path = _write(tmp_path, _events(timestamp=pa.array([100, 200, None, 160])), "b.parquet")
    _fails(path, "column 'timestamp': null timestamp at row 2")
    ms = pa.array([100, -2000, 150, 160], type=pa.timestamp("ms"))
    _fails(_write(tmp_path, _events(timestamp=ms), "c.parquet"), "column 'timestamp': negative timestamp")


def test_empty_dataset(tmp_path):
    path = _write(tmp_path, _events().slice(0, 0))
    _fails(path, re.escape(path), "empty dataset: 0 rows")


def test_row_index_counts_across_row_groups_and_without_statistics(tmp_path):
    labels = pa.array([0, 1] * 5 + [3] + [0] * 3, type=pa.int8())
    table = pa.table(
        {
            "user_id": pa.array([f"u{i}" for i in range(14)]),
            "item_id": pa.array(["i"] * 14),
            "timestamp": pa.array(range(14), type=pa.int64()),
            "label": labels,
        }
    )
    path = _write(tmp_path, table, row_group_size=4)
    _fails(path, "label 3 at row 10")
    path = _write(tmp_path, table, "nostats.parquet", row_group_size=4, write_statistics=False)
    _fails(path, "label 3 at row 10")


def test_items(tmp_path):
    good = pa.table({"item_id": ["a", "b"], "text": ["red shoe", "blue hat"], "category": [None, "hats"]})
    summary = validate_items(_write(tmp_path, good, "items.parquet"))
    assert summary["rows"] == 2 and summary["optional_columns"] == ["category"]
    no_category = pa.table({"item_id": [1, 2], "text": ["x", "y"]})
    assert validate_items(_write(tmp_path, no_category, "items2.parquet"))["optional_columns"] == []


def test_bad_items(tmp_path):
    path = _write(tmp_path, pa.table({"item_id": ["a", "b", "c"], "text": ["ok", "  ", "z"]}), "a.parquet")
    _fails(path, re.escape(path), "column 'text': empty text at row 1", items=True)
    path = _write(tmp_path, pa.table({"item_id": ["a", "b"], "text": ["ok", None]}), "b.parquet")
    _fails(path, "column 'text': null text at row 1", items=True)
    path = _write(tmp_path, pa.table({"item_id": ["a", None], "text": ["ok", "x"]}), "c.parquet")
    _fails(path, "column 'item_id': null id at row 1", items=True)
    path = _write(tmp_path, pa.table({"item_id": ["a"], "title": ["ok"]}), "d.parquet")
    _fails(path, "missing column 'text'", items=True)
    path = _write(tmp_path, pa.table({"item_id": ["a"], "text": [3]}), "e.parquet")
    _fails(path, "column 'text' has type int64, expected string", items=True)


def test_an_item_id_repeated_in_another_file_names_both_files(tmp_path):
    folder = tmp_path / "items"
    folder.mkdir()
    pq.write_table(pa.table({"item_id": [1, 2], "text": ["a", "b"]}), folder / "part-0.parquet")
    pq.write_table(pa.table({"item_id": [3, 2], "text": ["c", "d"]}), folder / "part-1.parquet")
    first, second = folder / "part-0.parquet", folder / "part-1.parquet"
    expect = f"{second}: column 'item_id': duplicate id '2' at row 1 (first seen in {first})"
    with pytest.raises(DataError, match=re.escape(expect)):
        validate_items(str(folder))
    pq.write_table(pa.table({"item_id": [3, 4], "text": ["c", "d"]}), second)
    assert validate_items(str(folder))["rows"] == 4
