"""A real (tiny) campaign: Ray Tune trials that each run a TorchTrainer, then registry promotion."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from seqctr.platform.config import ConfigError, load_config, resolve_paths
from seqctr.platform.registry import Registry
from seqctr.platform.synthetic import generate_synthetic
from seqctr.tuning.campaign import run_campaign
from seqctr.tuning.space import build_search_space, trial_config

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


def test_campaign_registers_and_promotes_its_best_trial(ray_session, tmp_path):
    cfg = resolve_paths(load_config(CONFIGS / "tiny.yaml", ["tune.campaign=camp"]), tmp_path)
    generate_synthetic(cfg.data.synthetic, tmp_path / "work" / "data")
    summary = run_campaign(cfg)
    table = pd.read_csv(Path(summary["campaign_dir"]) / "trials.csv")
    assert len(table) == 3 and summary["trials"] == 3
    assert set(table["status"]) <= {"completed", "stopped early", "early-stopped (patience)"}
    assert summary["best_val_auc"] == pytest.approx(table["val_auc"].max())
    assert summary["test"]["auc"] > 0.6
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
