"""Serving a model trained with data.features: the request's user, context and counts reach the model
as training encoded them, and a side field the model cannot read is a 422 naming it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from pydantic import ValidationError
from serving_helpers import ITEM_IDS, tiny_serving_config

from seqctr.platform.model.checkpoint import save_checkpoint
from seqctr.platform.model.ctr import build_model
from seqctr.platform.model.features import ItemIndex, encode_samples
from seqctr.platform.model.predictor import load_model
from seqctr.platform.model.side import FeatureFieldError, SideLayout, encode_side, item_side_tables
from seqctr.serving.deployments import ModelSpec, load_serving_model, prepare_job, score_jobs
from seqctr.serving.schemas import ScoreRequest

FEATURES = [
    "data.features.event=[{name: device, kind: categorical}, {name: hour, kind: numeric}]",
    "data.features.item=[{name: brand, kind: categorical}]",
    "data.features.user_id=true",
    "data.features.counts=true",
]
HISTORY = ["i1", "i2", "i3"]
CANDIDATES = ["i4", "i5", "never-seen"]


BY_BRAND = [*FEATURES, "data.features.user_item_counts=[brand]", "data.features.recent_impressions=3"]
BRAND = {item: f"b{k % 3}" for k, item in enumerate(ITEM_IDS)}  # the item table's brand column


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _checkpoint(tmp_path_factory, FEATURES)


@pytest.fixture(scope="module")
def by_brand(tmp_path_factory):
    """A model that also counts the user's impressions and clicks by the target's brand."""
    return _checkpoint(tmp_path_factory, BY_BRAND)


def _checkpoint(tmp_path_factory, features: list[str]):
    cfg = tiny_serving_config(*features, "model.text=false")
    layout = SideLayout.from_config(cfg.data.features)
    index = ItemIndex(ITEM_IDS)
    rows = index.lookup(ITEM_IDS)
    counts = (rows, np.arange(len(rows), dtype=np.float64) * 10, np.arange(len(rows), dtype=np.float64))
    tables = item_side_tables(layout, cfg.model, rows, {"brand": [BRAND[i] for i in ITEM_IDS]}, len(index), counts)
    torch.manual_seed(0)
    stats = {"ctr": 0.2, "numeric": {"hour": {"mean": 11.5, "std": 7.0}}}
    model = build_model(cfg.model, len(index), None, side_layout=layout, side_tables=tables, side_stats=stats)
    path = tmp_path_factory.mktemp("side") / "ckpt"
    return save_checkpoint(path, model=model.eval(), config=cfg, item_index=index.to_parquet_bytes(), metrics={})


def payload(**fields):
    body = {"user_id": "u7", "history": HISTORY, "candidates": CANDIDATES, **fields}
    return ScoreRequest.model_validate(body).payload()


def served(checkpoint, **fields) -> np.ndarray:
    """The served probabilities of CANDIDATES for one request with `fields`."""
    model = load_serving_model(ModelSpec(model=str(checkpoint)), load_model(checkpoint).config)
    [(probs, _)] = score_jobs(model.model, [prepare_job(model, payload(**fields))])
    return probs


def test_request_features_score_as_the_offline_model_reads_the_same_sample(checkpoint):
    """The served score equals the offline predictor on a sample with the same user, context and counts
    (the candidates' counts: the checkpoint's item table, as the build's feature table gave them)."""
    fields = {"context": {"device": "mobile", "hour": 9}, "user_impressions": 12, "user_clicks": 3}
    probs = served(checkpoint, **fields)
    loaded = load_model(checkpoint)
    cfg, m = loaded.config, loaded.model
    rows = loaded.index.lookup(CANDIDATES)
    item_counts = m.sample_side.item_counts[torch.as_tensor(rows)].numpy()
    n = len(CANDIDATES)
    samples = pa.table(
        {
            "user_id": ["u7"] * n,
            "device": ["mobile"] * n,
            "hour": [9.0] * n,
            "count_user_impressions": [12] * n,
            "count_user_clicks": [3] * n,
            "count_item_impressions": item_counts[:, 0],
            "count_item_clicks": item_counts[:, 1],
        }
    )
    arrays = encode_samples(
        {"history": [HISTORY] * n, "target": CANDIDATES}, loaded.index, cfg.model.id_buckets, cfg.data.max_seq_len
    )
    arrays |= encode_side(samples, SideLayout.from_config(cfg.data.features), cfg.model)
    np.testing.assert_allclose(probs, loaded.predict(arrays), atol=1e-6)


def test_side_fields_change_the_score_and_absent_ones_read_as_a_new_user(checkpoint):
    base = served(checkpoint)
    assert np.isfinite(base).all()
    assert not np.allclose(base, served(checkpoint, context={"device": "tablet", "hour": 22}))
    assert not np.allclose(base, served(checkpoint, user_impressions=500, user_clicks=250))
    assert np.isfinite(served(checkpoint, context={"device": "a device never seen", "hour": None})).all()


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"context": {"hour": "nine"}}, ("context", "hour")),  # a numeric field given a string
        ({"user_clicks": 5}, ("user_clicks",)),  # clicks without impressions
        ({"user_impressions": 2, "user_clicks": 5}, ("user_clicks",)),  # more clicks than impressions
    ],
)
def test_a_side_field_the_model_cannot_read_names_itself(checkpoint, fields, loc):
    model = load_serving_model(ModelSpec(model=str(checkpoint)), load_model(checkpoint).config)
    with pytest.raises(FeatureFieldError) as err:
        prepare_job(model, payload(**fields))
    assert err.value.loc == loc


