"""Exact CTR metrics in numpy: AUC (ties averaged), GAUC, log loss, calibration, plot data.

AUC is the Mann-Whitney statistic from average ranks, so tied scores count one half, exactly as
sklearn's roc_auc_score. GAUC is the impression-weighted mean of per-user AUCs, computed for all
users at once from one sort (no Python loop over users). Metrics that are undefined (AUC with one
class) are NaN rather than an exception: a validation split can legitimately lack positives.
Malformed input (labels outside {0, 1}, NaN scores, length mismatches) raises ValueError.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _labels(labels: Any, name: str = "labels") -> np.ndarray:
    y = np.asarray(labels).reshape(-1)
    if y.dtype == bool:
        return y.astype(np.float64)
    if not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"{name}: expected numeric 0/1 labels, got dtype {y.dtype}")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}: must be 0 or 1, found {y[row].item()!r} at row {row}")
    return y.astype(np.float64)


def _scores(scores: Any, n: int, name: str = "scores", unit_interval: bool = False) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(s) != n:
        raise ValueError(f"{name}: {len(s)} values but {n} labels")
    bad = ~np.isfinite(s)
    if unit_interval:
        bad |= (s < 0) | (s > 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        what = "a probability in [0, 1]" if unit_interval else "finite"
        raise ValueError(f"{name}: must be {what}, found {s[row].item()!r} at row {row}")
    return s


def _tie_groups(keys_changed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For sorted data where `keys_changed[i]` marks the start of a new tie group: (group id of each
    element, mean 0-based position of each group)."""
    starts = np.flatnonzero(keys_changed)
    ends = np.append(starts[1:], len(keys_changed))  # exclusive
    return np.cumsum(keys_changed) - 1, (starts + ends - 1) / 2.0


def auc(labels: Any, scores: Any) -> float:
    """ROC AUC = P(score of a random positive > a random negative), ties counted 1/2. NaN with one class."""
    y = _labels(labels)
    s = _scores(scores, len(y))
    pos = y.sum()
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    group, mean_pos = _tie_groups(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ranks = mean_pos[group] + 1.0  # 1-based average ranks, in sorted order
    rank_sum = float((ranks * y[order]).sum())
    return (rank_sum - pos * (pos + 1) / 2.0) / (pos * neg)


def gauc(labels: Any, scores: Any, users: Any) -> float:
    """Per-user AUC weighted by each user's impressions; users with one class are skipped.
    NaN when no user has both classes."""
    y = _labels(labels)
    s = _scores(scores, len(y))
    u = np.asarray(users).reshape(-1)
    if len(u) != len(y):
        raise ValueError(f"users: {len(u)} values but {len(y)} labels")
    if len(y) == 0:
        return float("nan")
    _, codes = np.unique(u, return_inverse=True)
    codes = codes.reshape(-1)
    order = np.lexsort((s, codes))  # by user, then score
    cu, cs, cy = codes[order], s[order], y[order]
    user_start = np.r_[True, cu[1:] != cu[:-1]]
    tie_start = user_start | np.r_[True, cs[1:] != cs[:-1]]
    user, _ = _tie_groups(user_start)
    first = np.flatnonzero(user_start)  # sorted position of each user's first row
    tie, mean_pos = _tie_groups(tie_start)
    rank = mean_pos[tie] - first[user] + 1.0  # 1-based average rank within the user
    n = np.bincount(user).astype(np.float64)
    pos = np.bincount(user, weights=cy)
    neg = n - pos
    rank_sum = np.bincount(user, weights=rank * cy)
    ok = (pos > 0) & (neg > 0)
    if not ok.any():
        return float("nan")
    per_user = (rank_sum[ok] - pos[ok] * (pos[ok] + 1) / 2.0) / (pos[ok] * neg[ok])
    return float((per_user * n[ok]).sum() / n[ok].sum())


def logloss(labels: Any, probs: Any, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, probabilities clipped to [eps, 1 - eps]."""
    y = _labels(labels)
    p = np.clip(_scores(probs, len(y), "probs", unit_interval=True), eps, 1.0 - eps)
    if len(y) == 0:
        return float("nan")
    return float(-(y * np.log(p) + (1.0 - y) * np.log1p(-p)).mean())


def calibration(labels: Any, probs: Any) -> float:
    """mean(prob) / mean(label): 1 = calibrated, > 1 over-predicts. NaN without positives."""
    y = _labels(labels)
    p = _scores(probs, len(y), "probs", unit_interval=True)
    if len(y) == 0 or y.sum() == 0:
        return float("nan")
    return float(p.mean() / y.mean())


def evaluate(labels: Any, probs: Any, users: Any = None) -> dict[str, float]:
    """All metrics at once: auc, gauc (NaN without users), logloss, calibration, count, ctr."""
    y = _labels(labels)
    p = _scores(probs, len(y), "probs", unit_interval=True)
    if len(y) == 0:
        raise ValueError("evaluate: no samples (empty labels)")
    return {
        "auc": auc(y, p),
        "gauc": gauc(y, p, users) if users is not None else float("nan"),
        "logloss": logloss(y, p),
        "calibration": calibration(y, p),
        "count": int(len(y)),
        "ctr": float(y.mean()),
    }


def roc_curve_points(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): one point per distinct score, highest threshold first, from (0, 0)
    (threshold +inf) to (1, 1); the trapezoid area under it equals `auc`."""
    y = _labels(labels)
    s = _scores(scores, len(y))
    pos, neg = y.sum(), len(y) - y.sum()
    if pos == 0 or neg == 0:
        raise ValueError("roc_curve_points: labels hold one class only; the ROC curve is undefined")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_group = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(y)[last_of_group]
    fp = np.cumsum(1.0 - y)[last_of_group]
    fpr = np.r_[0.0, fp / neg]
    tpr = np.r_[0.0, tp / pos]
    return fpr, tpr, np.r_[np.inf, s[last_of_group]]


def calibration_bins(labels: Any, probs: Any, bins: int = 10) -> dict[str, np.ndarray]:
    """Reliability diagram data over `bins` equal-width probability bins: lower, upper, count,
    mean_prob and ctr per bin (NaN means in empty bins). A probability of exactly 1 falls in the last bin."""
    if bins < 1:
        raise ValueError(f"calibration_bins: bins must be >= 1, got {bins}")
    y = _labels(labels)
    p = _scores(probs, len(y), "probs", unit_interval=True)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(which, weights=p, minlength=bins) / count
        ctr = np.bincount(which, weights=y, minlength=bins) / count
    return {"lower": edges[:-1], "upper": edges[1:], "count": count, "mean_prob": mean_prob, "ctr": ctr}
