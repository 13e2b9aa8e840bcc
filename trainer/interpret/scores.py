"""The scores, delphi's definitions and the seed paper's:

    balanced accuracy = (TPR + TNR) / 2 over the windows answered: 1 perfect, 0 inverted,
                        0.5 for any scorer that ignores the text (constant or random)
    simulation        = Pearson correlation, over every token of the simulated windows, of
                        the predicted expected activation with the true one (0 when the
                        predictions are constant: they say nothing)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def balanced_accuracy(labels: Sequence[int], predictions: Sequence[int]) -> float | None:
    """Mean of the recall of each class; None unless both classes are present."""
    y, p = np.asarray(labels, bool), np.asarray(predictions, bool)
    if len(y) != len(p):
        raise ValueError("labels and predictions differ in length")
    if y.all() or not y.any():
        return None
    return float((p[y].mean() + (~p[~y]).mean()) / 2)


def pearson(predicted: Sequence[float], actual: Sequence[float]) -> float | None:
    """Correlation of predicted and true activations; 0 for constant predictions, None when
    the true activations are constant (nothing to predict) or there are fewer than 2."""
    a, b = np.asarray(predicted, np.float64), np.asarray(actual, np.float64)
    if len(a) != len(b):
        raise ValueError("predicted and actual differ in length")
    if len(a) < 2 or np.ptp(b) == 0:
        return None
    if np.ptp(a) == 0:
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / np.sqrt((a @ a) * (b @ b)))


def summarize(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Mean, median, quartiles and count of the scores that exist."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    if not len(v):
        return {"n": 0, "mean": None, "median": None, "q1": None, "q3": None}
    q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75])
    return {"n": len(v), "mean": float(v.mean()), "median": float(med), "q1": float(q1),
            "q3": float(q3)}
