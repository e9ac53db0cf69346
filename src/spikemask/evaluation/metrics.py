"""Pure evaluation metrics for predicted firing rates and behaviour decoders.

Every function takes numpy arrays or torch tensors, converts them to float64 numpy arrays
and never modifies its inputs. Rate/spike arrays have units on the last axis:
``(..., N)``, typically ``(K, T, N)`` for K trials, T time bins and N units.

Poisson negative log-likelihood (NLL) of counts ``y`` under rates ``r`` (per bin)::

    NLL(r, y) = r - y * log(r) + log(y!)

Rates are clipped to at least :data:`MIN_RATE` before the logarithm, so a zero rate
predicted where no spike occurred costs nothing and one where a spike occurred costs a
large, finite penalty (the same convention as the Neural Latents Benchmark, which
replaces exact zeros by 1e-9).

Bits per spike of unit n over its scored entries (method section 6)::

    bps_n = (NLL(null_n) - NLL(rates_n)) / (spike_count_n * ln 2)

where ``null_n`` is the mean count of unit n over the same scored entries. MtM reports
the mean of ``bps_n`` over units (:func:`bits_per_spike`); the Neural Latents Benchmark
pools numerator and denominator over units (:func:`bits_per_spike_pooled`, "co-bps").

Poisson D² (deviance explained) of unit n, against the same null::

    D²_n = 1 - D(rates_n) / D(null_n),   D(r) = 2 * sum(y * log(y / r) - (y - r))

IBL's BrainWideBench reports the mean of ``D²_n`` over units (:func:`poisson_d2`, as
``ibl_bwb_eval.metrics.PoissonD2Score``); :func:`poisson_d2_pooled` divides the summed
deviances instead. For one unit it equals ``sklearn.metrics.d2_tweedie_score(power=1)``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy.special import gammaln, xlogy
from sklearn.metrics import accuracy_score, balanced_accuracy_score, r2_score

from spikemask.errors import SpikemaskError

__all__ = [
    "MIN_RATE",
    "accuracy",
    "balanced_accuracy",
    "bits_per_spike",
    "bits_per_spike_per_unit",
    "bits_per_spike_pooled",
    "poisson_d2",
    "poisson_d2_per_unit",
    "poisson_d2_pooled",
    "poisson_nll",
    "pseudo_r2",
    "pseudo_r2_per_unit",
    "r2_flat",
]

MIN_RATE = 1e-9
"""Rates below this value are clipped up to it before taking logarithms."""


def _to_numpy(value: Any, name: str, dtype: type = np.float64) -> np.ndarray:
    """Converts a numpy array, torch tensor or nested sequence to a new numpy array."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    try:
        return np.array(value, dtype=dtype)  # always a copy: inputs are never mutated
    except (TypeError, ValueError) as error:
        raise SpikemaskError(
            f"`{name}` must be a numeric array, got {type(value).__name__}"
        ) from error


def _check_rates_spikes(rates: Any, spikes: Any) -> tuple[np.ndarray, np.ndarray]:
    rates_np = _to_numpy(rates, "rates")
    spikes_np = _to_numpy(spikes, "spikes")
    if rates_np.shape != spikes_np.shape:
        raise SpikemaskError(
            f"`rates` and `spikes` must have the same shape, got {rates_np.shape} and "
            f"{spikes_np.shape}"
        )
    if rates_np.ndim == 0 or rates_np.size == 0:
        raise SpikemaskError(f"`rates` and `spikes` must be non-empty arrays, got {rates_np.shape}")
    if not np.all(np.isfinite(spikes_np)) or np.any(spikes_np < 0):
        raise SpikemaskError("`spikes` must be finite non-negative counts (found NaN, inf or < 0)")
    if not np.all(np.isfinite(rates_np)) or np.any(rates_np < 0):
        raise SpikemaskError("`rates` must be finite and >= 0 (found NaN, inf or a negative rate)")
    return rates_np, spikes_np


def _check_scored(scored: Any, shape: tuple[int, ...]) -> np.ndarray:
    if scored is None:
        return np.ones(shape, dtype=bool)
    if hasattr(scored, "detach") and hasattr(scored, "cpu"):
        scored = scored.detach().cpu().numpy()
    scored_np = np.asarray(scored)
    if scored_np.dtype != np.bool_:
        raise SpikemaskError(
            f"`scored` must be a boolean array (True = counted), got dtype {scored_np.dtype}"
        )
    if scored_np.shape != shape:
        raise SpikemaskError(
            f"`scored` must have the same shape as `spikes` {shape}, got {scored_np.shape}"
        )
    return scored_np


def poisson_nll(rates: Any, spikes: Any) -> np.ndarray:
    """Elementwise Poisson negative log-likelihood, including ``log(y!)``.

    Args:
        rates: Predicted rates (expected counts per bin), any shape, finite and >= 0.
            Clipped to at least :data:`MIN_RATE`.
        spikes: Observed counts, same shape, finite and >= 0.

    Returns:
        float64 array of the same shape: ``rates - spikes * log(rates) + log(spikes!)``.

    Raises:
        SpikemaskError: On mismatched shapes, NaN / negative counts or bad rates.
    """
    rates_np, spikes_np = _check_rates_spikes(rates, spikes)
    return _nll(rates_np, spikes_np)


