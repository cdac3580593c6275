"""Encode cost of one serving request (100 candidates + 50 history clicks) at 2k, 100k and 1M items.

    .venv/bin/python bench/lookup_speed.py            # add --sizes 2000,100000 for a quicker run

"old" is the encoder before issue #14 (`pc.index_in` against the whole catalogue on every call, one
blake2b per unknown id); "new" is `features.encode_ids` with the index's lookup table built once
(the build is timed apart). 10% of the ids are unknown, so the hashed path runs too. The ratio
1M / 2k should stay <= 1.5: a request must not pay for the catalogue's size.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqctr.platform.model.features import HASH_BLAKE2B, HASH_H64, UNKNOWN, ItemIndex, encode_ids

NUM_BUCKETS = 50_000


def old_encode(known: pa.Array, table: np.ndarray, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The encoder as it was: a fresh `index_in` hash table of the catalogue per call."""
    values = pa.array(ids, type=pa.string())
    found = pc.index_in(values, value_set=known)
    rows = pc.fill_null(pc.add(found, 2), UNKNOWN).to_numpy(zero_copy_only=False).astype(np.int64)
    buckets = table[rows]
    for i in np.flatnonzero(rows == UNKNOWN):
        digest = hashlib.blake2b(ids[i].encode("utf-8"), digest_size=8).digest()
        buckets[i] = 1 + int.from_bytes(digest, "little") % (NUM_BUCKETS - 1)
    return rows, buckets


def old_request(known: pa.Array, table: np.ndarray, history: list[str], candidates: list[str]) -> list[np.ndarray]:
    return [*old_encode(known, table, history), *old_encode(known, table, candidates)]


def new_request(index: ItemIndex, history: list[str], candidates: list[str]) -> list[np.ndarray]:
    return [*encode_ids(history, index, NUM_BUCKETS), *encode_ids(candidates, index, NUM_BUCKETS)]


def per_call_us(fn: Callable[..., object], *args: object, budget_s: float = 0.5) -> float:
    """Fastest of repeated calls, in microseconds (the least disturbed by a shared machine)."""
    fn(*args)
    times = []
    end = time.perf_counter() + budget_s
    while time.perf_counter() < end or len(times) < 5:
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return float(np.min(times)) * 1e6


def request(rng: np.random.Generator, n_items: int) -> tuple[list[str], list[str]]:
    """50 history clicks and 100 candidates; ids >= n_items do not exist (about 10% of them)."""
    pick = lambda k: [f"item{i}" for i in rng.integers(0, int(n_items * 1.1), k)]  # noqa: E731
    return pick(50), pick(100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,100000,1000000", help="catalogue sizes, comma-separated")
    sizes = [int(s) for s in parser.parse_args().sizes.split(",")]
    rng = np.random.default_rng(0)
    rows = []
    for n_items in sizes:
        ids = [f"item{i}" for i in range(n_items)]
        history, candidates = request(rng, n_items)
        result = {"items": n_items}
        legacy = ItemIndex.from_ids(ids, hash_scheme=HASH_BLAKE2B)
        table = legacy.buckets(NUM_BUCKETS)
        known = legacy.id_array
        result["old_us"] = per_call_us(old_request, known, table, history, candidates)
        for scheme in (HASH_BLAKE2B, HASH_H64):
            index = ItemIndex.from_ids(ids, hash_scheme=scheme)
            start = time.perf_counter()
            index.lookup(["warm-up"])  # builds the lookup table, once per index
            index.buckets(NUM_BUCKETS)
            result[f"build_{scheme}_s"] = time.perf_counter() - start
            result[f"{scheme}_us"] = per_call_us(new_request, index, history, candidates)
            got, want = new_request(index, history, candidates), old_request(known, table, history, candidates)
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[2], want[2]), "rows differ from old"
            if scheme == HASH_BLAKE2B:
                assert np.array_equal(got[1], want[1]) and np.array_equal(got[3], want[3]), "buckets differ"
        rows.append(result)

    print(f"{'items':>9} {'old us':>9} {'new blake2b us':>15} {'new h64 us':>11} {'speed-up':>9} {'build s':>8}")
    for r in rows:
        speed_up = r["old_us"] / r["h64_us"]
        print(
            f"{r['items']:>9,} {r['old_us']:>9.0f} {r[f'{HASH_BLAKE2B}_us']:>15.0f} {r['h64_us']:>11.0f}"
            f" {speed_up:>8.1f}x {r['build_h64_s']:>8.2f}"
        )
    first, last = rows[0], rows[-1]
    for name in ("old", HASH_BLAKE2B, HASH_H64):
        ratio = last[f"{name}_us"] / first[f"{name}_us"]
        print(f"{name:>8}: {last['items']:,} / {first['items']:,} items cost ratio {ratio:.2f} (target <= 1.5 for new)")


if __name__ == "__main__":
    main()
