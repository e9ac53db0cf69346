"""Linear forward-prediction baseline: a Poisson GLM from a summary of the observed bins.

Shape letters: K trials, T time bins, N units, F summary features, C principal components.

:func:`fit_forward_predictor` fits a :class:`~spikemask.evaluation.linear.MaskedPoissonGLM`
from a per-trial summary of the observed (leading) bins to the hidden (trailing) bins
(method section 6). Deterministic, as every fit of :mod:`spikemask.evaluation.linear`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from spikemask.errors import SpikemaskError
from spikemask.evaluation.linear import MaskedPoissonGLM, check_counts, smooth_counts

__all__ = ["ForwardPredictor", "fit_forward_predictor"]


def _observed_summary(
    counts: np.ndarray, num_observed: int, smoothing_bins: float, num_recent_bins: int
) -> np.ndarray:
    """Per-trial summary of the observed bins, (K, (num_recent_bins + 1) * N).

    The last ``num_recent_bins`` observed bins of the causally smoothed counts, then the
    mean count of each unit over all observed bins. Hidden bins are never read.
    """
    observed = counts[:, :num_observed]  # (K, T_obs, N)
    smoothed = smooth_counts(observed, smoothing_bins, causal=True)
    recent = smoothed[:, -num_recent_bins:].reshape(counts.shape[0], -1)
    return np.concatenate([recent, observed.mean(axis=1)], axis=1)


@dataclass
class ForwardPredictor:
    """Predicts the last ``num_hidden_bins`` bins of every unit from the earlier bins.

    Build it with :func:`fit_forward_predictor`.

    Attributes:
        glm: Poisson GLM from the (optionally PCA-reduced) summary to the hidden bins.
        num_bins: Number of bins T of the trials it was fit on.
        num_hidden_bins: Number of trailing bins it predicts.
        smoothing_bins: SD in bins of the causal smoothing of observed counts.
        num_recent_bins: Number of last observed bins in the summary.
        summary_mean: Training mean of the summary features, (F,).
        components: PCA loadings (F, C), or None when no reduction is applied.
    """

    glm: MaskedPoissonGLM
    num_bins: int
    num_hidden_bins: int
    smoothing_bins: float
    num_recent_bins: int
    summary_mean: np.ndarray
    components: np.ndarray | None

    def _features(self, counts: np.ndarray) -> np.ndarray:
        """(K, T, N) counts -> GLM features (K, num_hidden_bins, F or C)."""
        summary = _observed_summary(
            counts, self.num_bins - self.num_hidden_bins, self.smoothing_bins, self.num_recent_bins
        )
        summary = summary - self.summary_mean
        if self.components is not None:
            summary = summary @ self.components  # (K, C)
        # The same per-trial summary drives every hidden bin; the GLM adds per-bin offsets.
        return np.repeat(summary[:, None, :], self.num_hidden_bins, axis=1)

    def predict_rates(self, spikes: Any) -> np.ndarray:
        """Predicted rates of the hidden bins.

        Args:
            spikes: Counts, shape (K, T, N), with the T and N of training. Only the first
                ``T - num_hidden_bins`` bins are read; the hidden ones may hold anything
                finite (e.g. zeros).

        Returns:
            float64 array, shape (K, num_hidden_bins, N).
        """
        counts = check_counts(spikes, "spikes")
        if counts.shape[1] != self.num_bins:
            raise SpikemaskError(
                f"`spikes` must have {self.num_bins} time bins as in training, got {counts.shape}"
            )
        return self.glm.predict_rates(self._features(counts))


def fit_forward_predictor(
    train_spikes: Any,
    *,
    num_hidden_bins: int,
    smoothing_bins: float = 2.0,
    num_recent_bins: int = 2,
    num_components: int | None = None,
    l2: float = 1.0,
    max_iter: int = 200,
) -> ForwardPredictor:
    """Fits a linear forward-prediction baseline (method section 6).

    Features of a trial (computed from its observed bins ``[0, T - num_hidden_bins)``
    only): the causally smoothed counts of all units in the last ``num_recent_bins``
    observed bins, plus each unit's mean count over the observed bins. They are centred
    and optionally reduced to ``num_components`` principal components (fit on the
    training trials). One Poisson GLM predicts every unit in every hidden bin: weights
    are shared across the hidden bins, and each (hidden bin, unit) has its own offset.

    Args:
        train_spikes: Counts, shape (K, T, N).
        num_hidden_bins: Number of trailing bins to predict, 1 <= h < T.
        smoothing_bins: SD in bins of the causal Gaussian smoothing of observed counts.
        num_recent_bins: Number of last observed bins used, 1 <= r <= T - h.
        num_components: PCA dimension of the summary, or None for no reduction.
        l2: Ridge penalty of the GLM (see :class:`MaskedPoissonGLM`). The summary has
            more features than there are training trials, so it needs more shrinkage than
            co-smoothing: 1.0 beat 0.1 clearly on a real 1,172-unit session.
        max_iter: Maximum L-BFGS iterations.

    Returns:
        A fitted :class:`ForwardPredictor`.
    """
    counts = check_counts(train_spikes, "train_spikes")
    _, num_bins, num_units = counts.shape
    if not 1 <= num_hidden_bins < num_bins:
        raise SpikemaskError(
            f"`num_hidden_bins` must be in [1, {num_bins - 1}], got {num_hidden_bins}"
        )
    if not 1 <= num_recent_bins <= num_bins - num_hidden_bins:
        raise SpikemaskError(
            f"`num_recent_bins` must be in [1, {num_bins - num_hidden_bins}] (observed bins), "
            f"got {num_recent_bins}"
        )
    num_observed = num_bins - num_hidden_bins
    summary = _observed_summary(counts, num_observed, smoothing_bins, num_recent_bins)  # (K, F)
    summary_mean = summary.mean(axis=0)
    components = None
    if num_components is not None:
        if not 1 <= num_components <= min(summary.shape):
            raise SpikemaskError(
                f"`num_components` must be in [1, {min(summary.shape)}] (min of trials and "
                f"features), got {num_components}"
            )
        centred = torch.from_numpy(summary - summary_mean)
        right_vectors = torch.linalg.svd(centred, full_matrices=False).Vh.numpy()
        components = right_vectors[:num_components].T  # (F, C)
    predictor = ForwardPredictor(
        glm=MaskedPoissonGLM(
            np.ones((summary.shape[1] if components is None else num_components, num_units), bool),
            l2=l2,
            max_iter=max_iter,
            per_bin_offset=True,
        ),
        num_bins=num_bins,
        num_hidden_bins=num_hidden_bins,
        smoothing_bins=smoothing_bins,
        num_recent_bins=num_recent_bins,
        summary_mean=summary_mean,
        components=components,
    )
    predictor.glm.fit(predictor._features(counts), counts[:, num_observed:])
    return predictor
