"""Calibration: a temperature fitted on the validation split, and the "unsure" threshold chosen there.

Temperature scaling (Guo et al. 2017) divides the model's log-probabilities by one number T fitted
to minimise the negative log-likelihood of the validation labels: T > 1 softens an overconfident
model, and the predicted class never changes. It acts on log p, not on the logits, because with
test-time views p is an average of softmaxes; for a single view softmax(log p / T) is exactly
softmax(logits / T), and for a one-unit sigmoid head it is sigmoid(z / T).

The unsure rule: on the validation split, the accuracy of a prediction as a function of its
(calibrated) top probability is fitted as a non-decreasing step function (isotonic regression);
a prediction is unsure when its top probability is below the smallest validation top probability
at which that fitted accuracy reaches UNSURE_TARGET. In words: where the model was right less than
9 times in 10 on validation images as confident as this one, the prediction is unsure. A model never
that accurate marks everything unsure; one always that accurate marks nothing.

Both are written to the run directory's calibration.json; a run without a validation split gets
temperature 1 and no threshold, and says so.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .errors import CnnError
from .fsutil import write_json

FILE = "calibration.json"
UNSURE_TARGET = 0.9  # validation accuracy below which a confidence level counts as unsure
T_RANGE = (0.05, 20.0)  # temperatures searched (log-uniform bounds): far beyond any sensible fit
_EPS = 1e-12


def apply(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) row by row (float32); T = 1 returns `probs` unchanged."""
    probs = np.asarray(probs)
    if temperature == 1.0:
        return probs
    z = np.log(np.clip(probs.astype(np.float64), _EPS, 1.0)) / temperature
    z -= z.max(-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of labels `y` under `probs`."""
    p = np.clip(np.asarray(probs, np.float64)[np.arange(len(y)), y], _EPS, 1.0)
    return float(-np.log(p).mean())


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The T in T_RANGE minimising the NLL of softmax(log p / T) on (probs, y) (scipy's bounded Brent)."""
    from scipy.optimize import minimize_scalar

    logp = np.log(np.clip(np.asarray(probs, np.float64), _EPS, 1.0))
    y = np.asarray(y)

    def loss(log_t):
        z = logp / math.exp(log_t)
        z -= z.max(-1, keepdims=True)
        return float((np.log(np.exp(z).sum(-1)) - z[np.arange(len(y)), y]).mean())

    r = minimize_scalar(loss, bounds=tuple(math.log(t) for t in T_RANGE), method="bounded",
                        options={"xatol": 1e-4})
    return float(math.exp(r.x))


def unsure_threshold(top: np.ndarray, correct: np.ndarray, target: float = UNSURE_TARGET) -> float:
    """The top probability below which a prediction is unsure (see the module docstring's rule)."""
    from sklearn.isotonic import IsotonicRegression

    top = np.asarray(top, np.float64)
    fitted = IsotonicRegression(increasing=True, out_of_bounds="clip").fit_transform(top, np.asarray(correct, float))
    reached = top[fitted >= target]
    # Never reached: everything is unsure (a threshold above any probability).
    return float(reached.min()) if len(reached) else math.inf


def calibrate(probs: np.ndarray, y: np.ndarray, target: float = UNSURE_TARGET) -> dict:
    """Temperature, threshold and what they do on the validation predictions `probs` (N, K) with labels `y`."""
    y = np.asarray(y)
    t = fit_temperature(probs, y)
    cal = apply(probs, t)
    top, correct = cal.max(-1), cal.argmax(-1) == y
    below = unsure_threshold(top, correct, target)
    unsure = top < below
    return {
        "temperature": round(t, 4),
        "unsure_below": None if math.isinf(below) else round(below, 6),
        "unsure_all": bool(math.isinf(below)),
        "target_accuracy": target,
        "val_images": int(len(y)),
        "val_nll": round(nll(probs, y), 6),
        "val_nll_calibrated": round(nll(cal, y), 6),
        "val_share_unsure": round(float(unsure.mean()), 6),
        "val_accuracy_sure": None if unsure.all() else round(float(correct[~unsure].mean()), 6),
        "val_accuracy_unsure": None if not unsure.any() else round(float(correct[unsure].mean()), 6),
        "rule": f"unsure when the calibrated top probability is below the smallest validation top probability "
                f"at which the isotonic fit of validation accuracy reaches {target:g}",
    }


NO_VAL = {"temperature": 1.0, "unsure_below": None, "unsure_all": False,
          "note": "no validation split: probabilities are not calibrated and no prediction is marked unsure"}


def write(run_dir, record: dict) -> Path:
    path = Path(run_dir) / FILE
    write_json(path, record)
    return path


def read(run_dir) -> dict | None:
    """The run's calibration record, or None for a run trained before calibration existed."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise CnnError(f"{path} is not valid JSON") from None


def is_unsure(top_probability: float, record: dict | None) -> bool | None:
    """Whether a prediction is unsure under `record`; None when the run chose no threshold."""
    if not record:
        return None
    if record.get("unsure_all"):
        return True
    below = record.get("unsure_below")
    return None if below is None else bool(top_probability < below)


def summary_line(record: dict | None) -> str:
    """One line for the end of training and for predict's single note."""
    if record is None:
        return "the run has no calibration.json (trained before calibration): probabilities are uncalibrated"
    if "note" in record:
        return record["note"]
    if record["unsure_all"]:
        where = f"every prediction is unsure (validation accuracy never reaches {record['target_accuracy']:g})"
    else:
        where = (f"unsure below top probability {record['unsure_below']:.3f} "
                 f"({100 * record['val_share_unsure']:.1f}% of validation images)")
    return (f"calibration on {record['val_images']} validation images: temperature {record['temperature']:.3f} "
            f"(NLL {record['val_nll']:.4f} -> {record['val_nll_calibrated']:.4f}); {where}")
