"""A real (tiny) campaign: Ray Tune trials that each run a TorchTrainer, then registry promotion."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pandas as pd
import pytest
from ray import tune

from seqctr.platform.config import ConfigError, load_config, resolve_paths
from seqctr.platform.data.synthetic import generate_synthetic
from seqctr.platform.registry import Registry
from seqctr.training.ingest import side_of
from seqctr.tuning.campaign import CampaignInterrupted, finished_run_metrics, run_campaign
from seqctr.tuning.space import base_point, build_search_space, shared_data_config, trial_config

pytestmark = pytest.mark.slow
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_search_space_is_checked_against_the_config():
    cfg = load_config(CONFIGS / "tiny.yaml")
    space = build_search_space(cfg)
    assert set(space) == {"train.lr", "model.hidden_size"}
    assert trial_config(cfg, {"model.hidden_size": 8}).model.hidden_size == 8
    with pytest.raises(ConfigError, match="tune.space.model.hiden_size"):
        build_search_space(cfg.with_overrides({"tune.space": {"model.hiden_size": {"choice": [1]}}}))
    with pytest.raises(ConfigError, match="unknown sampler 'normal'"):
        build_search_space(cfg.with_overrides({"tune.space": {"train.lr": {"normal": [0, 1]}}}))


@pytest.mark.parametrize(
    "key, values",
    [
        ("data.max_seq_len", [5, 10]),
        ("data.features.recent_impressions", [5, 20]),
        ("embed.pooling", ["mean", "cls"]),
        ("model.id_buckets", [1000, 2000]),
        ("model.text", [True, False]),
        ("train.shuffle", ["time", "global"]),
    ],
)
def test_search_space_refuses_keys_the_trials_share(key, values):
    """The samples, tables, embeddings and datasets come from the base config: a trial's value of a key
    that changes them would be ignored, so the campaign refuses it up front."""
    cfg = load_config(CONFIGS / "tiny.yaml")
    with pytest.raises(ConfigError, match=rf"tune.space.{key}: every trial shares .*\(--set {key}="):
        build_search_space(cfg.with_overrides({"tune.space": {key: {"choice": values}}}))


def test_user_id_is_searched_with_the_user_bucket_encoded_for_every_trial():
    cfg = load_config(CONFIGS / "realistic.yaml")
    assert not cfg.data.features.user_id and "data.features.user_id" in build_search_space(cfg)
    shared = shared_data_config(cfg)
    assert shared.data.features.user_id and side_of(shared)[0].user_id  # the datasets carry user_bucket
    assert trial_config(cfg, {"data.features.user_id": False}).data.features.user_id is False
    only_false = cfg.with_overrides({"tune.space": {"data.features.user_id": {"choice": [False]}}})
    assert shared_data_config(only_false) is only_false


def test_base_point_is_the_base_config_inside_the_space():
    cfg = load_config(CONFIGS / "tiny.yaml")
    assert base_point(cfg) == {"train.lr": cfg.train.lr, "model.hidden_size": cfg.model.hidden_size}
    outside = cfg.with_overrides({"train.lr": 0.5})  # above the loguniform range: left to the search
    assert base_point(outside) == {"model.hidden_size": cfg.model.hidden_size}


def test_campaign_registers_and_promotes_its_best_trial(ray_session, tmp_path):
    cfg = resolve_paths(load_config(CONFIGS / "tiny.yaml", ["tune.campaign=camp"]), tmp_path)
    generate_synthetic(cfg.data.synthetic, tmp_path / "work" / "data")
    summary = run_campaign(cfg)
    table = pd.read_csv(Path(summary["campaign_dir"]) / "trials.csv")
    assert len(table) == 3 and summary["trials"] == 3
    assert set(table["status"]) <= {"completed", "stopped early", "early-stopped (patience)"}
    assert summary["best_val_auc"] == pytest.approx(table["val_auc"].max())
    assert summary["test"]["auc"] > 0.6
    assert (table["config/train.lr"] == cfg.train.lr).any()  # the base config was the first trial
    assert summary["trial_epochs_run"] <= summary["trial_epochs_full"] == 6
    # TensorBoard event files for every trial
    assert list(Path(summary["campaign_dir"]).rglob("events.out.tfevents*"))

    registry = Registry(cfg.registry.root)
    record = registry.get(f"{cfg.registry.name}@production")
    assert record.version == summary["registry"]["version"] == "v0001"
    assert record.run_id == "camp"
    assert set(record.trial_config) == {"train.lr", "model.hidden_size"}
    assert record.metrics["val_auc"] == pytest.approx(summary["best_val_auc"])
    assert record.data_fingerprint

    with pytest.raises(ConfigError, match="exists: pass --resume camp"):
        run_campaign(cfg)


def test_a_trial_that_turns_the_user_id_on_trains_its_user_bias(ray_session, tmp_path):
    """The base has data.features.user_id off; a trial with it on must read real user buckets from the
    shared datasets: its wide part's user table (all zeros at the start) learns many rows, not just the
    missing bucket's."""
    from seqctr.platform.model.predictor import load_model

    space = {"data.features.user_id": {"choice": [True]}}
    overrides = {"tune.campaign": "users", "tune.space": space, "train.epochs": 1}
    cfg = resolve_paths(load_config(CONFIGS / "tiny.yaml").with_overrides(overrides), tmp_path)
    assert not cfg.data.features.user_id
    generate_synthetic(cfg.data.synthetic, tmp_path / "work" / "data")
    summary = run_campaign(cfg, num_samples=1, register=False)
    model = load_model(summary["best_checkpoint"]).model
    assert model.wide is not None and model.wide.user is not None
    learned = (model.wide.user.weight.detach().abs().sum(dim=1) > 0).sum().item()
    assert learned > 20  # the tiny log has 100 users


