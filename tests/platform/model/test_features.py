"""Item index, stable hashing and the batch encoder (plain numpy/pyarrow, no Ray)."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from seqctr.platform.model import features
from seqctr.platform.model.features import (
    HASH_BLAKE2B,
    HASH_H64,
    UNKNOWN,
    ItemIndex,
    age_buckets,
    encode_ids,
    encode_samples,
    hash64,
    hash_buckets,
    index_path,
)


# The implementation before the hash table and hash schemes, kept verbatim as the reference that
# existing checkpoints were trained with: new code must give the same rows and blake2b buckets.
def old_hash_buckets(values: list[str | None], num_buckets: int) -> np.ndarray:
    out = np.zeros(len(values), dtype=np.int64)
    for i, value in enumerate(values):
        if value is not None:
            digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest()
            out[i] = 1 + int.from_bytes(digest, "little") % (num_buckets - 1)
    return out


def old_lookup(known: list[str], values: pa.Array) -> np.ndarray:
    found = pc.index_in(values, value_set=pa.array(known, type=pa.string()))
    return pc.fill_null(pc.add(found, 2), UNKNOWN).to_numpy(zero_copy_only=False).astype(np.int64)


def old_encode_ids(known: list[str], values: pa.Array, num_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    rows = old_lookup(known, values)
    table = np.concatenate([np.zeros(2, np.int64), old_hash_buckets(known, num_buckets)])
    buckets = table[rows]
    unknown = np.flatnonzero(rows == UNKNOWN)
    buckets[unknown] = old_hash_buckets(values.take(pa.array(unknown)).to_pylist(), num_buckets)
    return rows, buckets


def random_ids(rng: np.random.Generator, n: int) -> list[object]:
    """Ints, ASCII, unicode (accents, CJK, emoji), empty and long strings, as ids arrive in logs."""
    alphabet = list('abcxyz019-_ éüñ中文字😀🛒"/')
    out: list[object] = []
    for k in range(n):
        kind = k % 4
        if kind == 0:
            out.append(int(rng.integers(0, 10**12)))
        elif kind == 1:
            out.append(f"item_{int(rng.integers(0, 10**6))}")
        else:
            size = int(rng.integers(0, 40 if kind == 2 else 8))
            out.append("".join(rng.choice(alphabet, size)))
    return out


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
    assert payload["format"] == "seqctr.item_index/v2" and payload["ids"] == loaded.ids
    assert payload["hash_scheme"] == loaded.hash_scheme == HASH_H64


def test_index_saved_before_hash_schemes_loads_as_blake2b(tmp_path):
    ids = ["b", "a", "ü-ñ"]
    old_text = json.dumps(
        {
            "format": "seqctr.item_index/v1",
            "fingerprint": hashlib.sha256(json.dumps(ids, ensure_ascii=False).encode()).hexdigest(),
            "ids": ids,
        },
        ensure_ascii=False,
    )
    path = tmp_path / "item_index.json"
    path.write_text(old_text)
    loaded = ItemIndex.load(str(path))
    assert loaded.hash_scheme == HASH_BLAKE2B and loaded.ids == ids
    assert loaded.to_json() == old_text  # a blake2b index still writes the v1 file, byte for byte
    assert loaded.extend(["c"]).hash_scheme == HASH_BLAKE2B  # a warm start keeps its parent's buckets
    np.testing.assert_array_equal(loaded.buckets(1000)[2:], old_hash_buckets(ids, 1000))


def test_large_index_round_trips_through_parquet(tmp_path):
    index = ItemIndex.from_ids([f"item{k}" for k in range(100_000)] + ["ü-ñ 😀"])
    path = tmp_path / "item_index.parquet"
    index.save(str(path))
    assert path.read_bytes()[:4] == b"PAR1"
    assert path.stat().st_size < len(index.to_json()) / 2  # columnar and compressed
    loaded = ItemIndex.load(str(path))
    assert loaded == index and loaded.fingerprint() == index.fingerprint()
    assert loaded.lookup(["item99999", "ü-ñ 😀", "item0", "nope"]).tolist() == [100_001, 100_002, 2, UNKNOWN]
    assert ItemIndex.from_bytes(index.to_parquet_bytes()) == index
    assert ItemIndex.from_json(index.to_json().encode()) == index  # bytes of either format are accepted
    legacy = ItemIndex.from_ids(["a", "b"], hash_scheme=HASH_BLAKE2B)
    assert ItemIndex.from_bytes(legacy.to_parquet_bytes()).hash_scheme == HASH_BLAKE2B
    assert index_path(str(tmp_path)) == f"{tmp_path}/item_index.parquet"
    assert index_path(str(tmp_path / "none")) == f"{tmp_path}/none/item_index.json"


def test_lookups_and_blake2b_buckets_equal_the_old_implementation():
    rng = np.random.default_rng(7)
    known = random_ids(rng, 3000)
    index = ItemIndex.from_ids(known, hash_scheme=HASH_BLAKE2B)
    known_str = list(dict.fromkeys(str(i) for i in known))
    queries = pa.array([str(i) for i in [*rng.permutation(np.array(known, dtype=object)), *random_ids(rng, 3000)]])
    queries = pc.if_else(pa.array(rng.random(len(queries)) < 0.01), pa.scalar(None, pa.string()), queries)
    np.testing.assert_array_equal(index.lookup(queries), old_lookup(known_str, queries))
    assert (index.lookup(queries) == UNKNOWN).sum() > 2000  # the unknown path is exercised
    for num_buckets in (2, 1000, 50_000, 2**61):
        np.testing.assert_array_equal(
            hash_buckets(queries, num_buckets), old_hash_buckets(queries.to_pylist(), num_buckets)
        )
        for new, old in zip(
            encode_ids(queries, index, num_buckets), old_encode_ids(known_str, queries, num_buckets), strict=True
        ):
            np.testing.assert_array_equal(new, old)


def test_h64_scheme_encodes_unknown_ids_by_their_own_hash():
    rng = np.random.default_rng(3)
    known = random_ids(rng, 2000)
    index = ItemIndex.from_ids(known)
    assert index.hash_scheme == HASH_H64
    queries = pa.array([str(i) for i in [*known[:500], *random_ids(rng, 2000)]])
    rows, buckets = encode_ids(queries, index, 1000)
    known_str = list(dict.fromkeys(str(i) for i in known))
    np.testing.assert_array_equal(rows, old_lookup(known_str, queries))
    np.testing.assert_array_equal(buckets, hash_buckets(queries, 1000, HASH_H64))  # known or not, same hash
    assert (rows == UNKNOWN).sum() > 1000


def test_h64_hashes_are_stable_hard_coded_values():
    # These exact values index trained embeddings of every h64 checkpoint: they must never change.
    assert hash_buckets(["a", "b", "item_1", "", "é", "a-much-longer-id-over-16-bytes"], 1000, HASH_H64).tolist() == [
        332,
        377,
        699,
        1,
        241,
        73,
    ]
    assert hash64(["a"]).tolist() == [4894558414626762070]
    assert hash64([7, 42]).tolist() == hash64(["7", "42"]).tolist()  # ints hash as their decimal strings
    sliced = pa.array(["zzz", "a", "item_1", "q"]).slice(1, 2)  # only the slice's own bytes count
    assert hash64(sliced).tolist() == hash64(["a", "item_1"]).tolist()
    assert len(set(hash64(["a", "a\x00", "", "\x00"]).tolist())) == 4  # length is part of the hash


def test_lookup_confirms_hash_matches_by_string(monkeypatch):
    real = features.hash64
    monkeypatch.setattr(features, "hash64", lambda ids, seed=0: real(ids, seed) & np.uint64(0xFF))  # 8-bit hashes
    known = [f"k{i}" for i in range(6)]
    index = ItemIndex.from_ids(known)
    queries = pa.array(known + [f"other{i}" for i in range(2000)])
    np.testing.assert_array_equal(index.lookup(queries), old_lookup(known, queries))


def test_index_pickles_as_arrays_and_rebuilds_its_table():
    index = ItemIndex.from_ids([f"item{k}" for k in range(10_000)])
    before = index.lookup(["item5", "nope"])
    index.buckets(1000)
    copy = pickle.loads(pickle.dumps(index))
    assert copy == index and copy._table is None and copy._bucket_cache == {}
    np.testing.assert_array_equal(copy.lookup(["item5", "nope"]), before)
    assert len(pickle.dumps(index)) < 200_000


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
    index = ItemIndex.from_ids(["a", "b", "item_1"], hash_scheme=HASH_BLAKE2B)
    table = index.buckets(1000)
    assert table.tolist() == [0, 0, 78, 882, 564]
    assert index.buckets(1000) is table  # cached per num_buckets
    h64 = ItemIndex.from_ids(["a", "b", "item_1"])
    assert h64.buckets(1000).tolist() == [0, 0, *hash_buckets(["a", "b", "item_1"], 1000, HASH_H64)]
    with pytest.raises(ValueError, match="unknown hash scheme"):
        hash_buckets(["a"], 10, "md5")


def _hand_batch() -> pa.Table:
    return pa.table(
        {
            "history": pa.array([["a", "b", "c", "zz"], [], None, ["b"]], type=pa.list_(pa.string())),
            "target": ["c", "a", "new", "b"],
            "label": pa.array([1, 0, 1, 0], type=pa.int8()),
        }
    )


def test_encode_samples_exact_arrays():
    index = ItemIndex.from_ids(["a", "b", "c"], hash_scheme=HASH_BLAKE2B)  # rows a=2, b=3, c=4
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
