"""Tests of the linear baseline: smoothing, PCA features, the batched Poisson GLM and the
reference recipe's groups (spikemask.evaluation.linear / glm / baselines)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.linear_model import PoissonRegressor

from spikemask.data.session import Session, TrialSet
from spikemask.errors import SpikemaskError
from spikemask.evaluation.baselines import LinearBaseline
from spikemask.evaluation.glm import PSEUDO_COUNT, fit_poisson_glm
from spikemask.evaluation.linear import LinearBaselineConfig, pca_features, smooth_counts
from spikemask.evaluation.tasks import plan_task, score_task

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


# ---------------------------------------------------------------- PCA features


def test_pca_features_are_whitened_on_the_fit_rows_and_reused_for_others() -> None:
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(4, 9))
    fit = (rng.normal(size=(30, 5, 4)) * [3.0, 1.0, 0.5, 0.1]) @ mixing  # rank 4 in 9 inputs
    other = fit[:3] + 1.0
    fit_z, (other_z,) = pca_features(fit, [other], num_components=3)
    rows = fit_z.reshape(-1, 3)
    np.testing.assert_allclose(rows.mean(0), 0.0, atol=1e-10)
    np.testing.assert_allclose(np.cov(rows.T), np.eye(3), atol=1e-8)  # whitened, ordered
    # the same affine map: a constant shift of the inputs shifts every projection equally
    delta = other_z - fit_z[:3]
    np.testing.assert_allclose(delta, np.broadcast_to(delta[0, 0], delta.shape), atol=1e-8)
    few_z, _ = pca_features(fit[:, :, :2], [], num_components=20)
    assert few_z.shape == (30, 5, 2)  # no more components than inputs


# ---------------------------------------------------------------- batched Poisson GLM


def _sklearn_log_rates(z: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Reference: scikit-learn's PoissonRegressor on [z, one-hot bin] for each unit."""
    k, t, p = z.shape
    onehot = np.broadcast_to(np.eye(t), (k, t, t))
    x = np.concatenate([z, onehot], axis=2).reshape(k * t, p + t)
    out = np.empty(y.shape)
    for m in range(y.shape[2]):
        reg = PoissonRegressor(alpha=alpha, max_iter=10_000, tol=1e-12)
        reg.fit(x, y[:, :, m].reshape(-1))
        out[:, :, m] = (x @ reg.coef_ + reg.intercept_).reshape(k, t)
    return out


@pytest.mark.parametrize("alpha", [1.0, 0.01])
def test_glm_matches_scikit_learn_poisson_regressor(alpha: float) -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(size=(23, 7, 3))
    true_w = rng.normal(scale=0.4, size=(3, 4))
    profile = np.sin(np.arange(7))[:, None] * 0.5  # a per-bin modulation
    y = rng.poisson(np.exp(z @ true_w + profile - 1.0)).astype(float)
    fit = fit_poisson_glm(z, y, alpha)
    np.testing.assert_allclose(fit.log_rates(z), _sklearn_log_rates(z, y, alpha), atol=2e-5)


def test_glm_warm_start_reaches_the_same_optimum_and_silent_units_get_a_pseudo_count() -> None:
    rng = np.random.default_rng(4)
    z = rng.normal(size=(15, 6, 2))
    y = rng.poisson(0.7, size=(15, 6, 3)).astype(float)
    y[:, :, 1] = 0.0  # a silent unit
    cold = fit_poisson_glm(z, y, 0.1)
    warm = fit_poisson_glm(z, y, 0.1, start=fit_poisson_glm(z, y, 1.0))
    np.testing.assert_allclose(warm.log_rates(z), cold.log_rates(z), atol=1e-6)
    silent = cold.log_rates(z)[:, :, 1]
    np.testing.assert_allclose(np.exp(silent), PSEUDO_COUNT / (15 * 6))
    assert np.isfinite(cold.log_rates(z)).all()


def test_glm_rejects_bad_input() -> None:
    with pytest.raises(SpikemaskError, match="alpha must be > 0"):
        fit_poisson_glm(np.zeros((2, 3, 1)), np.zeros((2, 3, 1)), 0.0)
    with pytest.raises(SpikemaskError, match="share K and T"):
        fit_poisson_glm(np.zeros((2, 3, 1)), np.zeros((2, 4, 1)), 0.1)
    fit = fit_poisson_glm(np.zeros((2, 3, 1)), np.ones((2, 3, 1)), 0.1)
    with pytest.raises(SpikemaskError, match="features must have shape"):
        fit.log_rates(np.zeros((2, 4, 1)))


# ---------------------------------------------------------------- the recipe


