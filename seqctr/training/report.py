"""The training report: metrics.json, a terminal table, and PNG plots (ROC, calibration, curves)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on clusters and CI machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from seqctr.platform.model.metrics import calibration_bins, roc_curve_points  # noqa: E402
from seqctr.platform.storage import join, output_dir, upload_dir  # noqa: E402


def metrics_table(rows: dict[str, dict[str, float]]) -> str:
    """A fixed-width table: one row per split/model, one column per metric."""
    cols = ["auc", "gauc", "logloss", "calibration", "oracle_auc", "lift_ratio", "count"]
    cols = [c for c in cols if any(c in r for r in rows.values())]
    header = f"{'':<10}" + "".join(f"{c:>13}" for c in cols)
    lines = [header, "-" * len(header)]
    for name, r in rows.items():
        cells = "".join(f"{r[c]:>13.4f}" if isinstance(r.get(c), float) else f"{r.get(c, ''):>13}" for c in cols)
        lines.append(f"{name:<10}{cells}")
    return "\n".join(lines)


def _plot_roc(path: Path, labels: np.ndarray, probs: np.ndarray, auc_value: float) -> None:
    fpr, tpr, _ = roc_curve_points(labels, probs)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, label=f"model (AUC {auc_value:.4f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_calibration(path: Path, labels: np.ndarray, probs: np.ndarray) -> None:
    bins = calibration_bins(labels, probs, bins=10)
    filled = bins["count"] > 0
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect")
    ax.plot(bins["mean_prob"][filled], bins["ctr"][filled], "o-", label="model")
    ax.set(xlabel="mean predicted CTR", ylabel="observed CTR", title="Calibration (test)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curves_figure(history: list[dict[str, Any]]) -> plt.Figure:
    """Loss and validation metrics by epoch, on whole-epoch ticks."""
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8))
    a.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    a.plot(epochs, [h["val_logloss"] for h in history], "o-", label="val logloss")
    a.set(xlabel="epoch", title="Loss")
    a.legend()
    b.plot(epochs, [h["val_auc"] for h in history], "o-", label="val AUC")
    b.plot(epochs, [h["val_gauc"] for h in history], "o-", label="val GAUC")
    b.set(xlabel="epoch", title="Validation")
    b.legend()
    for ax in (a, b):  # epochs are whole numbers: no 0.5 ticks on a two-epoch run
        if len(epochs) <= 12:
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def _plot_curves(path: Path, history: list[dict[str, Any]]) -> None:
    fig = curves_figure(history)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(out: str, checkpoint: str, test: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, str]:
    """Write the report folder (a local path or a URI; metrics.json last) and print the metrics table."""
    labels, probs = test["arrays"]["label"], test["arrays"]["prob"]
    metrics = test["metrics"]
    val = {k[4:]: v for k, v in (history[-1] if history else {}).items() if k.startswith("val_")}
    with tempfile.TemporaryDirectory(prefix="seqctr-report-") as staging, output_dir(out, "metrics.json") as target:
        tmp = Path(staging)
        (tmp / "metrics.json").write_text(
            json.dumps({"checkpoint": checkpoint, "test": metrics, "history": history}, indent=2, default=float)
        )
        _plot_roc(tmp / "roc.png", labels, probs, metrics["auc"])
        _plot_calibration(tmp / "calibration.png", labels, probs)
        if history:
            _plot_curves(tmp / "curves.png", history)
        upload_dir(tmp, target, last="metrics.json")
    print(metrics_table({"val (last)": val, "test (best)": metrics}))
    print(f"[seqctr] report: {out} (metrics.json, roc.png, calibration.png, curves.png)")
    return {name: join(out, name) for name in ("metrics.json", "roc.png", "calibration.png", "curves.png")}
