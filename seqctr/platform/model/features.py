"""Item feature maps: string item ids -> embedding rows and hashed buckets, plus the batch encoder.

Plain numpy/pyarrow (no Ray), so training ingest and serving encode a batch the same way.

Two maps feed the model, because each covers what the other cannot:
- `ItemIndex`: a dense row per known item (0 = padding, 1 = unknown, known items 2..N+1). It lines up
  with the BERT item embedding table and is saved as JSON in every checkpoint; `extend` adds new
  items at the end so a warm-started model keeps its old rows.
- `hash_buckets`: a stable hash of the id string into 1..num_buckets-1 (0 = padding), so an item
  that is unknown at serving time still gets a learned id embedding and never crashes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqctr.platform.storage import atomic_write_text, filesystem_for, is_uri

PAD = 0
UNKNOWN = 1
FIRST_KNOWN = 2
INDEX_FORMAT = "seqctr.item_index/v1"
# Click age buckets: 0 = padding, 1 = unknown (no timestamps given), 2 + floor(log2(age_s + 1)) capped,
# so seconds-apart clicks of the current session and hours-apart earlier sessions never share one.
AGE_LOG2_CAP = 24  # ages of 2^24 s (~194 days) and more share the last bucket
AGE_BUCKETS = FIRST_KNOWN + AGE_LOG2_CAP + 1
# The arrays of `encode_samples` that the model's forward reads.
MODEL_INPUTS = ("hist_idx", "hist_bucket", "hist_age", "hist_len", "target_idx", "target_bucket")


def age_buckets(ages_s: np.ndarray) -> np.ndarray:
    """Bucket 2.. of each click age in seconds; a negative age (a clock ahead of the event) counts as 0."""
    ages = np.maximum(np.asarray(ages_s, dtype=np.int64), 0)
    return FIRST_KNOWN + np.minimum(np.floor(np.log2(ages + 1.0)).astype(np.int64), AGE_LOG2_CAP)


def _as_string_array(ids: pa.Array | pa.ChunkedArray | Sequence[Any] | np.ndarray) -> pa.Array:
    """Any id column (list, numpy, Arrow; strings or integers) as one Arrow string array."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks != 1 else ids.chunk(0)
    elif not isinstance(ids, pa.Array):
        ids = pa.array(list(ids) if isinstance(ids, np.ndarray) and ids.dtype == object else ids)
    if pa.types.is_dictionary(ids.type):
        ids = ids.dictionary_decode()
    if ids.type != pa.string():
        ids = pc.cast(ids, pa.string())
    return ids


def hash_buckets(ids: pa.Array | Sequence[Any] | np.ndarray, num_buckets: int) -> np.ndarray:
    """Stable bucket in 1..num_buckets-1 for each id (nulls -> 0, the padding bucket).

    blake2b of the UTF-8 id, so the value is the same in every process, machine and Python version
    (unlike `hash()`, which is salted per process).
    """
    if num_buckets < 2:
        raise ValueError(f"num_buckets must be >= 2 (bucket 0 is padding), got {num_buckets}")
    values = _as_string_array(ids).to_pylist()
    out = np.zeros(len(values), dtype=np.int64)
    span = num_buckets - 1
    for i, value in enumerate(values):
        if value is not None:
            digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest()
            out[i] = 1 + int.from_bytes(digest, "little") % span
    return out