def _counts(seed: int = 0, num_units: int = 24, num_bins: int = 12) -> np.ndarray:
    """(60, T, N) counts of units driven by a shared two-dimensional latent."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(60, num_bins, 2)).cumsum(axis=1) * 0.3
    loading = rng.normal(scale=0.6, size=(2, num_units))
    return rng.poisson(np.exp(latent @ loading - 0.7)).astype(np.uint16)


def _session(counts: np.ndarray) -> Session:
    """36 / 10 / 14 train / val / test trials; three regions of 8 units."""
    num_units = counts.shape[2]
    regions = tuple(["CA1"] * 8 + ["VISp"] * 8 + ["MOs"] * (num_units - 16))
    rows = {"train": np.arange(36), "val": np.arange(36, 46), "test": np.arange(46, 60)}
    return Session(
        session_id="toy",
        bin_size_s=0.02,
        window_start_s=0.0,
        align_event="stimOn_times",
        unit_ids=tuple(f"u{i}" for i in range(num_units)),
        unit_regions=regions,
        splits={k: TrialSet(spikes=counts[r], trial_index=r) for k, r in rows.items()},
    )


def _changed(counts: np.ndarray, split_rows: slice, *index: object, add: int) -> Session:
    """The session of ``counts`` with ``add`` spikes added at ``[split_rows, *index]``."""
    changed = counts.copy()
    changed[(split_rows, *index)] += add
    return _session(changed)


TEST_ROWS, VAL_ROWS = slice(46, 60), slice(36, 46)


@pytest.mark.parametrize("task", ["co-smoothing", "inter-region", "intra-region"])
def test_baseline_never_reads_what_its_task_hides(task: str) -> None:
    counts = _counts()
    session = _session(counts)
    plan = plan_task(session, task)
    rates = LinearBaseline().activity_rates(session, plan, "test")
    scored = plan.scored_units
    assert np.isfinite(rates[:, :, scored]).all() and np.isnan(rates[:, :, ~scored]).all()
    # change one target's test counts: its prediction (and that of every unit whose
    # task hides it) must not move
    target = 3
    changed = _changed(counts, TEST_ROWS, slice(None), target, add=5)
    moved = LinearBaseline().activity_rates(changed, plan, "test")
    allowed = plan.allowed_inputs()[target]  # units that may see the target as input
    hidden_from = scored & ~allowed
    np.testing.assert_allclose(moved[:, :, hidden_from], rates[:, :, hidden_from])
    assert hidden_from[target]


def test_baseline_forward_prediction_never_reads_hidden_bins_and_beats_the_training_mean() -> None:
    counts = _counts(num_bins=20)
    session = _session(counts)
    plan = plan_task(session, "forward-prediction")
    baseline = LinearBaseline()
    rates = baseline.activity_rates(session, plan, "test")
    hidden = plan.hidden_bins
    assert np.isfinite(rates[:, hidden]).all() and np.isnan(rates[:, ~hidden]).all()
    changed = _changed(counts, TEST_ROWS, hidden, add=3)
    np.testing.assert_allclose(baseline.activity_rates(changed, plan, "test"), rates)
    test = session.split("test").spikes.astype(float)
    train_mean = session.split("train").spikes[:, hidden].mean(axis=(0, 1))
    nll = lambda r: (r - test[:, hidden] * np.log(r)).sum()  # noqa: E731
    assert nll(rates[:, hidden]) < nll(np.broadcast_to(train_mean, rates[:, hidden].shape))


def test_baseline_chooses_a_penalty_per_group_and_scores_above_zero() -> None:
    session = _session(_counts())
    baseline = LinearBaseline(LinearBaselineConfig(alphas=(10.0, 0.01)))
    plan = plan_task(session, "co-smoothing")
    result = score_task(
        plan,
        baseline.activity_rates(session, plan, "test"),
        session.split("test").spikes,
        unit_regions=session.unit_regions,
    )
    assert len(baseline.chosen_alphas) == 5  # one per fold
    assert set(baseline.chosen_alphas) <= {10.0, 0.01}
    assert result.bps > 0.02 and result.bps_pooled > 0.02  # a shared latent is predictable


def test_baseline_on_the_val_split_chooses_on_training_trials() -> None:
    counts = _counts()
    session = _session(counts)
    plan = plan_task(session, "co-smoothing")
    rates = LinearBaseline().activity_rates(session, plan, "val")
    assert rates.shape == session.split("val").spikes.shape and np.isfinite(rates).all()
    changed = _changed(counts, VAL_ROWS, slice(None), 0, add=4)  # hidden from its own fold
    moved = LinearBaseline().activity_rates(changed, plan, "val")
    np.testing.assert_allclose(moved[:, :, 0], rates[:, :, 0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alphas": ()}, "alphas must be positive"),
        ({"alphas": (0.1, -1.0)}, "alphas must be positive"),
        ({"num_folds": 1}, "num_folds >= 2"),
        ({"smoothing_bins": -1.0}, "smoothing_bins must be >= 0"),
    ],
)
def test_baseline_config_rejects_bad_settings(kwargs, match) -> None:
    with pytest.raises(SpikemaskError, match=match):
        LinearBaselineConfig(**kwargs)
