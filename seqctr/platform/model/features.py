"""Item feature maps: string item ids -> embedding rows and hashed buckets, plus the batch encoder.

Plain numpy/pyarrow (no Ray), so training ingest and serving encode a batch the same way.

Two maps feed the model, because each covers what the other cannot:
- `ItemIndex`: a dense row per known item (0 = padding, 1 = unknown, known items 2..N+1). It lines up
  with the BERT item embedding table and is saved in every checkpoint (Parquet, or the older JSON);
  `extend` adds new items at the end so a warm-started model keeps its old rows. Lookups go through
  an open-addressing hash table built once per index, so a lookup costs the same at 2k and 1M items.
- `hash_buckets`: a stable hash of the id string into 1..num_buckets-1 (0 = padding), so an item
  that is unknown at serving time still gets a learned id embedding and never crashes. Each index
  records its hashing scheme: `h64` (vectorised numpy, new indexes) or `blake2b` (one hashlib call per
  id; indexes saved before schemes existed), so old checkpoints keep their trained buckets.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from seqctr.platform.storage import atomic_write_bytes, atomic_write_text, filesystem_for, is_uri

PAD = 0
UNKNOWN = 1
FIRST_KNOWN = 2
INDEX_FORMAT = "seqctr.item_index/v1"  # JSON, blake2b buckets (what every index before v2 is)
INDEX_FORMAT_V2 = "seqctr.item_index/v2"  # JSON or Parquet with a `hash_scheme`; older code rejects it
INDEX_FILE = "item_index.parquet"
LEGACY_INDEX_FILE = "item_index.json"
HASH_BLAKE2B = "blake2b"  # 1 + blake2b-64(utf8) % (num_buckets - 1); a Python call per id
HASH_H64 = "h64"  # 1 + hash64(utf8) % (num_buckets - 1); vectorised, see `hash64`
HASH_SCHEMES = (HASH_BLAKE2B, HASH_H64)
DEFAULT_HASH_SCHEME = HASH_H64  # for indexes built now; a loaded index keeps the scheme it was saved with
# Click age buckets: 0 = padding, 1 = unknown (no timestamps given), 2 + floor(log2(age_s + 1)) capped,
# so seconds-apart clicks of the current session and hours-apart earlier sessions never share one.
AGE_LOG2_CAP = 24  # ages of 2^24 s (~194 days) and more share the last bucket
AGE_BUCKETS = FIRST_KNOWN + AGE_LOG2_CAP + 1
# The arrays of `encode_samples` that the model's forward reads.
MODEL_INPUTS = ("hist_idx", "hist_bucket", "hist_age", "hist_len", "target_idx", "target_bucket")
IdColumn = pa.Array | pa.ChunkedArray | Sequence[Any] | np.ndarray


def age_buckets(ages_s: np.ndarray) -> np.ndarray:
    """Bucket 2.. of each click age in seconds; a negative age (a clock ahead of the event) counts as 0."""
    ages = np.maximum(np.asarray(ages_s, dtype=np.int64), 0)
    return FIRST_KNOWN + np.minimum(np.floor(np.log2(ages + 1.0)).astype(np.int64), AGE_LOG2_CAP)


def _as_string_array(ids: IdColumn) -> pa.Array:
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


# splitmix64 constants: every step is a bijection on uint64, so distinct inputs rarely collide.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix64(h: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (uint64 arithmetic wraps, as intended)."""
    h = (h ^ (h >> np.uint64(30))) * _MIX1
    h = (h ^ (h >> np.uint64(27))) * _MIX2
    return h ^ (h >> np.uint64(31))


def _utf8_buffers(values: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bytes padded with 8 zeros, start of each string, its length): only this array's own bytes."""
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32)[values.offset : values.offset + len(values) + 1]
    offsets = offsets.astype(np.int64)
    data = values.buffers()[2]
    first, last = int(offsets[0]), int(offsets[-1])
    padded = np.zeros(last - first + 8, dtype=np.uint8)
    if data is not None and last > first:
        padded[: last - first] = np.frombuffer(data, dtype=np.uint8)[first:last]
    return padded, offsets[:-1] - first, np.diff(offsets)