@pytest.mark.parametrize(
    "fields",
    [
        {"user_impressions": -1},
        {"user_impressions": "3"},
        {"context": {"device": ["a", "list"]}},
        {"context": {"": "empty key"}},
    ],
)
def test_malformed_side_fields_are_schema_errors(fields):
    with pytest.raises(ValidationError):
        ScoreRequest.model_validate({"history": HISTORY, "candidates": CANDIDATES, **fields})


def test_context_fields_a_model_does_not_read_are_ignored(checkpoint, tmp_path):
    """One client can call variants trained on different features: an unread field changes nothing."""
    from serving_helpers import write_checkpoint

    assert np.allclose(served(checkpoint, context={"browser": "x"}), served(checkpoint))
    path = write_checkpoint(tmp_path / "plain")
    model = load_serving_model(ModelSpec(model=str(path)), load_model(path).config)
    plain = score_jobs(model.model, [prepare_job(model, payload())])[0][0]
    with_context = score_jobs(model.model, [prepare_job(model, payload(context={"device": "m"}, user_impressions=3))])
    np.testing.assert_allclose(with_context[0][0], plain)


def test_user_counts_by_brand_score_as_the_offline_model_reads_the_build_columns(by_brand):
    """Per candidate, the request's counts of its brand and the recent impressions of its brand (the
    last recent_impressions=3 of them) reach the model as the build's count_user_brand_* columns."""
    counts = {"brand": {BRAND["i4"]: [8, 2], "a-brand-no-item-has": [5, 5]}}
    recent = ["i1", "i2", "i3", "i4", "i5", "never-seen"]
    probs = served(by_brand, user_item_counts=counts, recent_impressions=recent)
    loaded = load_model(by_brand)
    cfg, m = loaded.config, loaded.model
    item_counts = m.sample_side.item_counts[torch.as_tensor(loaded.index.lookup(CANDIDATES))].numpy()
    last3 = [BRAND.get(i) for i in recent[-3:]]  # i4, i5 and an unknown item (no brand)
    expect = {
        c: (counts["brand"].get(BRAND.get(c), [0, 0]), last3.count(BRAND[c]) if c in BRAND else 0) for c in CANDIDATES
    }
    assert expect["i4"] == ([8, 2], 1) and expect["never-seen"] == ([0, 0], 0)
    n = len(CANDIDATES)
    samples = pa.table(
        {
            "user_id": ["u7"] * n,
            "device": pa.array([None] * n, pa.string()),
            "hour": [float("nan")] * n,
            "count_user_impressions": [0] * n,
            "count_user_clicks": [0] * n,
            "count_item_impressions": item_counts[:, 0],
            "count_item_clicks": item_counts[:, 1],
            "count_user_brand_impressions": [expect[c][0][0] for c in CANDIDATES],
            "count_user_brand_clicks": [expect[c][0][1] for c in CANDIDATES],
            "count_user_brand_recent": [expect[c][1] for c in CANDIDATES],
        }
    )
    arrays = encode_samples(
        {"history": [HISTORY] * n, "target": CANDIDATES}, loaded.index, cfg.model.id_buckets, cfg.data.max_seq_len
    )
    arrays |= encode_side(samples, SideLayout.from_config(cfg.data.features), cfg.model)
    np.testing.assert_allclose(probs, loaded.predict(arrays), atol=1e-6)
    assert not np.allclose(probs, served(by_brand))  # without them: a new user, other scores
    assert np.allclose(served(by_brand), served(by_brand, recent_impressions=[], user_item_counts={}))


def test_user_item_counts_with_more_clicks_than_impressions_name_the_value(by_brand):
    model = load_serving_model(ModelSpec(model=str(by_brand)), load_model(by_brand).config)
    with pytest.raises(FeatureFieldError) as err:
        prepare_job(model, payload(user_item_counts={"brand": {"b1": [2, 5]}}))
    assert err.value.loc == ("user_item_counts", "brand", "b1")
    # many values (of which few are the candidates'): each candidate gets its own value's counts only
    many = {f"x{k}": [k + 1, 0] for k in range(5000)} | {BRAND["i4"]: [8, 2]}
    with_many = served(by_brand, user_item_counts={"brand": many})
    assert np.allclose(with_many, served(by_brand, user_item_counts={"brand": {BRAND["i4"]: [8, 2]}}))
    assert not np.allclose(with_many, served(by_brand))  # i4's own counts did reach it
    # a column this model does not count by is ignored, as unread context fields are
    assert np.allclose(served(by_brand, user_item_counts={"colour": {"red": [2, 5]}}), served(by_brand))


@pytest.mark.parametrize(
    "fields",
    [
        {"user_item_counts": {"brand": {"b1": [1]}}},
        {"user_item_counts": {"brand": {"b1": [-1, 0]}}},
        {"user_item_counts": {"brand": [1, 2]}},
        {"user_item_counts": {"brand": {"\ud800": [1, 0]}}},  # not encodable as UTF-8
        {"user_item_counts": {"brand": {"b1": [10**400, 0]}}},  # beyond 2^53: would overflow float32
        {"user_impressions": 2**53 + 1},
        {"recent_impressions": "i1"},
        {"recent_impressions": [""]},
    ],
)
def test_malformed_user_item_counts_are_schema_errors(fields):
    with pytest.raises(ValidationError):
        ScoreRequest.model_validate({"history": HISTORY, "candidates": CANDIDATES, **fields})
