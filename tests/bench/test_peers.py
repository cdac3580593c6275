"""bench/peers.py --quick: every model's row on seqctr's own splits, AUCs in [0, 1].

Shape only: who wins and how fast is the benchmark's business (no timed asserts, no ranking)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import peers  # noqa: E402

from seqctr.platform.config import CONFIGS_DIR  # noqa: E402


def test_quick_run_has_a_row_per_model(ray_session, tmp_path, capsys):
    out = peers.main(["--quick", "--config", str(CONFIGS_DIR / "tiny.yaml"), "--work-dir", str(tmp_path)])
    rows = {r["model"]: r for r in out["rows"]}
    assert list(rows) == list(peers.MODELS)
    missing = peers.deepctr_unavailable()  # DeepCTR-Torch is the optional `bench` extra
    for name, row in rows.items():
        if name in peers.DEEPCTR_MODELS and missing:
            assert row["unavailable"] == missing
            continue
        assert 0.0 <= row["auc"] <= 1.0 and 0.0 <= row["gauc"] <= 1.0, row
        assert row["logloss"] > 0 and row["seconds"] >= 0 and math.isfinite(row["lift"]), row
    assert 0.5 < out["oracle_auc"] <= 1.0
    printed = capsys.readouterr().out
    assert "oracle AUC" in printed and all(name in printed for name in peers.MODELS)
    assert (tmp_path / "peers.json").is_file()
