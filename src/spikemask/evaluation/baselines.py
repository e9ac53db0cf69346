"""The linear baseline, evaluated with the same tasks, splits and metrics as the models.

Shape letters: K trials, T time bins, N units, M target units, C principal components.

:class:`LinearBaseline` is a :class:`~spikemask.evaluation.engine.Predictor` that follows
the reference recipe (``docs/baselines.md``):

* features: square-root counts of the units a task lets the group see, smoothed over time
  (Gaussian, σ = 2 bins, within trials), reduced to 20 whitened principal components fitted
  on the fitting trials, plus a one-hot time bin (a per-bin offset);
* one ridge Poisson GLM per predicted unit (:func:`~spikemask.evaluation.glm.fit_poisson_glm`);
  the penalty is chosen from ``alphas`` once per group of units fitted together, by the
  validation NLL summed over the group; the chosen model is refitted on train + val;
* groups: co-smoothing predicts 5 random folds of units, each from the other units
  (harder than the models' leave-one-unit-out); inter-region predicts each region from all
  other units; intra-region predicts 5 folds of each region (regions with fewer than 5
  units: unit by unit) from the rest of that region only; forward prediction predicts the
  hidden trailing bins of every unit from the PCA of each unit's mean count over the
  observed bins of the trial, plus a one-hot of the hidden bin;
* behaviour: the same decoders as for the models, on raw binned counts.

When the evaluated split is ``val`` itself, the penalty is chosen on a seeded 20 % of the
training trials instead, and the final fit uses the training trials only, so no score is
ever computed on trials that chose a setting.

The temporal-masking transformer baseline needs nothing here: it is another trained run
(``spikemask train --masking temporal``) evaluated like any other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from spikemask.data.session import Session
from spikemask.evaluation.glm import PoissonGLMFit, fit_poisson_glm, poisson_nll_sum
from spikemask.evaluation.linear import LinearBaselineConfig, pca_features, smooth_counts
from spikemask.evaluation.tasks import TaskPlan, labelled_regions

__all__ = ["MAX_LOG_RATE", "LinearBaseline"]

MAX_LOG_RATE = float(np.log(100.0))
"""Predicted log-rates are capped here (100 spikes per bin): a GLM that extrapolates
wildly on an unusual test trial must still give finite scores."""
SELECTION_FRACTION = 0.2
"""Share of training trials that choose the penalty when ``val`` is the evaluated split."""


@dataclass(frozen=True)
class _Data:
    """Counts (K, T, N) of the trials that choose the penalty, fit and get evaluated."""

    select_fit: np.ndarray
    select_score: np.ndarray
    final_fit: np.ndarray
    evaluated: np.ndarray


class LinearBaseline:
    """Ridge Poisson GLMs on PCA features of activity, linear decoders on raw counts.

    Args:
        config: Recipe settings (default: ``LinearBaselineConfig()``, the reference).
    """

    name = "linear"

    def __init__(self, config: LinearBaselineConfig | None = None) -> None:
        self.config = config or LinearBaselineConfig()
        self.chosen_alphas: list[float] = []
        """Penalty chosen for every group fitted so far (for reports and tests)."""

    def info(self) -> dict[str, Any]:
        """``results["model"]`` of this baseline."""
        return {"name": self.name, "config": asdict(self.config)}

    # ------------------------------------------------------------------ data
    def _data(self, session: Session, split: str) -> _Data:
        train = session.split("train").spikes
        evaluated = session.split(split).spikes
        if split != "val":
            val = session.split("val").spikes
            return _Data(train, val, np.concatenate([train, val]), evaluated)
        order = np.random.default_rng(self.config.seed).permutation(train.shape[0])
        num_select = max(1, round(SELECTION_FRACTION * train.shape[0]))
        chosen, rest = order[:num_select], order[num_select:]
        return _Data(train[np.sort(rest)], train[np.sort(chosen)], train, evaluated)

    # ------------------------------------------------------------------ predictor
    def activity_rates(self, session: Session, plan: TaskPlan, split: str) -> np.ndarray:
        """(K, T, N) predicted rates of ``split``; NaN outside the plan's scored entries."""
        data = self._data(session, split)
        rates = np.full(data.evaluated.shape, np.nan, dtype=np.float32)
        if plan.hidden_bins.any():
            hidden = np.flatnonzero(plan.hidden_bins)
            rates[:, hidden] = self._forward_rates(data, hidden)
            return rates
        sd = self.config.smoothing_bins
        smoothed = _Data(*(smooth_counts(np.sqrt(x), sd) for x in _fields(data)))
        for inputs, targets in self._groups(session, plan):
            rates[:, :, targets] = self._group_rates(data, smoothed, inputs, targets)
        return rates

    def features(self, session: Session, split: str) -> np.ndarray:
        """(K, T, N) raw binned counts as decoder features."""
        return session.split(split).spikes.astype(np.float32)

    # ------------------------------------------------------------------ groups
    def _folds(self, units: np.ndarray, key: int) -> list[np.ndarray]:
        """Units split into ``num_folds`` random folds (one per unit when fewer units than
        ``min_region_units``)."""
        if units.size < self.config.min_region_units:
            return [units[i : i + 1] for i in range(units.size)]
        order = np.random.default_rng([self.config.seed, key]).permutation(units)
        return [np.sort(f) for f in np.array_split(order, self.config.num_folds) if f.size]

    def _groups(self, session: Session, plan: TaskPlan) -> list[tuple[np.ndarray, np.ndarray]]:
        """(input units, target units) of every group fitted together."""
        scored = plan.scored_units
        everyone = np.arange(session.num_units)
        groups: list[tuple[np.ndarray, np.ndarray]] = []
        if plan.task == "co_smoothing":
            for fold in self._folds(everyone, 0):
                groups.append((np.setdiff1d(everyone, fold), fold[scored[fold]]))
        elif plan.task == "inter_region":
            for hidden, targets in zip(plan.hidden_units, plan.targets, strict=True):
                groups.append((np.flatnonzero(~hidden), targets))
        else:  # intra_region: folds of each region, from the rest of that region
            for key, units in enumerate(labelled_regions(session).values(), start=1):
                if units.size < 2:
                    continue
                for fold in self._folds(units, key):
                    groups.append((np.setdiff1d(units, fold), fold[scored[fold]]))
        return [(inputs, targets) for inputs, targets in groups if targets.size]

    def _choose_alpha(self, fit_z, fit_y, score_z, score_y) -> float:
        """The penalty with the lowest summed NLL on the selection trials.

        Penalties are tried from the strongest down, each fit starting from the previous
        one; the path stops as soon as the selection NLL rises (it is
        unimodal in practice), which skips the slowest, weakest-penalty fits.
        """
        best_alpha, best_nll, start = self.config.alphas[0], np.inf, None
        for alpha in sorted(self.config.alphas, reverse=True):
            start = fit_poisson_glm(fit_z, fit_y, alpha, start=start)
            nll = float(poisson_nll_sum(_clip(start.log_rates(score_z)), score_y).sum())
            if nll >= best_nll:
                break
            best_alpha, best_nll = alpha, nll
        self.chosen_alphas.append(best_alpha)
        return best_alpha

    def _group_rates(
        self, data: _Data, smoothed: _Data, inputs: np.ndarray, targets: np.ndarray
    ) -> np.ndarray:
        """(K, T, M) rates of the evaluated trials for one group."""
        components = self.config.num_components
        fit_z, (score_z,) = pca_features(
            smoothed.select_fit[:, :, inputs], [smoothed.select_score[:, :, inputs]], components
        )
        alpha = self._choose_alpha(
            fit_z,
            data.select_fit[:, :, targets],
            score_z,
            data.select_score[:, :, targets],
        )
        final_z, (eval_z,) = pca_features(
            smoothed.final_fit[:, :, inputs], [smoothed.evaluated[:, :, inputs]], components
        )
        glm = fit_poisson_glm(final_z, data.final_fit[:, :, targets], alpha)
        return np.exp(_clip(glm.log_rates(eval_z)))

    # ------------------------------------------------------------------ forward
    def _forward_rates(self, data: _Data, hidden: np.ndarray) -> np.ndarray:
        """(K, T_hidden, N) rates of the hidden trailing bins from the observed ones."""
        observed = np.setdiff1d(np.arange(data.evaluated.shape[1]), hidden)

        def summary(counts: np.ndarray) -> np.ndarray:
            # (K, 1, N) mean count of each unit over the trial's observed bins
            return counts[:, observed].mean(axis=1, keepdims=True)

        def features(fit: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            fit_z, (other_z,) = pca_features(
                summary(fit), [summary(other)], self.config.num_components
            )
            repeat = (1, hidden.size, 1)  # the same trial features for every hidden bin
            return np.tile(fit_z, repeat), np.tile(other_z, repeat)

        fit_z, score_z = features(data.select_fit, data.select_score)
        alpha = self._choose_alpha(
            fit_z, data.select_fit[:, hidden], score_z, data.select_score[:, hidden]
        )
        final_z, eval_z = features(data.final_fit, data.evaluated)
        glm: PoissonGLMFit = fit_poisson_glm(final_z, data.final_fit[:, hidden], alpha)
        return np.exp(_clip(glm.log_rates(eval_z)))


def _fields(data: _Data) -> tuple[np.ndarray, ...]:
    return (data.select_fit, data.select_score, data.final_fit, data.evaluated)


def _clip(log_rates: np.ndarray) -> np.ndarray:
    return np.minimum(log_rates, MAX_LOG_RATE)
