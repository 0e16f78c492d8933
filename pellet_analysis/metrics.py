"""Accuracy metrics against ground truth (pure array functions)."""

from __future__ import annotations

import numpy as np

__all__ = ["dice", "pixel_f1", "instance_f1"]


def dice(a, b) -> float:
    """Dice coefficient of two masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def pixel_f1(predicted, true) -> float:
    """F1 of a predicted mask against a true mask (= Dice; NaN when both are empty)."""
    predicted, true = np.asarray(predicted, bool), np.asarray(true, bool)
    if not predicted.any() and not true.any():
        return float("nan")
    return dice(predicted, true)


def matched_instances(predicted, true, *, iou_threshold: float = 0.5) -> np.ndarray:
    """The (true, predicted) label pairs whose overlap has IoU above the threshold, shape (k, 2).

    With a threshold of at least 0.5 each instance has at most one such partner.
    """
    predicted = np.asarray(predicted).astype(np.int64, copy=False)
    true = np.asarray(true).astype(np.int64, copy=False)
    both = (true > 0) & (predicted > 0)
    if not both.any():
        return np.zeros((0, 2), np.int64)
    pairs, inter = np.unique(np.stack([true[both], predicted[both]], axis=1), axis=0, return_counts=True)
    area_t = np.bincount(true.ravel())
    area_p = np.bincount(predicted.ravel())
    iou = inter / (area_t[pairs[:, 0]] + area_p[pairs[:, 1]] - inter)
    return pairs[iou > iou_threshold]


def instance_f1(predicted, true, *, iou_threshold: float = 0.5) -> dict:
    """Instance F1 at an IoU threshold: a true instance is found when one predicted instance overlaps it with IoU above the threshold.

    With a threshold of at least 0.5 each instance has at most one such partner.

    Returns
    -------
    dict
        ``f1``, ``precision``, ``recall``, ``tp``, ``n_true``, ``n_predicted``.
    """
    predicted = np.asarray(predicted).astype(np.int64, copy=False)
    true = np.asarray(true).astype(np.int64, copy=False)
    n_true = len(np.unique(true[true > 0]))
    n_pred = len(np.unique(predicted[predicted > 0]))
    tp = len(matched_instances(predicted, true, iou_threshold=iou_threshold))
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * tp / (n_true + n_pred) if (n_true + n_pred) else 1.0
    return {"f1": f1, "precision": precision, "recall": recall, "tp": tp, "n_true": n_true, "n_predicted": n_pred}
