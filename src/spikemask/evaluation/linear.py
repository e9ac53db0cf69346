"""Linear baselines: masked-weight Poisson GLMs fit on smoothed spike counts.

Shape letters: K trials, T time bins, N units (inputs ``N_in``, targets M), F features.

One :class:`MaskedPoissonGLM` predicts every target unit from the inputs its row of
``allowed`` permits, all targets fit jointly in one full-batch L-BFGS optimisation:

* co-smoothing of every unit from all others: ``allowed = ~np.eye(N, dtype=bool)``;
* inter-region: ``allowed[n, m] = region[n] != region[m]``;
* intra-region: ``allowed[n, m] = (region[n] == region[m]) & (n != m)``.

The forward-prediction baseline built on it is in :mod:`spikemask.evaluation.linear_forward`.

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

__all__ = ["LinearBaselineConfig", "MaskedPoissonGLM", "check_counts", "smooth_counts"]


@dataclass
class LinearBaselineConfig:
    """Settings of the linear baselines.

    Attributes:
        smoothing_bins: SD, in bins, of the Gaussian kernel applied to input counts.
        causal: Whether input smoothing uses only past and current bins.
        l2: Ridge penalty of :class:`MaskedPoissonGLM` (on standardised features, against
            the mean Poisson NLL per bin). 0.1 suited ~1,000 inputs on real data.
        max_iter: Maximum number of L-BFGS iterations.
        per_bin_offset: Whether each target unit gets a learned offset per time bin.
    """

    smoothing_bins: float = 2.0
    causal: bool = False
    l2: float = 0.1
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


def _matmul(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """float64 matmul through torch, whose CPU threading handles tiny products well.

    numpy's threaded BLAS thrashes on small products when cores are shared (seen: 30x
    slower on 2 busy cores), and this module mixes tiny and large products.
    """
    return torch.matmul(torch.from_numpy(left), torch.from_numpy(right)).numpy()


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
    mean Poisson NLL per (trial, bin) summed over targets, plus ``l2 / 2 * |W|^2`` and
    ``l2 / (2 T) * |c|^2`` (an offset is penalised like a weight on a standardised
    one-hot bin indicator); ``b`` is not penalised. Fitting stops when an L-BFGS
    iteration gains less than :data:`TOLERANCE_BITS` bits per spike, or after ``max_iter``.

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
        feature_range_: Per-input training (min, max), each (N_in,); prediction clips
            features to it, so rare inputs cannot extrapolate to overflowing rates.
        loss_: Final value of the training objective.
        num_evaluations_: Number of loss-and-gradient evaluations the fit used.
    """

    def __init__(
        self,
        allowed: Any,
        *,
        l2: float = 0.1,
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
        self.feature_range_: tuple[np.ndarray, np.ndarray] | None = None
        self.loss_: float = math.nan
        self.num_evaluations_: int = 0

    def _check_features(self, features: Any) -> np.ndarray:
        x = _as_float_array(features, "features", 3)
        if x.shape[2] != self.allowed.shape[0]:
            raise SpikemaskError(
                f"`features` must have {self.allowed.shape[0]} inputs (rows of `allowed`) on "
                f"its last axis, got shape {x.shape}"
            )
        return x

    @classmethod
    def from_config(cls, allowed: Any, config: LinearBaselineConfig) -> MaskedPoissonGLM:
        """A GLM with the penalty, iteration cap and offset choice of ``config``.

        The caller smooths inputs with
        ``smooth_counts(x, config.smoothing_bins, causal=config.causal)``.
        """
        return cls(
            allowed, l2=config.l2, max_iter=config.max_iter, per_bin_offset=config.per_bin_offset
        )

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
        expected_shape = (*x.shape[:2], self.allowed.shape[1])
        if y.shape != expected_shape or np.any(y < 0):
            raise SpikemaskError(
                f"`targets` must be non-negative counts of shape {expected_shape}, got {y.shape}"
            )
        num_inputs = x.shape[2]
        self.feature_range_ = (x.min(axis=(0, 1)), x.max(axis=(0, 1)))
        feature_mean = x.mean(axis=(0, 1))
        feature_std = x.std(axis=(0, 1))
        feature_std[feature_std == 0] = 1.0  # constant inputs carry no information
        z = torch.from_numpy(((x - feature_mean) / feature_std).reshape(-1, num_inputs))
        params = self._optimise(z.to(self.dtype), torch.from_numpy(y).to(self.dtype))
        weight = params["weight"].double().numpy() * self.allowed
        self.coef_ = weight / feature_std[:, None]
        self.intercept_ = params["bias"].double().numpy() - _matmul(feature_mean, self.coef_)
        offset = params.get("offset")
        self.bin_offset_ = None if offset is None else offset.double().numpy()
        return self

    def _optimise(self, z: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Runs L-BFGS. z: (K*T, N_in) standardised features; y: (K, T, M) counts."""
        allowed = torch.from_numpy(self.allowed).to(self.dtype)
        objective = _MaskedPoissonObjective(z, y, allowed, self.l2, self.per_bin_offset)
        params = objective.initial_params()
        optimiser = torch.optim.LBFGS(
            params,
            lr=1.0,
            max_iter=self.max_iter,
            history_size=10,
            tolerance_grad=1e-9,
            tolerance_change=objective.tolerance_change,
            line_search_fn="strong_wolfe",
        )
        self.loss_ = float(optimiser.step(lambda: objective(params)))
        self.num_evaluations_ = int(optimiser.state[params[0]]["func_evals"])
        if not all(torch.isfinite(value).all() for value in params):
            raise SpikemaskError("MaskedPoissonGLM fit diverged; increase `l2`")
        return objective.unscale(params)

    def predict_log_rates(self, features: Any) -> np.ndarray:
        """Log rates, shape (K, T, M), for features of shape (K, T, N_in)."""
        if self.coef_ is None or self.intercept_ is None or self.feature_range_ is None:
            raise SpikemaskError("MaskedPoissonGLM must be fit before predicting")
        # Clipping to the training range keeps rare inputs from extrapolating to overflow.
        x = np.clip(self._check_features(features), *self.feature_range_)
        log_rates = _matmul(x, self.coef_) + self.intercept_  # (K, T, M)
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


TOLERANCE_BITS = 1e-5
"""L-BFGS stops when an iteration improves the objective by less than this many bits per
(mean) spike, i.e. ``TOLERANCE_BITS * ln 2 * mean count per entry`` nats per entry."""
_MAX_LOG_RATE = 30.0
"""Beyond this log rate the objective continues exp linearly, so it cannot overflow."""


class _MaskedPoissonObjective:
    """Objective of :class:`MaskedPoissonGLM` with hand-written gradients.

    The objective is divided by the number of targets M, so it is a per-entry mean.
    Parameters are optimised in rescaled coordinates (W = V * scale_w etc.) that make the
    per-unit curvature roughly equal: for standardised features the Hessian of unit m
    is about ``rate_m * corr(z) + l2``, so ``scale_w[m] = (rate_m + l2) ** -0.5``. One
    shared L-BFGS step then suits slow and fast units alike (~2-3x fewer evaluations).
    Gradients are written by hand (no autograd graph) to save memory traffic; the
    linear term ``sum(y * log_rate)`` uses the precomputed ``z.T @ y``. Above
    :data:`_MAX_LOG_RATE` the exponential is continued linearly (value and slope match),
    so wild line-search steps give a large finite loss instead of inf / NaN.
    """

    def __init__(
        self,
        z: torch.Tensor,
        y: torch.Tensor,
        allowed: torch.Tensor,
        l2: float,
        per_bin_offset: bool,
    ) -> None:
        self.z, self.y, self.allowed, self.l2 = z, y, allowed, l2
        self.per_bin_offset = per_bin_offset
        num_trials, num_bins, num_targets = y.shape
        self.num_rows = num_trials * num_bins
        rows_y = y.reshape(self.num_rows, num_targets)  # (K*T, M)
        self.zty = z.T @ rows_y / self.num_rows  # (N_in, M)
        self.y_bin_mean = y.sum(dim=0) / self.num_rows  # (T, M)
        self.y_mean = rows_y.mean(dim=0)  # (M,)
        rate = self.y_mean.clamp_min(1e-6)
        self.scale_w = (rate + l2).rsqrt()
        self.scale_b = rate.rsqrt()
        # Offsets are penalised like weights on standardised one-hot bin indicators
        # (std ~ T ** -0.5), i.e. by l2 / T: each offset only sees 1 / T of the rows.
        self.offset_l2 = l2 / num_bins
        self.scale_c = (self.y_bin_mean.clamp_min(1e-6) + self.offset_l2).rsqrt()  # (T, M)
        mean_count = max(float(self.y_mean.mean()), 1e-6)
        self.tolerance_change = TOLERANCE_BITS * math.log(2.0) * mean_count

    def initial_params(self) -> list[torch.Tensor]:
        """Zero weights; bias at each unit's log mean count; offsets at its log PSTH ratio."""
        num_bins, num_targets = self.y.shape[1:]
        params = [
            torch.zeros(self.z.shape[1], num_targets, dtype=self.z.dtype),  # V
            self.y_mean.clamp_min(1e-6).log() / self.scale_b,  # beta
        ]
        if self.per_bin_offset:  # start at the PSTH: the optimum when all weights are 0
            # One pseudo-count per bin keeps empty bins from starting at a huge penalty.
            num_trials = self.num_rows / num_bins
            counts = self.y_bin_mean * self.num_rows + 1.0  # (T, M) total count per bin
            offset = (counts / (self.y_mean * num_trials + 1.0)).log()
            params.append(offset / self.scale_c)  # gamma
        return [param.requires_grad_(True) for param in params]

    def unscale(self, params: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Maps optimiser coordinates back to weight (N_in, M), bias (M,), offset (T, M)."""
        with torch.no_grad():
            out = {
                "weight": params[0] * self.scale_w * self.allowed,
                "bias": params[1] * self.scale_b,
            }
            if self.per_bin_offset:
                out["offset"] = params[2] * self.scale_c
        return out

    @torch.no_grad()
    def __call__(self, params: list[torch.Tensor]) -> torch.Tensor:
        """Returns the loss and stores its gradient in each parameter's ``.grad``."""
        values = self.unscale(params)
        weight, bias = values["weight"], values["bias"]
        offset = values.get("offset")
        num_targets = weight.shape[1]
        log_rates = torch.addmm(bias, self.z, weight).view_as(self.y)  # (K, T, M)
        linear = (self.zty * weight).sum() + (self.y_mean * bias).sum()
        penalty = self.l2 * weight.square().sum()
        if offset is not None:
            log_rates += offset
            linear = linear + (self.y_bin_mean * offset).sum()
            penalty = penalty + self.offset_l2 * offset.square().sum()
        excess = None
        if float(log_rates.max()) > _MAX_LOG_RATE:  # e.g. a wild line-search trial step
            excess = (log_rates - _MAX_LOG_RATE).clamp_min_(0.0)
            log_rates.clamp_max_(_MAX_LOG_RATE)
        rates = log_rates.exp_().div_(self.num_rows)  # in place: (K, T, M) rates / rows
        expected = rates.sum() if excess is None else (rates * (1.0 + excess)).sum()
        loss = (expected - linear + 0.5 * penalty) / num_targets
        grad_weight = self.z.T @ rates.view(self.num_rows, -1) - self.zty + self.l2 * weight
        params[0].grad = grad_weight * self.allowed * self.scale_w / num_targets
        params[1].grad = (rates.sum(dim=(0, 1)) - self.y_mean) * self.scale_b / num_targets
        if offset is not None:
            grad_offset = rates.sum(dim=0) - self.y_bin_mean + self.offset_l2 * offset
            params[2].grad = grad_offset * self.scale_c / num_targets
        return loss


def check_counts(spikes: Any, name: str) -> np.ndarray:
    """``spikes`` as a float64 (K, T, N) array of non-negative counts, else a clear error."""
    counts = _as_float_array(spikes, name, 3)
    if np.any(counts < 0):
        raise SpikemaskError(f"`{name}` must be non-negative counts (K, T, N)")
    return counts