def _nll(rates: np.ndarray, spikes: np.ndarray) -> np.ndarray:
    rates = np.maximum(rates, MIN_RATE)
    return rates - spikes * np.log(rates) + gammaln(spikes + 1.0)


def _per_unit_sums(rates: Any, spikes: Any, scored: Any) -> dict[str, np.ndarray]:
    """Per-unit sums over scored entries, each of shape (N,).

    Keys: ``nll_model``, ``nll_null`` (null = the unit's mean scored count),
    ``nll_saturated`` (rate = observed count, the NLL floor) and ``spike_count``.
    """
    rates_np, spikes_np = _check_rates_spikes(rates, spikes)
    weight = _check_scored(scored, spikes_np.shape).astype(np.float64)
    num_units = spikes_np.shape[-1]
    # (..., N) -> (rows, N)
    rates_np, spikes_np, weight = (a.reshape(-1, num_units) for a in (rates_np, spikes_np, weight))
    spike_count = (weight * spikes_np).sum(axis=0)
    null_rate = spike_count / np.maximum(weight.sum(axis=0), 1.0)
    log_factorial = gammaln(spikes_np + 1.0)
    saturated = spikes_np - xlogy(spikes_np, spikes_np) + log_factorial
    return {
        "nll_model": (weight * _nll(rates_np, spikes_np)).sum(axis=0),
        "nll_null": (weight * _nll(np.broadcast_to(null_rate, spikes_np.shape), spikes_np)).sum(0),
        "nll_saturated": (weight * saturated).sum(axis=0),
        "spike_count": spike_count,
    }


def bits_per_spike_per_unit(rates: Any, spikes: Any, *, scored: Any = None) -> np.ndarray:
    """Bits per spike of each unit against its own mean-rate null model.

    Args:
        rates: Predicted rates, shape (..., N), e.g. (K, T, N).
        spikes: Observed counts, shape (..., N).
        scored: Optional bool array, shape (..., N); True entries are evaluated. The null
            rate of unit n is its mean count over its scored entries. Default: all.

    Returns:
        float64 array, shape (N,). NaN for units with no spike in their scored entries.
    """
    sums = _per_unit_sums(rates, spikes, scored)
    spike_count = sums["spike_count"]
    with np.errstate(divide="ignore", invalid="ignore"):
        bps = (sums["nll_null"] - sums["nll_model"]) / (spike_count * math.log(2.0))
    return np.where(spike_count > 0, bps, np.nan)


def _nanmean(values: np.ndarray) -> float:
    """Mean over finite entries; NaN (without a warning) when there is none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def bits_per_spike(rates: Any, spikes: Any, *, scored: Any = None) -> float:
    """MtM bits per spike: mean over units of :func:`bits_per_spike_per_unit`.

    Units without scored spikes are skipped; NaN when no unit has any.

    Args:
        rates: Predicted rates, shape (..., N).
        spikes: Observed counts, shape (..., N).
        scored: Optional bool array, shape (..., N). Default: all entries.
    """
    return _nanmean(bits_per_spike_per_unit(rates, spikes, scored=scored))


def bits_per_spike_pooled(rates: Any, spikes: Any, *, scored: Any = None) -> float:
    """Neural Latents Benchmark "co-bps": bits per spike pooled over units.

    ``sum_n (NLL(null_n) - NLL(rates_n)) / (total scored spikes * ln 2)``, where the null
    rate of each unit is its mean over the scored entries. With ``scored=None`` this equals
    ``nlb_tools.evaluation.bits_per_spike(rates, spikes)`` (up to the rate clipping of
    rates in (0, 1e-9)). NaN when there is no scored spike.

    Args:
        rates: Predicted rates, shape (..., N).
        spikes: Observed counts, shape (..., N).
        scored: Optional bool array, shape (..., N). Default: all entries.
    """
    sums = _per_unit_sums(rates, spikes, scored)
    total_spikes = sums["spike_count"].sum()
    if total_spikes <= 0:
        return math.nan
    gain = sums["nll_null"].sum() - sums["nll_model"].sum()
    return float(gain / (total_spikes * math.log(2.0)))


def pseudo_r2_per_unit(rates: Any, spikes: Any, *, scored: Any = None) -> np.ndarray:
    """Fraction of Poisson deviance explained per unit, against its mean-rate null.

    ``1 - D(model) / D(null)`` with ``D(r) = 2 * sum(y * log(y / r) - (y - r))`` over the
    unit's scored entries (``y log y = 0`` at ``y = 0``; rates clipped as in
    :func:`poisson_nll`).

    Args:
        rates: Predicted rates, shape (..., N).
        spikes: Observed counts, shape (..., N).
        scored: Optional bool array, shape (..., N). Default: all entries.

    Returns:
        float64 array, shape (N,); NaN where the null deviance is 0 (a constant or silent
        unit over its scored entries).
    """
    deviance_model, deviance_null, explainable = _deviances(rates, spikes, scored)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = 1.0 - deviance_model / deviance_null
    return np.where(explainable, r2, np.nan)


def pseudo_r2(rates: Any, spikes: Any, *, scored: Any = None) -> float:
    """Mean over units of :func:`pseudo_r2_per_unit` (NaN units skipped)."""
    return _nanmean(pseudo_r2_per_unit(rates, spikes, scored=scored))


def _deviances(rates: Any, spikes: Any, scored: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N,) model and null Poisson deviances, and which units have deviance to explain."""
    sums = _per_unit_sums(rates, spikes, scored)
    # Poisson deviance D(r) = 2 (NLL(r) - NLL(saturated)); log(y!) cancels.
    deviance_model = 2.0 * (sums["nll_model"] - sums["nll_saturated"])
    deviance_null = 2.0 * (sums["nll_null"] - sums["nll_saturated"])
    # Silent and constant units have no deviance to explain (the tolerance absorbs round-off).
    explainable = (sums["spike_count"] > 0) & (deviance_null > 1e-9 * sums["spike_count"])
    return deviance_model, deviance_null, explainable


