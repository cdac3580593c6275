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


def test_a_campaign_winner_prints_its_values_as_their_types():
    """The winner's config comes from a pandas row of the trial table (numpy scalars); printed or saved,
    hidden_size is the number 16, not the string "16"."""
    import json

    import pandas as pd

    from seqctr.demo import plain

    table = pd.DataFrame(
        [
            {"trial_id": "a", "config/model.hidden_size": 16, "config/train.lr": 0.01, "config/model.attention": True},
            {"trial_id": "b", "config/model.hidden_size": 8, "config/train.lr": 0.003, "config/model.attention": False},
        ]
    )
    row = table.iloc[0]
    best = {k[7:]: row[k] for k in table.columns if k.startswith("config/")}  # what the campaign returns
    assert json.loads(json.dumps(best, default=str))["model.hidden_size"] == "16"  # the bug, as it was
    printed = json.loads(json.dumps(plain({"campaign_best": best, "trials": [row["config/train.lr"]]}), default=str))
    assert printed == {
        "campaign_best": {"model.hidden_size": 16, "train.lr": 0.01, "model.attention": True},
        "trials": [0.01],
    }
    assert type(printed["campaign_best"]["model.hidden_size"]) is int


def test_cli_json_output_keeps_numbers_numbers(capsys):
    import json

    from seqctr.cli.main import echo_json

    echo_json({"best_config": {"model.hidden_size": np.int64(16), "model.attention": np.bool_(True)}})
    assert json.loads(capsys.readouterr().out) == {"best_config": {"model.hidden_size": 16, "model.attention": True}}
