"""Ablation table: the same data and training budget for each model variant, scored on the test split.

    .venv/bin/python bench/ablation.py --config configs/default.yaml --epochs 2 [--events 300000]

Variants (config overrides of the one experiment config):
  bert_lstm            BERT text + id, LSTM                 (the default model)
  id_only_lstm         id embedding only, LSTM              model.text=false
  bert_mean            BERT text + id, mean pool            model.sequence=mean
  bert_lstm_attention  + DIN-style target attention         model.attention=true
  bert_lstm_finetune   + top BERT layer trained in the step model.bert_trainable_layers=1
  bert_lstm_augment    + history truncation/drop/replace    train.*_prob
  bert_lstm_no_time    without click-age embeddings         model.time_features=false
  bert_lstm_text_dropout + text dropped on half the item vectors  model.text_dropout=0.5
Feature families (issue #15; run them on a config with data.features, e.g. configs/realistic.yaml):
  no_user_id           without the hashed user-id embedding data.features.user_id=false
  with_user_id         with it (configs/realistic.yaml has it off) data.features.user_id=true
  no_history_match     without the target x history matches model.history_match=false
  no_user_item_counts  without the user's counts by category data.features.user_item_counts=[]
  no_counts            without leak-free counting features  data.features.counts=false
  no_context           without the event context columns    data.features.event=[]
  no_item_columns      without the item-table columns       data.features.item=[]
  no_side_features     none of them (history + text)        all of the above
  id_only_features     every feature, no BERT text          model.text=false
Prints a table (test AUC, GAUC, logloss, share of the oracle's lift, train seconds) and the margins of
the full model over id-only and mean-pool; writes ablation.json under the work dir.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

VARIANTS: dict[str, dict[str, Any]] = {
    "bert_lstm": {},
    "id_only_lstm": {"model.text": False},
    "bert_mean": {"model.sequence": "mean"},
    "bert_lstm_attention": {"model.attention": True},
    "bert_lstm_finetune": {"model.bert_trainable_layers": 1},
    "bert_lstm_augment": {"train.truncate_prob": 0.2, "train.drop_prob": 0.05, "train.replace_prob": 0.02},
    "bert_lstm_no_time": {"model.time_features": False},
    "bert_lstm_text_dropout": {"model.text_dropout": 0.5},
    "no_user_id": {"data.features.user_id": False},
    "with_user_id": {"data.features.user_id": True},
    "no_history_match": {"model.history_match": False},
    "no_user_item_counts": {"data.features.user_item_counts": []},
    # counts by item value need the counts and their item column: these drop them too
    "no_counts": {"data.features.counts": False, "data.features.user_item_counts": []},
    "no_context": {"data.features.event": []},
    "no_item_columns": {"data.features.item": [], "data.features.user_item_counts": []},
    "no_side_features": {
        "data.features.user_id": False,
        "data.features.counts": False,
        "data.features.user_item_counts": [],
        "data.features.event": [],
        "data.features.item": [],
    },
    "id_only_features": {"model.text": False},
}
FAMILY_VARIANTS = (
    "no_user_id",
    "with_user_id",
    "no_history_match",
    "no_user_item_counts",
    "no_counts",
    "no_context",
    "no_item_columns",
    "no_side_features",
    "id_only_features",
)


def cold_test_auc(checkpoint: str, samples_dir: str) -> tuple[float, int]:
    """(test AUC, rows) on the test rows whose target item never was a train row's target: the cold-start
    case, where an item's id embedding and biases learned nothing and only its text and columns speak."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from seqctr.platform.data.contract import list_parquet_files, open_parquet
    from seqctr.platform.model.metrics import auc
    from seqctr.platform.model.predictor import load_model
    from seqctr.platform.storage import join
    from seqctr.training.ingest import encode_table, side_of

    def split(name: str, columns: list[str] | None = None) -> pa.Table:
        return pa.concat_tables(
            open_parquet(f).read(columns=columns) for f in list_parquet_files(join(samples_dir, name))
        )

    seen = pc.unique(split("train", ["target"])["target"])
    test = split("test")
    cold = test.filter(pc.invert(pc.is_in(test["target"], value_set=seen)))
    if cold.num_rows == 0:
        return float("nan"), 0
    loaded = load_model(checkpoint)
    cfg = loaded.config
    probs, labels = [], []
    for batch in cold.to_batches(8192):
        arrays = encode_table(
            pa.Table.from_batches([batch]), loaded.index, cfg.model.id_buckets, cfg.data.max_seq_len, side_of(cfg)
        )
        probs.append(loaded.predict(arrays))
        labels.append(arrays["label"])
    return float(auc(np.concatenate(labels), np.concatenate(probs))), cold.num_rows


