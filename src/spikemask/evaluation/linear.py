"""Linear baselines: masked-weight Poisson GLMs fit on smoothed spike counts.

Shape letters: K trials, T time bins, N units (inputs ``N_in``, targets M), F features.

One :class:`MaskedPoissonGLM` predicts every target unit from the inputs its row of
``allowed`` permits, all targets fit jointly in one full-batch L-BFGS optimisation:

* co-smoothing of every unit from all others: ``allowed = ~np.eye(N, dtype=bool)``;
* inter-region: ``allowed[n, m] = region[n] != region[m]``;
* intra-region: ``allowed[n, m] = (region[n] == region[m]) & (n != m)``.

:func:`fit_forward_predictor` fits a GLM from a per-trial summary of the observed
(leading) bins to the hidden (trailing) bins, for forward prediction.

Fits are deterministic: zero-initialised weights and full-batch L-BFGS use no randomness.
Computation runs on CPU with torch's current thread setting (it is never changed here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from spikemask.errors import SpikemaskError

__all__ = [
    "ForwardPredictor",
    "LinearBaselineConfig",
    "MaskedPoissonGLM",
    "fit_forward_predictor",
    "smooth_counts",
]


@dataclass
class LinearBaselineConfig:
    """Settings of the linear baselines.

    Attributes:
        smoothing_bins: SD, in bins, of the Gaussian kernel applied to input counts.
        causal: Whether input smoothing uses only past and current bins.
        l2: Ridge penalty on the weights and per-bin offsets (per unit, on standardised
            features; the data term is the mean Poisson NLL per bin).
        max_iter: Maximum number of L-BFGS iterations.
        per_bin_offset: Whether each target unit gets a learned offset per time bin.
    """

    smoothing_bins: float = 2.0
    causal: bool = False
    l2: float = 1e-2
    max_iter: int = 200
    per_bin_offset: bool = True


def _as_float_array(value: Any, name: str, ndim: int) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor
        value = value.detach().cpu().numpy()
    array = np.array(value, dtype=np.float64)  # a copy: inputs are never mutated
    if array.ndim != ndim:
        raise SpikemaskError(f"`{name}` must have {ndim} dimensions, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise SpikemaskError(f"`{name}` must be finite (found NaN or inf)")
    return array


def smooth_counts(spikes: Any, sd_bins: float, *, causal: bool = False) -> np.ndarray:
    """Gaussian smoothing of counts along time, separately per trial and unit.

    The kernel spans ``ceil(4 * sd_bins)`` bins on each side (only the past side and the
    current bin when ``causal``). Near trial edges the kernel is renormalised over the
    bins that exist, so a constant input stays constant and, away from the edges, the
    total count is preserved.

    Args:
        spikes: Counts, shape (K, T, N).
        sd_bins: Kernel standard deviation in bins; 0 returns the counts unchanged.
        causal: If True, the value at bin t depends only on bins <= t.

    Returns:
        float64 array, shape (K, T, N).
    """
    counts = _as_float_array(spikes, "spikes", 3)
    if not sd_bins >= 0:
        raise SpikemaskError(f"`sd_bins` must be >= 0, got {sd_bins}")
    if sd_bins == 0:
        return counts
    num_bins = counts.shape[1]
    half_width = math.ceil(4 * sd_bins)
    lags = np.arange(0 if causal else -half_width, half_width + 1)
    kernel = np.exp(-0.5 * (lags / sd_bins) ** 2)
    smoothed = np.zeros_like(counts)
    norm = np.zeros(num_bins)
    for lag, weight in zip(lags.tolist(), kernel.tolist(), strict=True):
        if abs(lag) >= num_bins:
            continue
        # smoothed[:, t] += weight * counts[:, t - lag]
        if lag >= 0:
            smoothed[:, lag:] += weight * counts[:, : num_bins - lag]
            norm[lag:] += weight
        else:
            smoothed[:, :lag] += weight * counts[:, -lag:]
            norm[:lag] += weight
    return smoothed / norm[None, :, None]


class MaskedPoissonGLM:
    """Poisson GLM with a fixed pattern of allowed input-to-target weights.

    ``log rate[k, t, m] = sum_n z[k, t, n] W[n, m] allowed[n, m] + b[m] (+ c[t, m])``,
    where ``z`` are the features standardised with training statistics. The loss is the
    mean Poisson NLL per (trial, bin) summed over targets, plus ``l2 / 2`` times the
    squared norms of ``W`` and ``c``; ``b`` is not penalised.

    Args:
        allowed: Bool array, shape (N_in, M); ``allowed[n, m]`` lets input n drive target m.
        l2: Ridge penalty (see above).
        max_iter: Maximum L-BFGS iterations.
        per_bin_offset: Whether to learn the per-bin offset ``c`` (ties T at predict time).
        dtype: torch dtype of the optimisation (float32 is ~2x faster on CPU).

    Attributes (after :meth:`fit`):
        coef_: Effective weights on the raw features, (N_in, M); exactly 0 where not allowed.
        intercept_: (M,), such that ``log rate = features @ coef_ + intercept_ (+ c)``.
        bin_offset_: (T, M) or None.
        loss_: Final value of the training objective.
    """

    def __init__(
        self,
        allowed: Any,
        *,
        l2: float = 1e-2,
        max_iter: int = 200,
        per_bin_offset: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        allowed_np = np.asarray(allowed)
        if allowed_np.dtype != np.bool_ or allowed_np.ndim != 2:
            raise SpikemaskError(
                f"`allowed` must be a 2-D bool array (N_in, M), got dtype {allowed_np.dtype} "
                f"and shape {allowed_np.shape}"
            )
        if not l2 >= 0 or max_iter < 1:
            raise SpikemaskError(f"need `l2` >= 0 and `max_iter` >= 1, got {l2} and {max_iter}")
        self.allowed = allowed_np.copy()
        self.l2 = float(l2)
        self.max_iter = int(max_iter)
        self.per_bin_offset = per_bin_offset
        self.dtype = dtype
        self.coef_: np.ndarray | None = None
        self.intercept_: np.ndarray | None = None
        self.bin_offset_: np.ndarray | None = None
        self.loss_: float = math.nan

    def _check_features(self, features: Any) -> np.ndarray:
        x = _as_float_array(features, "features", 3)
        if x.shape[2] != self.allowed.shape[0]:
            raise SpikemaskError(
                f"`features` must have {self.allowed.shape[0]} inputs (rows of `allowed`) on "
                f"its last axis, got shape {x.shape}"
            )
        return x

    def fit(self, features: Any, targets: Any) -> MaskedPoissonGLM:
        """Fits all targets jointly.

        Args:
            features: Shape (K, T, N_in), e.g. smoothed counts.
            targets: Counts, shape (K, T, M), finite and >= 0.

        Returns:
            self.
        """
        x = self._check_features(features)
        y = _as_float_array(targets, "targets", 3)
        if y.shape != x.shape[:2] + (self.allowed.shape[1],) or np.any(y < 0):
            raise SpikemaskError(
                f"`targets` must be non-negative counts of shape "
                f"{x.shape[:2] + (self.allowed.shape[1],)}, got {y.shape}"
            )
        num_trials, num_bins, num_inputs = x.shape
        feature_mean = x.mean(axis=(0, 1))
        feature_std = x.std(axis=(0, 1))
        feature_std[feature_std == 0] = 1.0  # constant inputs carry no information
        z = torch.from_numpy(((x - feature_mean) / feature_std).reshape(-1, num_inputs))
        params = self._optimise(z.to(self.dtype), torch.from_numpy(y).to(self.dtype))
        weight = params["weight"].double().numpy() * self.allowed
        self.coef_ = weight / feature_std[:, None]
        self.intercept_ = params["bias"].double().numpy() - feature_mean @ self.coef_
        offset = params.get("offset")
        self.bin_offset_ = None if offset is None else offset.double().numpy()
        return self

    def _optimise(self, z: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Runs L-BFGS. z: (K*T, N_in) standardised features; y: (K, T, M) counts."""
        num_trials, num_bins, num_targets = y.shape
        allowed = torch.from_numpy(self.allowed).to(self.dtype)
        mean_rate = y.mean(dim=(0, 1)).clamp_min(1e-6)
        params = {
            "weight": torch.zeros(z.shape[1], num_targets, dtype=self.dtype, requires_grad=True),
            "bias": mean_rate.log().requires_grad_(True),
        }
        if self.per_bin_offset:
            params["offset"] = torch.zeros(num_bins, num_targets, dtype=self.dtype)
            params["offset"].requires_grad_(True)
        optimiser = torch.optim.LBFGS(
            list(params.values()),
            lr=1.0,
            max_iter=self.max_iter,
            history_size=10,
            tolerance_grad=1e-6,
            tolerance_change=1e-9,
            line_search_fn="strong_wolfe",
        )
        num_rows = num_trials * num_bins

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            log_rates = (z @ (params["weight"] * allowed) + params["bias"]).view_as(y)
            if "offset" in params:
                log_rates = log_rates + params["offset"]  # (K, T, M) + (T, M)
            nll = (log_rates.exp() - y * log_rates).sum() / num_rows
            penalty = params["weight"].square().mul(allowed).sum()
            if "offset" in params:
                penalty = penalty + params["offset"].square().sum()
            loss = nll + 0.5 * self.l2 * penalty
            loss.backward()
            return loss

        self.loss_ = float(optimiser.step(closure))
        if not all(torch.isfinite(value).all() for value in params.values()):
            raise SpikemaskError("MaskedPoissonGLM fit diverged; increase `l2`")
        return {name: value.detach() for name, value in params.items()}

    def predict_log_rates(self, features: Any) -> np.ndarray:
        """Log rates, shape (K, T, M), for features of shape (K, T, N_in)."""
        if self.coef_ is None or self.intercept_ is None:
            raise SpikemaskError("MaskedPoissonGLM must be fit before predicting")
        x = self._check_features(features)
        log_rates = x @ self.coef_ + self.intercept_  # (K, T, M)
        if self.bin_offset_ is not None:
            if x.shape[1] != self.bin_offset_.shape[0]:
                raise SpikemaskError(
                    f"`features` must have {self.bin_offset_.shape[0]} time bins (as in fit, "
                    f"because per_bin_offset=True), got shape {x.shape}"
                )
            log_rates = log_rates + self.bin_offset_
        return log_rates

    def predict_rates(self, features: Any) -> np.ndarray:
        """Predicted rates (expected counts per bin), shape (K, T, M), float64."""
        return np.exp(self.predict_log_rates(features))
