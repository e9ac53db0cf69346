"""Evaluate a trained model (or the linear baseline) on sessions: all tasks, one dict.

The result of :func:`evaluate` (JSON-ready; floats rounded, NaN written as None)::

    {"sessions": {"<session id>": {
        "co_smoothing": {"bps", "bps_pooled", "poisson_d2", "poisson_d2_pooled", "num_units",
                         "per_region": {region: {...}}},
        "forward_prediction": {...}, "inter_region": {...}, "intra_region": {...},
        "choice": {"accuracy", "balanced_accuracy", "chance", "num_trials"},
        "reward": {...},
        "<per-bin behaviour>": {"r2", "num_trials"}}},
     "mean": {"co_smoothing": {"bps", "bps_pooled", "poisson_d2", "poisson_d2_pooled",
                               "num_sessions"}, ...,
              "choice": {"accuracy", ...}},
     "model": {"name", "run", "schemes", "architecture", "features"},
     "split": "test"}

A task a session cannot support (region tasks with fewer than 2 labelled regions, a label
with a single class among the training trials) is ``{"skipped": "<reason>"}``; a
behaviour the session does not record is absent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spikemask.api import TrainedModel, load_run
from spikemask.data.loading import load_sessions
from spikemask.data.session import Session
from spikemask.errors import SpikemaskError
from spikemask.evaluation.baselines import LinearBaseline
from spikemask.evaluation.behavior import model_features
from spikemask.evaluation.engine import ALL_TASKS, Evaluation, evaluate_sessions
from spikemask.evaluation.linear import LinearBaselineConfig
from spikemask.evaluation.runner import predict_task
from spikemask.evaluation.tasks import TaskPlan

__all__ = [
    "ALL_TASKS",
    "ModelPredictor",
    "evaluate",
    "evaluate_linear_baseline",
    "run_evaluation",
    "run_linear_baseline",
    "run_sources",
]

SessionsArg = Sequence[Session | str | Path] | None


class ModelPredictor:
    """A trained model as a :class:`~spikemask.evaluation.engine.Predictor`.

    Args:
        model: The trained model.
        batch_size: Masked trial copies per forward pass (default: automatic chunks).
        features: Behaviour features, ``latents`` or ``rates``.
        progress: Show a progress bar per task.
    """

    def __init__(
        self,
        model: TrainedModel,
        *,
        batch_size: int | None = None,
        features: str = "latents",
        progress: bool = False,
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.kind = features
        self.progress = progress

    def activity_rates(self, session: Session, plan: TaskPlan, split: str) -> np.ndarray:
        return predict_task(
            self.model,
            session,
            plan,
            split=split,
            batch_size=self.batch_size,
            progress=self.progress,
        )

    def features(self, session: Session, split: str) -> np.ndarray:
        return model_features(
            self.model, session, split, kind=self.kind, batch_size=self.batch_size or 256
        )


def run_sources(run: str | Path) -> list[str]:
    """Dataset folders a run was trained (or fine-tuned) on, from its ``run.json``."""
    if str(run).startswith("hf://"):
        raise SpikemaskError(
            f"{run!r} is a Hub model with no local datasets; give the dataset folders"
        )
    record_path = Path(run).expanduser() / "run.json"
    if not Path(run).expanduser().is_dir():
        raise SpikemaskError(f"run folder {str(run)!r} does not exist")
    if not record_path.is_file():
        raise SpikemaskError(f"{str(record_path)!r} does not exist; give the dataset folders")
    try:
        record = json.loads(record_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SpikemaskError(f"{str(record_path)!r} is not valid JSON ({err})") from None
    sources = record.get("sources") if isinstance(record, dict) else None
    if not isinstance(sources, list):
        raise SpikemaskError(
            f"{str(record_path)!r}: expected a JSON object with a list 'sources'; give the "
            "dataset folders"
        )
    sources = [str(s) for s in sources if s]
    if not sources:
        raise SpikemaskError(f"{str(record_path)!r} names no dataset; give the dataset folders")
    return sources


def _as_sessions(sessions: SessionsArg, run: str | Path | None, region_level: str) -> list[Session]:
    if sessions is None:
        if run is None:
            raise SpikemaskError(
                "no sessions given; pass sessions (or a run folder whose "
                "run.json lists its datasets)"
            )
        sessions = run_sources(run)
    if isinstance(sessions, Session | str | Path):
        sessions = [sessions]
    loaded = [s for s in sessions if isinstance(s, Session)]
    paths = [s for s in sessions if not isinstance(s, Session)]
    if loaded and paths:
        raise SpikemaskError("pass either dataset folders or Session objects, not both")
    return loaded or load_sessions(paths, region_level=region_level)


def run_evaluation(
    model: str | Path | TrainedModel,
    sessions: SessionsArg = None,
    *,
    split: str = "test",
    tasks: Iterable[str] | str | None = ALL_TASKS,
    batch_size: int | None = None,
    features: str = "latents",
    name: str | None = None,
    keep_rates: tuple[str, ...] = ("co_smoothing",),
    progress: bool = True,
    device: str = "auto",
) -> Evaluation:
    """Like :func:`evaluate`, also returning per-unit scores and predictions for reports.

    Returns:
        :class:`~spikemask.evaluation.engine.Evaluation` (``results`` as :func:`evaluate`).
    """
    run = None if isinstance(model, TrainedModel) else Path(model)
    trained = model if isinstance(model, TrainedModel) else load_run(model, device=device)
    loaded = _as_sessions(sessions, run, trained.checkpoint.config.data.region_level)
    info = {
        "name": name or (run.name if run is not None else "model"),
        "run": None if run is None else str(run),
        "schemes": list(trained.trained_schemes),
        "architecture": trained.checkpoint.config.model.architecture,
        "features": features,
    }
    predictor = ModelPredictor(trained, batch_size=batch_size, features=features, progress=progress)
    return evaluate_sessions(
        predictor,
        loaded,
        split=split,
        tasks=tasks,
        model_info=info,
        keep_rates=keep_rates,
        progress=progress,
    )


def evaluate(
    model: str | Path | TrainedModel,
    sessions: SessionsArg = None,
    *,
    split: str = "test",
    tasks: Iterable[str] | str | None = ALL_TASKS,
    batch_size: int | None = None,
    features: str = "latents",
    progress: bool = True,
    device: str = "auto",
) -> dict[str, Any]:
    """Evaluate a trained model on every task (see the module docstring for the result).

    Args:
        model: Run folder (its ``best`` checkpoint) or a loaded :class:`TrainedModel`.
        sessions: Sessions or dataset folders (loaded at the run's region level); None =
            the datasets of the run's ``run.json``.
        split: Trials evaluated; behaviour decoders are fit on ``train``.
        tasks: Some of :data:`ALL_TASKS` (``co-smoothing``, ``forward-prediction``,
            ``inter-region``, ``intra-region``, ``choice``, ``reward``, ``behavior``).
        batch_size: Masked trial copies per forward pass (default: chunks of ~64 MB).
        features: Behaviour decoder features: ``latents`` (default) or predicted ``rates``.
        progress: Progress bars on stderr.
        device: Where a run folder's model runs: ``auto`` (the GPU when there is one),
            ``cpu``, ``cuda``, ``cuda:INDEX`` or ``mps``; a loaded :class:`TrainedModel`
            stays on its own device.

    Returns:
        ``{"sessions", "mean", "model", "split"}``, JSON-ready.
    """
    return run_evaluation(
        model,
        sessions,
        split=split,
        tasks=tasks,
        batch_size=batch_size,
        features=features,
        progress=progress,
        keep_rates=(),
        device=device,
    ).results


def run_linear_baseline(
    sessions: Sequence[Session | str | Path],
    *,
    split: str = "test",
    tasks: Iterable[str] | str | None = ALL_TASKS,
    config: LinearBaselineConfig | None = None,
    region_level: str = "allen",
    keep_rates: tuple[str, ...] = ("co_smoothing",),
    progress: bool = True,
) -> Evaluation:
    """Like :func:`evaluate_linear_baseline`, also returning predictions for reports."""
    loaded = _as_sessions(sessions, None, region_level)
    baseline = LinearBaseline(config)
    return evaluate_sessions(
        baseline,
        loaded,
        split=split,
        tasks=tasks,
        model_info=baseline.info(),
        keep_rates=keep_rates,
        progress=progress,
    )


def evaluate_linear_baseline(
    sessions: Sequence[Session | str | Path],
    *,
    split: str = "test",
    tasks: Iterable[str] | str | None = ALL_TASKS,
    config: LinearBaselineConfig | None = None,
    region_level: str = "allen",
    progress: bool = True,
) -> dict[str, Any]:
    """The linear baseline on the same tasks, splits and metrics as :func:`evaluate`.

    Activity: masked Poisson GLMs on smoothed counts of the visible units, fit on the
    ``train`` split; behaviour: the same decoders on raw binned spike counts. The result
    has the shape of :func:`evaluate`'s, with ``model = {"name": "linear", ...}``.
    """
    return run_linear_baseline(
        sessions,
        split=split,
        tasks=tasks,
        config=config,
        region_level=region_level,
        keep_rates=(),
        progress=progress,
    ).results
