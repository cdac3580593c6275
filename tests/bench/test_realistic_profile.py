"""bench/realistic_profile.py: the families sum to the oracle, and the reachable ceiling stays under it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from realistic_profile import _earlier_sums, profile_figures  # noqa: E402

from seqctr.platform.config import SyntheticConfig  # noqa: E402


def test_earlier_sums_count_only_strictly_earlier_rows_of_the_same_key():
    key = np.array([3, 1, 3, 3, 1, 2])
    values = np.array([[1.0, 10.0], [2.0, 20.0], [4.0, 40.0], [8.0, 80.0], [16.0, 160.0], [32.0, 320.0]])
    got = _earlier_sums(key, values)
    want = np.array([[0, 0], [0, 0], [1, 10], [5, 50], [2, 20], [0, 0]], dtype=float)
    np.testing.assert_array_equal(got, want)


def test_reachable_ceiling_lies_between_the_families_and_the_oracle():
    cfg = SyntheticConfig(users=800, items=400, events=30_000, categories=8, seed=3, profile="realistic")
    r = profile_figures(cfg)
    c = r["ceiling"]
    oracle = r["oracle_auc_test"]
    # Learning the user's part from their past is worth more than any one user-side family alone, and
    # cannot beat knowing it (the intent aside), nor the oracle.
    families = r["families"]
    assert max(families[f]["alone_auc"] for f in ("user", "affinity")) < c["user_learned_auc_test"]
    assert c["user_learned_auc_test"] < c["intent_from_10_impressions_auc_test"] < oracle
    assert c["user_interests_exact_auc_test"] < oracle
