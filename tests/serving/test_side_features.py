"""Serving a model trained with data.features: the request's user, context and counts reach the model
as training encoded them, and a side field the model cannot read is a 422 naming it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from pydantic import ValidationError
from serving_helpers import ITEM_IDS, tiny_serving_config

from seqctr.platform.data.counts import ItemCountTable, ItemValueTable, period_summary
from seqctr.platform.data.samples import samples_from_events, side_kinds
from seqctr.platform.model.checkpoint import save_checkpoint
from seqctr.platform.model.ctr import build_model
from seqctr.platform.model.features import ItemIndex, encode_samples, hash64
from seqctr.platform.model.predictor import load_model
from seqctr.platform.model.side import (
    ITEM_CLICKS,
    ITEM_IMPRESSIONS,
    FeatureFieldError,
    SideLayout,
    encode_side,
    item_side_tables,
)
from seqctr.serving.deployments import ModelSpec, ServingModel, load_serving_model, prepare_job, score_jobs
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
    assert np.allclose(base, served(checkpoint, user_impressions=0, user_clicks=0))  # absent counts: a new user's
    unseen = served(checkpoint, context={"device": "a device never seen", "hour": None})
    assert np.isfinite(unseen).all()  # an unseen value hashes to a bucket, never an error
    assert np.allclose(unseen, served(checkpoint, context={"device": "a device never seen"}))  # None = absent


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
    """A client that sends its user's counts by brand and recent impressions, tallied from its own log,
    gets the scores the model gives the samples `data build` makes of that log (samples_from_events):
    the served counts by brand equal the build's count_user_brand_* columns, recent=3 included."""
    log = [  # (user, item, timestamp, label); the candidates are u7's three impressions at t=200
        *[("u7", i, t, y) for i, t, y in [("i1", 100, 0), ("i2", 110, 1), ("i4", 120, 1), ("i1", 130, 0)]],
        *[("u7", i, t, y) for i, t, y in [("i5", 140, 0), ("i4", 150, 0)]],
        ("u8", "i4", 105, 1),  # another user's click: never in u7's counts
        *[("u7", c, 200, 0) for c in CANDIDATES],
    ]
    user, item, ts, label = (list(column) for column in zip(*log, strict=True))
    events = pa.table(
        {
            "user_id": user,
            "item_id": item,
            "timestamp": pa.array(ts, pa.int64()),
            "label": pa.array(label, pa.int8()),
            "device": pa.array([None] * len(log), pa.string()),
            "hour": pa.array([None] * len(log), pa.float64()),
        }
    )
    hashes = hash64(events.column("item_id"))
    item_counts = ItemCountTable.merge([period_summary(hashes, np.array(ts), np.array(label), 3600)], 3600)
    values = ItemValueTable.from_columns(
        pa.array(ITEM_IDS), {"brand": pa.array([BRAND[i] for i in ITEM_IDS])}, ("brand",), 3
    )
    loaded = load_model(by_brand)
    cfg, m = loaded.config, loaded.model
    samples = samples_from_events(events, cfg.data.max_seq_len, side_kinds(cfg.data.features), item_counts, values)
    rows = samples.filter(pc.and_(pc.equal(samples["user_id"], "u7"), pc.equal(samples["timestamp"], 200)))
    rows = rows.take(pc.indices_nonzero(pc.is_in(rows["target"], pa.array(CANDIDATES))))
    order = [rows["target"].to_pylist().index(c) for c in CANDIDATES]
    rows = rows.take(pa.array(order))
    assert rows["count_user_brand_recent"].to_pylist() == [2, 1, 0]  # last 3: i1 (b1), i5 (b2), i4 (b1)

    mine = [(i, y) for u, i, t, y in log if u == "u7" and t < 200]
    by_brand_counts: dict[str, list[int]] = {}
    for i, y in mine:
        tally = by_brand_counts.setdefault(BRAND[i], [0, 0])
        tally[0], tally[1] = tally[0] + 1, tally[1] + y
    for k, what in enumerate(("impressions", "clicks")):  # the client's tallies are the build's columns
        expect = [by_brand_counts.get(BRAND.get(c, ""), [0, 0])[k] for c in CANDIDATES]
        assert rows[f"count_user_brand_{what}"].to_pylist() == expect
    [history] = set(map(tuple, rows["history"].to_pylist()))
    probs = served(
        by_brand,
        history=list(history),
        user_impressions=len(mine),
        user_clicks=sum(y for _, y in mine),
        user_item_counts={"brand": by_brand_counts | {"a-brand-no-item-has": [5, 5]}},
        recent_impressions=[i for i, _ in mine],
    )
    # the served item counts come from the checkpoint's feature table (by design), not from this log
    item_table = m.sample_side.item_counts[torch.as_tensor(loaded.index.lookup(CANDIDATES))].numpy()
    rows = rows.set_column(rows.schema.get_field_index(ITEM_IMPRESSIONS), ITEM_IMPRESSIONS, pa.array(item_table[:, 0]))
    rows = rows.set_column(rows.schema.get_field_index(ITEM_CLICKS), ITEM_CLICKS, pa.array(item_table[:, 1]))
    arrays = encode_samples(
        {"history": [list(history)] * len(CANDIDATES), "target": CANDIDATES},
        loaded.index,
        cfg.model.id_buckets,
        cfg.data.max_seq_len,
    )
    arrays |= encode_side(rows, SideLayout.from_config(cfg.data.features), cfg.model)
    np.testing.assert_allclose(probs, loaded.predict(arrays), atol=1e-6)
    assert not np.allclose(probs, served(by_brand, history=list(history)))  # without the counts: other scores
    assert np.allclose(served(by_brand), served(by_brand, recent_impressions=[], user_item_counts={}))


def test_a_serving_model_built_by_hand_reads_the_item_values_from_its_model(by_brand, checkpoint):
    """The benches build ServingModel directly: it takes the value table from the model as the loader does."""
    by_hand = ServingModel(load_model(by_brand), "", "", "", "bench", "bench")
    loaded = load_serving_model(ModelSpec(model=str(by_brand)), load_model(by_brand).config)
    assert by_hand.item_values is not None and by_hand.item_values.shape == (len(loaded.index), 1)
    np.testing.assert_array_equal(by_hand.item_values, loaded.item_values)
    counts = {"user_item_counts": {"brand": {BRAND["i4"]: [8, 2]}}}
    [(probs, _)] = score_jobs(by_hand.model, [prepare_job(by_hand, payload(**counts))])
    np.testing.assert_allclose(probs, served(by_brand, **counts), atol=1e-6)
    assert ServingModel(load_model(checkpoint), "", "", "", "b", "b").item_values is None  # no counts by value


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
