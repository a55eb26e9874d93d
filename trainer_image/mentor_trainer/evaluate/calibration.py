"""Calibration: does the model's confidence match how often it is right?

Fine-tuning on a narrow domain tends to make a model over-confident. ECE measures the gap;
temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks") fits the
one parameter that closes most of it without changing any prediction.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

# Temperatures searched (on log T, so 1/20 and 20 are equally far from 1).
_LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))


def reliability_curve(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = 10
) -> list[dict[str, float]]:
    """Points of the reliability diagram, one per non-empty equal-width bin ((low, high],
    the first also holds 0): bin_low, bin_high, mean confidence, accuracy, count."""
    conf = np.asarray(confidences, dtype=float)
    hits = np.asarray(correct, dtype=float)
    if conf.shape != hits.shape:
        raise ValueError(f"{conf.size} confidences but {hits.size} correctness values")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    index = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    conf_sums = np.bincount(index, weights=conf, minlength=bins)
    hit_sums = np.bincount(index, weights=hits, minlength=bins)
    return [
        {
            "bin_low": float(b / bins),
            "bin_high": float((b + 1) / bins),
            "confidence": float(conf_sums[b] / counts[b]),
            "accuracy": float(hit_sums[b] / counts[b]),
            "count": int(counts[b]),
        }
        for b in np.flatnonzero(counts)
    ]


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """Sum over bins of (share of examples) x |accuracy - mean confidence|; NaN without examples."""
    curve = reliability_curve(confidences, correct, bins)
    total = sum(point["count"] for point in curve)
    if not total:
        return math.nan
    return sum(point["count"] / total * abs(point["accuracy"] - point["confidence"]) for point in curve)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """T > 0 minimising the NLL of softmax(logits / T) on held-out labels; 1.0 without data."""
    z = np.asarray(logits, dtype=float)
    y = np.asarray(labels, dtype=int)
    if not len(y):
        return 1.0
    if z.ndim != 2 or len(z) != len(y):
        raise ValueError(f"logits must be [n, classes] for {len(y)} labels, got shape {z.shape}")

    def nll(log_t: float) -> float:
        return -float(np.mean(log_softmax(z / math.exp(log_t), axis=1)[np.arange(len(y)), y]))

    result = minimize_scalar(nll, bounds=_LOG_T_BOUNDS, method="bounded")
    return math.exp(result.x)


def softmax_confidences(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probability of the predicted (arg-max) class after scaling by the temperature."""
    return softmax(np.asarray(logits, dtype=float) / temperature, axis=1).max(axis=1)
