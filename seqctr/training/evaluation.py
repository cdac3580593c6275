"""Exact offline evaluation of a checkpoint: Ray Data scores, the driver gathers only (label, p, user).

    seqctr evaluate --checkpoint work/runs/seqctr/latest --events work/data/events

Metrics are computed once over every prediction (never averaged per batch); when the log carries
the generator's `p_true`, the oracle AUC and the model's share of the oracle's lift are added.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import ray

from seqctr.platform.config import ConfigError
from seqctr.platform.data.contract import list_parquet_files, open_parquet
from seqctr.platform.model.metrics import auc, evaluate
from seqctr.platform.model.predictor import load_model
from seqctr.platform.progress import Progress
from seqctr.training.ingest import encode_table, side_of


def _say(message: str) -> None:
    print(f"[seqctr.evaluate] {message}", file=sys.stderr, flush=True)


def parquet_rows(path: str) -> int:
    """Rows of a Parquet file or folder, from the footers alone (no data read)."""
    return sum(open_parquet(file).metadata.num_rows for file in list_parquet_files(path))


def score_dataset(
    checkpoint_dir: str, samples: ray.data.Dataset, total: int | None = None, what: str = "evaluate"
) -> dict[str, np.ndarray]:
    """Stream the samples through the checkpoint's model in this process, batch by batch.

    Ray Data reads and streams the blocks; the model is loaded once here (no actor start-up), and
    only (label, prob, user[, p_true]) per sample is kept. Given `total` (the rows expected), a
    progress line (done of total, rate, ETA) goes to stderr every few seconds, and a closing one.
    """
    loaded = load_model(checkpoint_dir)
    cfg = loaded.config
    parts: dict[str, list[np.ndarray]] = {}
    progress = Progress(_say if total is not None else lambda _: None, what, total or 0, "samples")
    with progress.ticking(finish=total is not None):
        for batch in samples.iter_batches(batch_format="pyarrow", batch_size=8192):
            arrays = encode_table(batch, loaded.index, cfg.model.id_buckets, cfg.data.max_seq_len, side_of(cfg))
            keep = {k: arrays[k] for k in ("label", "user", "p_true") if k in arrays}
            for key, value in {**keep, "prob": loaded.predict(arrays)}.items():
                parts.setdefault(key, []).append(value)
            progress.advance(batch.num_rows)
    if not parts:
        raise ValueError("nothing to evaluate: the dataset has no rows")
    return {k: np.concatenate(v) for k, v in parts.items()}


def metrics_for(arrays: dict[str, np.ndarray]) -> dict[str, float]:
    metrics = {k: float(v) for k, v in evaluate(arrays["label"], arrays["prob"], arrays["user"]).items()}
    if "p_true" in arrays:
        oracle = float(auc(arrays["label"], arrays["p_true"]))
        metrics["oracle_auc"] = oracle
        metrics["lift_ratio"] = (metrics["auc"] - 0.5) / (oracle - 0.5) if oracle > 0.5 else float("nan")
    return metrics


def evaluate_checkpoint_on_split(checkpoint_dir: str, samples_dir: str, split: str) -> dict[str, Any]:
    """Score one split with a checkpoint (a folder or a URI) and merge `{split}_*` into its metrics."""
    from seqctr.platform.data.samples import read_samples
    from seqctr.platform.model.checkpoint import update_metrics
    from seqctr.platform.registry import resolve_checkpoint_uri

    samples = read_samples(samples_dir, split)
    total = parquet_rows(f"{samples_dir.rstrip('/')}/{split}")
    arrays = score_dataset(resolve_checkpoint_uri(checkpoint_dir), samples, total, f"evaluate {split}")
    metrics = metrics_for(arrays)
    update_metrics(checkpoint_dir, {f"{split}_{k}": v for k, v in metrics.items()})
    return {"metrics": metrics, "arrays": arrays}


def evaluate_log(checkpoint: str, events: str | None = None) -> dict[str, Any]:
    """Score a behaviour log (histories are built from that log alone) or, by default, the test split."""
    from seqctr.platform.data.samples import build_samples, read_events, read_samples
    from seqctr.platform.model.checkpoint import read_checkpoint
    from seqctr.platform.registry import resolve_checkpoint_uri

    checkpoint_dir = resolve_checkpoint_uri(checkpoint, None)
    cfg = read_checkpoint(checkpoint_dir).config
    if events and side_of(cfg) is not None:
        # A raw log's samples carry no side or count columns (those come from `seqctr data build`).
        raise ConfigError(
            f"evaluate --events: {checkpoint_dir} was trained with per-sample data.features (context, user id or "
            "counts), which a raw log cannot give; build the log with `seqctr data build` and evaluate its test split"
        )
    if events:  # one sample per event
        samples, total = build_samples(read_events(events), cfg.data.max_seq_len), parquet_rows(events)
    else:
        samples, total = read_samples(cfg.data.samples, "test"), parquet_rows(f"{cfg.data.samples.rstrip('/')}/test")
    metrics = metrics_for(score_dataset(checkpoint_dir, samples, total))
    return {"checkpoint": checkpoint_dir, "events": events or f"{cfg.data.samples}/test", **metrics}
