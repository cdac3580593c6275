"""bench/movielens.py: the GroupLens tables (here a few hand-made rows of the same schema; the real ones
are not redistributed) become a log and an item table that pass the data contract, labels from ratings."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import movielens  # noqa: E402

from seqctr.platform.data.contract import validate_events, validate_items  # noqa: E402


def _tables() -> dict[str, pa.Table]:
    ratings = pa.table(
        {
            "user_id": [2, 1, 1, 2],
            "movie_id": [10, 10, 11, 11],
            "rating": [5, 3, 4, 1],
            "timestamp": [300, 100, 200, 200],
        }
    )
    genre = {g: [0, 0] for g in movielens.GENRES}
    genre["Action"], genre["Sci-Fi"] = [1, 0], [1, 0]  # movie 11 has no genre flag: "unknown"
    items = pa.table(
        {
            "movie_id": [10, 11],
            "movie_title": ["Alien (1979)", "Mystery Film"],
            "release_date": ["01-Jan-1979", None],
            **genre,
        }
    )
    users = pa.table({"user_id": [1, 2], "age": [24, 53], "gender": ["M", "F"], "occupation": ["writer", "other"]})
    return {"data": ratings, "items": items, "users": users}


def test_the_converted_log_passes_the_contract(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    for name, table in _tables().items():
        pq.write_table(table, folder / f"MovieLens100k_{name}.parquet.brotli")
    movielens.main(["--folder", str(folder), "--out", str(tmp_path / "out")])
    events_dir, items_dir = tmp_path / "out" / "data" / "events", tmp_path / "out" / "data" / "items"
    assert validate_events(str(events_dir))["rows"] == 4
    assert validate_items(str(items_dir))["rows"] == 2
    events = pq.read_table(events_dir).to_pylist()
    # In time order (ties by user, then item); label = rating >= 4; the user's columns on each event.
    assert [(e["user_id"], e["item_id"], e["timestamp"], e["label"]) for e in events] == [
        ("u1", "m10", 100, 0),
        ("u1", "m11", 200, 1),
        ("u2", "m11", 200, 0),
        ("u2", "m10", 300, 1),
    ]
    assert events[0]["gender"] == "M" and events[0]["age"] == 24.0 and events[3]["occupation"] == "other"
    items = {r["item_id"]: r for r in pq.read_table(items_dir).to_pylist()}
    assert items["m10"]["text"] == "Alien (1979) | Action, Sci-Fi" and items["m10"]["category"] == "Action"
    assert items["m10"]["year"] == 1979.0
    assert items["m11"]["category"] == "unknown" and np.isnan(items["m11"]["year"])
