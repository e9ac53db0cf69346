"""IBL BrainWideBench (BWB) TS2 predictions: a trained model's log-rates in ``ibl-bwb-eval``'s
submission format.

BWB's neural-prediction suite TS2 has two tasks, both scored with Poisson D² (the primary
metric) and bits per spike by ``ibl_bwb_eval.scoring.ts2``:

- ``ts2-co_smoothing``: held-out units, predicted from the others, scored on the trailing
  ``COSMOOTH_TARGET_WINDOW`` (1 s) of each window;
- ``ts2-forecasting``: the trailing bins of each window (all units), hidden from the model.

Files are written with ``ibl_bwb_eval.predictions.PredictionsWriter``, one per task::

    <out>/<label>/<task>/<recording_id>/seed_<seed>.safetensors
        predictions        (K, T_scored, N_scored) float32 log-rates (log expected counts per bin)
        window_timestamps  (K,) float64, aligns predictions with the ground truth
        metadata: label, task, seed, recording_id, ibl_bwb_eval_version

and, for scoring spikemask's own sessions, the matching ground truth in the layout the TS2
scorer reads (``<gt_dir>/<task>/<recording_id>/ground_truth.safetensors``: ``targets``,
``window_timestamps``). ``window_timestamps`` are the windows' start times in session seconds
when the session records them (``prepare brainsets`` keeps them as ``window_start_time_s``),
else the trial numbers.

Shape letters: K trials, T time bins, N units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spikemask.api import TrainedModel
from spikemask.data.session import Session
from spikemask.data.sources.brainsets import WINDOW_START_FIELD
from spikemask.errors import SpikemaskError
from spikemask.evaluation.metrics import bits_per_spike_pooled, poisson_d2, poisson_d2_pooled
from spikemask.export.nlb import _forward_bins, choose_heldout_units

__all__ = [
    "BWBExport",
    "BWBTask",
    "make_bwb_export",
    "write_bwb_ground_truth",
    "write_bwb_predictions",
]

BWB_VERSION = "0.1.0"
"""The ``ibl-bwb-eval`` version this writer was checked against."""


@dataclass
class BWBTask:
    """One TS2 task's predictions, targets and spikemask's scores of them.

    Attributes:
        task: Flattened task id (``ts2-co_smoothing`` / ``ts2-forecasting``).
        log_rates: (K, T_scored, N_scored) float32 predicted log-rates.
        targets: (K, T_scored, N_scored) float32 observed counts.
        window_timestamps: (K,) float64 alignment keys.
        unit_ids: (N_scored,) ids of the scored units, in column order.
        scores: ``poisson_d2`` (mean over units), ``poisson_d2_pooled``, ``bps`` (pooled).
    """

    task: str
    log_rates: np.ndarray
    targets: np.ndarray
    window_timestamps: np.ndarray
    unit_ids: list[str]
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class BWBExport:
    """Both TS2 tasks of one session (recording)."""

    recording_id: str
    label: str
    seed: int
    tasks: dict[str, BWBTask]


def _bwb() -> Any:
    try:
        import ibl_bwb_eval.predictions
        import ibl_bwb_eval.tasks
    except ImportError:
        raise SpikemaskError(
            "the BrainWideBench export writes with ibl-bwb-eval, which is not installed; install "
            f"it with pip install --no-deps ibl-bwb-eval=={BWB_VERSION} (its torch pin clashes; "
            "what it imports is in spikemask's bwb extra)"
        ) from None
    return ibl_bwb_eval


def _window_timestamps(session: Session, split: str) -> np.ndarray:
    trials = session.split(split)
    values = trials.trial_behavior.get(WINDOW_START_FIELD, trials.trial_index)
    stamps = np.asarray(values, dtype=np.float64)
    if len(np.unique(stamps)) != len(stamps) or not np.all(np.isfinite(stamps)):
        raise SpikemaskError(
            f"session {session.session_id!r}, split {split!r}: window timestamps are not unique "
            "finite numbers; expected one per trial (they align predictions and ground truth)"
        )
    return stamps


def _log_rates(model: TrainedModel, session: Session, spikes: np.ndarray, hidden: torch.Tensor,
               scheme: str, causal: bool, batch_size: int) -> np.ndarray:  # fmt: skip
    outputs = model.forward(
        spikes, session, hidden=hidden, prompt=model.prompt_for(scheme), causal=causal,
        batch_size=batch_size,
    )  # fmt: skip
    return torch.cat([o.log_rates for o in outputs]).numpy().astype(np.float32)  # (K, T, N)


def score_task(log_rates: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """spikemask's Poisson D² and pooled bits per spike of (K, T, N) log-rates and counts.

    As BWB's ``BPS``, the pooled bits per spike leave out units without a spike (NLB's
    co-bps, :func:`~spikemask.evaluation.metrics.bits_per_spike_pooled` on all units, charges
    their predicted rates).
    """
    rates = np.exp(log_rates.astype(np.float64))
    active = targets.sum(axis=(0, 1)) > 0  # (N,)
    return {
        "poisson_d2": poisson_d2(rates, targets),
        "poisson_d2_pooled": poisson_d2_pooled(rates, targets),
        "bps": bits_per_spike_pooled(rates[..., active], targets[..., active])
        if active.any()
        else float("nan"),
    }


def make_bwb_export(
    model: TrainedModel,
    session: Session,
    *,
    label: str = "spikemask",
    seed: int = 0,
    heldout: np.ndarray | None = None,
    forward_bins: int | None = None,
    split: str = "test",
    batch_size: int = 256,
) -> BWBExport:
    """Predict both TS2 tasks of one session.

    Args:
        model: A trained model with layers for ``session``.
        session: The session (its id is the ``recording_id``).
        label: Submission label (the model's name in the benchmark).
        seed: Seed recorded in the file name (BWB averages over ``EVAL_SEEDS``).
        heldout: (N,) bool co-smoothing held-out units (default a seeded quarter).
        forward_bins: Forecast bins at the end of each window (default 10 %).
        split: Trials predicted.
        batch_size: Trials per forward pass.
    """
    bwb = _bwb()
    from ibl_bwb_eval.tasks.ts2 import COSMOOTH_TARGET_WINDOW

    heldout = choose_heldout_units(session, seed=seed) if heldout is None else np.asarray(heldout)
    forward = _forward_bins(session, forward_bins)
    if forward == 0:
        raise SpikemaskError("forward_bins=0; expected at least one bin to forecast")
    spikes = session.split(split).spikes  # (K, T, N)
    stamps = _window_timestamps(session, split)
    num_bins = spikes.shape[1]
    ids = np.array(session.unit_ids)

    hidden = torch.zeros(spikes.shape, dtype=torch.bool)  # (K, T, N)
    hidden[:, :, torch.as_tensor(heldout)] = True
    scored = min(num_bins, max(1, round(COSMOOTH_TARGET_WINDOW / session.bin_size_s)))
    co = _log_rates(model, session, spikes, hidden, "neuron", False, batch_size)
    co_smoothing = (co[:, -scored:, heldout], spikes[:, -scored:, heldout], ids[heldout])

    hidden = torch.zeros(spikes.shape, dtype=torch.bool)
    hidden[:, num_bins - forward :, :] = True
    fc = _log_rates(model, session, spikes, hidden, "causal", True, batch_size)
    forecasting = (fc[:, -forward:], spikes[:, -forward:], ids)

    tasks = {}
    for name, (log_rates, targets, unit_ids) in (
        ("co_smoothing", co_smoothing),
        ("forecasting", forecasting),
    ):
        task = bwb.tasks.task_id("ts2", name)
        targets = np.ascontiguousarray(targets, dtype=np.float32)
        log_rates = np.ascontiguousarray(log_rates, dtype=np.float32)
        tasks[task] = BWBTask(
            task, log_rates, targets, stamps, unit_ids.tolist(), score_task(log_rates, targets)
        )
    return BWBExport(recording_id=session.session_id, label=label, seed=seed, tasks=tasks)


def write_bwb_predictions(export: BWBExport, out_dir: str | Path) -> list[Path]:
    """Write each task's predictions with ``ibl_bwb_eval``'s ``PredictionsWriter``.

    Returns:
        The ``seed_<seed>.safetensors`` files written.
    """
    bwb = _bwb()
    paths = []
    for task in export.tasks.values():
        writer = bwb.predictions.PredictionsWriter(
            enable=True, base_path=Path(out_dir).expanduser(), task=task.task, seed=export.seed,
            label=export.label, metadata={"recording_id": export.recording_id},
            path_fn=lambda base, meta: base / meta["recording_id"],
        )  # fmt: skip
        writer.set(predictions=torch.from_numpy(task.log_rates))
        # float64: float32 would merge nearby window times (the writer's own advice)
        writer.set(dtype=torch.float64, window_timestamps=torch.from_numpy(task.window_timestamps))
        writer.save()
        base = Path(out_dir).expanduser() / export.label / task.task / export.recording_id
        paths.append(base / f"seed_{export.seed}.safetensors")
    return paths


def write_bwb_ground_truth(export: BWBExport, gt_dir: str | Path) -> list[Path]:
    """Write each task's targets where ``ibl_bwb_eval.scoring.ts2`` looks for them:
    ``<gt_dir>/<task>/<recording_id>/ground_truth.safetensors``."""
    from safetensors.torch import save_file

    paths = []
    for task in export.tasks.values():
        path = Path(gt_dir).expanduser() / task.task / export.recording_id
        path.mkdir(parents=True, exist_ok=True)
        tensors = {
            "targets": torch.from_numpy(task.targets),
            "window_timestamps": torch.from_numpy(task.window_timestamps),
        }
        save_file(tensors, path / "ground_truth.safetensors", metadata={"task": task.task})
        paths.append(path / "ground_truth.safetensors")
    return paths
