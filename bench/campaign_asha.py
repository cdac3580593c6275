"""What ASHA saves, and whether a campaign beats the config it tunes.

    .venv/bin/python bench/campaign_asha.py --config configs/default.yaml --samples 8 --epochs 3 \\
        --max-train-samples 60000

Runs the same campaign twice on the same data: random search with a fixed seed (so both runs draw
the same trial configs, the first being the base config itself), once with ASHA early stopping and
once without. Prints JSON: trial-epochs run with ASHA vs without (the saving), the best val AUC of
each (the issue's bar: within 0.005), and the test AUC of the ASHA campaign's winner next to the
test AUC of the base-config trial (the bar: at least as good). `--max-train-samples` trains every
trial on a subsample of train (val and test stay whole) to fit a 2-core budget.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def base_trial_test_auc(cfg: Any, campaign_dir: Path) -> float:
    """Test AUC of the campaign's trial that ran the base config (the first trial)."""
    import pandas as pd

    from seqctr.training.evaluation import evaluate_checkpoint_on_split
    from seqctr.tuning.campaign import best_trial_checkpoint
    from seqctr.tuning.space import base_point

    table = pd.read_csv(campaign_dir / "trials.csv")
    rows = table
    for key, value in base_point(cfg).items():
        rows = rows[rows[f"config/{key}"].astype(str) == str(value)]
    if rows.empty:
        raise RuntimeError(f"no base-config trial in {campaign_dir / 'trials.csv'}")
    checkpoint = best_trial_checkpoint(campaign_dir / "trials", rows.iloc[0]["trial_id"])
    return float(evaluate_checkpoint_on_split(checkpoint, cfg.data.samples, "test")["metrics"]["auc"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="a.b=value")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-train-samples", type=int, default=60_000)
    parser.add_argument("--work-dir", default=None, help="default: a temp dir; reuses data built there")
    args = parser.parse_args(argv)

    from seqctr.demo import _generate
    from seqctr.platform.config import load_config, resolve_paths
    from seqctr.platform.runtime import init_ray
    from seqctr.tuning.campaign import run_campaign

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="seqctr-asha-"))
    cfg = resolve_paths(load_config(args.config, args.overrides), work).with_overrides(
        {
            "tune.search": "random",
            "tune.num_samples": args.samples,
            "train.epochs": args.epochs,
            "train.patience": args.epochs,
            "train.max_train_samples": args.max_train_samples,
        }
    )
    init_ray()
    oracle = _generate(cfg).get("oracle_auc")
    runs = {}
    for name, early in (("asha", True), ("no_early_stopping", False)):
        run_cfg = cfg.with_overrides({"tune.early_stopping": early, "tune.campaign": f"bench-{name}"})
        runs[name] = run_campaign(run_cfg, register=False)
    asha, full = runs["asha"], runs["no_early_stopping"]
    base_auc = base_trial_test_auc(cfg, Path(full["campaign_dir"]))
    out = {
        "trials": args.samples,
        "epochs": args.epochs,
        "max_train_samples": args.max_train_samples,
        "oracle_test_auc": asha["test"].get("oracle_auc", oracle),
        "trial_epochs_asha": asha["trial_epochs_run"],
        "trial_epochs_without": full["trial_epochs_run"],
        "asha_saving": round(1 - asha["trial_epochs_run"] / full["trial_epochs_run"], 3),
        "seconds_asha": round(asha["seconds"], 1),
        "seconds_without": round(full["seconds"], 1),
        "best_val_auc_asha": round(asha["best_val_auc"], 4),
        "best_val_auc_without": round(full["best_val_auc"], 4),
        "best_val_auc_gap": round(full["best_val_auc"] - asha["best_val_auc"], 4),
        "best_config_asha": asha["best_config"],
        "best_test_auc_asha": round(asha["test"]["auc"], 4),
        "base_config_test_auc": round(base_auc, 4),
        "winner_minus_base_test_auc": round(asha["test"]["auc"] - base_auc, 4),
    }
    print(json.dumps(out, indent=2, default=str))
    return out


if __name__ == "__main__":
    main()
