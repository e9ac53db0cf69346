"""Baselines evaluated with the same tasks, splits and metrics as the trained models.

Shape letters: K trials, T time bins, N units, M target units.

:class:`LinearBaseline` is a :class:`~spikemask.evaluation.engine.Predictor`:

* co-smoothing / inter-region / intra-region: one
  :class:`~spikemask.evaluation.linear.MaskedPoissonGLM` per task, predicting each scored
  unit from exactly the units its task leaves visible (the plan's allowed-input matrix),
  on Gaussian-smoothed counts; fit on the ``train`` split, predicting the evaluated one;
* forward prediction: :func:`~spikemask.evaluation.linear_forward.fit_forward_predictor`, a
  Poisson GLM from a summary of the observed leading bins to the hidden trailing bins;
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
from spikemask.evaluation.linear_forward import fit_forward_predictor
from spikemask.evaluation.tasks import TaskPlan

__all__ = ["MAX_LOG_RATE", "LinearBaseline"]

MAX_LOG_RATE = float(np.log(100.0))
"""Predicted log-rates are capped here (100 spikes per bin): a GLM that extrapolates
wildly on an unusual test trial must still give finite scores."""


class LinearBaseline:
    """Linear Poisson models of activity and linear decoders on raw counts.

    Args:
        config: Smoothing, penalty and optimiser settings (default:
            ``LinearBaselineConfig()``); the forward predictor takes its smoothing and
            iteration budget from it and keeps its own penalty.
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
        features = smooth_counts(evaluated, sd_bins, causal=causal)  # (K, T, N)
        log_rates = glm.predict_log_rates(features)  # (K, T, M)
        rates[:, :, targets] = np.exp(np.minimum(log_rates, MAX_LOG_RATE))
        return rates

    def _forward_rates(
        self, plan: TaskPlan, train: np.ndarray, evaluated: np.ndarray, rates: np.ndarray
    ) -> np.ndarray:
        """Rates of the hidden trailing bins from the observed leading ones."""
        hidden_bins = np.flatnonzero(plan.hidden_bins)
        predictor = fit_forward_predictor(
            train,
            num_hidden_bins=hidden_bins.size,
            smoothing_bins=self.config.smoothing_bins,
            max_iter=self.config.max_iter,
        )
        with np.errstate(over="ignore"):  # capped just below
            predicted = predictor.predict_rates(evaluated)  # (K, T_hidden, N)
        rates[:, hidden_bins] = np.minimum(predicted, np.exp(MAX_LOG_RATE))
        return rates

    def features(self, session: Session, split: str) -> np.ndarray:
        """(K, T, N) raw binned counts as decoder features."""
        return session.split(split).spikes.astype(np.float32)
