"""bench/peers.py --quick: every model's row on seqctr's own splits, AUCs in [0, 1].

Shape only: who wins and how fast is the benchmark's business (no timed asserts, no ranking)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import peers  # noqa: E402

from seqctr.platform.config import CONFIGS_DIR  # noqa: E402


def test_quick_run_has_a_row_per_model(ray_session, tmp_path, capsys):
    out = peers.main(["--quick", "--config", str(CONFIGS_DIR / "tiny.yaml"), "--work-dir", str(tmp_path)])
    rows = {r["model"]: r for r in out["rows"]}
    assert list(rows) == list(peers.MODELS)
    missing = peers.deepctr_unavailable()  # DeepCTR-Torch is the optional `bench` extra
    for name, row in rows.items():
        if name in peers.DEEPCTR_MODELS and missing:
            assert row["unavailable"] == missing
            continue
        assert 0.0 <= row["auc"] <= 1.0 and 0.0 <= row["gauc"] <= 1.0, row
        assert row["logloss"] > 0 and row["seconds"] >= 0 and math.isfinite(row["lift"]), row
    assert 0.5 < out["oracle_auc"] <= 1.0
    assert math.isnan(out["reachable_auc"])  # the reachable ceiling is the realistic profile's
    printed = capsys.readouterr().out
    assert "oracle AUC" in printed and all(name in printed for name in peers.MODELS)
    assert "reachable AUC" not in printed and "reach " not in printed
    assert (tmp_path / "peers.json").is_file()


REALISTIC = [
    "data.synthetic.profile=realistic",
    "data.synthetic.users=400",
    "data.synthetic.items=300",
    "data.features.event=[{name: device, kind: categorical}, {name: hour, kind: numeric}]",
    "data.features.item=[{name: category, kind: categorical}, {name: brand, kind: categorical},"
    " {name: price, kind: numeric}]",
    "data.features.user_id=true",
    "data.features.counts=true",
]


def test_quick_run_reads_the_side_features(ray_session, tmp_path, capsys):
    """The realistic profile with data.features: the peers read the declared side and count columns
    (seqctr's own training with features is tests/training's; left out here to keep this quick), and
    the table gives the reachable ceiling and each model's share of its lift."""
    models = [m for m in peers.MODELS if m != "seqctr"]
    argv = ["--quick", "--config", str(CONFIGS_DIR / "tiny.yaml"), "--work-dir", str(tmp_path), "--events", "6000"]
    out = peers.main(argv + ["--models", ",".join(models)] + [a for o in REALISTIC for a in ("--set", o)])
    assert out["side"] == "event: device,hour; item: brand,price; counts", out["side"]
    rows = {r["model"]: r for r in out["rows"]}
    assert list(rows) == models
    for row in rows.values():
        if not row.get("unavailable"):
            assert 0.0 <= row["auc"] <= 1.0 and math.isfinite(row["lift"]), row
    assert 0.5 < out["reachable_auc"] <= 1.0
    printed = capsys.readouterr().out
    assert "reachable AUC" in printed and "reach " in printed


