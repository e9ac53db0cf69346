"""Activity tasks: which units / bins each task hides and scores, and how it is scored.

Shape letters: K trials, T time bins, N units, G masked copies ("variants") of a task.

Every activity task is a :class:`TaskPlan`: G variants, each hiding some units at every
bin (``hidden_units[g]``) plus, for forward prediction, some bins of every unit
(``hidden_bins``), and naming the units it predicts (``targets[g]``). A unit is the target
of at most one variant, so one (K, T, N) array holds every scored prediction.

* co-smoothing (``neuron`` prompt): variant n hides unit n; predicts n.
* forward prediction (``causal`` prompt, causal attention): one variant hiding the last
  10 % of bins (rounded, at least 1) of every unit; scores those bins.
* inter-region (``inter-region`` prompt): variant r hides every unit of labelled region r;
  predicts them from all other units (unlabelled ones included).
* intra-region (``intra-region`` prompt): for each unit n of a labelled region r with at
  least 2 units, hide every unit outside r plus n; predict n.

The same plans drive the transformer runner (:mod:`spikemask.evaluation.runner`) and the
linear baseline (:mod:`spikemask.evaluation.baselines`); :func:`score_task` scores either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from spikemask.data.session import Session
from spikemask.errors import SpikemaskError
from spikemask.evaluation.metrics import (
    bits_per_spike_per_unit,
    bits_per_spike_pooled,
    poisson_d2,
    poisson_d2_per_unit,
    poisson_d2_pooled,
)
from spikemask.masking import forward_prediction_mask

__all__ = [
    "ACTIVITY_TASKS",
    "FORWARD_FRACTION",
    "TaskPlan",
    "TaskResult",
    "labelled_regions",
    "plan_task",
    "score_task",
    "to_jsonable",
]

#: CLI task name -> (JSON key, masking scheme of its prompt, causal attention).
ACTIVITY_TASKS: dict[str, tuple[str, str, bool]] = {
    "co-smoothing": ("co_smoothing", "neuron", False),
    "forward-prediction": ("forward_prediction", "causal", True),
    "inter-region": ("inter_region", "inter-region", False),
    "intra-region": ("intra_region", "intra-region", False),
}
FORWARD_FRACTION = 0.1
"""Fraction of the trailing time bins hidden and scored by forward prediction."""


@dataclass(frozen=True, eq=False)
class TaskPlan:
    """What one activity task hides and scores on one session.

    Attributes:
        task: JSON key of the task (``co_smoothing``, ``forward_prediction``, ...).
        scheme: masking scheme whose prompt the model gets.
        causal: whether attention is causal.
        hidden_units: (G, N) bool, units withheld at every bin in variant g.
        hidden_bins: (T,) bool, bins withheld for every unit in every variant.
        targets: G int arrays, the units predicted (and scored) from variant g; disjoint.
        skipped: why the task cannot run on this session (then G = 0), else None.
    """

    task: str
    scheme: str
    causal: bool
    hidden_units: np.ndarray
    hidden_bins: np.ndarray
    targets: tuple[np.ndarray, ...]
    skipped: str | None = None

    @property
    def num_variants(self) -> int:
        return len(self.targets)

    @property
    def scored_units(self) -> np.ndarray:
        """(N,) bool: units scored by some variant."""
        scored = np.zeros(self.hidden_units.shape[1], dtype=bool)
        for targets in self.targets:
            scored[targets] = True
        return scored

    @property
    def scored_bins(self) -> np.ndarray:
        """(T,) bool: the hidden bins when bins are hidden, else every bin."""
        return self.hidden_bins.copy() if self.hidden_bins.any() else ~self.hidden_bins

    def allowed_inputs(self) -> np.ndarray:
        """(N, N) bool: ``allowed[n, m]`` = input unit n is visible when predicting unit m.

        Columns of units that no variant predicts are all False. Hidden bins are ignored
        (they concern time, not which unit may drive which).
        """
        num_units = self.hidden_units.shape[1]
        allowed = np.zeros((num_units, num_units), dtype=bool)
        for hidden, targets in zip(self.hidden_units, self.targets, strict=True):
            allowed[:, targets] = ~hidden[:, None]
        return allowed


def _plan(
    task: str,
    session: Session,
    hidden_units: np.ndarray,
    targets: list[np.ndarray],
    hidden_bins: np.ndarray | None = None,
    skipped: str | None = None,
) -> TaskPlan:
    name, scheme, causal = ACTIVITY_TASKS[task]
    bins = np.zeros(session.num_bins, dtype=bool) if hidden_bins is None else hidden_bins
    return TaskPlan(name, scheme, causal, hidden_units, bins, tuple(targets), skipped)


def _skipped(task: str, session: Session, reason: str) -> TaskPlan:
    return _plan(task, session, np.zeros((0, session.num_units), dtype=bool), [], skipped=reason)


def labelled_regions(session: Session) -> dict[str, np.ndarray]:
    """Labelled region -> (n_r,) indices of its units, regions sorted by name."""
    labelled = session.labelled_units
    regions = np.asarray(session.unit_regions)
    names = sorted({r for r, ok in zip(session.unit_regions, labelled, strict=True) if ok})
    return {name: np.flatnonzero(labelled & (regions == name)) for name in names}


def _plan_co_smoothing(session: Session) -> TaskPlan:
    num_units = session.num_units
    if num_units < 2:
        return _skipped("co-smoothing", session, "the session has a single unit")
    targets = [np.array([n]) for n in range(num_units)]
    return _plan("co-smoothing", session, np.eye(num_units, dtype=bool), targets)


def _plan_forward(session: Session) -> TaskPlan:
    if session.num_bins < 2:
        return _skipped("forward-prediction", session, "the session has a single time bin")
    spec = forward_prediction_mask((1, session.num_bins, 1), fraction=FORWARD_FRACTION)
    hidden_bins = spec.hidden[0, :, 0].numpy()
    hidden_units = np.zeros((1, session.num_units), dtype=bool)
    return _plan(
        "forward-prediction",
        session,
        hidden_units,
        [np.arange(session.num_units)],
        hidden_bins=hidden_bins,
    )


def _plan_inter_region(session: Session, regions: dict[str, np.ndarray]) -> TaskPlan:
    hidden, targets = [], []
    for units in regions.values():
        if units.size < session.num_units:  # something must stay visible
            row = np.zeros(session.num_units, dtype=bool)
            row[units] = True
            hidden.append(row)
            targets.append(units)
    hidden_units = np.array(hidden, dtype=bool).reshape(len(hidden), session.num_units)
    return _plan("inter-region", session, hidden_units, targets)


def _plan_intra_region(session: Session, regions: dict[str, np.ndarray]) -> TaskPlan:
    hidden, targets = [], []
    for units in regions.values():
        if units.size < 2:  # the held-out unit needs a visible neighbour in its region
            continue
        outside = np.ones(session.num_units, dtype=bool)
        outside[units] = False
        for n in units:
            row = outside.copy()
            row[n] = True
            hidden.append(row)
            targets.append(np.array([n]))
    if not targets:
        return _skipped("intra-region", session, "no labelled region has at least 2 units")
    return _plan("intra-region", session, np.array(hidden, dtype=bool), targets)


def plan_task(session: Session, task: str) -> TaskPlan:
    """The masked copies one activity task runs on ``session``.

    Args:
        session: The session (its unit regions and bin count decide the plan).
        task: ``co-smoothing``, ``forward-prediction``, ``inter-region`` or ``intra-region``.

    Returns:
        The :class:`TaskPlan`; ``skipped`` says why when the session cannot support the
        task (region tasks need at least 2 labelled regions).
    """
    if task not in ACTIVITY_TASKS:
        raise SpikemaskError(
            f"unknown activity task {task!r}; expected one of {list(ACTIVITY_TASKS)}"
        )
    if task == "co-smoothing":
        return _plan_co_smoothing(session)
    if task == "forward-prediction":
        return _plan_forward(session)
    regions = labelled_regions(session)
    if len(regions) < 2:
        return _skipped(
            task,
            session,
            f"the session has {len(regions)} labelled region(s); region tasks need at least 2",
        )
    if task == "inter-region":
        return _plan_inter_region(session, regions)
    return _plan_intra_region(session, regions)


# ----------------------------------------------------------------------------- scoring


@dataclass(eq=False)
class TaskResult:
    """Scores of one activity task on one session.

    Attributes:
        task: JSON key of the task.
        unit_regions: (N,) region label of every unit.
        scored_units: (N,) bool, units the task predicts.
        scored_bins: (T,) bool, bins the task scores.
        bps_per_unit: (N,) bits per spike of every unit; NaN where not scored or silent.
        bps: mean of the finite entries of ``bps_per_unit``.
        bps_pooled: bits per spike pooled over scored units (NLB "co-bps").
        per_region: region label -> ``{"bps", "bps_pooled", "poisson_d2",
            "poisson_d2_pooled", "num_units"}``.
        rates: (K, T, N) predicted rates (expected counts per bin), NaN where not
            scored; None when not kept.
        skipped: why the task did not run, else None.
        d2_per_unit: (N,) Poisson D² (deviance explained) of every unit; NaN where not
            scored, silent or constant.
        poisson_d2: mean of the finite entries of ``d2_per_unit`` (BrainWideBench's).
        poisson_d2_pooled: D² of the deviances summed over scored units.
    """

    task: str
    unit_regions: tuple[str, ...]
    scored_units: np.ndarray
    scored_bins: np.ndarray
    bps_per_unit: np.ndarray
    bps: float
    bps_pooled: float
    per_region: dict[str, dict[str, float | int]]
    rates: np.ndarray | None = None
    skipped: str | None = None
    d2_per_unit: np.ndarray | None = None
    poisson_d2: float = math.nan
    poisson_d2_pooled: float = math.nan

    @property
    def num_units(self) -> int:
        """Number of scored units."""
        return int(self.scored_units.sum())

    @property
    def num_silent_units(self) -> int:
        """Scored units without a spike in the scored entries (left out of ``bps``)."""
        return int((self.scored_units & ~np.isfinite(self.bps_per_unit)).sum())

    def to_json(self, digits: int = 4) -> dict[str, Any]:
        """``{"bps", "bps_pooled", "poisson_d2", "poisson_d2_pooled", "num_units",
        "num_silent_units", "per_region"}`` (or
        ``{"skipped"}``) with floats rounded to ``digits`` and NaN written as None.
        ``num_silent_units`` counts scored units with no spike in the scored entries: they
        have no bits per spike and are left out of the mean ``bps``."""
        if self.skipped is not None:
            return {"skipped": self.skipped}
        values = {
            "bps": self.bps,
            "bps_pooled": self.bps_pooled,
            "poisson_d2": self.poisson_d2,
            "poisson_d2_pooled": self.poisson_d2_pooled,
            "num_units": self.num_units,
            "num_silent_units": self.num_silent_units,
            "per_region": self.per_region,
        }
        return to_jsonable(values, digits)


def _finite_mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _per_region(
    regions: np.ndarray, bps: np.ndarray, predicted: np.ndarray, observed: np.ndarray
) -> dict[str, dict[str, float | int]]:
    """Region -> scores, from (N_scored,) regions and bps and (K, T, N_scored) arrays."""
    per_region: dict[str, dict[str, float | int]] = {}
    for region in sorted(set(regions.tolist())):
        columns = np.flatnonzero(regions == region)
        per_region[region] = {
            "bps": _finite_mean(bps[columns]),
            "bps_pooled": bits_per_spike_pooled(predicted[:, :, columns], observed[:, :, columns]),
            "poisson_d2": poisson_d2(predicted[:, :, columns], observed[:, :, columns]),
            "poisson_d2_pooled": poisson_d2_pooled(
                predicted[:, :, columns], observed[:, :, columns]
            ),
            "num_units": int(columns.size),
        }
    return per_region


def score_task(
    plan: TaskPlan,
    rates: np.ndarray,
    spikes: np.ndarray,
    *,
    unit_regions: tuple[str, ...],
    keep_rates: bool = True,
) -> TaskResult:
    """Bits per spike and Poisson D² of a task's predictions on its scored units and bins.

    Args:
        plan: The task plan that produced ``rates``.
        rates: (K, T, N) predicted rates; only scored entries are read (others may be NaN).
        spikes: (K, T, N) observed counts of the same trials.
        unit_regions: (N,) region label of every unit (groups ``per_region``).
        keep_rates: Keep ``rates`` in the result (for plots).

    Returns:
        The :class:`TaskResult`.
    """
    num_units = spikes.shape[2]
    scored_units, scored_bins = plan.scored_units, plan.scored_bins
    bps_per_unit = np.full(num_units, np.nan)
    if plan.skipped is not None or not scored_units.any():
        reason = plan.skipped or "nothing scored"
        return TaskResult(
            plan.task,
            unit_regions,
            scored_units,
            scored_bins,
            bps_per_unit,
            math.nan,
            math.nan,
            {},
            skipped=reason,
        )
    units = np.flatnonzero(scored_units)
    predicted = rates[:, scored_bins][:, :, units]  # (K, T_scored, N_scored)
    observed = spikes[:, scored_bins][:, :, units]
    bps_per_unit[units] = bits_per_spike_per_unit(predicted, observed)
    regions = np.asarray(unit_regions)[units]
    per_region = _per_region(regions, bps_per_unit[units], predicted, observed)
    d2_per_unit = np.full(num_units, np.nan)
    d2_per_unit[units] = poisson_d2_per_unit(predicted, observed)
    return TaskResult(
        plan.task,
        unit_regions,
        scored_units,
        scored_bins,
        bps_per_unit,
        bps=_finite_mean(bps_per_unit),
        bps_pooled=bits_per_spike_pooled(predicted, observed),
        per_region=per_region,
        rates=rates if keep_rates else None,
        d2_per_unit=d2_per_unit,
        poisson_d2=_finite_mean(d2_per_unit),
        poisson_d2_pooled=poisson_d2_pooled(predicted, observed),
    )


def to_jsonable(value: Any, digits: int = 4) -> Any:
    """A copy of nested dicts / lists / numbers that ``json.dumps`` writes as valid JSON:
    floats rounded to ``digits``, NaN and infinities as None, numpy scalars as Python ones."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v, digits) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        return round(number, digits) if math.isfinite(number) else None
    return value
