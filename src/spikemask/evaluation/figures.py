"""Report figures (matplotlib, Agg backend, PNG): regions, PSTHs, behaviour.

Shape letters: K trials, T time bins, N units.

Per session, :func:`plot_all` draws

* ``<session>-regions.png`` — per-region bits per spike of every activity task, the
  models side by side;
* ``<session>-psth.png`` — co-smoothing: observed vs predicted trial-averaged PSTH and
  two single trials of the highest-firing units (needs predictions);
* ``<session>-behavior.png`` — decoder accuracy vs chance for trial labels, the choice
  confusion matrix, and predicted vs true traces of per-bin behaviour.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from spikemask.evaluation.engine import SessionPredictions
from spikemask.evaluation.tasks import ACTIVITY_TASKS

__all__ = ["plot_all", "plot_behavior", "plot_psth", "plot_regions"]

DPI = 120
_TASK_TITLES = {key: name for name, (key, _, _) in ACTIVITY_TASKS.items()}
Predictions = Mapping[str, Mapping[str, SessionPredictions]]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _save(fig, path: Path) -> Path:
    from spikemask.atomic import write_atomic

    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png"))
    _pyplot().close(fig)
    return path


def _colors(count: int) -> list:
    cmap = _pyplot().get_cmap("tab10")
    return [cmap(i % 10) for i in range(count)]


def plot_regions(results: Mapping[str, dict[str, Any]], session_id: str, path: Path) -> Path | None:
    """Per-region bps (mean over units) of each activity task, models side by side."""
    entries = {name: r.get("sessions", {}).get(session_id, {}) for name, r in results.items()}
    tasks = [k for k in _TASK_TITLES if any("per_region" in e.get(k, {}) for e in entries.values())]
    if not tasks:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(tasks), 1, figsize=(10, 2.8 * len(tasks)), squeeze=False)
    colors = _colors(len(entries))
    width = 0.8 / max(len(entries), 1)
    for ax, task in zip(axes[:, 0], tasks, strict=True):
        regions = sorted(
            {r for e in entries.values() for r in e.get(task, {}).get("per_region", {})}
        )
        x = np.arange(len(regions))
        for i, (name, entry) in enumerate(entries.items()):
            per_region = entry.get(task, {}).get("per_region", {})
            values = [per_region.get(r, {}).get("bps") for r in regions]
            heights = [np.nan if v is None else v for v in values]
            ax.bar(
                x + (i - (len(entries) - 1) / 2) * width,
                heights,
                width,
                label=name,
                color=colors[i],
            )
        counts = [
            max(
                (
                    e.get(task, {}).get("per_region", {}).get(r, {}).get("num_units", 0)
                    for e in entries.values()
                ),
                default=0,
            )
            for r in regions
        ]
        ax.set_xticks(
            x, [f"{r}\n(n={c})" for r, c in zip(regions, counts, strict=True)], fontsize=8
        )
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_ylabel("bits / spike\n(mean over units)")
        ax.set_title(f"{_TASK_TITLES[task]}: per-region bits per spike")
    axes[0, 0].legend(fontsize=8, loc="best")
    fig.suptitle(f"{session_id}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _time_ms(prediction: SessionPredictions) -> np.ndarray:
    num_bins = prediction.spikes.shape[1]
    start = prediction.window_start_s or 0.0
    return 1000.0 * (start + (np.arange(num_bins) + 0.5) * prediction.bin_size_s)


def _pick(array: np.ndarray, unit: int, trial: int | None) -> np.ndarray:
    """(T,) trace of one unit: the trial mean (``trial`` None) or one trial of (K, T, N)."""
    return array[:, :, unit].mean(axis=0) if trial is None else array[trial, :, unit]


def _psth_panel(ax, time_ms, hz, spikes, models, colors, unit, trial) -> None:
    """Observed and each model's predicted rate (Hz) of one unit: trial mean or one trial."""
    observed = _pick(spikes.astype(np.float64), unit, trial) * hz
    ax.step(time_ms, observed, where="mid", color="0.35", label="observed")
    for color, (name, prediction) in zip(colors, models.items(), strict=True):
        predicted = _pick(prediction.tasks["co_smoothing"].rates, unit, trial) * hz
        ax.plot(time_ms, predicted, color=color, label=f"{name} (predicted)")


def plot_psth(
    predictions: Mapping[str, SessionPredictions],
    path: Path,
    *,
    num_units: int = 4,
    num_trials: int = 2,
) -> Path | None:
    """Co-smoothing: observed vs predicted PSTH (trial mean) and single trials, in Hz."""
    models = {
        n: p
        for n, p in predictions.items()
        if "co_smoothing" in p.tasks and p.tasks["co_smoothing"].rates is not None
    }
    if not models:
        return None
    first = next(iter(models.values()))
    spikes = first.spikes.astype(np.float64)  # (K, T, N)
    units = np.argsort(-spikes.mean(axis=(0, 1)), kind="stable")[:num_units]
    trials = np.argsort(-spikes[:, :, units].sum(axis=(1, 2)), kind="stable")[:num_trials]
    hz = 1.0 / first.bin_size_s
    time_ms = _time_ms(first)
    plt = _pyplot()
    fig, axes = plt.subplots(
        1 + len(trials),
        len(units),
        squeeze=False,
        sharex=True,
        figsize=(3.2 * len(units), 2.4 * (1 + len(trials))),
    )
    colors = _colors(len(models))
    for col, unit in enumerate(units):
        for row, trial in enumerate([None, *trials]):
            ax = axes[row, col]
            _psth_panel(ax, time_ms, hz, first.spikes, models, colors, unit, trial)
            if row == 0:
                rate_hz = spikes[:, :, unit].mean() * hz
                ax.set_title(
                    f"unit {unit} ({first.unit_regions[unit]}), {rate_hz:.1f} Hz", fontsize=9
                )
            if col == 0:
                ax.set_ylabel(f"{'trial mean' if trial is None else f'trial {trial}'}\nrate (Hz)")
            if row == len(trials):
                ax.set_xlabel("time from align event (ms)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.suptitle(
        f"{first.session_id}: co-smoothing, each unit predicted from all others", fontsize=10
    )
    fig.tight_layout()
    fig.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=len(labels),
        fontsize=8,
        frameon=False,
    )
    return _save(fig, path)


