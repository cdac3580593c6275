"""The demo's promotion decision compares like with like: the campaign's winner is retrained on
production's budget (whole train split, production's epochs) before it may face production."""

from __future__ import annotations

import numpy as np

from seqctr.demo import DEMO_TUNE, full_budget_config
from seqctr.platform.config import CONFIGS_DIR, load_config


def test_the_challenger_is_trained_like_production():
    production = load_config(CONFIGS_DIR / "default.yaml")
    winner = {"train.lr": np.float64(0.005), "model.attention": np.bool_(True), "train.max_train_samples": 40_000}
    challenger = full_budget_config(production, winner)
    assert challenger.train.lr == 0.005 and challenger.model.attention is True  # the campaign's choices
    # ...on production's budget, not the campaign's subsample
    assert (
        challenger.train.max_train_samples == production.train.max_train_samples != DEMO_TUNE["train.max_train_samples"]
    )
    assert challenger.train.epochs == production.train.epochs
    assert challenger.train.run_name != production.train.run_name  # its own runs: production's stay
    same = challenger.with_overrides(
        {
            "train.lr": production.train.lr,
            "model.attention": production.model.attention,
            "train.run_name": production.train.run_name,
        }
    )
    assert same == production  # nothing else differs