def poisson_d2_per_unit(rates: Any, spikes: Any, *, scored: Any = None) -> np.ndarray:
    """Poisson D² (fraction of deviance explained) of every unit; same as
    :func:`pseudo_r2_per_unit`.

    Args:
        rates: Predicted rates, shape (..., N).
        spikes: Observed counts, shape (..., N).
        scored: Optional bool array, shape (..., N). Default: all entries.

    Returns:
        float64 array, shape (N,); NaN for silent or constant units.
    """
    return pseudo_r2_per_unit(rates, spikes, scored=scored)


def poisson_d2(rates: Any, spikes: Any, *, scored: Any = None) -> float:
    """Poisson D², mean over units (BrainWideBench's ``poisson_d2``); NaN units skipped.

    Args:
        rates: Predicted rates, shape (..., N).
        spikes: Observed counts, shape (..., N).
        scored: Optional bool array, shape (..., N). Default: all entries.
    """
    return _nanmean(poisson_d2_per_unit(rates, spikes, scored=scored))


def poisson_d2_pooled(rates: Any, spikes: Any, *, scored: Any = None) -> float:
    """Poisson D² pooled over units: ``1 - sum_n D(rates_n) / sum_n D(null_n)`` over the units
    with deviance to explain (NaN when none has).

    Args:
        rates: Predicted rates, shape (..., N).
        spikes: Observed counts, shape (..., N).
        scored: Optional bool array, shape (..., N). Default: all entries.
    """
    model, null, explainable = _deviances(rates, spikes, scored)
    if not explainable.any():
        return math.nan
    return float(1.0 - model[explainable].sum() / null[explainable].sum())


def _check_labels(y_true: Any, y_pred: Any) -> tuple[list, list]:
    true_np = _to_numpy(y_true, "y_true", dtype=object).ravel()
    pred_np = _to_numpy(y_pred, "y_pred", dtype=object).ravel()
    if true_np.shape != pred_np.shape or true_np.size == 0:
        raise SpikemaskError(
            f"`y_true` and `y_pred` must be non-empty with the same length, got "
            f"{true_np.shape} and {pred_np.shape}"
        )
    return true_np.tolist(), pred_np.tolist()


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of correct labels. Shapes (K,) and (K,); labels of any hashable type."""
    true_list, pred_list = _check_labels(y_true, y_pred)
    return float(accuracy_score(true_list, pred_list))


def balanced_accuracy(y_true: Any, y_pred: Any) -> float:
    """Mean over true classes of the per-class recall. Shapes (K,) and (K,)."""
    true_list, pred_list = _check_labels(y_true, y_pred)
    with warnings.catch_warnings():  # one true class is legitimate for small test splits
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", message="A single label was found")
        return float(balanced_accuracy_score(true_list, pred_list))


def r2_flat(y_true: Any, y_pred: Any) -> float:
    """Coefficient of determination over all entries flattened (e.g. trials x bins).

    Args:
        y_true: Targets, any shape, e.g. (K, T); finite.
        y_pred: Predictions, same shape; finite.

    Returns:
        ``1 - SS_res / SS_tot`` over the raveled arrays (sklearn ``r2_score``).
    """
    true_np = _to_numpy(y_true, "y_true")
    pred_np = _to_numpy(y_pred, "y_pred")
    if true_np.shape != pred_np.shape or true_np.size < 2:
        raise SpikemaskError(
            f"`y_true` and `y_pred` must have the same shape with >= 2 entries, got "
            f"{true_np.shape} and {pred_np.shape}"
        )
    for name, array in (("y_true", true_np), ("y_pred", pred_np)):
        if not np.all(np.isfinite(array)):
            raise SpikemaskError(f"`{name}` must be finite (found NaN or inf)")
    return float(r2_score(true_np.ravel(), pred_np.ravel()))