def _label_panel(ax, entries: Mapping[str, dict[str, Any]]) -> bool:
    labels = [
        k for k in ("choice", "reward") if any("accuracy" in e.get(k, {}) for e in entries.values())
    ]
    if not labels:
        return False
    width = 0.8 / max(len(entries), 1)
    x = np.arange(len(labels))
    for i, ((name, entry), color) in enumerate(
        zip(entries.items(), _colors(len(entries)), strict=True)
    ):
        heights = [entry.get(k, {}).get("accuracy", np.nan) for k in labels]
        ax.bar(x + (i - (len(entries) - 1) / 2) * width, heights, width, color=color, label=name)
    for j, key in enumerate(labels):
        chance = next(
            (e[key]["chance"] for e in entries.values() if "chance" in e.get(key, {})), None
        )
        if chance is not None:
            ax.hlines(
                chance,
                j - 0.45,
                j + 0.45,
                colors="black",
                linestyles="--",
                label="chance (majority class)" if j == 0 else None,
            )
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 1)
    ax.set_ylabel("decoding accuracy (test trials)")
    ax.set_title("trial labels")
    ax.legend(fontsize=7, loc="lower right")
    return True


def _confusion_panel(ax, name: str, prediction) -> None:
    classes = np.unique(np.concatenate([prediction.truth, prediction.predicted]))
    counts = np.array(
        [
            [np.sum((prediction.truth == t) & (prediction.predicted == p)) for p in classes]
            for t in classes
        ]
    )
    ax.imshow(counts, cmap="Blues")
    for (i, j), value in np.ndenumerate(counts):
        color = "white" if value > counts.max() / 2 else "black"
        ax.text(j, i, str(value), ha="center", va="center", color=color)
    names = [f"{c:+g}" for c in classes]
    ax.set_xticks(range(len(classes)), names)
    ax.set_yticks(range(len(classes)), names)
    ax.set_xlabel("decoded choice")
    ax.set_ylabel("true choice")
    ax.set_title(f"choice confusion ({name})", fontsize=9)


def _trace_panel(
    ax, behaviour: str, predictions: Mapping[str, SessionPredictions], num_trials: int = 5
) -> None:
    shown = {n: p.behavior[behaviour] for n, p in predictions.items() if behaviour in p.behavior}
    truth = next(iter(shown.values())).truth[:num_trials]  # (k, T)
    ax.plot(truth.ravel(), color="black", label="true")
    for color, (name, prediction) in zip(_colors(len(shown)), shown.items(), strict=True):
        ax.plot(prediction.predicted[:num_trials].ravel(), color=color, label=f"{name}")
    for edge in range(1, truth.shape[0]):
        ax.axvline(edge * truth.shape[1] - 0.5, color="0.8", linewidth=0.8)
    ax.set_xlabel(f"time bin (first {truth.shape[0]} test trials, concatenated)")
    ax.set_ylabel(behaviour)
    ax.set_title(f"{behaviour}: decoded vs true")
    ax.legend(fontsize=7)


def plot_behavior(
    results: Mapping[str, dict[str, Any]],
    session_id: str,
    predictions: Mapping[str, SessionPredictions] | None,
    path: Path,
) -> Path | None:
    """Accuracy vs chance, the choice confusion matrix and per-bin behaviour traces."""
    entries = {name: r.get("sessions", {}).get(session_id, {}) for name, r in results.items()}
    predictions = predictions or {}
    confusion = next(
        ((n, p.behavior["choice"]) for n, p in predictions.items() if "choice" in p.behavior), None
    )
    traces = sorted(
        {b for p in predictions.values() for b in p.behavior if p.behavior[b].truth.ndim == 2}
    )
    has_labels = any(
        "accuracy" in e.get(k, {}) for e in entries.values() for k in ("choice", "reward")
    )
    panels = int(has_labels) + int(confusion is not None) + len(traces)
    if panels == 0:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.6), squeeze=False)
    axes = list(axes[0])
    if has_labels:
        _label_panel(axes.pop(0), entries)
    if confusion is not None:
        _confusion_panel(axes.pop(0), *confusion)
    for behaviour in traces:
        _trace_panel(axes.pop(0), behaviour, predictions)
    fig.suptitle(f"{session_id}: behaviour decoded from frozen features", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_all(
    results: Mapping[str, dict[str, Any]], fig_dir: Path, predictions: Predictions | None = None
) -> dict[str, list[Path]]:
    """Draw every figure of every session; session id -> written PNG paths."""
    session_ids: list[str] = []
    for result in results.values():
        session_ids += [s for s in result.get("sessions", {}) if s not in session_ids]
    written: dict[str, list[Path]] = {}
    for sid in session_ids:
        per_model = {n: p[sid] for n, p in (predictions or {}).items() if sid in p}
        stem = fig_dir / _safe(sid)
        paths = [
            plot_regions(results, sid, stem.with_name(f"{stem.name}-regions.png")),
            plot_psth(per_model, stem.with_name(f"{stem.name}-psth.png")),
            plot_behavior(results, sid, per_model, stem.with_name(f"{stem.name}-behavior.png")),
        ]
        written[sid] = [p for p in paths if p is not None]
    return written
