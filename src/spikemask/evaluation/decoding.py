"""Linear behaviour decoders with cross-validated regularisation (method section 6).

Shape letters: K trials, T time bins, F features (e.g. predicted rates of N units).

* :func:`decode_trial_labels` — one label per trial (e.g. choice): standardised features,
  logistic regression, inverse regularisation ``C`` chosen by stratified K-fold CV
  (validation log-loss) on the training trials; scored by accuracy on the test trials.
* :func:`decode_per_bin` — one continuous value per trial and bin (e.g. wheel speed):
  standardised features, ridge regression on (trial, bin) rows, ``alpha`` chosen by
  K-fold CV whose folds hold out whole trials; scored by R² over all test trials x bins.
* :func:`trial_features` — reduces (K, T, F) to per-trial feature vectors.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from spikemask.errors import SpikemaskError
from spikemask.evaluation.metrics import accuracy, balanced_accuracy, r2_flat

__all__ = [
    "LOGISTIC_CS",
    "RIDGE_ALPHAS",
    "DecodingResult",
    "decode_per_bin",
    "decode_trial_labels",
    "trial_features",
]

LOGISTIC_CS = np.logspace(-4, 2, 7)
"""Grid of inverse regularisation strengths searched by :func:`decode_trial_labels`."""
RIDGE_ALPHAS = np.logspace(-2, 4, 13)
"""Grid of ridge penalties searched by :func:`decode_per_bin`."""
_MAX_FOLDS = 5


@dataclass
class DecodingResult:
    """Outcome of one decoder.

    Attributes:
        metric: Name of the headline metric (``"accuracy"`` or ``"r2"``).
        value: Its value on the test trials.
        chance: The same metric for a trivial predictor (None when not defined).
        num_trials: Number of test trials.
        extra: Further named numbers (e.g. balanced accuracy, the chosen penalty).
    """

    metric: str
    value: float
    chance: float | None
    num_trials: int
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, float | int]:
        """Flat dict ``{metric: value, "chance": ..., "num_trials": ..., **extra}``.

        ``chance`` is left out when it is None.
        """
        out: dict[str, float | int] = {self.metric: self.value}
        if self.chance is not None:
            out["chance"] = self.chance
        out["num_trials"] = self.num_trials
        out.update(self.extra)
        return out


def _majority_rate(labels: list) -> float:
    """Fraction of ``labels`` in the most frequent class (NaN for no labels)."""
    if not labels:
        return float("nan")
    _, counts = np.unique(np.asarray(labels, dtype=object).astype(str), return_counts=True)
    return float(counts.max() / len(labels))


def _as_array(value: Any, name: str, ndim: int, dtype: Any = np.float64) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor
        value = value.detach().cpu().numpy()
    array = np.array(value, dtype=dtype)
    if array.ndim != ndim:
        raise SpikemaskError(f"`{name}` must have {ndim} dimensions, got shape {array.shape}")
    return array


def _check_features(train: np.ndarray, test: np.ndarray, prefix: str) -> None:
    if train.shape[1:] != test.shape[1:]:
        raise SpikemaskError(
            f"`{prefix}_train` and `{prefix}_test` must agree beyond the trial axis, got "
            f"{train.shape} and {test.shape}"
        )
    for name, array in ((f"{prefix}_train", train), (f"{prefix}_test", test)):
        if array.shape[0] == 0 or not np.all(np.isfinite(array)):
            raise SpikemaskError(f"`{name}` must be non-empty and finite, got shape {array.shape}")


def _check_lengths(features: np.ndarray, labels: np.ndarray, split: str) -> None:
    if labels.shape != features.shape[: labels.ndim]:
        raise SpikemaskError(
            f"`y_{split}` must have shape {features.shape[: labels.ndim]} to match "
            f"`features_{split}` {features.shape}, got {labels.shape}"
        )


def _fit_with_cv(
    make_model: Callable[[float], Pipeline],
    grid: np.ndarray,
    splits: list[tuple[np.ndarray, np.ndarray]],
    x: np.ndarray,
    y: np.ndarray,
    score: Callable[[BaseEstimator, np.ndarray, np.ndarray], float],
) -> tuple[Pipeline, float]:
    """Picks the grid value with the best mean validation score, then refits on all rows.

    Ties go to the first grid value. A plain loop (GridSearchCV's overhead dominates at
    these sizes) under single-threaded BLAS: many tiny solves thrash when BLAS threads
    compete for a few busy cores (measured 5x slower on 2 shared cores).
    """
    with threadpool_limits(limits=1, user_api="blas"):
        best = float(grid[0])
        if len(grid) > 1 and splits:
            mean_scores = [
                np.mean([score(make_model(c).fit(x[tr], y[tr]), x[va], y[va]) for tr, va in splits])
                for c in grid
            ]
            best = float(grid[int(np.argmax(mean_scores))])
        return make_model(best).fit(x, y), best


def _logistic(inverse_penalty: float) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(C=inverse_penalty, max_iter=5000))


def _neg_log_loss(model: BaseEstimator, x: np.ndarray, y: np.ndarray) -> float:
    probabilities = model.predict_proba(x)  # (K, classes), columns in model.classes_ order
    column = np.searchsorted(model.classes_, y)  # classes_ is sorted; y holds training labels
    return float(np.mean(np.log(np.clip(probabilities[np.arange(y.size), column], 1e-15, 1))))


def decode_trial_labels(
    features_train: Any,
    y_train: Any,
    features_test: Any,
    y_test: Any,
    *,
    seed: int = 0,
    return_predictions: bool = False,
) -> dict[str, float | int] | tuple[dict[str, float | int], np.ndarray]:
    """Decodes one label per trial with cross-validated logistic regression.

    Features are standardised with training statistics; ``C`` is chosen from
    :data:`LOGISTIC_CS` by the mean validation log-loss of stratified K-fold CV
    (``min(5, smallest class count)`` folds, shuffled with ``seed``) on the training
    trials (accuracy ties too often on small folds), then refit on all of them. When the
    smallest training class has a single trial no CV is possible and ``C = 1``.

    Args:
        features_train: Shape (K1, F).
        y_train: Shape (K1,); labels of any type (e.g. -1/+1, 0/1, strings).
        features_test: Shape (K2, F).
        y_test: Shape (K2,).
        seed: Seed of the CV fold shuffle.
        return_predictions: Also return the decoder's (K2,) test predictions.

    Returns:
        ``{"accuracy", "chance", "num_trials", "balanced_accuracy", "C"}``; ``chance`` is
        the test split's majority-class rate (the accuracy of always predicting the most
        frequent *test* label), and ``balanced_accuracy`` the mean per-class recall (0.5
        for any constant guess on two classes). With
        ``return_predictions``, the tuple ``(that dict, predictions)``.

    Raises:
        SpikemaskError: On bad shapes, non-finite features or a single training class.
    """
    x_train = _as_array(features_train, "features_train", 2)
    x_test = _as_array(features_test, "features_test", 2)
    _check_features(x_train, x_test, "features")
    labels_train = _as_array(y_train, "y_train", 1, dtype=object)
    labels_test = _as_array(y_test, "y_test", 1, dtype=object)
    _check_lengths(x_train, labels_train, "train")
    _check_lengths(x_test, labels_test, "test")
    classes, counts = np.unique(labels_train.tolist(), return_counts=True)
    if classes.size < 2:
        raise SpikemaskError(f"`y_train` must contain at least 2 classes, got only {classes}")

    num_folds = min(_MAX_FOLDS, int(counts.min()))
    labels_fit = np.asarray(labels_train.tolist())
    if num_folds >= 2:
        folds = StratifiedKFold(num_folds, shuffle=True, random_state=seed)
        splits = list(folds.split(x_train, labels_fit))
        model, best_c = _fit_with_cv(
            _logistic, LOGISTIC_CS, splits, x_train, labels_fit, _neg_log_loss
        )
    else:
        model, best_c = _fit_with_cv(
            _logistic, np.array([1.0]), [], x_train, labels_fit, _neg_log_loss
        )
    predicted = model.predict(x_test)
    truth = labels_test.tolist()
    scores = DecodingResult(
        metric="accuracy",
        value=accuracy(truth, predicted.tolist()),
        chance=_majority_rate(truth),
        num_trials=len(truth),
        extra={"balanced_accuracy": balanced_accuracy(truth, predicted.tolist()), "C": best_c},
    ).to_dict()
    return (scores, predicted) if return_predictions else scores


def _trial_folds(keep: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """K-fold splits of the kept (trial, bin) rows that hold out whole trials.

    Args:
        keep: Shape (K, T), True for rows used in fitting; rows are taken trial-major.
        seed: Seed of the trial-to-fold assignment.

    Returns:
        ``min(5, usable trials)`` (train_rows, validation_rows) index pairs.
    """
    usable = np.flatnonzero(keep.any(axis=1))
    fold_of_trial = np.full(keep.shape[0], -1, dtype=np.int64)
    fold_of_trial[np.random.default_rng(seed).permutation(usable)] = np.arange(usable.size) % min(
        _MAX_FOLDS, usable.size
    )
    fold_of_row = np.repeat(fold_of_trial, keep.shape[1])[keep.ravel()]
    rows = np.arange(fold_of_row.size)
    return [
        (rows[fold_of_row != fold], rows[fold_of_row == fold]) for fold in np.unique(fold_of_row)
    ]


def _fit_ridge(
    x: np.ndarray, y: np.ndarray, alphas: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """Ridge on standardised x for several penalties at once.

    Minimises ``|y - y_mean - z w|^2 + alpha |w|^2`` with z the standardised x (as
    sklearn ``StandardScaler`` + ``Ridge``), through one eigendecomposition of the
    (F, F) Gram matrix, or one thin SVD when there are fewer rows than features.

    Args:
        x: Shape (rows, F).
        y: Shape (rows,).
        alphas: Shape (A,).

    Returns:
        A function mapping features (rows', F) to predictions (rows', A).
    """
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1.0
    z = (x - mean) / std
    y_mean = y.mean()
    if z.shape[0] >= z.shape[1]:
        eigenvalues, eigenvectors = np.linalg.eigh(z.T @ z)
        projected = eigenvectors.T @ (z.T @ (y - y_mean))  # (F,)
        weights = eigenvectors @ (projected[:, None] / (eigenvalues[:, None] + alphas))
    else:
        left, singular, right_t = np.linalg.svd(z, full_matrices=False)
        projected = singular * (left.T @ (y - y_mean))  # (rows,)
        weights = right_t.T @ (projected[:, None] / (singular[:, None] ** 2 + alphas))
    return lambda new_x: ((new_x - mean) / std) @ weights + y_mean  # (rows', A)


def _r2_columns(y: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """R² of each column of predictions (rows, A) against y (rows,); 0 for constant y."""
    total = np.square(y - y.mean()).sum()
    residual = np.square(y[:, None] - predictions).sum(axis=0)
    return 1.0 - residual / total if total > 0 else np.zeros(predictions.shape[1])


def decode_per_bin(
    features_train: Any,
    y_train: Any,
    features_test: Any,
    y_test: Any,
    *,
    seed: int = 0,
    return_predictions: bool = False,
) -> dict[str, float | int] | tuple[dict[str, float | int], np.ndarray]:
    """Decodes a continuous per-bin variable with cross-validated ridge regression.

    Every (trial, bin) is one row. Features are standardised with training statistics;
    ``alpha`` is chosen from :data:`RIDGE_ALPHAS` by the mean validation R² of K-fold CV
    (``min(5, K1)`` folds of whole trials, shuffled with ``seed``), then refit on all
    training rows; the objective is sklearn ``Ridge``'s on standardised features. All
    penalties of a fold share one eigendecomposition, so wide features stay cheap. Rows
    whose target is NaN are dropped, in training and in scoring.

    Args:
        features_train: Shape (K1, T, F).
        y_train: Shape (K1, T); NaN marks a missing value.
        features_test: Shape (K2, T, F).
        y_test: Shape (K2, T).
        seed: Seed of the trial-to-fold assignment.
        return_predictions: Also return the decoder's (K2, T) predictions of every test
            bin (NaN targets included).

    Returns:
        ``{"r2", "num_trials", "alpha"}``: R² over all kept test rows (:func:`r2_flat`).
        With ``return_predictions``, the tuple ``(that dict, predictions)``.

    Raises:
        SpikemaskError: On bad shapes, non-finite features or fewer than 2 usable
            training trials.
    """
    x_train = _as_array(features_train, "features_train", 3)
    x_test = _as_array(features_test, "features_test", 3)
    _check_features(x_train, x_test, "features")
    target_train = _as_array(y_train, "y_train", 2)
    target_test = _as_array(y_test, "y_test", 2)
    _check_lengths(x_train, target_train, "train")
    _check_lengths(x_test, target_test, "test")
    keep_train = ~np.isnan(target_train)  # (K1, T)
    keep_test = ~np.isnan(target_test).ravel()
    num_features = x_train.shape[-1]
    if keep_train.any(axis=1).sum() < 2 or keep_test.sum() < 2:
        raise SpikemaskError(
            "`y_train` needs >= 2 trials and `y_test` >= 2 bins with non-NaN values"
        )
    rows_train = x_train.reshape(-1, num_features)[keep_train.ravel()]  # (kept rows, F)
    rows_test = x_test.reshape(-1, num_features)  # every test row; scored where kept
    values_train = target_train[keep_train]
    scores = np.zeros(RIDGE_ALPHAS.size)
    for fit_rows, validation_rows in _trial_folds(keep_train, seed):
        predict = _fit_ridge(rows_train[fit_rows], values_train[fit_rows], RIDGE_ALPHAS)
        scores += _r2_columns(values_train[validation_rows], predict(rows_train[validation_rows]))
    best_alpha = float(RIDGE_ALPHAS[int(np.argmax(scores))])  # ties -> smallest alpha
    predicted = _fit_ridge(rows_train, values_train, np.array([best_alpha]))(rows_test)[:, 0]
    scores = DecodingResult(
        metric="r2",
        value=r2_flat(target_test.ravel()[keep_test], predicted[keep_test]),
        chance=None,
        num_trials=int(x_test.shape[0]),
        extra={"alpha": best_alpha},
    ).to_dict()
    return (scores, predicted.reshape(target_test.shape)) if return_predictions else scores


def trial_features(x: Any, *, method: str = "mean", num_chunks: int = 4) -> np.ndarray:
    """Reduces per-bin features to one vector per trial.

    Args:
        x: Shape (K, T, F), e.g. predicted rates.
        method: ``"mean"`` — average over time, (K, F); ``"chunks"`` — average within
            ``num_chunks`` contiguous, near-equal time chunks, concatenated chunk-major,
            (K, num_chunks * F); ``"flatten"`` — all bins, (K, T * F).
        num_chunks: Number of chunks for ``"chunks"`` (1 <= num_chunks <= T).

    Returns:
        float64 array as described above.
    """
    array = _as_array(x, "x", 3)
    num_trials, num_bins, _ = array.shape
    if method == "mean":
        return array.mean(axis=1)
    if method == "flatten":
        return array.reshape(num_trials, -1)
    if method == "chunks":
        if not 1 <= num_chunks <= num_bins:
            raise SpikemaskError(f"`num_chunks` must be in [1, {num_bins}], got {num_chunks}")
        edges = np.linspace(0, num_bins, num_chunks + 1).round().astype(int)
        chunks = [array[:, lo:hi].mean(axis=1) for lo, hi in itertools.pairwise(edges)]
        return np.concatenate(chunks, axis=1)
    raise SpikemaskError(f"`method` must be 'mean', 'chunks' or 'flatten', got {method!r}")
