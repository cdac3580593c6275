"""How much of the synthetic oracle's lift a simple model can reach from what a model sees.

    .venv/bin/python bench/observable_baseline.py --events 200000

A logistic regression (scikit-learn) on the categories of the user's earlier clicks and the item's
train CTR: a sanity check of the synthetic generator (its hidden state must be mostly observable),
and a floor every seqctr model must clear. Used by bench/generate_speed.py.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.linear_model import LogisticRegression

from seqctr.platform.config import SyntheticConfig
from seqctr.platform.data.synthetic import generate_synthetic, read_columns
from seqctr.platform.model.metrics import auc


def observable_baseline(
    events_path: str | Path,
    items_path: str | Path,
    max_history: int = 30,
    train_fraction: float = 0.8,
    test_fraction: float = 0.1,
) -> dict:
    """How much of the oracle's lift is reachable from what a model sees: a logistic regression on
    the categories of the user's earlier clicks (last 1/3/10/`max_history`) and the item's train CTR,
    fitted on the oldest `train_fraction` by time and scored on the newest `test_fraction`."""
    ev = read_columns(events_path, ["user_id", "item_id", "timestamp", "label", "p_true"])
    it = read_columns(items_path, ["item_id", "category"])
    item_row = pc.index_in(pa.array(ev["item_id"]), pa.array(it["item_id"]))
    if item_row.null_count:
        raise ValueError(f"{events_path}: column 'item_id' has {item_row.null_count} ids not in {items_path}")
    cat_codes = pc.dictionary_encode(pa.array(it["category"])).indices.to_numpy()
    cat = cat_codes[item_row.to_numpy()]
    item = item_row.to_numpy()
    user = pc.dictionary_encode(pa.array(ev["user_id"])).indices.to_numpy()
    n, n_cats = len(cat), int(cat_codes.max()) + 1
    time_rank = np.empty(n, dtype=np.int64)
    time_rank[np.argsort(ev["timestamp"], kind="stable")] = np.arange(n)
    train = time_rank < int(train_fraction * n)
    test = time_rank >= int((1 - test_fraction) * n)
    label = ev["label"].astype(np.float64)

    order = np.lexsort((ev["timestamp"], user))  # user-major, oldest first
    u, c, y = user[order], cat[order], ev["label"][order].astype(np.int64)
    before = np.cumsum(y) - y  # clicks strictly earlier in the whole sorted log
    user_first = np.r_[True, u[1:] != u[:-1]]
    offset = np.maximum.accumulate(np.where(user_first, before, 0))
    n_hist = before - offset  # the user's earlier clicks
    counts = np.zeros((int(y.sum()) + 1, n_cats), dtype=np.int32)  # per-category running click counts
    np.cumsum(np.eye(n_cats, dtype=np.int32)[c[y == 1]], axis=0, out=counts[1:])

    def share(k: int) -> np.ndarray:
        lo = np.maximum(before - k, offset)
        return (counts[before, c] - counts[lo, c]) / np.maximum(before - lo, 1)

    feats = [share(1), share(3), share(10), share(max_history), np.log1p(np.minimum(n_hist, max_history))]
    feats += [feats[0] * feats[1], feats[1] * feats[2], feats[2] * feats[3]]
    x = np.empty((n, len(feats) + 2))
    x[order, : len(feats)] = np.stack(feats, axis=1)
    clicks = np.bincount(item[train], weights=label[train], minlength=len(cat_codes))
    shows = np.bincount(item[train], minlength=len(cat_codes))
    prior = label[train].mean()
    item_ctr = (clicks + 20 * prior) / (shows + 20)
    x[:, -2] = np.log(item_ctr / (1 - item_ctr))[item]
    x[:, -1] = 1.0
    fit = LogisticRegression(C=1.0 / (1e-3 * int(train.sum())), max_iter=200).fit(x[train, :-1], label[train])
    base = auc(ev["label"][test], fit.decision_function(x[test, :-1]))
    oracle = auc(ev["label"][test], ev["p_true"][test])
    return {
        "auc": base,
        "oracle_auc": oracle,
        "ratio": (base - 0.5) / (oracle - 0.5),
        "train_rows": int(train.sum()),
        "test_rows": int(test.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cfg = SyntheticConfig(events=args.events, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        report = generate_synthetic(cfg, Path(tmp))
        print(json.dumps(observable_baseline(report["events_path"], report["items_path"])))


if __name__ == "__main__":
    main()
