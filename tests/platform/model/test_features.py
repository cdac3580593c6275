"""Item index, stable hashing and the batch encoder (plain numpy/pyarrow, no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from seqctr.platform.model.features import UNKNOWN, ItemIndex, age_buckets, encode_samples, hash_buckets


def test_item_index_rows_unknown_and_padding():
    index = ItemIndex.from_ids(["i1", "i2", "i3", "i2"])
    assert index.ids == ["i1", "i2", "i3"]
    assert len(index) == 5  # padding + unknown + 3 items
    np.testing.assert_array_equal(index.lookup(["i3", "i1", "nope", None, "i2"]), [4, 2, 1, 1, 3])
    assert index.lookup(pa.chunked_array([["i2"], ["zz", "i1"]])).tolist() == [3, 1, 2]
    assert index.lookup([]).tolist() == []
    assert "i1" in index and "nope" not in index


def test_integer_ids_are_looked_up_as_strings():
    index = ItemIndex.from_ids([10, 20])
    assert index.ids == ["10", "20"]
    assert index.lookup(pa.array([20, 30, 10])).tolist() == [3, 1, 2]


def test_item_index_round_trip(tmp_path):
    index = ItemIndex.from_ids(["b", "a", "ü-ñ", "c d"])
    path = tmp_path / "sub" / "item_index.json"
    index.save(str(path))
    loaded = ItemIndex.load(str(path))
    assert loaded == index
    assert loaded.ids == ["b", "a", "ü-ñ", "c d"]
    assert loaded.fingerprint() == index.fingerprint()
    assert loaded.lookup(["ü-ñ", "a"]).tolist() == [4, 3]
    payload = json.loads(path.read_text())
    assert payload["format"] == "seqctr.item_index/v1" and payload["ids"] == loaded.ids


def test_item_index_load_rejects_edited_file(tmp_path):
    path = tmp_path / "item_index.json"
    ItemIndex.from_ids(["a", "b"]).save(str(path))
    payload = json.loads(path.read_text())
    payload["ids"] = ["b", "a"]
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="fingerprint mismatch"):
        ItemIndex.load(str(path))
    path.write_text("not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ItemIndex.load(str(path))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        ItemIndex.load(str(tmp_path / "missing.json"))


def test_extend_keeps_known_rows_and_appends_new_ones():
    old = ItemIndex.from_ids(["a", "b", "c"])
    new = old.extend(["d", "b", "e", "d"])
    assert new.ids == ["a", "b", "c", "d", "e"]
    assert new.lookup(["a", "b", "c"]).tolist() == old.lookup(["a", "b", "c"]).tolist() == [2, 3, 4]
    assert new.lookup(["d", "e"]).tolist() == [5, 6]
    assert old.ids == ["a", "b", "c"]  # extend returns a new index
    assert new.fingerprint() != old.fingerprint()


def test_hash_buckets_are_stable_hard_coded_values():
    # blake2b-based: these exact values must never change (they index trained embeddings).
    assert hash_buckets(["a", "b", "item_1", "", "é"], 1000).tolist() == [78, 882, 564, 520, 415]
    assert hash_buckets([7, 42], 2**20).tolist() == [445706, 625609]
    assert hash_buckets(["x"], 2).tolist() == [1]
    assert hash_buckets(pa.array(["a", None]), 1000).tolist() == [78, 0]


def test_hash_buckets_range_and_errors():
    values = hash_buckets([f"item_{i}" for i in range(5000)], 17)
    assert values.min() == 1 and values.max() == 16
    assert len(np.unique(values)) == 16
    with pytest.raises(ValueError, match="num_buckets must be >= 2"):
        hash_buckets(["a"], 1)


def test_cached_buckets_match_hashing():
    index = ItemIndex.from_ids(["a", "b", "item_1"])
    table = index.buckets(1000)
    assert table.tolist() == [0, 0, 78, 882, 564]
    assert index.buckets(1000) is table  # cached per num_buckets


def _hand_batch() -> pa.Table:
    return pa.table(
        {
            "history": pa.array([["a", "b", "c", "zz"], [], None, ["b"]], type=pa.list_(pa.string())),
            "target": ["c", "a", "new", "b"],
            "label": pa.array([1, 0, 1, 0], type=pa.int8()),
        }
    )


def test_encode_samples_exact_arrays():
    index = ItemIndex.from_ids(["a", "b", "c"])  # rows a=2, b=3, c=4
    out = encode_samples(_hand_batch(), index, num_buckets=1000, max_seq_len=3)
    zz = int(hash_buckets(["zz"], 1000)[0])
    new = int(hash_buckets(["new"], 1000)[0])
    # Row 0 keeps the most recent 3 of 4 (b, c, zz); zz is unknown -> row 1, its own hash bucket.
    np.testing.assert_array_equal(out["hist_idx"], [[3, 4, 1], [0, 0, 0], [0, 0, 0], [3, 0, 0]])
    c = int(hash_buckets(["c"], 1000)[0])
    np.testing.assert_array_equal(out["hist_bucket"], [[882, c, zz], [0, 0, 0], [0, 0, 0], [882, 0, 0]])
    np.testing.assert_array_equal(out["hist_len"], [3, 0, 0, 1])
    np.testing.assert_array_equal(out["target_idx"], [4, 2, 1, 3])
    np.testing.assert_array_equal(out["target_bucket"], [c, 78, new, 882])
    np.testing.assert_array_equal(out["label"], np.array([1, 0, 1, 0], dtype=np.float32))
    assert out["label"].dtype == np.float32
    assert all(out[k].dtype == np.int64 for k in ("hist_idx", "hist_bucket", "hist_len", "target_idx"))
    assert out["hist_idx"].shape == (4, 3)


def test_encode_samples_slices_chunks_and_dicts_agree():
    index = ItemIndex.from_ids(["a", "b", "c"])
    table = _hand_batch()
    full = encode_samples(table, index, 1000, 3)
    chunked = pa.concat_tables([table.slice(0, 1), table.slice(1, 3)])
    sliced = encode_samples(table.slice(2, 2), index, 1000, 3)
    # Ray's numpy batch format: an object array of per-row arrays.
    histories = np.empty(table.num_rows, dtype=object)
    for i, h in enumerate(table.column("history").to_pylist()):
        histories[i] = np.array(h or [], dtype=object)
    targets = np.array(table.column("target").to_pylist(), dtype=object)
    as_dict = encode_samples({"history": histories, "target": targets}, index, 1000, 3)
    for key in ("hist_idx", "hist_bucket", "hist_len", "target_idx", "target_bucket"):
        np.testing.assert_array_equal(encode_samples(chunked, index, 1000, 3)[key], full[key])
        np.testing.assert_array_equal(sliced[key], full[key][2:])
        np.testing.assert_array_equal(as_dict[key], full[key])
    assert "label" not in as_dict  # serving batches carry no label


def test_age_buckets_are_log2_seconds_capped_and_clock_skew_safe():
    ages = np.array([0, 1, 2, 3, 15, 450, 1800, 86_400, -5, 10**12])
    np.testing.assert_array_equal(age_buckets(ages), [2, 3, 3, 4, 6, 10, 12, 18, 2, 26])


def test_encode_samples_click_ages_follow_the_kept_items():
    index = ItemIndex.from_ids(["a", "b", "c"])
    table = (
        _hand_batch()
        .append_column("history_ts", pa.array([[10, 900, 990, 999], [], None, [0]], type=pa.list_(pa.int64())))
        .append_column("timestamp", pa.array([1000, 1000, 1000, 1000], type=pa.int64()))
    )
    out = encode_samples(table, index, 1000, max_seq_len=3)
    # Row 0 keeps b, c, zz clicked 100, 10 and 1 s before the event; row 3's click is 1000 s old.
    np.testing.assert_array_equal(out["hist_age"], [[8, 5, 3], [0, 0, 0], [0, 0, 0], [11, 0, 0]])
    np.testing.assert_array_equal(out["hist_age"][2:], encode_samples(table.slice(2), index, 1000, 3)["hist_age"])
    blind = encode_samples(_hand_batch(), index, 1000, 3)["hist_age"]  # no timestamps: unknown ages
    np.testing.assert_array_equal(blind, np.where(out["hist_idx"] > 0, UNKNOWN, 0))
    bad = table.set_column(3, "history_ts", pa.array([[1, 2], [], None, [0]], type=pa.list_(pa.int64())))
    with pytest.raises(ValueError, match="row 0: 'history_ts' must have one timestamp per 'history' item"):
        encode_samples(bad, index, 1000, 3)


def test_encode_samples_requires_columns():
    with pytest.raises(ValueError, match="'history' and 'target'"):
        encode_samples(pa.table({"target": ["a"]}), ItemIndex.from_ids(["a"]), 10, 3)