def hash64(ids: IdColumn, seed: int = 0) -> np.ndarray:
    """Stable 64-bit hash (uint64) of each id's UTF-8 bytes, vectorised over the ids, 8 bytes a step.

    Pure numpy on little-endian words, so it is the same in every process, machine and version; the
    Python work is one step per 8 bytes of the longest id, not one per id. Nulls hash like "".
    """
    values = _as_string_array(ids)
    if len(values) == 0:
        return np.zeros(0, dtype=np.uint64)
    padded, starts, lengths = _utf8_buffers(values)
    # words[p] = the 8 bytes at p as one little-endian uint64 (an unaligned, overlapping view).
    words = np.ndarray(shape=(padded.size - 7,), dtype="<u8", buffer=padded, strides=(1,))
    salt = np.uint64((seed * int(_GOLDEN)) & 0xFFFF_FFFF_FFFF_FFFF)  # wraps like uint64, without a warning
    h = _mix64(lengths.astype(np.uint64) ^ salt)
    n_words = (lengths + 7) // 8
    shortest = int(lengths.min())
    for k in range(int(n_words.max())):
        at = slice(None) if 8 * k < shortest else np.flatnonzero(n_words > k)  # ids with a k-th word
        word = words[starts[at] + 8 * k]
        if 8 * (k + 1) > shortest:  # some of these words run past their id's end: zero those bytes
            drop = (8 * (8 - np.minimum(lengths[at] - 8 * k, 8))).astype(np.uint64)
            word = (word << drop) >> drop
        h[at] = _mix64((h[at] ^ word) + _GOLDEN)
    return h


def _blake2b_buckets(values: pa.Array, span: int) -> np.ndarray:
    """The original scheme, one hashlib call per id: kept bit for bit for indexes saved with it."""
    digests = b"".join(hashlib.blake2b(v.encode("utf-8"), digest_size=8).digest() for v in values.to_pylist())
    return (np.frombuffer(digests, dtype="<u8") % np.uint64(span)).astype(np.int64) + 1


def hash_buckets(ids: IdColumn, num_buckets: int, scheme: str = HASH_BLAKE2B) -> np.ndarray:
    """Stable bucket in 1..num_buckets-1 for each id (nulls -> 0, the padding bucket).

    Stable across processes, machines and Python versions (unlike the salted `hash()`). `scheme`
    defaults to blake2b, the values every checkpoint saved before schemes existed was trained with;
    an index's own scheme is `ItemIndex.hash_scheme` (`ItemIndex.hash_buckets` applies it).
    """
    if num_buckets < 2:
        raise ValueError(f"num_buckets must be >= 2 (bucket 0 is padding), got {num_buckets}")
    if scheme not in HASH_SCHEMES:
        raise ValueError(f"unknown hash scheme {scheme!r}, expected one of {HASH_SCHEMES}")
    values = _as_string_array(ids)
    out = np.zeros(len(values), dtype=np.int64)
    valid = np.flatnonzero(values.is_valid().to_numpy(zero_copy_only=False)) if values.null_count else None
    present = values if valid is None else values.take(pa.array(valid))
    if len(present):
        span = num_buckets - 1
        if scheme == HASH_H64:
            found = (hash64(present) % np.uint64(span)).astype(np.int64) + 1
        else:
            found = _blake2b_buckets(present, span)
        out[slice(None) if valid is None else valid] = found
    return out


