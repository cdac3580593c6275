"""The training report's plots read right: whole-epoch ticks on the curves."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from seqctr.training.report import curves_figure


@pytest.mark.parametrize("epochs", [1, 2, 3, 7, 40])
def test_curves_tick_whole_epochs_only(epochs):
    history = [
        {"epoch": e, "train_loss": 0.6 - 0.01 * e, "val_logloss": 0.55, "val_auc": 0.7 + 0.01 * e, "val_gauc": 0.65}
        for e in range(epochs)
    ]
    fig = curves_figure(history)
    try:
        fig.canvas.draw()
        for ax in fig.axes:
            low, high = ax.get_xlim()
            shown = [(t, label.get_text()) for t, label in zip(ax.get_xticks(), ax.get_xticklabels(), strict=True)]
            shown = [(t, text) for t, text in shown if low <= t <= high]
            assert shown, "no ticks drawn"
            assert all(float(t).is_integer() and text == str(int(t)) for t, text in shown), shown
    finally:
        plt.close(fig)
