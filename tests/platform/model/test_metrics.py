"""Metrics are exact: checked against sklearn on random data with ties, and against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score, roc_curve

from seqctr.platform.model.metrics import (
    auc,
    calibration,
    calibration_bins,
    evaluate,
    gauc,
    logloss,
    roc_curve_points,
)


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_many_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 500)
    scores = rng.integers(0, 7, 500) / 7.0  # only 7 distinct values: heavy ties
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    continuous = rng.random(500)
    assert auc(labels, continuous) == pytest.approx(roc_auc_score(labels, continuous), abs=1e-12)


def test_auc_hand_cases() -> None:
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts one half
    assert auc([1, 1, 0], [0.9, 0.2, 0.2]) == 0.75  # pairs: (0.9>0.2)=1, (0.2=0.2)=0.5
    assert auc([True, False], [0.2, 0.1]) == 1.0


def test_auc_one_class_is_nan() -> None:
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(auc([0, 0], [0.1, 0.2]))
    assert math.isnan(auc([], []))


def test_bad_inputs_raise_with_row() -> None:
    with pytest.raises(ValueError, match=r"labels: must be 0 or 1, found 2 at row 1"):
        auc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"scores: must be finite, found nan at row 2"):
        auc([0, 1, 1], [0.1, 0.2, float("nan")])
    with pytest.raises(ValueError, match=r"scores: 2 values but 3 labels"):
        auc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"probs: must be a probability in \[0, 1\], found 1.5 at row 0"):
        logloss([1], [1.5])
    with pytest.raises(ValueError, match=r"users: 1 values but 2 labels"):
        gauc([0, 1], [0.1, 0.2], ["a"])
    with pytest.raises(ValueError, match="evaluate: no samples"):
        evaluate([], [])


def test_gauc_hand_case_skips_single_class_user() -> None:
    labels = [1, 0, 0, 1, 0, 0, 1, 1]
    scores = [0.9, 0.1, 0.5, 0.3, 0.4, 0.2, 0.6, 0.7]
    users = ["a", "a", "a", "b", "b", "b", "c", "c"]
    # a: positive 0.9 beats both negatives -> 1.0 (3 impressions)
    # b: positive 0.3 beats 0.2, loses to 0.4 -> 0.5 (3 impressions)
    # c: only positives -> skipped
    assert gauc(labels, scores, users) == pytest.approx((3 * 1.0 + 3 * 0.5) / 6)


def test_gauc_matches_per_user_sklearn_loop_with_ties() -> None:
    rng = np.random.default_rng(7)
    n = 3000
    users = rng.integers(0, 200, n)
    labels = rng.integers(0, 2, n)
    scores = rng.integers(0, 5, n) / 5.0
    total, weight = 0.0, 0
    for u in np.unique(users):
        sel = users == u
        if labels[sel].min() != labels[sel].max():
            total += roc_auc_score(labels[sel], scores[sel]) * sel.sum()
            weight += sel.sum()
    assert gauc(labels, scores, users) == pytest.approx(total / weight, abs=1e-12)


def test_gauc_nan_when_no_user_has_both_classes() -> None:
    assert math.isnan(gauc([1, 0], [0.3, 0.2], ["a", "b"]))


def test_logloss_and_calibration() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 400)
    probs = rng.uniform(0.01, 0.99, 400)
    assert logloss(labels, probs) == pytest.approx(log_loss(labels, probs), abs=1e-12)
    assert logloss([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2))
    assert logloss([1], [0.0]) == pytest.approx(-math.log(1e-7))  # clipped, not inf
    assert calibration([1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(2.0)
    assert math.isnan(calibration([0, 0], [0.1, 0.2]))


def test_evaluate_returns_every_metric() -> None:
    labels = [1, 0, 0, 1]
    probs = [0.8, 0.2, 0.6, 0.4]
    out = evaluate(labels, probs, users=[1, 1, 2, 2])
    assert set(out) == {"auc", "gauc", "logloss", "calibration", "count", "ctr"}
    assert out["auc"] == pytest.approx(0.75)
    assert out["gauc"] == pytest.approx(0.5)  # user 1: 1.0, user 2: 0.0, equal weights
    assert out["count"] == 4 and out["ctr"] == 0.5
    assert out["calibration"] == pytest.approx(1.0)
    assert out["logloss"] == pytest.approx(log_loss(labels, probs))
    assert math.isnan(evaluate(labels, probs)["gauc"])


def test_roc_curve_points_match_sklearn_and_area_is_auc() -> None:
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 2, 300)
    scores = rng.integers(0, 20, 300) / 20.0
    fpr, tpr, thr = roc_curve_points(labels, scores)
    sk_fpr, sk_tpr, sk_thr = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    assert thr[0] == np.inf
    assert np.trapezoid(tpr, fpr) == pytest.approx(auc(labels, scores), abs=1e-12)
    with pytest.raises(ValueError, match="one class"):
        roc_curve_points([1, 1], [0.1, 0.2])


def test_calibration_bins_hand_case() -> None:
    out = calibration_bins([0, 1, 1, 0, 1], [0.05, 0.15, 0.55, 0.45, 1.0], bins=2)
    np.testing.assert_allclose(out["lower"], [0.0, 0.5])
    np.testing.assert_allclose(out["upper"], [0.5, 1.0])
    np.testing.assert_array_equal(out["count"], [3, 2])
    np.testing.assert_allclose(out["mean_prob"], [(0.05 + 0.15 + 0.45) / 3, (0.55 + 1.0) / 2])
    np.testing.assert_allclose(out["ctr"], [1 / 3, 1.0])
    empty = calibration_bins([1], [0.95], bins=4)
    np.testing.assert_array_equal(empty["count"], [0, 0, 0, 1])
    assert np.isnan(empty["ctr"][:3]).all() and empty["ctr"][3] == 1.0
