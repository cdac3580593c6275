"""bench/observable_baseline.py: the synthetic generator's hidden state is mostly observable."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from observable_baseline import observable_baseline  # noqa: E402

from seqctr.platform.config import SyntheticConfig  # noqa: E402
from seqctr.platform.data.synthetic import generate_synthetic  # noqa: E402


def test_hidden_state_is_mostly_observable(tmp_path):
    """A logistic regression on earlier clicks' categories + item CTR gets most of the oracle's lift."""
    cfg = SyntheticConfig(users=300, items=300, events=40_000, categories=10, seed=2, chunk_events=10_000)
    report = generate_synthetic(cfg, tmp_path)
    result = observable_baseline(report["events_path"], report["items_path"])
    assert result["test_rows"] == 4000 and result["oracle_auc"] > 0.75
    assert result["ratio"] > 0.8
