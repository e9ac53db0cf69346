"""Tests of spikemask.evaluation.linear (smoothing, masked Poisson GLM, forward predictor)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spikemask.errors import SpikemaskError
from spikemask.evaluation.linear import (
    LinearBaselineConfig,
    MaskedPoissonGLM,
    smooth_counts,
)
from spikemask.evaluation.linear_forward import fit_forward_predictor
from spikemask.evaluation.metrics import bits_per_spike_pooled

# ---------------------------------------------------------------- smoothing


def test_smoothing_preserves_counts_away_from_edges_and_has_gaussian_shape() -> None:
    spikes = np.zeros((3, 41, 2))
    spikes[1, 20, 0] = 1.0  # an isolated spike; the kernel (half-width 6) stays inside
    before = spikes.copy()
    smoothed = smooth_counts(spikes, 1.5)
    assert smoothed[1, :, 0].sum() == pytest.approx(1.0)
    assert smoothed[1, 21, 0] / smoothed[1, 20, 0] == pytest.approx(math.exp(-0.5 / 1.5**2))
    np.testing.assert_allclose(smoothed[1, 20 - 3, 0], smoothed[1, 20 + 3, 0])  # symmetric
    assert smoothed[[0, 2]].max() == 0.0 and smoothed[:, :, 1].max() == 0.0
    np.testing.assert_array_equal(spikes, before)
    causal = smooth_counts(spikes, 1.5, causal=True)
    assert causal[1, :, 0].sum() == pytest.approx(1.0)
    assert causal[1, :20, 0].max() == 0.0 and causal[1, 20, 0] > causal[1, 21, 0] > 0.0


def test_smoothing_keeps_constants_and_sd_zero_is_identity() -> None:
    constant = np.full((2, 7, 3), 0.4)
    np.testing.assert_allclose(smooth_counts(constant, 2.0), 0.4)  # edges renormalised
    np.testing.assert_allclose(smooth_counts(constant, 2.0, causal=True), 0.4)
    spikes = np.random.default_rng(0).poisson(1.0, size=(2, 7, 3)).astype(float)
    np.testing.assert_array_equal(smooth_counts(spikes, 0.0), spikes)


def test_causal_smoothing_depends_only_on_the_past() -> None:
    rng = np.random.default_rng(1)
    spikes = rng.poisson(1.0, size=(3, 13, 5)).astype(float)
    changed = spikes.copy()
    changed[:, 8:] = rng.poisson(3.0, size=(3, 5, 5))
    causal, causal_changed = (smooth_counts(x, 2.0, causal=True) for x in (spikes, changed))
    np.testing.assert_array_equal(causal[:, :8], causal_changed[:, :8])
    assert not np.allclose(causal[:, 8:], causal_changed[:, 8:])
    acausal, acausal_changed = smooth_counts(spikes, 2.0), smooth_counts(changed, 2.0)
    assert not np.allclose(acausal[:, 7], acausal_changed[:, 7])  # sees the future


def test_smoothing_rejects_bad_input() -> None:
    with pytest.raises(SpikemaskError, match="3 dimensions"):
        smooth_counts(np.zeros((7, 3)), 1.0)
    with pytest.raises(SpikemaskError, match="`sd_bins`"):
        smooth_counts(np.zeros((2, 7, 3)), -1.0)


# ---------------------------------------------------------------- GLM


def test_glm_recovers_known_weights_and_respects_allowed() -> None:
    rng = np.random.default_rng(2)
    features = rng.normal(1.0, 2.0, size=(300, 20, 5))  # not standardised on purpose
    weight = np.array(
        [[0.2, 0.0, -0.1], [0.0, 0.15, 0.0], [-0.1, 0.0, 0.0], [0.0, -0.2, 0.1], [0.1, 0.0, 0.0]]
    )
    intercept = np.log([0.5, 0.8, 0.3])
    targets = rng.poisson(np.exp(features @ weight + intercept)).astype(float)
    allowed = weight != 0.0
    allowed[2, 1] = True  # an allowed input whose true weight is 0
    glm = MaskedPoissonGLM(allowed, l2=1e-5, per_bin_offset=False, dtype=torch.float64)
    glm.fit(features, targets)
    np.testing.assert_allclose(glm.coef_, weight, atol=0.02)  # standard error ~0.006
    np.testing.assert_allclose(glm.intercept_, intercept, atol=0.05)
    assert np.all(glm.coef_[~allowed] == 0.0)  # exactly zero, not just small
    rates = glm.predict_rates(features)
    np.testing.assert_allclose(rates, np.exp(features @ glm.coef_ + glm.intercept_))


def test_glm_per_bin_offset_fits_the_psth() -> None:
    rng = np.random.default_rng(3)
    psth = 0.5 + 0.4 * np.sin(np.linspace(0, 3, 11))[:, None] * np.array([1.0, -1.0, 0.5])
    targets = rng.poisson(np.broadcast_to(psth, (100, 11, 3))).astype(float)
    features = np.zeros((100, 11, 2))  # constant inputs: only bias and offsets matter
    glm = MaskedPoissonGLM(np.ones((2, 3), bool), l2=1e-6).fit(features, targets)
    rates = glm.predict_rates(features[:5])
    assert rates.shape == (5, 11, 3)
    # The maximum-likelihood rate of each (bin, unit) is its mean count over trials.
    np.testing.assert_allclose(rates[0], targets.mean(axis=0), rtol=0.02)
    np.testing.assert_array_equal(rates[0], rates[4])


def _independent_slow_units(rng: np.random.Generator, num_trials: int) -> np.ndarray:
    """(K, 31, 6) counts; each unit's rate follows its own slow random modulation."""
    noise = rng.normal(size=(num_trials, 31 + 12, 6))
    kernel = np.exp(-0.5 * (np.arange(-6, 7) / 3.0) ** 2)
    slow = np.stack(
        [
            [np.convolve(noise[k, :, n], kernel, mode="valid") for n in range(6)]
            for k in range(num_trials)
        ]
    ).transpose(0, 2, 1)  # (K, 31, 6), sd ~ 2.7
    return rng.poisson(np.exp(-0.5 + 0.5 * slow)).astype(float)


