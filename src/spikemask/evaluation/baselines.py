"""Baselines evaluated with the same tasks, splits and metrics as the trained models.

Shape letters: K trials, T time bins, N units, M target units.

:class:`LinearBaseline` is a :class:`~spikemask.evaluation.engine.Predictor`:

* co-smoothing / inter-region / intra-region: one
  :class:`~spikemask.evaluation.linear.MaskedPoissonGLM` per task, predicting each scored
  unit from exactly the units its task leaves visible (the plan's allowed-input matrix),
  on Gaussian-smoothed counts; fit on the ``train`` split, predicting the evaluated one;
* forward prediction: a Poisson GLM from the (causally smoothed) counts of every unit at
  the last observed bin to each hidden trailing bin, with a per-bin offset;
* behaviour: the same decoders as for the models, on raw binned counts (trial-mean
  counts per unit for trial labels, per-bin counts for per-bin behaviour).

The temporal-masking transformer baseline needs nothing here: it is another trained run
(``spikemask train --masking temporal``) evaluated like any other.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from spikemask.data.session import Session
from spikemask.evaluation.linear import (
    LinearBaselineConfig,
    MaskedPoissonGLM,
    smooth_counts,
)
from spikemask.evaluation.tasks import TaskPlan

__all__ = ["LinearBaseline"]


class LinearBaseline:
    """Linear Poisson models of activity and linear decoders on raw counts.

    Args:
        config: Smoothing, penalty and optimiser settings (default
            :class:`~spikemask.evaluation.linear.LinearBaselineConfig`).
    """

    name = "linear"

    def __init__(self, config: LinearBaselineConfig | None = None) -> None:
        self.config = config or LinearBaselineConfig()

    def info(self) -> dict[str, Any]:
        """``results["model"]`` of this baseline."""
        return {"name": self.name, "config": asdict(self.config)}

    def _glm(self, allowed: np.ndarray) -> MaskedPoissonGLM:
        cfg = self.config
        return MaskedPoissonGLM(
            allowed, l2=cfg.l2, max_iter=cfg.max_iter, per_bin_offset=cfg.per_bin_offset
        )

    def activity_rates(self, session: Session, plan: TaskPlan, split: str) -> np.ndarray:
        """(K, T, N) predicted rates of ``split``; NaN outside the plan's scored entries."""
        train = session.split("train").spikes
        evaluated = session.split(split).spikes
        rates = np.full(evaluated.shape, np.nan, dtype=np.float32)
        if plan.hidden_bins.any():
            return self._forward_rates(plan, train, evaluated, rates)
        targets = np.flatnonzero(plan.scored_units)
        allowed = plan.allowed_inputs()[:, targets]  # (N, M)
        sd_bins, causal = self.config.smoothing_bins, self.config.causal
        glm = self._glm(allowed).fit(
            smooth_counts(train, sd_bins, causal=causal), train[:, :, targets]
        )
        predicted = glm.predict_rates(smooth_counts(evaluated, sd_bins, causal=causal))
        rates[:, :, targets] = predicted
        return rates

    def _forward_rates(
        self, plan: TaskPlan, train: np.ndarray, evaluated: np.ndarray, rates: np.ndarray
    ) -> np.ndarray:
        """Rates of the hidden trailing bins from the observed leading ones.

        Features of every hidden bin of a trial: the causally smoothed counts of all units
        at the last observed bin; a per-bin offset per unit carries the mean time course.
        """
        hidden_bins = np.flatnonzero(plan.hidden_bins)
        num_units = train.shape[2]
        glm = self._glm(np.ones((num_units, num_units), dtype=bool))
        glm.fit(self._last_observed(train, hidden_bins), train[:, hidden_bins])
        rates[:, hidden_bins] = glm.predict_rates(self._last_observed(evaluated, hidden_bins))
        return rates

    def _last_observed(self, spikes: np.ndarray, hidden_bins: np.ndarray) -> np.ndarray:
        """(K, T_hidden, N): smoothed counts at the last observed bin, for each hidden bin."""
        observed = spikes[:, : hidden_bins[0]]  # (K, T_observed, N)
        smoothed = smooth_counts(observed, self.config.smoothing_bins, causal=True)[:, -1]
        return np.repeat(smoothed[:, None, :], hidden_bins.size, axis=1)

    def features(self, session: Session, split: str) -> np.ndarray:
        """(K, T, N) raw binned counts as decoder features."""
        return session.split(split).spikes.astype(np.float32)