def test_finished_run_metrics_only_for_runs_that_reached_their_end(tmp_path):
    import json

    for epoch in (0, 1):
        (tmp_path / f"epoch_{epoch:03d}").mkdir()
        metrics = {"epoch": epoch, "val_auc": 0.6 + epoch / 10, "should_stop": False}
        (tmp_path / f"epoch_{epoch:03d}" / "metrics.json").write_text(json.dumps(metrics))
    assert finished_run_metrics(tmp_path, epochs=2)["val_auc"] == pytest.approx(0.7)
    assert finished_run_metrics(tmp_path, epochs=3) is None  # one epoch still to run
    assert finished_run_metrics(tmp_path / "missing", epochs=1) is None


class InterruptAfterFirstTrial(tune.Callback):
    """Sends the campaign's own process the signal Tune treats like Ctrl-C, once, when a trial ends.

    One-shot through a marker file, since Tune keeps its callbacks with the campaign's saved state."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if not self.marker.exists():
            self.marker.write_text(trial.trial_id)
            os.kill(os.getpid(), signal.SIGUSR1)


def _mtimes(folder: Path) -> dict[str, int]:
    """Modification times of what training writes (weights, optimiser, train state); metrics.json is left
    out since the campaign's test evaluation adds test metrics to the winner's checkpoint."""
    files = [*folder.rglob("*.safetensors"), *folder.rglob("train_state.json")]
    return {str(p): p.stat().st_mtime_ns for p in files}


def test_interrupted_campaign_resumes_without_rerunning_finished_trials(ray_session, tmp_path):
    cfg = resolve_paths(load_config(CONFIGS / "tiny.yaml", ["tune.campaign=paused", "train.epochs=1"]), tmp_path)
    generate_synthetic(cfg.data.synthetic, tmp_path / "work" / "data")
    marker = tmp_path / "interrupted-after"
    with pytest.raises(CampaignInterrupted, match="seqctr tune --resume paused"):
        run_campaign(cfg, register=False, callbacks=[InterruptAfterFirstTrial(marker)])
    first = marker.read_text()
    first_dir = tmp_path / "work" / "runs" / "paused" / "trials" / first
    before = _mtimes(first_dir)
    assert any(name.endswith("model.safetensors") for name in before)

    summary = run_campaign(cfg, resume="paused", register=False)
    table = pd.read_csv(Path(summary["campaign_dir"]) / "trials.csv")
    assert len(table) == 3 and table["epochs"].tolist() == [1, 1, 1]
    assert set(table["status"]) == {"completed"}
    assert first in set(table["trial_id"])
    assert _mtimes(first_dir) == before  # the finished trial was not run again


def test_optuna_gets_the_base_point_only_whole_and_says_which_keys_lie_outside(capsys):
    """Optuna rejects a partial start point (a base value of None, say): the campaign starts without one."""
    from seqctr.tuning.campaign import _searcher

    cfg = load_config(CONFIGS / "tiny.yaml")
    space = {"train.lr": {"loguniform": [1e-4, 1.0]}, "train.embedding_weight_decay": {"choice": [0.0, 0.1]}}
    limited = _searcher(cfg.with_overrides({"tune.space": space, "tune.search": "optuna"}), 1)
    assert not limited.searcher._points_to_evaluate
    assert "its train.embedding_weight_decay lie outside the space" in capsys.readouterr().out
    whole = _searcher(
        cfg.with_overrides({"tune.space": {"train.lr": {"loguniform": [1e-4, 1.0]}}, "tune.search": "optuna"}), 1
    )
    assert whole.searcher._points_to_evaluate == [{"train.lr": cfg.train.lr}]