def test_disallowed_inputs_do_not_leak() -> None:
    rng = np.random.default_rng(4)
    train, test = _independent_slow_units(rng, 60), _independent_slow_units(rng, 30)
    smoothed_train, smoothed_test = smooth_counts(train, 2.0), smooth_counts(test, 2.0)
    scores = {}
    for name, allowed in (("others", ~np.eye(6, dtype=bool)), ("all", np.ones((6, 6), bool))):
        glm = MaskedPoissonGLM(allowed, l2=1e-3).fit(smoothed_train, train)
        scores[name] = bits_per_spike_pooled(glm.predict_rates(smoothed_test), test)
    assert scores["all"] > 0.2  # a unit's own smoothed counts predict it well
    assert scores["others"] < 0.03  # independent units carry nothing about it


def test_glm_from_config() -> None:
    config = LinearBaselineConfig(l2=0.5, max_iter=7, per_bin_offset=False)
    glm = MaskedPoissonGLM.from_config(np.ones((3, 2), bool), config)
    assert (glm.l2, glm.max_iter, glm.per_bin_offset) == (0.5, 7, False)


def test_glm_predict_checks_inputs() -> None:
    glm = MaskedPoissonGLM(np.ones((4, 2), bool))
    with pytest.raises(SpikemaskError, match="must be fit"):
        glm.predict_rates(np.zeros((3, 7, 4)))
    glm.fit(np.random.default_rng(5).normal(size=(3, 7, 4)), np.ones((3, 7, 2)))
    with pytest.raises(SpikemaskError, match="4 inputs"):
        glm.predict_rates(np.zeros((3, 7, 5)))
    with pytest.raises(SpikemaskError, match="7 time bins"):
        glm.predict_rates(np.zeros((3, 6, 4)))
    with pytest.raises(SpikemaskError, match="`targets`"):
        glm.fit(np.zeros((3, 7, 4)), np.ones((3, 7, 3)))
    with pytest.raises(SpikemaskError, match="`allowed`"):
        MaskedPoissonGLM(np.ones((4, 2)))


# ---------------------------------------------------------------- forward prediction


def _latent_trials(rng: np.random.Generator, num_trials: int) -> np.ndarray:
    """(K, 21, 9) counts whose rates depend on a per-trial latent, constant in time."""
    latent = rng.normal(size=(num_trials, 1, 1))
    gain = np.linspace(-0.8, 0.8, 9)
    return rng.poisson(np.exp(np.log(0.4) + gain * latent), size=(num_trials, 21, 9)).astype(float)


def test_forward_predictor_beats_the_training_mean() -> None:
    rng = np.random.default_rng(6)
    train, test = _latent_trials(rng, 120), _latent_trials(rng, 40)
    hidden = test[:, -3:]
    baseline = np.broadcast_to(train[:, -3:].mean(axis=(0, 1)), hidden.shape)
    baseline_bps = bits_per_spike_pooled(baseline, hidden)
    for num_components in (None, 3):
        predictor = fit_forward_predictor(
            train, num_hidden_bins=3, num_components=num_components, l2=1e-2
        )
        rates = predictor.predict_rates(test)
        assert rates.shape == (40, 3, 9)
        assert bits_per_spike_pooled(rates, hidden) > baseline_bps + 0.1


def test_forward_predictor_never_reads_hidden_bins() -> None:
    rng = np.random.default_rng(7)
    train, test = _latent_trials(rng, 30), _latent_trials(rng, 5)
    predictor = fit_forward_predictor(train, num_hidden_bins=4, num_recent_bins=3)
    blanked = test.copy()
    blanked[:, -4:] = 0.0
    np.testing.assert_array_equal(predictor.predict_rates(test), predictor.predict_rates(blanked))
    with pytest.raises(SpikemaskError, match="21 time bins"):
        predictor.predict_rates(test[:, :20])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_hidden_bins": 21}, "`num_hidden_bins`"),
        ({"num_hidden_bins": 3, "num_recent_bins": 19}, "`num_recent_bins`"),
        ({"num_hidden_bins": 3, "num_components": 50}, "`num_components`"),
    ],
)
def test_forward_predictor_rejects_bad_settings(kwargs, match) -> None:
    train = _latent_trials(np.random.default_rng(8), 12)
    with pytest.raises(SpikemaskError, match=match):
        fit_forward_predictor(train, **kwargs)
