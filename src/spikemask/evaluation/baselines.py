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

__all__ = ["DEFAULT_L2", "MAX_LOG_RATE", "LinearBaseline"]

DEFAULT_L2 = 1.0
"""Default ridge penalty of the activity GLMs. On the bundled session (619 units, 160
training trials) they overfit at linear.py's default 0.01: co-smoothing pooled bps -0.97
at l2 = 0.01, +0.13 at 1.0, +0.02 at 10."""

MAX_LOG_RATE = float(np.log(100.0))
"""Predicted log-rates are capped here (100 spikes per bin): a GLM that extrapolates
wildly on an unusual test trial must still give finite scores."""


class LinearBaseline:
    """Linear Poisson models of activity and linear decoders on raw counts.

    Args:
        config: Smoothing, penalty and optimiser settings (default:
            ``LinearBaselineConfig(l2=DEFAULT_L2)``).
        forward_l2: Ridge penalty of the forward-prediction GLM.
    """

    name = "linear"

    def __init__(
        self, config: LinearBaselineConfig | None = None, *, forward_l2: float = 0.1
    ) -> None:
        self.config = config or LinearBaselineConfig(l2=DEFAULT_L2)
        self.forward_l2 = forward_l2

    def info(self) -> dict[str, Any]:
        """``results["model"]`` of this baseline."""
        return {"name": self.name, "config": asdict(self.config), "forward_l2": self.forward_l2}

    def _glm(self, allowed: np.ndarray, l2: float | None = None) -> MaskedPoissonGLM:
        cfg = self.config
        return MaskedPoissonGLM(
            allowed,
            l2=cfg.l2 if l2 is None else l2,
            max_iter=cfg.max_iter,
            per_bin_offset=cfg.per_bin_offset,
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
        log_rates = glm.predict_log_rates(smooth_counts(evaluated, sd_bins, causal=causal))
        rates[:, :, targets] = np.exp(np.minimum(log_rates, MAX_LOG_RATE))
        return rates

    def _forward_rates(
        self, plan: TaskPlan, train: np.ndarray, evaluated: np.ndarray, rates: np.ndarray
    ) -> np.ndarray:
        """Rates of the hidden trailing bins from the observed leading ones.

        Each unit is predicted from its own causally smoothed count at the last observed
        bin, plus a per-bin offset (its mean time course). Letting every unit drive every
        other overfits badly here (N x N weights from few trials x few hidden bins).
        """
        hidden_bins = np.flatnonzero(plan.hidden_bins)
        glm = self._glm(np.eye(train.shape[2], dtype=bool), l2=self.forward_l2)
        glm.fit(self._last_observed(train, hidden_bins), train[:, hidden_bins])
        log_rates = glm.predict_log_rates(self._last_observed(evaluated, hidden_bins))
        rates[:, hidden_bins] = np.exp(np.minimum(log_rates, MAX_LOG_RATE))
        return rates

    def _last_observed(self, spikes: np.ndarray, hidden_bins: np.ndarray) -> np.ndarray:
        """(K, T_hidden, N): smoothed counts at the last observed bin, for each hidden bin."""
        observed = spikes[:, : hidden_bins[0]]  # (K, T_observed, N)
        smoothed = smooth_counts(observed, self.config.smoothing_bins, causal=True)[:, -1]
        return np.repeat(smoothed[:, None, :], hidden_bins.size, axis=1)

    def features(self, session: Session, split: str) -> np.ndarray:
        """(K, T, N) raw binned counts as decoder features."""
        return session.split(split).spikes.astype(np.float32)