class _HashTable:
    """Linear-probing map from unique uint64 hashes to positions, in two numpy arrays.

    Built once per index; a lookup probes each key's home slot, then WINDOW slots at a time for the few
    displaced keys, whatever the catalogue size (`pc.index_in` rebuilt a catalogue-sized table per call).
    The home slot is the hash's top bits, so sorting the hashes sorts the homes and the whole layout is
    one cumulative max: key i of the sorted order sits at max(its home, the slot after key i-1's).
    """

    WINDOW = 8

    def __init__(self, hashes: np.ndarray) -> None:
        """Raises KeyError when two hashes are equal (the caller then rehashes with another seed)."""
        bits = max(4, (2 * hashes.size).bit_length())  # >= 2 slots per key: probes stay short
        self.shift = np.uint64(64 - bits)
        order = np.argsort(hashes)
        if np.any(hashes[order[1:]] == hashes[order[:-1]]):
            raise KeyError("duplicate 64-bit hash")
        ranks = np.arange(hashes.size, dtype=np.int64)
        homes = (hashes[order] >> self.shift).astype(np.int64)
        slots = ranks + np.maximum.accumulate(homes - ranks) if hashes.size else ranks
        size = max(1 << bits, int(slots[-1]) + 1 if hashes.size else 0) + self.WINDOW  # empty tail: no wrap
        self.keys = np.zeros(size, dtype=np.uint64)
        self.pos = np.full(size, -1, dtype=np.int32)  # -1 = empty slot
        self.keys[slots] = hashes[order]
        self.pos[slots] = order

    def find(self, hashes: np.ndarray) -> np.ndarray:
        """Position of each hash, -1 where absent: a key lies before the first empty slot from its home."""
        out = np.full(hashes.size, -1, dtype=np.int64)
        pending = np.arange(hashes.size, dtype=np.int64)
        start = (hashes >> self.shift).astype(np.int64)
        width = 1  # most keys sit at their home slot: probe it alone first, then windows of WINDOW
        while pending.size:
            slots = start[:, None] + np.arange(width)  # (Q, width)
            pos = self.pos[slots]
            hit = (self.keys[slots] == hashes[pending, None]) & (pos >= 0)
            found = hit.any(axis=1)
            out[pending[found]] = pos[hit]
            more = ~found & (pos >= 0).all(axis=1)  # no key and no empty slot yet: look further
            pending, start, width = pending[more], start[more] + width, self.WINDOW
        return out


def _unique_ids(ids: Iterable[Any] | pa.Array | pa.ChunkedArray) -> pa.Array:
    """Ids as distinct strings in first-seen order (so rows never move); a null id is an error."""
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        values = _as_string_array(ids)
    else:
        values = pa.array([None if i is None else str(i) for i in ids], type=pa.string())
    if values.null_count:
        raise ValueError("ItemIndex: item ids must not be null")
    return pc.unique(values)


