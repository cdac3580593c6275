"""data.features end to end on the tiny config and the realistic synthetic profile: the build carries the
side and counting columns, training reads them, the checkpoint rebuilds the model exactly, and a
serving request with the same fields scores (slow: one training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from seqctr.platform.config import ConfigError, load_config, resolve_paths
from seqctr.platform.data.contract import DataError
from seqctr.platform.data.samples import build_and_write, read_samples
from seqctr.platform.data.synthetic import generate_synthetic
from seqctr.platform.model.predictor import load_model
from seqctr.platform.model.side import COUNT_COLUMNS, user_item_count_columns
from seqctr.serving.deployments import ModelSpec, load_serving_model, prepare_job, score_jobs
from seqctr.serving.schemas import ScoreRequest
from seqctr.training.evaluation import evaluate_log, metrics_for, score_dataset
from seqctr.training.trainer import run_training

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
FEATURES = {
    "data.synthetic.profile": "realistic",
    "data.synthetic.users": 1500,  # ~13 events per user: short histories, many new users in test
    "data.features.event": [{"name": "device", "kind": "categorical"}, {"name": "hour", "kind": "numeric"}],
    "data.features.item": [
        {"name": "category", "kind": "categorical"},
        {"name": "brand", "kind": "categorical"},
        {"name": "price", "kind": "numeric"},
    ],
    "data.features.user_id": True,
    "data.features.counts": True,
    "data.features.user_item_counts": ["category"],
    "train.epochs": 1,
    "train.run_name": "features",
}


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    cfg = resolve_paths(load_config(ROOT / "configs" / "tiny.yaml").with_overrides(FEATURES), root)
    generate_synthetic(cfg.data.synthetic, root / "work" / "data")
    return cfg, run_training(cfg)


def test_samples_carry_the_side_and_count_columns_and_the_feature_table(trained):
    cfg, _ = trained
    train = read_samples(cfg.data.samples, "train").take(5)
    assert {"device", "hour", *COUNT_COLUMNS, *user_item_count_columns("category")} <= set(train[0])
    counts = pq.read_table(Path(cfg.data.samples) / "item_counts.parquet")
    assert counts.column_names == ["item_id", "impressions", "clicks"] and counts.num_rows > 0
    events = pq.read_table(cfg.data.events, columns=["label"])
    assert int(np.sum(counts.column("impressions"))) == events.num_rows  # the whole log, every event once


def test_training_with_features_learns_and_its_checkpoint_reproduces_val(trained):
    cfg, result = trained
    assert result["test"]["auc"] > 0.6, result["test"]
    best = result["best_checkpoint"]
    model = load_model(best).model
    assert model.sample_side is not None and model.items.side is not None
    again = metrics_for(score_dataset(best, read_samples(cfg.data.samples, "val")))
    assert again["auc"] == pytest.approx(load_model(best).metrics["val_auc"], abs=1e-6)


def test_evaluating_a_raw_log_with_a_features_model_says_to_build_it(trained):
    """A raw log's samples have no context or count columns: a clear error, not a missing-column crash."""
    cfg, result = trained
    with pytest.raises(ConfigError, match="data.features.*seqctr data build"):
        evaluate_log(result["best_checkpoint"], cfg.data.events)


def test_a_request_with_the_trained_fields_scores_and_an_unknown_one_names_itself(trained):
    cfg, result = trained
    served = load_serving_model(ModelSpec(model=result["best_checkpoint"]), cfg)
    ids = load_model(result["best_checkpoint"]).index.ids
    body = {
        "user_id": "u1",
        "history": ids[:3],
        "candidates": ids[3:8],
        "context": {"device": "mobile", "hour": 20},
        "user_impressions": 10,
        "user_clicks": 2,
        "user_item_counts": {"category": {"books": [4, 1]}},
        "recent_impressions": ids[8:12],
    }
    [(probs, _)] = score_jobs(served.model, [prepare_job(served, ScoreRequest.model_validate(body).payload())])
    assert probs.shape == (5,) and np.isfinite(probs).all()


def test_a_declared_column_the_log_lacks_is_named_with_its_file(ray_session, tmp_path):
    cfg = load_config(ROOT / "configs" / "tiny.yaml").with_overrides(
        {"data.synthetic.events": 2000, "data.features.event": [{"name": "browser", "kind": "categorical"}]}
    )
    data = generate_synthetic(cfg.data.synthetic, tmp_path / "data")
    with pytest.raises(DataError, match=r"\.parquet: column 'browser' \(data.features.event\) is missing"):
        build_and_write(
            data["events_path"], str(tmp_path / "out"), 5, 0.8, 0.1, progress=None, features=cfg.data.features
        )
    assert not (tmp_path / "out").exists()


def test_an_item_column_counted_by_user_that_the_item_table_lacks_is_named_with_its_file(ray_session, tmp_path):
    features = {
        "data.synthetic.events": 2000,
        "data.features.item": [{"name": "colour", "kind": "categorical"}],
        "data.features.counts": True,
        "data.features.user_item_counts": ["colour"],
    }
    cfg = load_config(ROOT / "configs" / "tiny.yaml").with_overrides(features)
    data = generate_synthetic(cfg.data.synthetic, tmp_path / "data")
    out = str(tmp_path / "out")
    # ... and says how to run without it (the default config declares `category`, which a table may lack)
    missing = r"\.parquet: column 'colour' \(data.features.user_item_counts\) is missing; .* data.features.item=\[\]"
    with pytest.raises(DataError, match=missing):
        build_and_write(
            data["events_path"], out, 5, 0.8, 0.1, data["items_path"], progress=None, features=cfg.data.features
        )
    with pytest.raises(ConfigError, match="user_item_counts needs the item table"):
        build_and_write(data["events_path"], out, 5, 0.8, 0.1, None, progress=None, features=cfg.data.features)
    assert not (tmp_path / "out").exists()
