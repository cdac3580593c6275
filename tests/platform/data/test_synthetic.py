"""The synthetic log: deterministic, chunked, the contract's schema, and a click process whose truth is
known (oracle AUC), mostly inferable from earlier clicks, with titles that reveal the category."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqctr.platform.config import SyntheticConfig
from seqctr.platform.data.synthetic import (
    CATEGORY_WORDS,
    GENERIC_WORDS,
    category_vocabulary,
    generate_synthetic,
    oracle_auc,
)
from seqctr.platform.model.metrics import auc

SMALL = SyntheticConfig(users=80, items=150, events=12_345, categories=8, seed=5, chunk_events=4000)


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.parquet"))
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[dict, pa.Table, pa.Table]:
    report = generate_synthetic(SMALL, tmp_path_factory.mktemp("small"))
    return report, pq.read_table(report["events_path"]), pq.read_table(report["items_path"])


def test_report_files_and_schema(small):
    report, events, items = small
    files = sorted(Path(report["events_path"]).iterdir())
    assert [f.name for f in files] == [f"part-{k:05d}.parquet" for k in range(4)]
    assert [pq.read_metadata(f).num_rows for f in files] == [4000, 4000, 4000, 345]
    assert report["events"] == events.num_rows == 12_345
    assert report["files"] == 4 and report["items"] == 150 and report["users"] <= 80
    assert report["events_per_s"] == pytest.approx(12_345 / report["seconds"])
    schema = events.schema
    assert [(f.name, f.type) for f in schema] == [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("timestamp", pa.int64()),
        ("label", pa.int8()),
        ("p_true", pa.float64()),
        ("session", pa.int32()),
        ("intent", pa.string()),
    ]
    assert items.schema.names == ["item_id", "text", "category"]
    assert items.num_rows == 150 and items["item_id"][0].as_py() == "i000000"
    assert events["user_id"][0].as_py() == "u000000"
    assert set(events["item_id"].to_pylist()) <= set(items["item_id"].to_pylist())
    assert set(np.unique(events["label"].to_numpy())) == {0, 1}
    ts = events["timestamp"].to_numpy()
    assert 1_704_067_200 <= ts.min() and ts.max() < 1_704_067_200 + 120 * 86400


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    a = generate_synthetic(SMALL, tmp_path / "a")
    b = generate_synthetic(SMALL, tmp_path / "b")
    c = generate_synthetic(SMALL.model_copy(update={"seed": 6}), tmp_path / "c")
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert len(_digests(tmp_path / "a")) == 5
    ev_a, ev_c = pq.read_table(a["events_path"]), pq.read_table(c["events_path"])
    assert ev_c.num_rows == ev_a.num_rows
    assert not np.array_equal(ev_a["p_true"].to_numpy(), ev_c["p_true"].to_numpy())
    items_a, items_c = pq.read_table(a["items_path"]), pq.read_table(c["items_path"])
    assert items_a["text"].to_pylist() != items_c["text"].to_pylist()
    assert b["events"] == 12_345


def test_rewrite_replaces_old_parts(tmp_path):
    generate_synthetic(SMALL, tmp_path)
    report = generate_synthetic(SMALL.model_copy(update={"events": 3000}), tmp_path)
    assert [p.name for p in sorted(Path(report["events_path"]).iterdir())] == ["part-00000.parquet"]


def test_sessions_survive_chunk_boundaries(small):
    """Per user, time increases; a session is one user, one intent, a burst seconds apart; sessions are
    hours apart, mostly 10-30 impressions long, and ids are contiguous across chunk files."""
    _, events, _ = small
    df = events.to_pandas()
    users = df["user_id"].to_numpy()
    same_user = users[1:] == users[:-1]  # the log is user-major, oldest first
    dts = np.diff(df["timestamp"].to_numpy())
    assert (dts[same_user] > 0).all()
    sess = df["session"].to_numpy()
    same_sess = sess[1:] == sess[:-1]
    assert (dts[same_sess] <= 15).all() and (dts[same_user & ~same_sess] >= 1800).all()
    assert np.array_equal(np.unique(sess), np.arange(sess.max() + 1))
    by_sess = df.groupby("session")
    assert (by_sess["user_id"].nunique() == 1).all() and (by_sess["intent"].nunique() == 1).all()
    sizes = by_sess.size()
    assert sizes.max() <= 30 and (sizes >= 10).mean() > 0.9


def test_clicks_follow_the_session_intent(small):
    _, events, items = small
    category = dict(zip(items["item_id"].to_pylist(), items["category"].to_pylist(), strict=True))
    item_cat = np.array([category[i] for i in events["item_id"].to_pylist()])
    on_intent = item_cat == events["intent"].to_numpy(zero_copy_only=False)
    label = events["label"].to_numpy()
    assert 0.1 <= label.mean() <= 0.35
    assert on_intent[label == 1].mean() > 0.85  # recent clicks reveal the intent
    assert label[on_intent].mean() > 5 * label[~on_intent].mean()


def test_oracle_auc_well_above_chance(small):
    report, events, _ = small
    oracle = oracle_auc(report["events_path"])
    assert oracle > 0.75
    assert oracle == pytest.approx(auc(events["label"].to_numpy(), events["p_true"].to_numpy()))


def test_popularity_is_skewed(small):
    _, events, _ = small
    counts = np.sort(np.unique(events["item_id"].to_numpy(zero_copy_only=False), return_counts=True)[1])[::-1]
    assert counts[:15].sum() / counts.sum() > 0.4  # top 10% of 150 items


def test_titles_reveal_the_category(small):
    _, _, items = small
    vocab = dict(category_vocabulary(SMALL.categories, SMALL.seed))
    right = 0
    for text, cat in zip(items["text"].to_pylist(), items["category"].to_pylist(), strict=True):
        words = text.split()
        assert 3 <= len(words) <= 6 and set(words) <= set(vocab[cat]) | set(GENERIC_WORDS)
        votes = {name: sum(w in ws for w in words) for name, ws in vocab.items()}
        right += max(votes, key=votes.get) == cat
    assert right / items.num_rows > 0.9
    assert list(vocab) == list(CATEGORY_WORDS)[: SMALL.categories]


def test_many_categories_fall_back_to_generated_words(tmp_path):
    vocab = category_vocabulary(30, seed=0)
    assert [name for name, _ in vocab][24:26] == ["topic024", "topic025"]
    all_words = [w for _, words in vocab for w in words]
    assert len(all_words) == len(set(all_words)) == 30 * 12
    report = generate_synthetic(SyntheticConfig(users=20, items=60, events=2000, categories=30, seed=1), tmp_path)
    assert pq.read_table(report["items_path"])["category"].to_pylist().count("topic029") == 2


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"synthetic.items \(3\) must be >= synthetic.categories \(5\)"):
        generate_synthetic(SyntheticConfig(items=3, categories=5), tmp_path)
    with pytest.raises(ValueError, match="local folder"):
        generate_synthetic(SMALL, "s3://bucket/data")
    with pytest.raises(FileNotFoundError, match="no Parquet files"):
        oracle_auc(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.table({"label": pa.array([0, 1], pa.int8())}), bad / "part-00000.parquet")
    with pytest.raises(ValueError, match=r"part-00000.parquet: missing column 'p_true'"):
        oracle_auc(bad)
    pq.write_table(pa.table({"label": [0, 2], "p_true": [0.1, 0.2]}), bad / "part-00000.parquet")
    with pytest.raises(ValueError, match=r"column 'label' must be 0/1; row 1"):
        oracle_auc(bad)
