"""Tests of spikemask.evaluation.decoding."""

from __future__ import annotations

import numpy as np
import pytest

from spikemask.errors import SpikemaskError
from spikemask.evaluation.decoding import (
    DecodingResult,
    decode_per_bin,
    decode_trial_labels,
    trial_features,
)


def _labelled_trials(rng: np.random.Generator, labels: np.ndarray, separation: float) -> np.ndarray:
    """Features (K, 7): label-dependent mean on two features, noise elsewhere."""
    features = rng.normal(size=(labels.size, 7))
    features[:, 2] += separation * np.where(labels > 0, 1.0, -1.0)
    features[:, 5] -= 0.5 * separation * np.where(labels > 0, 1.0, -1.0)
    return features


def test_decode_trial_labels_separable_and_chance_by_hand() -> None:
    rng = np.random.default_rng(0)
    y_train = np.array([1.0] * 25 + [-1.0] * 16)  # majority class +1
    y_test = np.array([1.0] * 15 + [-1.0] * 8)  # 23 trials
    rng_copy = np.random.default_rng(0)
    _labelled_trials(rng_copy, y_train, 3.0)  # the same draws as below
    result = decode_trial_labels(
        _labelled_trials(rng, y_train, 3.0), y_train, _labelled_trials(rng, y_test, 3.0), y_test
    )
    assert result["accuracy"] >= 0.9
    assert result["balanced_accuracy"] >= 0.9
    assert result["chance"] == pytest.approx(15 / 23)  # always predicting +1
    assert result["num_trials"] == 23
    assert result["C"] in np.logspace(-4, 2, 7)
    scores, predicted = decode_trial_labels(
        _labelled_trials(np.random.default_rng(0), y_train, 3.0),
        y_train,
        _labelled_trials(rng_copy, y_test, 3.0),
        y_test,
        return_predictions=True,
    )
    assert scores == result
    assert np.mean(predicted == y_test) == pytest.approx(result["accuracy"])


def test_decode_trial_labels_string_labels() -> None:
    rng = np.random.default_rng(1)
    signs = np.array([1, -1] * 15)
    x_train, x_test = _labelled_trials(rng, signs, 3.0), _labelled_trials(rng, signs[:11], 3.0)
    names = np.where(signs > 0, "right", "left")
    result = decode_trial_labels(x_train, names, x_test, names[:11], seed=3)
    assert result["accuracy"] >= 0.9
    # chance: the test split's majority-class rate ("right": 6 of 11)
    assert result["chance"] == pytest.approx(6 / 11)


def test_chance_is_the_test_majority_rate_and_balanced_accuracy_is_reported() -> None:
    # training majority 1, test majority 0: chance follows the test split
    rng = np.random.default_rng(4)
    y_train = np.array([1] * 20 + [0] * 10)
    y_test = np.array([0] * 8 + [1] * 3)
    x_train = rng.normal(size=(30, 3))
    x_test = rng.normal(size=(11, 3))
    result = decode_trial_labels(x_train, y_train, x_test, y_test)
    assert result["chance"] == pytest.approx(8 / 11)
    assert 0.0 <= result["balanced_accuracy"] <= 1.0


def test_decode_trial_labels_without_cv_for_a_singleton_class() -> None:
    rng = np.random.default_rng(2)
    y_train = np.array([0] * 12 + [1])
    result = decode_trial_labels(
        rng.normal(size=(13, 3)), y_train, rng.normal(size=(5, 3)), [0] * 5
    )
    assert result["C"] == 1.0
    assert result["chance"] == 1.0


@pytest.mark.parametrize(
    ("x_train", "y_train", "x_test", "match"),
    [
        (np.zeros((4, 3)), np.ones(4), np.zeros((2, 3)), "at least 2 classes"),
        (np.zeros((4, 3)), np.array([0, 1, 0]), np.zeros((2, 3)), "`y_train` must have shape"),
        (np.zeros((4, 3)), np.array([0, 1, 0, 1]), np.zeros((2, 4)), "agree beyond"),
        (np.full((4, 3), np.nan), np.array([0, 1, 0, 1]), np.zeros((2, 3)), "finite"),
        (np.zeros(4), np.array([0, 1, 0, 1]), np.zeros((2, 3)), "2 dimensions"),
    ],
)
def test_decode_trial_labels_bad_inputs(x_train, y_train, x_test, match) -> None:
    with pytest.raises(SpikemaskError, match=match):
        decode_trial_labels(x_train, y_train, x_test, np.zeros(x_test.shape[0]))