class ItemIndex:
    """String item id -> dense row (0 = padding, 1 = unknown, known items 2..N+1), and its hash scheme.

    Holds the ids as one Arrow array; the lookup table, bucket tables and fingerprint are built on
    first use and left out of pickles, so shipping an index to a Ray actor copies buffers, not objects.
    """

    def __init__(self, ids: Iterable[Any] = (), hash_scheme: str = DEFAULT_HASH_SCHEME) -> None:
        if hash_scheme not in HASH_SCHEMES:
            raise ValueError(f"ItemIndex: unknown hash scheme {hash_scheme!r}, expected one of {HASH_SCHEMES}")
        self._ids = _unique_ids(ids)
        self.hash_scheme = hash_scheme
        self._reset()

    def _reset(self) -> None:
        self._table: _HashTable | None = None
        self._seed = 0
        self._bucket_cache: dict[int, np.ndarray] = {}
        self._fingerprint: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"ids": self._ids, "hash_scheme": self.hash_scheme}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._ids, self.hash_scheme = state["ids"], state["hash_scheme"]
        self._reset()

    @classmethod
    def from_ids(cls, ids: Iterable[Any], hash_scheme: str = DEFAULT_HASH_SCHEME) -> ItemIndex:
        """Index the ids in the order given (duplicates keep their first position)."""
        return cls(ids, hash_scheme)

    def extend(self, new_ids: Iterable[Any]) -> ItemIndex:
        """A new index: known items keep their rows (and buckets: same scheme), unseen ones go at the end."""
        return ItemIndex(pa.concat_arrays([self._ids, _unique_ids(new_ids)]), self.hash_scheme)

    @property
    def ids(self) -> list[str]:
        """Known item ids in row order (row = position + 2)."""
        return self._ids.to_pylist()

    @property
    def id_array(self) -> pa.Array:
        """Known item ids in row order as an Arrow string array (no Python objects)."""
        return self._ids

    def __len__(self) -> int:
        return len(self._ids) + FIRST_KNOWN

    def __contains__(self, item_id: object) -> bool:
        return self.lookup([str(item_id)])[0] >= FIRST_KNOWN

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ItemIndex) and self.hash_scheme == other.hash_scheme and self._ids.equals(other._ids)

    def __repr__(self) -> str:
        return f"ItemIndex({len(self._ids)} items, {self.hash_scheme}, fingerprint={self.fingerprint()[:12]})"

    def _hash_table(self) -> _HashTable:
        """Built on first lookup; the seed changes only if two ids share a 64-bit hash (~1e-8 at 1M)."""
        if self._table is None:
            for seed in range(8):
                try:
                    self._table, self._seed = _HashTable(hash64(self._ids, seed)), seed
                    break
                except KeyError:
                    continue
            else:  # pragma: no cover - eight full collisions in a row do not happen
                raise RuntimeError("ItemIndex: could not build a collision-free lookup table")
        return self._table

    def lookup(self, ids: IdColumn) -> np.ndarray:
        """Rows of `ids` as int64; unknown (and null) ids -> 1. Cost grows with len(ids), not the catalogue.

        A hash match is confirmed by comparing the strings, so a 64-bit collision with an unknown id
        can never return a wrong row.
        """
        return self._lookup(_as_string_array(ids))[0]

    def _lookup(self, values: pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
        """(rows, the seed-0 `hash64` of `values` when it was computed, so h64 buckets reuse it)."""
        if len(values) == 0 or len(self._ids) == 0:
            return np.full(len(values), UNKNOWN, dtype=np.int64), None
        table = self._hash_table()
        hashes = hash64(values, self._seed)
        pos = table.find(hashes)
        hit = pos >= 0
        if hit.any():
            same = pc.equal(values, self._ids.take(pa.array(np.where(hit, pos, 0))))
            hit &= pc.fill_null(same, False).to_numpy(zero_copy_only=False)
        rows = np.where(hit, pos + FIRST_KNOWN, UNKNOWN).astype(np.int64, copy=False)
        return rows, hashes if self._seed == 0 else None

    def hash_buckets(self, ids: IdColumn, num_buckets: int) -> np.ndarray:
        """`hash_buckets` of `ids` under this index's scheme (what an unknown id gets)."""
        return hash_buckets(ids, num_buckets, self.hash_scheme)

    def buckets(self, num_buckets: int) -> np.ndarray:
        """Hash bucket of every row (cached): known items need no hashing at encode time.

        Rows 0 (padding) and 1 (unknown) hold 0: an unknown id's bucket comes from its own string.
        """
        cached = self._bucket_cache.get(num_buckets)
        if cached is None:
            cached = np.concatenate([np.zeros(FIRST_KNOWN, np.int64), self.hash_buckets(self._ids, num_buckets)])
            self._bucket_cache[num_buckets] = cached
        return cached

    def fingerprint(self) -> str:
        """sha256 of the ids in row order: equal fingerprints mean identical row assignments."""
        if self._fingerprint is None:
            text = json.dumps(self._ids.to_pylist(), ensure_ascii=False)
            self._fingerprint = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return self._fingerprint

    def _header(self) -> dict[str, Any]:
        """Format and checks; a blake2b index keeps writing v1 JSON, byte for byte what it always was."""
        if self.hash_scheme == HASH_BLAKE2B:
            return {"format": INDEX_FORMAT, "fingerprint": self.fingerprint()}
        return {"format": INDEX_FORMAT_V2, "fingerprint": self.fingerprint(), "hash_scheme": self.hash_scheme}

    def to_json(self) -> str:
        return json.dumps({**self._header(), "ids": self._ids.to_pylist()}, ensure_ascii=False)

    def to_parquet_bytes(self) -> bytes:
        """The columnar form: one `item_id` column in row order, the header in the schema metadata."""
        header = {**self._header(), "format": INDEX_FORMAT_V2, "hash_scheme": self.hash_scheme}
        table = pa.table({"item_id": self._ids}).replace_schema_metadata({"seqctr": json.dumps(header)})
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        return sink.getvalue()

    @classmethod
    def _checked(cls, ids: pa.Array | list[str], header: dict[str, Any], source: str) -> ItemIndex:
        fmt = header.get("format")
        scheme = HASH_BLAKE2B if fmt == INDEX_FORMAT else header.get("hash_scheme")
        if fmt not in (INDEX_FORMAT, INDEX_FORMAT_V2) or scheme not in HASH_SCHEMES:
            raise ValueError(f"{source}: not an item index (expected format {INDEX_FORMAT_V2!r} or {INDEX_FORMAT!r})")
        index = cls(ids, scheme)
        if header.get("fingerprint") != index.fingerprint():
            raise ValueError(f"{source}: fingerprint mismatch, the file is corrupt or was edited")
        return index

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "item index") -> ItemIndex:
        """Read `to_json` (v1 or v2); Parquet bytes are accepted too, so callers need not know the format."""
        if isinstance(text, bytes):
            return cls.from_bytes(text, source)
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}: not valid JSON: {err}") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("ids"), list):
            raise ValueError(f"{source}: not an item index (expected format {INDEX_FORMAT_V2!r} or {INDEX_FORMAT!r})")
        return cls._checked(payload["ids"], payload, source)

    @classmethod
    def from_bytes(cls, data: bytes | str, source: str = "item index") -> ItemIndex:
        """Read either file format: Parquet (by its magic bytes) or JSON."""
        if isinstance(data, str) or not data.startswith(b"PAR1"):
            return cls.from_json(data if isinstance(data, str) else data.decode("utf-8"), source)
        try:
            table = pq.read_table(pa.BufferReader(data))
            header = json.loads((table.schema.metadata or {}).get(b"seqctr", b"{}"))
        except (pa.ArrowInvalid, json.JSONDecodeError) as err:
            raise ValueError(f"{source}: not a readable item index Parquet file: {err}") from None
        if "item_id" not in table.column_names:
            raise ValueError(f"{source}: not an item index (no 'item_id' column)")
        return cls._checked(table.column("item_id"), header, source)

    def save(self, path: str) -> None:
        """Write atomically (local path or pyarrow.fs URI): Parquet for a `.parquet` path, else JSON."""
        data = self.to_parquet_bytes() if str(path).endswith(".parquet") else self.to_json().encode("utf-8")
        if is_uri(path):
            fs, inner = filesystem_for(path)
            with fs.open_output_stream(inner) as out:
                out.write(data)
        elif str(path).endswith(".parquet"):
            atomic_write_bytes(path, data)
        else:
            atomic_write_text(path, data.decode("utf-8"))

    @classmethod
    def load(cls, path: str) -> ItemIndex:
        """Read a file of either format (see `from_bytes`)."""
        fs, inner = filesystem_for(path)
        try:
            with fs.open_input_stream(inner) as src:
                data = src.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"item index not found: {path}") from None
        return cls.from_bytes(data, source=str(path))


