"""Temperature scaling (Guo et al. 2017) and the needs-review threshold, both fitted on validation data."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, log_probs_fn=None) -> float:
    """The T minimising validation NLL of softmax(logits / T) (1-D search on log T; robust and exact enough).

    Args:
        logits: [N, K] uncalibrated scores.
        targets: [N] gold indices.
        log_probs_fn: optional (scaled_logits) -> log P at the label's level; default log_softmax.
    """
    fn = log_probs_fn or (lambda z: torch.log_softmax(z, dim=-1))
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))
    with torch.no_grad():
        nll = [float(-fn(logits / t).gather(1, targets[:, None]).mean()) for t in grid]
    return float(grid[int(np.argmin(nll))])


def choose_threshold(
    confidence: np.ndarray, correct: np.ndarray, target_accuracy: float = 0.9, weights: np.ndarray | None = None
) -> float:
    """Lowest confidence threshold whose answered rows reach `target_accuracy`; rows below go to a reviewer.

    `weights` (per row, default 1) make the accuracy of the answered rows a weighted mean, so a small but
    important part of the validation data (e.g. general goods beside thousands of apparel rows) counts as much
    as the rest. Returns 1.0 (everything reviewed) when no threshold reaches the target.
    """
    order = np.argsort(-confidence)
    w = np.ones(len(confidence)) if weights is None else np.asarray(weights, dtype=float)[order]
    conf, corr = confidence[order], correct[order].astype(float)
    running = np.cumsum(w * corr) / np.cumsum(w)
    ok = np.nonzero(running >= target_accuracy)[0]
    if len(ok) == 0:
        return 1.0
    # the largest answered set that still meets the target
    return float(conf[ok[-1]])


def dataset_weights(sources: list[str]) -> np.ndarray:
    """Per row, 1 / (rows of its dataset), the dataset being the source name up to its first '-'
    ("myntra-full", "myntra-image" -> "myntra"; "uk-val" -> "uk"): every dataset weighs the same in total."""
    names = [s.split("-", 1)[0] for s in sources]
    counts = Counter(names)
    return np.array([1.0 / counts[n] for n in names])