def test_decode_per_bin_recovers_linear_signal_and_drops_nan_rows() -> None:
    rng = np.random.default_rng(4)
    weights = np.array([1.0, -2.0, 0.0, 0.5, 0.0])

    def make(num_trials: int) -> tuple[np.ndarray, np.ndarray]:
        features = rng.normal(size=(num_trials, 7, 5))
        return features, features @ weights + rng.normal(scale=0.5, size=(num_trials, 7))

    x_train, y_train = make(31)
    x_test, y_test = make(13)
    y_train[0, :3] = np.nan
    y_test[2, 4:] = np.nan
    result = decode_per_bin(x_train, y_train, x_test, y_test)
    # Signal variance 1 + 4 + 0.25 = 5.25, noise variance 0.25: R^2 ~ 5.25 / 5.5.
    assert result["r2"] == pytest.approx(5.25 / 5.5, abs=0.04)
    assert result["num_trials"] == 13
    assert set(result) == {"r2", "num_trials", "alpha"}
    scores, predicted = decode_per_bin(x_train, y_train, x_test, y_test, return_predictions=True)
    assert scores == result
    assert predicted.shape == y_test.shape and np.isfinite(predicted).all()
    kept = ~np.isnan(y_test)
    residual = np.square(y_test[kept] - predicted[kept]).sum()
    total = np.square(y_test[kept] - y_test[kept].mean()).sum()
    assert 1 - residual / total == pytest.approx(result["r2"])


@pytest.mark.parametrize("num_features", [5, 40])  # more rows than features, and fewer
def test_ridge_path_matches_sklearn(num_features: int) -> None:
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from spikemask.evaluation.decoding import _fit_ridge

    rng = np.random.default_rng(5)
    x = rng.normal(2.0, 3.0, size=(21, num_features))
    x[:, 1] = 4.0  # a constant feature
    y = x[:, 0] - 0.5 * x[:, 2] + rng.normal(size=21)
    alphas = np.array([0.1, 10.0])
    x_new = rng.normal(size=(7, num_features))
    ours = _fit_ridge(x, y, alphas)(x_new)
    for column, alpha in enumerate(alphas):
        reference = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(x, y)
        np.testing.assert_allclose(ours[:, column], reference.predict(x_new), rtol=1e-8)


def test_decode_per_bin_needs_two_training_trials() -> None:
    y_train = np.full((3, 4), np.nan)
    y_train[0] = 1.0
    with pytest.raises(SpikemaskError, match=">= 2 trials"):
        decode_per_bin(np.zeros((3, 4, 2)), y_train, np.zeros((2, 4, 2)), np.ones((2, 4)))


def test_trial_features_by_hand() -> None:
    x = np.arange(2 * 4 * 3, dtype=float).reshape(2, 4, 3)  # x[k, t, f] = 12k + 3t + f
    np.testing.assert_allclose(trial_features(x), [[4.5, 5.5, 6.5], [16.5, 17.5, 18.5]])
    chunks = trial_features(x, method="chunks", num_chunks=2)  # bins {0, 1} and {2, 3}
    np.testing.assert_allclose(chunks[0], [1.5, 2.5, 3.5, 7.5, 8.5, 9.5])
    assert trial_features(x, method="flatten").shape == (2, 12)
    np.testing.assert_array_equal(trial_features(x, method="flatten")[1], np.arange(12, 24))
    with pytest.raises(SpikemaskError, match="`method`"):
        trial_features(x, method="median")
    with pytest.raises(SpikemaskError, match="`num_chunks`"):
        trial_features(x, method="chunks", num_chunks=5)


def test_decoding_result_to_dict() -> None:
    result = DecodingResult("r2", 0.5, None, 7, {"alpha": 1.0})
    assert result.to_dict() == {"r2": 0.5, "num_trials": 7, "alpha": 1.0}
    with_chance = DecodingResult("accuracy", 0.8, 0.6, 9)
    assert with_chance.to_dict() == {"accuracy": 0.8, "chance": 0.6, "num_trials": 9}
