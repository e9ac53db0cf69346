"""The evaluation loop shared by trained models and baselines.

Shape letters: K trials, T time bins, N units, F features.

A *predictor* supplies two things per session: predicted rates for an activity task's
masked copies, and per-bin features for behaviour decoders. :func:`evaluate_sessions`
runs the requested tasks on every session with any predictor, scores them with the same
code (:func:`~spikemask.evaluation.tasks.score_task`,
:func:`~spikemask.evaluation.behavior.decode_behaviors`) and assembles the JSON-ready
results (see :func:`spikemask.evaluation.evaluate.evaluate` for their shape).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from spikemask.data.session import Session
from spikemask.errors import SpikemaskError
from spikemask.evaluation.behavior import TRIAL_LABELS, BehaviorPrediction, decode_behaviors
from spikemask.evaluation.tasks import (
    ACTIVITY_TASKS,
    TaskPlan,
    TaskResult,
    plan_task,
    score_task,
    to_jsonable,
)

__all__ = [
    "ALL_TASKS",
    "MEAN_METRICS",
    "Evaluation",
    "Predictor",
    "SessionPredictions",
    "evaluate_sessions",
    "mean_over_sessions",
    "resolve_tasks",
]

ALL_TASKS: tuple[str, ...] = (*ACTIVITY_TASKS, *TRIAL_LABELS, "behavior")
"""Task names: four activity tasks, two trial labels, ``behavior`` = every per-bin one."""
MEAN_METRICS = (
    "bps",
    "bps_pooled",
    "poisson_d2",
    "poisson_d2_pooled",
    "accuracy",
    "balanced_accuracy",
    "chance",
    "r2",
)
"""Metrics averaged over sessions in ``results["mean"]``."""


class Predictor(Protocol):
    """What :func:`evaluate_sessions` needs from a model or a baseline."""

    def activity_rates(self, session: Session, plan: TaskPlan, split: str) -> np.ndarray:
        """(K, T, N) predicted rates of ``split``; only the plan's scored entries are read."""
        ...

    def features(self, session: Session, split: str) -> np.ndarray:
        """(K, T, F) per-bin features of ``split`` for behaviour decoders."""
        ...


@dataclass(eq=False)
class SessionPredictions:
    """What a report needs beyond the scores: observed counts and predictions.

    Attributes:
        session_id: The session.
        bin_size_s: Width of a time bin.
        window_start_s: Start of the trial window relative to the align event (or None).
        unit_regions: (N,) region label per unit.
        spikes: (K, T, N) observed counts of the evaluated split (not a copy).
        tasks: activity task key -> :class:`TaskResult` (per-unit bps; ``rates`` kept for
            the tasks asked for).
        behavior: behaviour name -> decoder predictions next to the truth.
    """

    session_id: str
    bin_size_s: float
    window_start_s: float | None
    unit_regions: tuple[str, ...]
    spikes: np.ndarray
    tasks: dict[str, TaskResult] = field(default_factory=dict)
    behavior: dict[str, BehaviorPrediction] = field(default_factory=dict)


@dataclass(eq=False)
class Evaluation:
    """JSON-ready ``results`` and per-session ``predictions`` of one model."""

    results: dict[str, Any]
    predictions: dict[str, SessionPredictions]


def resolve_tasks(tasks: Iterable[str] | str | None) -> tuple[str, ...]:
    """Validate task names; None means :data:`ALL_TASKS`. Order follows ALL_TASKS."""
    if tasks is None:
        return ALL_TASKS
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    unknown = [t for t in names if t not in ALL_TASKS]
    if unknown:
        raise SpikemaskError(f"unknown task(s) {unknown}; expected some of {list(ALL_TASKS)}")
    if not names:
        raise SpikemaskError(f"no task given; expected some of {list(ALL_TASKS)}")
    return tuple(t for t in ALL_TASKS if t in names)


def _num_steps(tasks: tuple[str, ...]) -> int:
    """Progress steps of one session: each activity task, then behaviour decoding."""
    activity = sum(t in ACTIVITY_TASKS for t in tasks)
    return activity + int(activity < len(tasks))