def test_side_features_reach_every_design(tmp_path):
    """Each declared column becomes logreg columns and deep inputs; none declared changes nothing."""
    import pyarrow as pa

    def split(n: int, seed: int) -> pa.Table:
        rng = np.random.default_rng(seed)
        return pa.table(
            {
                "user_id": [f"u{i % 7}" for i in range(n)],
                "history": [[f"i{j}" for j in range(i % 4)] for i in range(n)],
                "target": [f"i{i % 9}" for i in range(n)],
                "label": rng.integers(0, 2, n).astype(np.int8),
                "device": [["mobile", "desktop", None][i % 3] for i in range(n)],
                "hour": rng.random(n) * 24,
                **{c: rng.integers(0, 5, n) for c in peers.COUNT_COLUMNS},
                **{f"count_user_category_{w}": rng.integers(0, 3, n) for w in ("impressions", "clicks", "recent")},
            }
        )

    items = pa.table(
        {
            "item_id": [f"i{j}" for j in range(9)],
            "category": [f"c{j % 3}" for j in range(9)],
            "brand": [f"b{j % 4}" for j in range(9)],
            "price": pa.array([1.0 + j if j != 4 else None for j in range(9)], pa.float64()),
        }
    )
    tables = {"train": split(60, 0), "val": split(20, 1), "test": split(20, 2)}
    side = peers.SideSpec(("device",), ("hour",), ("brand",), ("price",), counts=True)
    f = peers.encode(tables, items, 5, side)
    plain = peers.encode(tables, items.select(["item_id", "category"]), 5)
    test = f.splits["test"]
    assert set(test.side_cat) == {"device", "brand"} and set(test.side_num) == {"hour", "price"}
    assert set(f.dense(test)) >= {"hour", "price", "user_ctr_logodds", "item_log_impressions"}
    assert all(np.isfinite(v).all() for v in f.dense(test).values())
    for cross in (False, True):
        wide, narrow = peers.sparse_design(f, test, cross), peers.sparse_design(plain, plain.splits["test"], cross)
        assert wide.shape[1] > narrow.shape[1] and wide.shape[0] == narrow.shape[0] == 20
    wide, narrow = peers.sparse_design(f, test, False), peers.sparse_design(plain, plain.splits["test"], False)
    assert (wide[:, : narrow.shape[1]] != narrow).nnz == 0  # the side blocks come after today's columns

    by_category = peers.SideSpec(("device",), ("hour",), ("brand",), ("price",), counts=True, user_item=("category",))
    g = peers.encode(tables, items, 5, by_category)
    extra = set(g.dense(g.splits["test"])) - set(f.dense(test))
    assert extra == {f"user_category_{k}" for k in ("log_impressions", "log_clicks", "ctr_logodds")} | {
        "user_category_recent_log",
        "user_category_recent_share",
    }


def test_log_mode_reads_a_real_log_as_it_is(ray_session, tmp_path):
    """--log: the config's log is used as it is (bench/movielens.py's output here, from random ratings):
    nothing is generated over it, and without p_true there is no oracle or lift."""
    import movielens
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    n = 1500
    genre = {g: (rng.random(40) < 0.3).astype(np.int64) for g in movielens.GENRES}
    tables = {
        "data": pa.table(
            {
                "user_id": rng.integers(1, 61, n),
                "movie_id": rng.integers(1, 41, n),
                "rating": rng.integers(1, 6, n),
                "timestamp": 880_000_000 + np.sort(rng.integers(0, 10**7, n)),
            }
        ),
        "items": pa.table(
            {
                "movie_id": np.arange(1, 41),
                "movie_title": [f"Film {i}" for i in range(40)],
                "release_date": [None] * 40,
                **genre,
            }
        ),
        "users": pa.table(
            {
                "user_id": np.arange(1, 61),
                "age": rng.integers(18, 70, 60),
                "gender": ["F", "M"] * 30,
                "occupation": ["x"] * 60,
            }
        ),
    }
    events, items = movielens.convert(tables)
    data = tmp_path / "ml"
    for name, table in (("events", events), ("items", items)):
        (data / name).mkdir(parents=True)
        pq.write_table(table, data / name / "part-0.parquet")
    before = pq.read_table(data / "events")
    argv = ["--quick", "--log", "--config", str(CONFIGS_DIR / "tiny.yaml"), "--work-dir", str(tmp_path / "w")]
    argv += ["--models", "popularity,logreg", "--set", f"data.events={data / 'events'}"]
    out = peers.main(argv + ["--set", f"data.items={data / 'items'}", "--set", "data.features.counts=true"])
    assert pq.read_table(data / "events").equals(before) and not (data / "synthetic.json").exists()
    assert math.isnan(out["oracle_auc"]) and "the log at" in out["header"]
    for row in out["rows"]:
        assert 0.0 <= row["auc"] <= 1.0 and math.isnan(row["lift"]), row
