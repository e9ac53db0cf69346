"""Tests of spikemask.evaluation.metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spikemask.errors import SpikemaskError
from spikemask.evaluation.metrics import (
    MIN_RATE,
    accuracy,
    balanced_accuracy,
    bits_per_spike,
    bits_per_spike_per_unit,
    bits_per_spike_pooled,
    poisson_d2,
    poisson_d2_per_unit,
    poisson_d2_pooled,
    poisson_nll,
    pseudo_r2,
    pseudo_r2_per_unit,
    r2_flat,
)

LN2 = math.log(2.0)

# 3 bins x 3 units (T, N). Unit 0 and 1 are worked through by hand below; unit 2 is silent.
SPIKES = np.array([[1.0, 0.0, 0.0], [0.0, 3.0, 0.0], [2.0, 0.0, 0.0]])
RATES = np.array([[1.0, 0.5, 0.1], [0.5, 2.0, 0.1], [2.0, 0.5, 0.1]])

# Unit 0: spikes (1, 0, 2), null rate 1.
#   NLL_null  = (1 - 0 + 0) + (1 - 0 + 0) + (1 - 0 + ln 2!)          = 3 + ln 2
#   NLL_model = (1 - 0 + 0) + (0.5 - 0 + 0) + (2 - 2 ln 2 + ln 2)      = 3.5 - ln 2
GAIN_0 = (3 + LN2) - (3.5 - LN2)  # 2 ln 2 - 0.5
# Unit 1: spikes (0, 3, 0), null rate 1.
#   NLL_null  = 1 + (1 - 3 ln 1 + ln 6) + 1                            = 3 + ln 6
#   NLL_model = 0.5 + (2 - 3 ln 2 + ln 6) + 0.5                        = 3 - 3 ln 2 + ln 6
GAIN_1 = 3 * LN2
# Unit 2: no spikes, null rate 0 -> clipped to MIN_RATE; NLL_null = 3e-9, NLL_model = 0.3.
GAIN_2 = 3 * MIN_RATE - 0.3


def test_poisson_nll_matches_hand_values() -> None:
    rates = np.array([[1.0, 2.0], [0.0, 0.0]])
    spikes = np.array([[0.0, 3.0], [0.0, 1.0]])
    expected = np.array(
        [
            [1.0, 2.0 - 3.0 * LN2 + math.log(6.0)],
            [MIN_RATE, MIN_RATE - math.log(MIN_RATE)],  # zero rates clipped to MIN_RATE
        ]
    )
    np.testing.assert_allclose(poisson_nll(rates, spikes), expected, rtol=1e-12)


def test_bits_per_spike_per_unit_matches_hand_values() -> None:
    bps = bits_per_spike_per_unit(RATES, SPIKES)
    np.testing.assert_allclose(bps[:2], [GAIN_0 / (3 * LN2), GAIN_1 / (3 * LN2)], rtol=1e-12)
    assert bps[1] == pytest.approx(1.0)
    assert np.isnan(bps[2])  # silent unit


def test_bits_per_spike_mean_and_pooled_match_hand_values() -> None:
    assert bits_per_spike(RATES, SPIKES) == pytest.approx((GAIN_0 + GAIN_1) / (3 * LN2) / 2)
    pooled = (GAIN_0 + GAIN_1 + GAIN_2) / (6 * LN2)  # 6 spikes in total
    assert bits_per_spike_pooled(RATES, SPIKES) == pytest.approx(pooled, rel=1e-12)


def test_scored_restricts_entries_and_null_rate() -> None:
    scored = np.ones_like(SPIKES, dtype=bool)
    scored[1, 0] = False  # unit 0 scored on bins 0 and 2: spikes (1, 2), null rate 1.5
    nll_null = 2 * 1.5 - 3 * math.log(1.5) + LN2
    nll_model = 1.0 + (2.0 - 2 * LN2 + LN2)
    bps = bits_per_spike_per_unit(RATES, SPIKES, scored=scored)
    assert bps[0] == pytest.approx((nll_null - nll_model) / (3 * LN2), rel=1e-12)
    assert bps[1] == pytest.approx(1.0)
    full = bits_per_spike_per_unit(RATES, SPIKES, scored=np.ones_like(scored))
    np.testing.assert_array_equal(full, bits_per_spike_per_unit(RATES, SPIKES))


def test_null_prediction_scores_zero_and_batch_axes_are_pooled() -> None:
    spikes = np.random.default_rng(0).poisson(0.7, size=(3, 7, 11)).astype(float)
    null = np.broadcast_to(spikes.mean(axis=(0, 1)), spikes.shape)
    np.testing.assert_allclose(bits_per_spike_per_unit(null, spikes), 0.0, atol=1e-12)
    assert bits_per_spike_pooled(null, spikes) == pytest.approx(0.0, abs=1e-12)
    # (K, T, N) is the same as (K * T, N).
    rates = np.random.default_rng(1).gamma(2.0, 0.4, size=spikes.shape)
    np.testing.assert_allclose(
        bits_per_spike_per_unit(rates, spikes),
        bits_per_spike_per_unit(rates.reshape(-1, 11), spikes.reshape(-1, 11)),
    )


def _nlb_reference_bits_per_spike(rates: np.ndarray, spikes: np.ndarray) -> float:
    """The NLB definition, written out: pooled NLL gain over the per-unit mean-rate null."""
    from scipy.special import gammaln

    def total_nll(r: np.ndarray) -> float:
        r = np.where(r == 0, 1e-9, r)
        return float(np.sum(r - spikes * np.log(r) + gammaln(spikes + 1.0)))

    null = np.tile(spikes.mean(axis=(0, 1), keepdims=True), (*spikes.shape[:2], 1))
    return (total_nll(null) - total_nll(rates)) / spikes.sum() / math.log(2.0)


def _random_trials(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    spikes = rng.poisson(rng.gamma(1.0, 0.5, size=13), size=(5, 7, 13)).astype(float)
    spikes[:, :, 3] = 0.0  # a silent unit, as in real data
    rates = rng.gamma(2.0, 0.3, size=spikes.shape)
    rates[0, 0, :4] = 0.0  # exact zeros, which NLB replaces by 1e-9
    return rates, spikes


def test_pooled_equals_nlb_definition() -> None:
    rates, spikes = _random_trials(2)
    assert bits_per_spike_pooled(rates, spikes) == pytest.approx(
        _nlb_reference_bits_per_spike(rates, spikes), rel=1e-10
    )


def test_pooled_equals_nlb_tools() -> None:
    evaluation = pytest.importorskip("nlb_tools.evaluation")
    rates, spikes = _random_trials(3)
    expected = evaluation.bits_per_spike(rates.copy(), spikes.copy())  # NLB mutates rates
    assert bits_per_spike_pooled(rates, spikes) == pytest.approx(expected, rel=1e-10)


def test_pseudo_r2_matches_hand_values() -> None:
    # Deviance D(r) = 2 sum(y log(y / r) - (y - r)).
    # Unit 0: D_model = 2 * (0 + 0.5 + 0) = 1;  D_null = 2 * (0 + 1 + (2 ln 2 - 1)) = 4 ln 2.
    # Unit 1: D_model = 2 * (0.5 + (3 ln 1.5 - 1) + 0.5) = 6 ln 1.5;  D_null = 6 ln 3.
    r2 = pseudo_r2_per_unit(RATES, SPIKES)
    expected = [1 - 1 / (4 * LN2), 1 - math.log(1.5) / math.log(3.0)]
    np.testing.assert_allclose(r2[:2], expected, rtol=1e-12)
    assert np.isnan(r2[2])
    assert pseudo_r2(RATES, SPIKES) == pytest.approx(np.mean(expected))


def test_pseudo_r2_is_one_for_perfect_and_zero_for_null_rates() -> None:
    spikes = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]])
    r2 = pseudo_r2_per_unit(spikes, spikes)
    assert r2[0] == pytest.approx(1.0)
    assert np.isnan(r2[1])  # constant unit: nothing to explain
    assert pseudo_r2_per_unit(np.full_like(spikes, 2.0), spikes)[0] == pytest.approx(0.0)


def test_torch_inputs_match_numpy_and_inputs_are_not_mutated() -> None:
    rates, spikes = _random_trials(4)
    rates_before = rates.copy()
    from_torch = bits_per_spike_per_unit(torch.from_numpy(rates).float(), torch.from_numpy(spikes))
    np.testing.assert_allclose(from_torch, bits_per_spike_per_unit(rates, spikes), rtol=1e-5)
    np.testing.assert_array_equal(rates, rates_before)  # zeros were clipped on a copy


def test_no_scored_spike_gives_nan() -> None:
    scored = np.zeros_like(SPIKES, dtype=bool)
    assert np.all(np.isnan(bits_per_spike_per_unit(RATES, SPIKES, scored=scored)))
    assert math.isnan(bits_per_spike(RATES, SPIKES, scored=scored))
    assert math.isnan(bits_per_spike_pooled(RATES, SPIKES, scored=scored))


@pytest.mark.parametrize(
    ("rates", "spikes", "scored", "match"),
    [
        (np.ones((2, 3)), np.ones((3, 2)), None, "same shape"),
        (np.ones((2, 3)), np.array([[1.0, np.nan, 0.0], [0.0, 0.0, 0.0]]), None, "`spikes`"),
        (np.ones((2, 3)), -np.ones((2, 3)), None, "`spikes`"),
        (-np.ones((2, 3)), np.ones((2, 3)), None, "`rates`"),
        (np.full((2, 3), np.inf), np.ones((2, 3)), None, "`rates`"),
        (np.ones((2, 3)), np.ones((2, 3)), np.ones((2, 3)), "`scored` must be a boolean"),
        (np.ones((2, 3)), np.ones((2, 3)), np.ones((3, 2), dtype=bool), "`scored` must have"),
    ],
)
def test_bad_inputs_raise(rates, spikes, scored, match) -> None:
    with pytest.raises(SpikemaskError, match=match):
        bits_per_spike_per_unit(rates, spikes, scored=scored)


def test_accuracy_and_balanced_accuracy_match_hand_values() -> None:
    y_true = np.array([-1, -1, -1, 1])
    y_pred = np.array([-1, -1, 1, 1])
    assert accuracy(y_true, y_pred) == pytest.approx(0.75)
    assert balanced_accuracy(y_true, y_pred) == pytest.approx((2 / 3 + 1) / 2)
    assert accuracy(["l", "r"], ["l", "l"]) == pytest.approx(0.5)
    with pytest.raises(SpikemaskError, match="same length"):
        accuracy([0, 1], [0])


def test_r2_flat_matches_hand_value() -> None:
    y_true = np.array([[1.0, 2.0], [3.0, 4.0]])
    y_pred = np.array([[1.0, 2.0], [3.0, 3.0]])
    # SS_res = 1; mean 2.5, SS_tot = 2.25 + 0.25 + 0.25 + 2.25 = 5.
    assert r2_flat(y_true, y_pred) == pytest.approx(1 - 1 / 5)
    with pytest.raises(SpikemaskError, match="`y_pred` must be finite"):
        r2_flat(y_true, np.full((2, 2), np.nan))


# ---------------------------------------------------------------------------- Poisson D²
def test_poisson_d2_per_unit_matches_sklearn_d2_tweedie() -> None:
    """Per unit, D² is sklearn's d2_tweedie_score with power=1 (Poisson deviance)."""
    from sklearn.metrics import d2_tweedie_score

    rng = np.random.default_rng(3)
    rates = rng.gamma(2.0, 0.5, size=(7, 11, 5))  # (K, T, N)
    spikes = rng.poisson(rates * rng.uniform(0.5, 1.5, size=rates.shape)).astype(float)
    d2 = poisson_d2_per_unit(rates, spikes)
    for n in range(5):
        expected = d2_tweedie_score(spikes[..., n].ravel(), rates[..., n].ravel(), power=1)
        assert d2[n] == pytest.approx(expected, rel=1e-9)
    assert poisson_d2(rates, spikes) == pytest.approx(np.mean(d2))