def _evaluate_one(
    predictor: Predictor,
    session: Session,
    split: str,
    tasks: tuple[str, ...],
    keep_rates: tuple[str, ...],
    bar: tqdm,
) -> tuple[dict[str, Any], SessionPredictions]:
    evaluated = session.split(split)
    entry: dict[str, Any] = {}
    kept = SessionPredictions(
        session.session_id,
        session.bin_size_s,
        session.window_start_s,
        session.unit_regions,
        evaluated.spikes,
    )
    for task in (t for t in tasks if t in ACTIVITY_TASKS):
        bar.set_postfix_str(f"{session.session_id}: {task}")
        plan = plan_task(session, task)
        if plan.skipped is not None:
            entry[plan.task] = {"skipped": plan.skipped}
        else:
            rates = predictor.activity_rates(session, plan, split)
            result = score_task(
                plan,
                rates,
                evaluated.spikes,
                unit_regions=session.unit_regions,
                keep_rates=plan.task in keep_rates,
            )
            entry[plan.task] = result.to_json()
            kept.tasks[plan.task] = result
        bar.update()
    labels = tuple(t for t in TRIAL_LABELS if t in tasks)
    if labels or "behavior" in tasks:
        bar.set_postfix_str(f"{session.session_id}: behaviour")
        scores, predictions = decode_behaviors(
            predictor.features(session, "train"),
            predictor.features(session, split),
            session.split("train"),
            evaluated,
            labels=labels,
            per_bin="behavior" in tasks,
        )
        entry.update(to_jsonable(scores))
        kept.behavior.update(predictions)
        bar.update()
    return entry, kept


def evaluate_sessions(
    predictor: Predictor,
    sessions: Sequence[Session],
    *,
    split: str = "test",
    tasks: Iterable[str] | str | None = None,
    model_info: dict[str, Any],
    keep_rates: tuple[str, ...] = ("co_smoothing",),
    progress: bool = True,
) -> Evaluation:
    """Run the tasks on every session with one predictor.

    Args:
        predictor: The model or baseline.
        sessions: Sessions to evaluate (distinct ids).
        split: Trials evaluated (decoders are always fit on ``train``).
        tasks: Task names (default :data:`ALL_TASKS`).
        model_info: Written as ``results["model"]``.
        keep_rates: Activity task keys whose (K, T, N) predicted rates are kept.
        progress: Show progress bars on stderr.

    Returns:
        :class:`Evaluation` with ``results`` = ``{"sessions", "mean", "model", "split"}``.
    """
    tasks = resolve_tasks(tasks)
    if not sessions:
        raise SpikemaskError("no session to evaluate; expected at least one")
    total = _num_steps(tasks) * len(sessions)
    per_session: dict[str, Any] = {}
    predictions: dict[str, SessionPredictions] = {}
    name = str(model_info.get("name", "model"))
    with tqdm(total=total, desc=f"evaluate {name}", disable=not progress) as bar:
        for session in sessions:
            if session.session_id in per_session:
                raise SpikemaskError(f"session {session.session_id!r} given twice")
            entry, kept = _evaluate_one(predictor, session, split, tasks, keep_rates, bar)
            per_session[session.session_id] = entry
            predictions[session.session_id] = kept
    results = {
        "sessions": per_session,
        "mean": mean_over_sessions(per_session),
        "model": model_info,
        "split": split,
    }
    return Evaluation(results=results, predictions=predictions)


def mean_over_sessions(per_session: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Task key -> {metric: mean over the sessions where it ran, "num_sessions"}.

    Skipped entries and missing (None) values are left out of the means.
    """
    keys: list[str] = []
    for entry in per_session.values():
        keys += [k for k in entry if k not in keys]
    mean: dict[str, dict[str, Any]] = {}
    for key in keys:
        ran = [e[key] for e in per_session.values() if key in e and "skipped" not in e[key]]
        summary: dict[str, Any] = {}
        for metric in MEAN_METRICS:
            values = [r[metric] for r in ran if r.get(metric) is not None]
            if values:
                summary[metric] = float(np.mean(values))
        summary["num_sessions"] = len(ran)
        mean[key] = to_jsonable(summary)
    return mean