def index_path(folder: str) -> str:
    """The item index file of a folder: `item_index.parquet`, else the older `item_index.json`."""
    parquet = f"{str(folder).rstrip('/')}/{INDEX_FILE}"
    fs, inner = filesystem_for(parquet)
    if fs.get_file_info(inner).type != pafs.FileType.NotFound:
        return parquet
    return f"{str(folder).rstrip('/')}/{LEGACY_INDEX_FILE}"


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


def encode_ids(ids: IdColumn, index: ItemIndex, num_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, buckets) int64 of a flat id column: the one encoder of training, evaluation and serving.

    Known ids take their index row and its cached bucket; unknown ids get row 1 and the hash bucket of
    their own string under the index's scheme; null ids get row 1, bucket 0. Cost grows with len(ids).
    """
    values = _as_string_array(ids)
    rows, hashes = index._lookup(values)
    buckets = index.buckets(num_buckets)[rows]
    unknown = np.flatnonzero(rows == UNKNOWN)
    if unknown.size and hashes is not None and index.hash_scheme == HASH_H64 and not values.null_count:
        buckets[unknown] = (hashes[unknown] % np.uint64(num_buckets - 1)).astype(np.int64) + 1  # = hash_buckets
    elif unknown.size:
        buckets[unknown] = index.hash_buckets(values.take(pa.array(unknown)), num_buckets)
    return rows, buckets


_encode_ids = encode_ids  # the former private name


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
        rows, buckets = encode_ids(flat.take(pa.array(src)), index, num_buckets)
        hist_idx[row_of, col_of] = rows
        hist_bucket[row_of, col_of] = buckets
        hist_age[row_of, col_of] = _click_age_buckets(batch, lists, lengths, src, row_of)

    target_idx, target_bucket = encode_ids(_as_string_array(target), index, num_buckets)
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