def test_poisson_d2_pooled_by_hand() -> None:
    """Units 0 and 1 of the hand-made arrays; the silent unit 2 has no deviance to explain.

    Deviance D = 2 (NLL - NLL_saturated) = 2 (NLL_model - NLL_null) + D_null, so with the
    hand-computed gains: D_model_n = D_null_n - 2 * GAIN_n.
    Unit 0: saturated NLL = 1 + 0 + (2 - 2 ln 2 + ln 2) = 3 - ln 2; null 3 + ln 2: D_null = 4 ln 2.
    Unit 1: saturated NLL = 3 - 3 ln 3 + ln 6; null 3 + ln 6 -> D_null = 6 ln 3.
    """
    null = np.array([4 * LN2, 6 * math.log(3.0)])
    model = null - 2 * np.array([GAIN_0, GAIN_1])
    d2 = poisson_d2_per_unit(RATES, SPIKES)
    np.testing.assert_allclose(d2[:2], 1 - model / null)
    assert np.isnan(d2[2])
    assert poisson_d2_pooled(RATES, SPIKES) == pytest.approx(1 - model.sum() / null.sum())
    assert poisson_d2(RATES, SPIKES) == pytest.approx(np.mean(1 - model / null))
    assert math.isnan(poisson_d2_pooled(RATES[:, 2:], SPIKES[:, 2:]))
