"""Behaviour decoding from a frozen model's features (or from raw binned spikes).

Shape letters: K trials, T time bins, N units, D model width, F features.

Features come from the model with nothing masked and the prompt of its first training
scheme: final-layer latents (K, T, D) by default, or predicted rates (K, T, N). Decoders
are fit on the ``train`` split and scored on the evaluated split
(:mod:`spikemask.evaluation.decoding`):

* ``choice`` (trials whose choice is -1 or +1) and ``reward`` (0 / 1, else derived from
  ``feedback_type > 0``): time-averaged features, cross-validated logistic regression;
  ``{"accuracy", "balanced_accuracy", "chance", "num_trials"}``.
* every per-bin behaviour of the session (``wheel-speed``, ...): per-bin features,
  cross-validated ridge; ``{"r2", "num_trials"}``.

A behaviour the session does not record is absent from the result; one it records but
that cannot be decoded (a single class among the training trials, ...) is
``{"skipped": reason}``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spikemask.api import TrainedModel
from spikemask.data.session import Session, TrialSet
from spikemask.errors import SpikemaskError
from spikemask.evaluation.decoding import decode_per_bin, decode_trial_labels, trial_features

__all__ = [
    "BEHAVIOR_FEATURES",
    "TRIAL_LABELS",
    "BehaviorPrediction",
    "decode_behaviors",
    "model_features",
    "trial_labels",
]

BEHAVIOR_FEATURES = ("latents", "rates")
TRIAL_LABELS = ("choice", "reward")
_LABEL_KEYS = ("accuracy", "balanced_accuracy", "chance", "num_trials")


@dataclass(frozen=True)
class BehaviorPrediction:
    """A decoder's predictions next to the truth, for plots.

    Attributes:
        truth: (K,) labels or (K, T) values of the decoded trials (NaN = missing).
        predicted: the decoder's output, same shape.
    """

    truth: np.ndarray
    predicted: np.ndarray


def model_features(
    model: TrainedModel,
    session: Session,
    split: str,
    *,
    kind: str = "latents",
    batch_size: int = 256,
) -> np.ndarray:
    """Per-bin features of a split from the model with nothing masked.

    Args:
        model: The trained model.
        session: A session the model knows.
        split: Which trials.
        kind: ``latents`` (K, T, D) final-layer states, or ``rates`` (K, T, N) predicted
            rates.
        batch_size: Trials per forward pass.

    Returns:
        float32 array (K, T, F).
    """
    if kind not in BEHAVIOR_FEATURES:
        raise SpikemaskError(f"behaviour features {kind!r}; expected one of {BEHAVIOR_FEATURES}")
    if kind == "latents":
        return model.latents(session, split=split, batch_size=batch_size)
    return np.exp(model.predict(session, split=split, batch_size=batch_size))


def trial_labels(trials: TrialSet, name: str) -> np.ndarray | None:
    """(K,) labels of a trial-level behaviour, NaN where unusable; None when not recorded.

    ``choice`` keeps -1 / +1 (0 = no-go and NaN are unusable); ``reward`` is 0 / 1, taken
    from the ``reward`` field or else derived from ``feedback_type > 0``.
    """
    fields = trials.trial_behavior
    if name == "choice":
        if "choice" not in fields:
            return None
        values = np.asarray(fields["choice"], dtype=np.float64)
        return np.where(np.isin(values, (-1.0, 1.0)), values, np.nan)
    if name == "reward":
        if "reward" in fields:
            values = np.asarray(fields["reward"], dtype=np.float64)
            return np.where(np.isin(values, (0.0, 1.0)), values, np.nan)
        if "feedback_type" in fields:
            feedback = np.asarray(fields["feedback_type"], dtype=np.float64)
            return np.where(np.isnan(feedback), np.nan, (feedback > 0).astype(np.float64))
        return None
    raise SpikemaskError(f"unknown trial label {name!r}; expected one of {TRIAL_LABELS}")


def _decode_labels(
    x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray, y_eval: np.ndarray
) -> tuple[dict, BehaviorPrediction | None]:
    """Decode (K,) labels (NaN rows dropped) from (K, F) features."""
    keep_train, keep_eval = ~np.isnan(y_train), ~np.isnan(y_eval)
    classes = np.unique(y_train[keep_train])
    if classes.size < 2:
        return {"skipped": f"{classes.size} class(es) among the training trials; need 2"}, None
    if not keep_eval.any():
        return {"skipped": "no usable trial in the evaluated split"}, None
    x_fit, y_fit = x_train[keep_train], y_train[keep_train].astype(int)
    x_test, y_test = x_eval[keep_eval], y_eval[keep_eval].astype(int)
    scores, predicted = decode_trial_labels(x_fit, y_fit, x_test, y_test, return_predictions=True)
    entry = {key: scores[key] for key in _LABEL_KEYS}
    return entry, BehaviorPrediction(y_test, predicted)


def _decode_bins(
    x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray, y_eval: np.ndarray
) -> tuple[dict, BehaviorPrediction | None]:
    """Decode (K, T) values (NaN bins dropped) from (K, T, F) features."""
    keep_train, keep_eval = ~np.isnan(y_train), ~np.isnan(y_eval)
    if keep_train.any(axis=1).sum() < 2 or keep_eval.sum() < 2:
        return {"skipped": "fewer than 2 training trials or 2 evaluated bins with values"}, None
    scores, predicted = decode_per_bin(x_train, y_train, x_eval, y_eval, return_predictions=True)
    entry = {"r2": scores["r2"], "num_trials": scores["num_trials"]}
    return entry, BehaviorPrediction(y_eval, predicted)


def decode_behaviors(
    features_train: np.ndarray,
    features_eval: np.ndarray,
    train: TrialSet,
    evaluated: TrialSet,
    *,
    labels: tuple[str, ...] = TRIAL_LABELS,
    per_bin: bool = True,
) -> tuple[dict[str, dict], dict[str, BehaviorPrediction]]:
    """Decode trial labels and per-bin behaviour from per-bin features.

    Args:
        features_train: (K1, T, F) features of the training trials.
        features_eval: (K2, T, F) features of the evaluated trials.
        train: The training trials (labels, per-bin behaviour).
        evaluated: The evaluated trials.
        labels: Trial labels to decode (subset of :data:`TRIAL_LABELS`).
        per_bin: Also decode every per-bin behaviour of ``evaluated``.

    Returns:
        (scores, predictions): behaviour name -> JSON-ready entry, and behaviour name ->
        :class:`BehaviorPrediction` for the decoded ones.
    """
    scores: dict[str, dict] = {}
    predictions: dict[str, BehaviorPrediction] = {}
    x_train = trial_features(features_train)  # (K1, F)
    x_eval = trial_features(features_eval)
    for name in labels:
        y_train, y_eval = trial_labels(train, name), trial_labels(evaluated, name)
        if y_train is None or y_eval is None:
            continue
        scores[name], prediction = _decode_labels(x_train, y_train, x_eval, y_eval)
        if prediction is not None:
            predictions[name] = prediction
    names = [n for n in evaluated.bin_behavior if n in train.bin_behavior] if per_bin else []
    for name in names:
        y_train = np.asarray(train.bin_behavior[name], dtype=np.float64)
        y_eval = np.asarray(evaluated.bin_behavior[name], dtype=np.float64)
        scores[name], prediction = _decode_bins(features_train, y_train, features_eval, y_eval)
        if prediction is not None:
            predictions[name] = prediction
    return scores, predictions
