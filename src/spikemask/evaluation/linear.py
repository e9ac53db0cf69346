"""Linear-baseline settings and the feature helpers it shares.

Shape letters: K trials, T time bins, N units, C principal components.

The baseline itself (:class:`~spikemask.evaluation.baselines.LinearBaseline`) follows the
reference recipe of ``docs/baselines.md``: square-root counts, Gaussian smoothing over
time, PCA fitted on the fitting trials (whitened), a one-hot time bin, and one ridge
Poisson GLM per unit (:mod:`spikemask.evaluation.glm`) whose penalty is chosen on the
validation split, then refitted on train + val.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from spikemask.errors import SpikemaskError

__all__ = ["LinearBaselineConfig", "pca_features", "smooth_counts"]


@dataclass
class LinearBaselineConfig:
    """Settings of the linear baseline (defaults: the reference recipe).

    Attributes:
        smoothing_bins: SD, in bins, of the Gaussian kernel applied to sqrt counts.
        num_components: Principal components of the inputs (fewer when there are fewer
            inputs).
        alphas: Candidate ridge penalties; one is chosen per group of units fitted
            together (a fold or a region) by the validation NLL summed over the group.
        num_folds: Folds of units for co-smoothing and intra-region prediction (each fold
            is predicted from the units outside it).
        min_region_units: Regions with fewer units than this are predicted unit by unit
            (leave one out) in intra-region prediction.
        seed: Seed of the fold assignment.
    """

    smoothing_bins: float = 2.0
    num_components: int = 20
    alphas: tuple[float, ...] = (1.0, 0.1, 0.01, 0.001)
    num_folds: int = 5
    min_region_units: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.smoothing_bins >= 0:
            raise SpikemaskError(f"smoothing_bins must be >= 0, got {self.smoothing_bins}")
        if self.num_components < 1 or self.num_folds < 2 or self.min_region_units < 2:
            raise SpikemaskError(
                "need num_components >= 1, num_folds >= 2 and min_region_units >= 2, got "
                f"{self.num_components}, {self.num_folds}, {self.min_region_units}"
            )
        if not self.alphas or any(not a > 0 for a in self.alphas):
            raise SpikemaskError(f"alphas must be positive numbers, got {self.alphas}")


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


def pca_features(
    fit: np.ndarray, others: list[np.ndarray], num_components: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Whitened principal components of (K, T, N) inputs, fitted on ``fit`` only.

    Args:
        fit: (K, T, N) inputs whose (trial, bin) rows fit the PCA.
        others: More (K', T, N) inputs projected with the same components.
        num_components: Components kept (at most N and the number of rows).

    Returns:
        ``(fit projected, [each of others projected])``, each (K, T, C).
    """
    rows = torch.from_numpy(np.ascontiguousarray(fit.reshape(-1, fit.shape[-1]), np.float64))
    count = max(1, min(num_components, rows.shape[1], rows.shape[0] - 1))
    mean = rows.mean(0)
    centred = rows - mean
    # eigen-decomposition of the (N, N) covariance: fast for many rows and few inputs
    variance, vectors = torch.linalg.eigh(centred.T @ centred / max(rows.shape[0] - 1, 1))
    variance, vectors = variance.flip(0)[:count], vectors.flip(1)[:, :count]  # (C,), (N, C)
    # whiten: unit variance per component on the fitting rows (flat directions stay 0)
    scale = torch.where(variance > 1e-12, variance.clamp_min(1e-12).rsqrt(), 0.0)
    loadings = vectors * scale  # (N, C)

    def project(values: np.ndarray) -> np.ndarray:
        flat = torch.from_numpy(np.ascontiguousarray(values.reshape(-1, values.shape[-1])))
        projected = (flat.to(torch.float64) - mean) @ loadings
        return projected.numpy().reshape(*values.shape[:-1], count)

    return project(fit), [project(values) for values in others]
