"""Side features (data.features): encoding, the model with them, serving's grouped scoring, checkpoints."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from seqctr.platform.config import ExperimentConfig, FeaturesConfig, ModelConfig
from seqctr.platform.model.checkpoint import SharedTables, save_checkpoint
from seqctr.platform.model.ctr import build_model
from seqctr.platform.model.features import ItemIndex
from seqctr.platform.model.predictor import load_model
from seqctr.platform.model.side import SideLayout, category_buckets, count_features, encode_side, item_side_tables

NUM_ITEMS = 12
FEATURES = FeaturesConfig(
    event=[{"name": "device", "kind": "categorical"}, {"name": "hour", "kind": "numeric"}],
    item=[{"name": "brand", "kind": "categorical"}, {"name": "price", "kind": "numeric"}],
    user_id=True,
    counts=True,
)
LAYOUT = SideLayout.from_config(FEATURES)
CFG = ModelConfig(id_buckets=32, embed_dim=8, hidden_size=8, mlp_hidden=[8], dropout=0.0, text=False)
STATS = {"ctr": 0.2, "numeric": {"hour": {"mean": 12.0, "std": 6.0}}}


def samples(n: int = 6) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table(
        {
            "user_id": [f"u{i % 3}" for i in range(n)],
            "device": ["mobile", None, "tablet", "a-value-never-seen", "mobile", "desktop"][:n],
            "hour": pa.array([3.0, float("nan"), 23.0, 0.0, 12.0, 7.0][:n]),
            "count_user_impressions": rng.integers(0, 50, n),
            "count_user_clicks": rng.integers(0, 5, n),
            "count_item_impressions": rng.integers(0, 500, n),
            "count_item_clicks": rng.integers(0, 50, n),
        }
    )


def tables() -> dict[str, np.ndarray]:
    rows = np.arange(2, NUM_ITEMS)
    columns = {"brand": [f"b{i % 4}" for i in rows], "price": list(np.linspace(1, 100, rows.size))}
    counts = (rows, np.full(rows.size, 100.0), np.arange(rows.size, dtype=np.float64))
    return item_side_tables(LAYOUT, CFG, rows, columns, NUM_ITEMS, counts)


def model():
    torch.manual_seed(0)
    return build_model(CFG, NUM_ITEMS, None, side_layout=LAYOUT, side_tables=tables(), side_stats=STATS).eval()


def batch(n: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(2, NUM_ITEMS, (n, 4), generator=g)
    target = torch.randint(2, NUM_ITEMS, (n,), generator=g)
    side = {k: torch.as_tensor(v) for k, v in encode_side(samples(n), LAYOUT, CFG).items()}
    return {
        "hist_idx": idx,
        "hist_bucket": idx % 32,
        "hist_len": torch.full((n,), 4),
        "target_idx": target,
        "target_bucket": target % 32,
        **side,
    }


def test_encoding_hashes_any_value_keeps_null_apart_and_leaves_nan_to_the_model():
    out = encode_side(samples(), LAYOUT, CFG)
    assert out["ctx_cat"].shape == (6, 1) and out["ctx_num"].shape == (6, 1)
    assert out["ctx_cat"][1, 0] == 0 and (out["ctx_cat"][[0, 2, 3], 0] > 0).all()
    assert out["ctx_cat"][0, 0] == out["ctx_cat"][4, 0]  # the same value, the same bucket
    assert np.isnan(out["ctx_num"][1, 0])
    assert out["user_bucket"][0] == out["user_bucket"][3] and (out["user_bucket"] > 0).all()
    assert out["user_counts"].shape == out["target_counts"].shape == (6, 2)
    # A request's JSON values hash as the build's string column of the same values does.
    typed = pa.table({"b": [True, False], "f": [1.0, 2.5], "i": [3, None]})
    for name in typed.column_names:
        as_built = pa.compute.cast(typed.column(name), pa.string())
        assert np.array_equal(category_buckets(typed.column(name).to_pylist(), 10), category_buckets(as_built, 10))


def test_a_declared_column_missing_from_the_samples_is_named():
    with pytest.raises(ValueError, match="'device'"):
        encode_side(samples().drop_columns(["device"]), LAYOUT, CFG)


def test_count_features_are_finite_for_any_counts_and_smooth_towards_the_prior():
    counts = torch.tensor([[0.0, 0.0], [10.0, 10.0], [1e6, 1.0], [3.0, 7.0], [-1.0, 2.0]])
    out = count_features(counts, torch.tensor(0.2), prior=20.0)
    assert torch.isfinite(out).all()
    assert out[0, 2] == pytest.approx(float(np.log(0.2 / 0.8)), abs=1e-5)  # no evidence: the prior's log-odds
    assert out[1, 2] > out[0, 2] > out[2, 2]


def test_side_inputs_change_the_score_and_missing_ones_do_not_crash():
    m, b = model(), batch()
    full = m(b)
    assert torch.isfinite(full).all()
    bare = {k: v for k, v in b.items() if k not in ("user_bucket", "ctx_cat", "ctx_num", "user_counts")}
    without = m(bare)  # a request without user, context or counts: read as missing
    assert torch.isfinite(without).all() and not torch.allclose(full, without)


def test_grouped_scoring_equals_forward_with_the_item_tables_counts():
    m, b = model(), batch(3)
    side_rows = {k: b[k] for k in ("user_bucket", "ctx_cat", "ctx_num", "user_counts")}
    cands = torch.tensor([2, 5, 7, 11])
    group = torch.tensor([0, 0, 2, 1])
    grouped = m.score_groups(b["hist_idx"], b["hist_bucket"], b["hist_len"], cands, cands % 32, group, side=side_rows)
    served_counts = m.sample_side.item_counts[cands]  # serving: the build's whole-log counts per item
    expanded = {
        "hist_idx": b["hist_idx"][group],
        "hist_bucket": b["hist_bucket"][group],
        "hist_len": b["hist_len"][group],
        "target_idx": cands,
        "target_bucket": cands % 32,
        **{k: v[group] for k, v in side_rows.items()},
        "target_counts": served_counts,
    }
    torch.testing.assert_close(grouped, m(expanded))


def test_history_items_carry_item_columns():
    m, b = model(), batch(2)
    before = m(b)
    with torch.no_grad():
        m.items.side.item_side_num[:, 0] += 3.0  # every item's price moves: history and target vectors change
    assert not torch.allclose(before, m(b))


def test_a_boolean_context_value_reads_as_the_build_reads_a_boolean_column():
    from seqctr.platform.model.side import encode_request_side

    def hour(value):
        return encode_request_side({"context": {"hour": value}}, LAYOUT, CFG)["ctx_num"]

    np.testing.assert_array_equal(hour(True), hour(1.0))
    np.testing.assert_array_equal(hour(False), hour(0))


def test_an_absent_user_or_context_reads_as_its_missing_bucket_in_the_wide_part_too():
    m, b = model(), batch(3)
    with torch.no_grad():
        m.wide.user.weight.normal_()
        m.wide.ctx.weight.normal_()
    missing = {**b, "user_bucket": torch.zeros_like(b["user_bucket"]), "ctx_cat": torch.zeros_like(b["ctx_cat"])}
    absent = {k: v for k, v in b.items() if k not in ("user_bucket", "ctx_cat")}
    torch.testing.assert_close(m(absent), m(missing))


def test_history_match_counts_history_items_of_the_targets_value_and_only_real_ones():
    m = model()
    brand = m.items.side.item_side_cat[:, 0]  # item i's brand code (rows 0 and 1: padding, unknown)
    target = torch.tensor([2, 2])
    same = [i for i in range(2, NUM_ITEMS) if brand[i] == brand[2]]
    other = next(i for i in range(2, NUM_ITEMS) if brand[i] != brand[2])
    hist = torch.tensor([[same[0], same[1], other, same[0]], [same[0], other, 0, 0]])
    lengths = torch.tensor([3, 2])  # row 0's fourth item is past its length: it does not count
    mask = torch.arange(4) < lengths[:, None]
    match = m._history_match(hist, mask, target, None)
    assert match.shape == (2, 2)  # one item categorical column (brand): [log1p(count), count / length]
    torch.testing.assert_close(match, torch.tensor([[np.log1p(2), 2 / 3], [np.log1p(1), 1 / 2]]).float())
    grouped = m._history_match(hist, mask, torch.tensor([2, 2, 2]), torch.tensor([1, 0, 1]))
    torch.testing.assert_close(grouped, match[[1, 0, 1]])
    off = build_model(CFG.model_copy(update={"history_match": False}), NUM_ITEMS, None, side_layout=LAYOUT,
                      side_tables=tables(), side_stats=STATS)  # fmt: skip
    assert off.match_width == 0 and off._history_match(hist, mask, target, None) is None


def test_checkpoint_round_trip_keeps_tables_and_statistics_and_shares_the_item_tables(tmp_path):
    m = model()
    cfg = (
        ExperimentConfig()
        .with_overrides({"model.text": False})
        .model_copy(update={"model": CFG, "data": ExperimentConfig().data.model_copy(update={"features": FEATURES})})
    )
    index = ItemIndex.from_ids([f"i{k}" for k in range(NUM_ITEMS - 2)])
    shared = SharedTables(str(tmp_path / "run" / "tables"))
    path = save_checkpoint(
        tmp_path / "run" / "epoch_000",
        model=m,
        config=cfg,
        item_index=index.to_parquet_bytes(),
        metrics={},
        shared_tables=shared,
    )
    assert len(list((tmp_path / "run" / "tables").iterdir())) == 1  # item side tables stored once, by sha256
    loaded = load_model(path).model
    b = batch()
    torch.testing.assert_close(loaded(b), m(b))
    assert float(loaded.sample_side.num_mean[0]) == 12.0 and float(loaded.sample_side.prior_ctr) == pytest.approx(0.2)


def test_the_wide_part_starts_neutral_and_learns_a_context_x_category_pair():
    m = model()
    b = batch()
    assert m.wide is not None
    side = {k: b[k] for k in ("user_bucket", "ctx_cat", "ctx_num", "user_counts", "target_counts")}
    wide = m._wide_logit(side, b["target_idx"], b["target_bucket"], None, *m._side_vectors(side, 6, b["target_idx"]))
    assert torch.equal(wide, torch.zeros(6))  # every table starts at zero: nothing unseen adds anything
    # One pair (device bucket of row 0, brand of its target) gets a weight: only rows sharing both move.
    target_cat = m.items.side.item_side_cat[b["target_idx"]]
    pair = (target_cat.unsqueeze(-1) * 1_000_003 + b["ctx_cat"].unsqueeze(-2)) % m.wide.cross_rows
    with torch.no_grad():
        m.wide.cross.weight[int(pair[0, 0, 0])] = 1.0
    moved = m._wide_logit({"ctx_cat": b["ctx_cat"]}, b["target_idx"], b["target_bucket"], None, None, None)
    same = (pair[:, 0, 0] == pair[0, 0, 0]).float()
    torch.testing.assert_close(moved, same)


def test_model_wide_false_and_a_model_without_features_have_no_wide_part():
    off = build_model(CFG.model_copy(update={"wide": False}), NUM_ITEMS, None, side_layout=LAYOUT, side_tables=tables())
    assert off.wide is None and build_model(CFG, NUM_ITEMS, None).wide is None


def test_user_embedding_false_keeps_only_the_wide_parts_user_bias():
    cfg = CFG.model_copy(update={"user_embedding": False})
    layout = SideLayout.from_config(FEATURES)
    assert layout.user_id
    m = build_model(cfg, NUM_ITEMS, None, side_layout=layout, side_tables=tables(), side_stats=STATS)
    assert m.sample_side.user is None and m.wide.user is not None
    assert m.sample_side.sample_width == model().sample_side.sample_width - CFG.user_dim
    assert torch.isfinite(m.eval()(batch())).all()
