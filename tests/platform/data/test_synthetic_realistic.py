"""The `realistic` synthetic profile: side columns, exact `p_true` split into families that each move it,
short histories and many test users unseen in training; and the `default` profile left as it was."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqctr.platform.config import SyntheticConfig
from seqctr.platform.data.synthetic import (
    DEVICES,
    LOGIT_FAMILIES,
    ClickProcess,
    RealisticProcess,
    _build_realistic_world,
    category_vocabulary,
    click_probability,
    family_logits,
    generate_synthetic,
    intent_from_impressions,
    oracle_auc,
)
from seqctr.platform.model.metrics import auc

REAL = SyntheticConfig(
    users=4000, items=1000, events=60_000, categories=12, seed=1, profile="realistic", chunk_events=20_000
)
# What the default profile wrote before the realistic one existed (values, so a pyarrow upgrade's metadata
# does not matter): the default must stay the same log for the same seed.
DEFAULT_SMALL = SyntheticConfig(users=60, items=90, events=5000, categories=6, seed=3, chunk_events=2000)
DEFAULT_SMALL_DIGEST = "5abede885188afac8dbbee1db6d1e0851bd5b5b2c10f2b6f6e1a9bbebf347974"


def _content_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.parquet")):
        t = pq.read_table(p)
        h.update(f"{p.relative_to(root)}|{t.schema}".encode())
        for name in t.column_names:
            col = t[name]
            if pa.types.is_string(col.type):
                h.update("\x00".join(col.to_pylist()).encode())
            else:
                h.update(np.ascontiguousarray(col.to_numpy()).tobytes())
    return h.hexdigest()


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> tuple[Path, pa.Table, pa.Table]:
    root = tmp_path_factory.mktemp("real")
    report = generate_synthetic(REAL, root)
    return root, pq.read_table(report["events_path"]), pq.read_table(report["items_path"])


def _without(tmp_path: Path, **gains) -> np.ndarray:
    """p_true of the same log with some families switched off (gains leave every random draw in place)."""
    report = generate_synthetic(REAL, tmp_path / "off", dataclasses.replace(RealisticProcess(), **gains))
    return pq.read_table(report["events_path"], columns=["p_true"])["p_true"].to_numpy()


def test_default_profile_unchanged(tmp_path):
    generate_synthetic(DEFAULT_SMALL, tmp_path)
    assert _content_digest(tmp_path) == DEFAULT_SMALL_DIGEST


def test_profile_and_process_must_match(tmp_path):
    with pytest.raises(ValueError, match="RealisticProcess"):
        generate_synthetic(REAL, tmp_path / "a", ClickProcess())
    with pytest.raises(ValueError, match="ClickProcess"):
        generate_synthetic(DEFAULT_SMALL, tmp_path / "b", RealisticProcess())


def test_side_columns_and_types(real):
    _, events, items = real
    assert [(f.name, f.type) for f in events.schema] == [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("timestamp", pa.int64()),
        ("label", pa.int8()),
        ("p_true", pa.float64()),
        ("session", pa.int32()),
        ("intent", pa.string()),
        ("device", pa.string()),
        ("hour", pa.int32()),
    ]
    assert [(f.name, f.type) for f in items.schema] == [
        ("item_id", pa.string()),
        ("text", pa.string()),
        ("category", pa.string()),
        ("brand", pa.string()),
        ("price", pa.float32()),
    ]
    assert events.num_rows == REAL.events and items.num_rows == REAL.items
    assert set(events["device"].to_pylist()) == set(DEVICES)
    ts, hour = events["timestamp"].to_numpy(), events["hour"].to_numpy()
    np.testing.assert_array_equal(hour, (ts % 86400) // 3600)
    assert set(np.unique(hour)) == set(range(24))
    # Brands belong to one category each, several per category; prices are positive and spread out.
    pairs = set(zip(items["brand"].to_pylist(), items["category"].to_pylist(), strict=True))
    assert len({b for b, _ in pairs}) == len(pairs)
    per_cat = np.unique([c for _, c in pairs], return_counts=True)[1]
    assert len(per_cat) == REAL.categories and per_cat.min() >= 3
    price = items["price"].to_numpy()
    assert price.min() > 0 and np.log(price).std() > 0.5


def test_same_seed_same_log_other_seed_differs(tmp_path, real):
    root, events, _ = real
    generate_synthetic(REAL, tmp_path / "b")
    assert _content_digest(tmp_path / "b") == _content_digest(root)
    other = generate_synthetic(REAL.model_copy(update={"seed": 2}), tmp_path / "c")
    p_other = pq.read_table(other["events_path"], columns=["p_true"])["p_true"].to_numpy()
    assert not np.array_equal(p_other, events["p_true"].to_numpy())


def test_p_true_exact_labels_follow_it_and_oracle(real):
    root, events, _ = real
    p, y = events["p_true"].to_numpy(), events["label"].to_numpy()
    assert 0 < p.min() and p.max() < 1
    assert abs(y.mean() - p.mean()) < 4 * np.sqrt((p * (1 - p)).sum()) / len(p)
    # Calibrated per decile of p_true too, not only on average.
    deciles = np.searchsorted(np.quantile(p, np.linspace(0.1, 0.9, 9)), p)
    for d in range(10):
        sel = deciles == d
        assert abs(y[sel].mean() - p[sel].mean()) < 0.03
    oracle = oracle_auc(root / "events")
    assert 0.75 < oracle < 0.95 and oracle == pytest.approx(auc(y, p))
    fam = family_logits(REAL, events)
    assert list(fam) == list(LOGIT_FAMILIES)
    np.testing.assert_array_equal(click_probability(RealisticProcess().bias, fam), p)


def test_short_histories_and_test_users_unseen_in_training(real):
    _, events, _ = real
    users = events["user_id"].to_numpy(zero_copy_only=False)
    counts = np.unique(users, return_counts=True)[1]
    assert np.median(counts) < 10 and (counts < 20).mean() > 0.6 and counts.max() > 100
    ts = events["timestamp"].to_numpy()
    cut = np.sort(ts)[[int(0.8 * len(ts)), int(0.9 * len(ts))]]  # train < cut[0] <= val < cut[1] <= test
    train_users = np.unique(users[ts < cut[0]])
    test = ts >= cut[1]
    unseen = ~np.isin(users[test], train_users)
    assert unseen.mean() >= 0.4
    # Users arrive over the whole span: first events spread across it, not bunched at the start.
    first = np.array([ts[users == u].min() for u in np.unique(users)[:: max(1, len(counts) // 400)]])
    span = RealisticProcess().span_days * 86400
    assert np.quantile(first - first.min(), 0.75) > 0.5 * span


def test_titles_are_noisy(real):
    _, _, items = real
    own = dict(category_vocabulary(REAL.categories, REAL.seed))
    shares = [
        np.mean([w in own[c] for w in t.split()])
        for t, c in zip(items["text"].to_pylist(), items["category"].to_pylist(), strict=True)
    ]
    assert 0.45 < np.mean(shares) < 0.75 and min(shares) > 0  # noise, but always one own word


def test_user_bias_moves_p_true(tmp_path, real):
    _, events, _ = real
    diff = _logit(events["p_true"].to_numpy()) - _logit(_without(tmp_path, user_bias_sd=0.0))
    users = events["user_id"].to_numpy(zero_copy_only=False)
    _, idx = np.unique(users, return_inverse=True)
    per_user = np.bincount(idx, diff) / np.bincount(idx)
    np.testing.assert_allclose(diff, per_user[idx], atol=1e-9)  # one offset per user
    assert 0.6 < per_user.std() < 1.0


def test_hour_moves_p_true_by_category(tmp_path, real):
    _, events, items = real
    p_off = _without(tmp_path, hour_gain=0.0)
    cat_of = dict(zip(items["item_id"].to_pylist(), items["category"].to_pylist(), strict=True))
    cat = np.array([cat_of[i] for i in events["item_id"].to_pylist()])
    block = events["hour"].to_numpy() // 4  # six parts of the day

    def spread(p: np.ndarray) -> float:  # mean over categories of (max - min) per-block mean p_true
        out = []
        for c in np.unique(cat):
            sel = cat == c
            out.append(np.ptp(np.bincount(block[sel], p[sel], 6) / np.bincount(block[sel], minlength=6)))
        return float(np.mean(out))

    p = events["p_true"].to_numpy()
    assert spread(p) > 0.05 and spread(p) > 3 * spread(p_off)
    diff = _logit(p) - _logit(p_off)
    assert 0.4 < diff.std() < 0.7  # hour_gain 0.8 * cos: sd about 0.57


def test_device_moves_p_true(tmp_path, real):
    _, events, _ = real
    p, p_off = events["p_true"].to_numpy(), _without(tmp_path, device_gain=(0.0, 0.0, 0.0), device_cat_sd=0.0)
    device = np.array(events["device"].to_pylist())
    means = {d: p[device == d].mean() for d in DEVICES}
    means_off = {d: p_off[device == d].mean() for d in DEVICES}
    assert means["desktop"] - means["mobile"] > 0.02  # the main effects: -0.2 mobile, +0.2 desktop
    assert abs(means_off["desktop"] - means_off["mobile"]) < 0.01
    assert np.std(_logit(p) - _logit(p_off)) > 0.3


def test_item_brand_and_price_move_p_true(real):
    _, events, items = real
    fam = family_logits(REAL, events)
    item = events["item_id"].to_numpy(zero_copy_only=False)
    price = dict(zip(items["item_id"].to_pylist(), items["price"].to_numpy(), strict=True))
    log_price = np.log([price[i] for i in item])
    assert np.corrcoef(fam["price"], log_price)[0, 1] < -0.999  # -0.3 * standardised log price
    assert 0.6 < fam["item"].std() < 1.0 and 0.2 < fam["brand"].std() < 0.6
    y = events["label"].to_numpy()
    for name in LOGIT_FAMILIES:  # every family alone ranks clicks above chance
        assert auc(y, fam[name]) > 0.52, name


def test_title_noise_one_leaves_no_word_of_the_items_own_category(tmp_path):
    """data.synthetic.title_noise=1: titles carry no signal of the category (the text ablation's case)."""
    cfg = REAL.model_copy(update={"title_noise": 1.0, "events": 5000})
    items = pq.read_table(generate_synthetic(cfg, tmp_path)["items_path"])
    own = dict(category_vocabulary(cfg.categories, cfg.seed))
    texts, cats = items["text"].to_pylist(), items["category"].to_pylist()
    assert not any(w in own[c] for t, c in zip(texts, cats, strict=True) for w in t.split())


def test_intent_from_impressions_is_the_posterior_of_the_last_impressions_between_interests_and_oracle(real):
    """Row by row, the brute-force posterior over the session intent given the categories of the user's
    last 3 earlier impressions; in AUC it lies between knowing the interests only and the oracle."""
    _, events, _ = real
    proc = RealisticProcess()
    world = _build_realistic_world(REAL, proc, category_vocabulary(REAL.categories, REAL.seed))
    shuffled = events.take(np.random.default_rng(0).permutation(events.num_rows))  # row order must not matter
    got = intent_from_impressions(REAL, shuffled, recent=3)
    user = np.array([int(u[1:]) for u in shuffled["user_id"].to_pylist()])
    item = np.array([int(i[1:]) for i in shuffled["item_id"].to_pylist()])
    ts = shuffled["timestamp"].to_numpy()
    n_cats = REAL.categories
    for row in np.random.default_rng(1).choice(len(user), 40, replace=False):
        u = user[row]
        w = np.zeros(n_cats)
        for c, wt in zip(world.interest_cat[u], world.interest_w[u], strict=True):
            w[c] += wt
        post = proc.p_random_intent / n_cats + (1 - proc.p_random_intent) * w
        earlier = np.flatnonzero((user == u) & (ts < ts[row]))
        for k in world.item_cat[item[earlier[np.argsort(ts[earlier])][-3:]]]:
            post = post * (proc.p_show_intent * (np.arange(n_cats) == k) + proc.p_show_interest * w[k] + 0.4 / n_cats)
        cat = world.item_cat[item[row]]
        q = post[cat] / post.sum()
        want = np.log(q * np.exp(proc.intent_gain) + 1 - q) + proc.interest_gain * w[cat]
        assert got[row] == pytest.approx(want, rel=1e-9, abs=1e-12)
    fam = family_logits(REAL, events)
    others = sum(fam.values()) - fam["affinity"]
    y = events["label"].to_numpy()
    interests_only, read = (auc(y, others + intent_from_impressions(REAL, events, k)) for k in (0, 10))
    assert auc(y, others) < interests_only < read < auc(y, others + fam["affinity"])
    with pytest.raises(ValueError, match="realistic"):
        intent_from_impressions(REAL.model_copy(update={"profile": "default"}), events)