def run_variant(cfg: Any, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    from seqctr.training.trainer import run_training

    started = time.perf_counter()
    run_cfg = cfg.with_overrides({**overrides, "train.run_name": f"ablation-{name}"})
    result = run_training(run_cfg)
    test = result["test"]
    cold_auc, cold_rows = cold_test_auc(result["best_checkpoint"], run_cfg.data.samples)
    return {
        "variant": name,
        "overrides": overrides,
        "test_auc": round(test["auc"], 4),
        "test_gauc": round(test["gauc"], 4),
        "test_logloss": round(test["logloss"], 4),
        "lift_ratio": round(test.get("lift_ratio", float("nan")), 3),
        "best_val_auc": round(max(h["val_auc"] for h in result["history"]), 4),
        "cold_test_auc": round(cold_auc, 4),
        "cold_test_rows": cold_rows,
        "epochs": result["epochs_run"],
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="a.b=value for every variant")
    parser.add_argument("--epochs", type=int, default=2, help="the budget, the same for every variant")
    parser.add_argument("--events", type=int, default=None, help="synthetic events (default: the config's)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    parser.add_argument("--work-dir", default=None, help="default: a temp dir; reuses data built there")
    args = parser.parse_args(argv)

    from seqctr.demo import _generate
    from seqctr.platform.config import load_config, resolve_paths
    from seqctr.platform.runtime import init_ray

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="seqctr-ablation-"))
    cfg = resolve_paths(load_config(args.config, args.overrides), work)
    budget: dict[str, Any] = {"train.epochs": args.epochs, "train.patience": args.epochs}
    if args.events:
        budget["data.synthetic.events"] = args.events
    cfg = cfg.with_overrides(budget)
    init_ray()
    oracle = _generate(cfg).get("oracle_auc")
    rows = []
    for name in args.variants.split(","):
        rows.append(run_variant(cfg, name, VARIANTS[name]))
        print(f"[ablation] {rows[-1]}", file=sys.stderr, flush=True)
    by_name = {r["variant"]: r for r in rows}
    full = by_name.get("bert_lstm")
    margins = {
        f"bert_lstm_minus_{other}": round(full["test_auc"] - by_name[other]["test_auc"], 4)
        for other in ("id_only_lstm", "bert_mean", "bert_lstm_no_time", *FAMILY_VARIANTS)
        if full and other in by_name
    }
    header = (
        f"{'variant':<22}{'test AUC':>9}{'GAUC':>8}{'logloss':>9}{'lift':>7}{'val AUC':>9}{'cold AUC':>9}{'sec':>8}"
    )
    print(f"oracle AUC {oracle:.4f}, {args.epochs} epochs each, {cfg.data.synthetic.events} events")
    print(header)
    for r in rows:
        print(
            f"{r['variant']:<22}{r['test_auc']:>9.4f}{r['test_gauc']:>8.4f}{r['test_logloss']:>9.4f}"
            f"{r['lift_ratio']:>7.3f}{r['best_val_auc']:>9.4f}{r['cold_test_auc']:>9.4f}{r['seconds']:>8.0f}"
        )
    cold = {r["cold_test_rows"] for r in rows}
    print(f"cold AUC: test rows whose target never was a train target ({', '.join(map(str, sorted(cold)))} rows)")
    print(json.dumps(margins))
    out = {"oracle_auc": oracle, "epochs": args.epochs, "rows": rows, "margins": margins}
    (work / "ablation.json").write_text(json.dumps(out, indent=2))
    return rows


if __name__ == "__main__":
    main()