class ItemIndex:
    """String item id -> dense row (0 = padding, 1 = unknown, known items 2..N+1)."""

    def __init__(self, ids: Iterable[Any] = ()) -> None:
        unique: dict[str, None] = {}
        for item in ids:
            if item is None:
                raise ValueError("ItemIndex: item ids must not be null")
            unique.setdefault(str(item), None)
        self._ids: list[str] = list(unique)
        self._value_set = pa.array(self._ids, type=pa.string())
        self._bucket_cache: dict[int, np.ndarray] = {}

    @classmethod
    def from_ids(cls, ids: Iterable[Any]) -> ItemIndex:
        """Index the ids in the order given (duplicates keep their first position)."""
        return cls(ids)

    def extend(self, new_ids: Iterable[Any]) -> ItemIndex:
        """A new index: known items keep their rows, unseen ones get fresh rows at the end (warm start)."""
        return ItemIndex([*self._ids, *(str(i) for i in new_ids)])

    @property
    def ids(self) -> list[str]:
        """Known item ids in row order (row = position + 2)."""
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids) + FIRST_KNOWN

    def __contains__(self, item_id: object) -> bool:
        return self.lookup([str(item_id)])[0] >= FIRST_KNOWN

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ItemIndex) and self._ids == other._ids

    def __repr__(self) -> str:
        return f"ItemIndex({len(self._ids)} items, fingerprint={self.fingerprint()[:12]})"

    def lookup(self, ids: pa.Array | pa.ChunkedArray | Sequence[Any] | np.ndarray) -> np.ndarray:
        """Rows of `ids` as int64; unknown (and null) ids -> 1. One vectorised `index_in` call."""
        values = _as_string_array(ids)
        found = pc.index_in(values, value_set=self._value_set)
        rows = pc.fill_null(pc.add(found, FIRST_KNOWN), UNKNOWN)
        return rows.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)

    def buckets(self, num_buckets: int) -> np.ndarray:
        """Hash bucket of every row (cached): known items need no hashing at encode time.

        Rows 0 (padding) and 1 (unknown) hold 0: an unknown id's bucket comes from its own string.
        """
        cached = self._bucket_cache.get(num_buckets)
        if cached is None:
            cached = np.concatenate([np.zeros(FIRST_KNOWN, np.int64), hash_buckets(self._value_set, num_buckets)])
            self._bucket_cache[num_buckets] = cached
        return cached

    def fingerprint(self) -> str:
        """sha256 of the ids in row order: equal fingerprints mean identical row assignments."""
        return hashlib.sha256(json.dumps(self._ids, ensure_ascii=False).encode("utf-8")).hexdigest()

    def to_json(self) -> str:
        payload = {"format": INDEX_FORMAT, "fingerprint": self.fingerprint(), "ids": self._ids}
        return json.dumps(payload, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str, source: str = "item index") -> ItemIndex:
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}: not valid JSON: {err}") from None
        if not isinstance(payload, dict) or payload.get("format") != INDEX_FORMAT:
            raise ValueError(f"{source}: not an item index (expected format {INDEX_FORMAT!r})")
        index = cls(payload["ids"])
        if payload.get("fingerprint") != index.fingerprint():
            raise ValueError(f"{source}: fingerprint mismatch, the file is corrupt or was edited")
        return index

    def save(self, path: str) -> None:
        """Write JSON atomically (local path or pyarrow.fs URI). No pickle."""
        if is_uri(path):
            fs, inner = filesystem_for(path)
            with fs.open_output_stream(inner) as out:
                out.write(self.to_json().encode("utf-8"))
        else:
            atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str) -> ItemIndex:
        fs, inner = filesystem_for(path)
        try:
            with fs.open_input_stream(inner) as src:
                text = src.read().decode("utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(f"item index not found: {path}") from None
        return cls.from_json(text, source=str(path))


def _column(batch: pa.Table | dict[str, Any], name: str) -> Any:
    if isinstance(batch, pa.Table):
        return batch.column(name) if name in batch.column_names else None
    return batch.get(name)


def _as_list_array(history: Any) -> pa.ListArray | pa.LargeListArray:
    if isinstance(history, pa.ChunkedArray):
        history = history.combine_chunks() if history.num_chunks != 1 else history.chunk(0)
    if not isinstance(history, pa.Array):
        rows = [None if h is None else [str(x) for x in h] for h in history]
        history = pa.array(rows, type=pa.list_(pa.string()))
    return history


def _encode_ids(values: pa.Array, index: ItemIndex, num_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, buckets) of one flat id array: cached buckets for known items, hashing only unknowns."""
    rows = index.lookup(values)
    table = index.buckets(num_buckets)
    buckets = table[rows]
    unknown = np.flatnonzero(rows == UNKNOWN)
    if unknown.size:
        buckets[unknown] = hash_buckets(values.take(pa.array(unknown)), num_buckets)
    return rows, buckets


def _click_age_buckets(
    batch: pa.Table | dict[str, Any], lists: pa.Array, lengths: np.ndarray, src: np.ndarray, row_of: np.ndarray
) -> np.ndarray:
    """Age buckets of the kept history positions `src` (rows `row_of`); UNKNOWN without timestamps."""
    history_ts, timestamp = _column(batch, "history_ts"), _column(batch, "timestamp")
    if history_ts is None or timestamp is None:
        return np.full(src.size, UNKNOWN, dtype=np.int64)
    ts_lists = history_ts
    if isinstance(ts_lists, pa.ChunkedArray):
        ts_lists = ts_lists.combine_chunks() if ts_lists.num_chunks != 1 else ts_lists.chunk(0)
    if not isinstance(ts_lists, pa.Array):
        ts_lists = pa.array([None if h is None else [int(x) for x in h] for h in ts_lists], type=pa.list_(pa.int64()))
    ts_lengths = pc.fill_null(pc.list_value_length(ts_lists), 0).to_numpy(zero_copy_only=False)
    if len(ts_lists) != len(lists) or not np.array_equal(ts_lengths, lengths):
        bad = int(np.argmax(ts_lengths != lengths)) if len(ts_lists) == len(lists) else 0
        raise ValueError(f"encode_samples: row {bad}: 'history_ts' must have one timestamp per 'history' item")
    flat_ts = pc.cast(ts_lists.flatten(), pa.int64()).to_numpy(zero_copy_only=False)
    if isinstance(timestamp, (pa.Array, pa.ChunkedArray)):
        timestamp = timestamp.to_numpy(zero_copy_only=False)
    now = np.asarray(timestamp, dtype=np.int64)
    return age_buckets(now[row_of] - flat_ts[src])


def encode_samples(
    batch: pa.Table | dict[str, Any], index: ItemIndex, num_buckets: int, max_seq_len: int
) -> dict[str, np.ndarray]:
    """Encode a batch of samples into the arrays the model consumes.

    In: columns `history` (list of item ids, oldest first), `target` (item id) and, when present,
    `history_ts` (the clicks' unix seconds) with `timestamp` (the event's), and `label`. Out (B = rows,
    L = max_seq_len): `hist_idx`, `hist_bucket`, `hist_age` (B, L) int64 right-padded with 0, keeping the
    most recent L items (oldest first); `hist_age` is the age bucket of each click at the event's time
    (`age_buckets`; 1 = unknown where no timestamps came); `hist_len` (B,); `target_idx`, `target_bucket`
    (B,) int64; `label` (B,) float32 (only when the batch has labels, e.g. not at serving time).
    """
    history = _column(batch, "history")
    target = _column(batch, "target")
    if history is None or target is None:
        raise ValueError("encode_samples: the batch needs 'history' and 'target' columns")
    if max_seq_len < 1:
        raise ValueError(f"encode_samples: max_seq_len must be >= 1, got {max_seq_len}")
    lists = _as_list_array(history)
    n_rows = len(lists)
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = _as_string_array(lists.flatten())  # respects slicing; null lists contribute nothing
    starts = np.zeros(n_rows, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])

    # Keep the most recent L of each history: skip its first (length - L) items.
    kept = np.minimum(lengths, max_seq_len)
    row_of = np.repeat(np.arange(n_rows, dtype=np.int64), kept)  # (K,)
    kept_starts = np.cumsum(kept) - kept
    col_of = np.arange(row_of.size, dtype=np.int64) - np.repeat(kept_starts, kept)  # (K,)
    src = np.repeat(starts + lengths - kept, kept) + col_of  # (K,) positions in `flat`

    hist_idx = np.zeros((n_rows, max_seq_len), dtype=np.int64)  # (B, L)
    hist_bucket = np.zeros((n_rows, max_seq_len), dtype=np.int64)  # (B, L)
    hist_age = np.zeros((n_rows, max_seq_len), dtype=np.int64)  # (B, L)
    if src.size:
        rows, buckets = _encode_ids(flat.take(pa.array(src)), index, num_buckets)
        hist_idx[row_of, col_of] = rows
        hist_bucket[row_of, col_of] = buckets
        hist_age[row_of, col_of] = _click_age_buckets(batch, lists, lengths, src, row_of)

    target_idx, target_bucket = _encode_ids(_as_string_array(target), index, num_buckets)
    if len(target_idx) != n_rows:
        raise ValueError(f"encode_samples: {n_rows} histories but {len(target_idx)} targets")
    out = {
        "hist_idx": hist_idx,
        "hist_bucket": hist_bucket,
        "hist_age": hist_age,
        "hist_len": kept,
        "target_idx": target_idx,
        "target_bucket": target_bucket,
    }
    label = _column(batch, "label")
    if label is not None:
        if isinstance(label, (pa.Array, pa.ChunkedArray)):
            label = label.to_numpy(zero_copy_only=False)
        out["label"] = np.asarray(label, dtype=np.float32)
    return out
