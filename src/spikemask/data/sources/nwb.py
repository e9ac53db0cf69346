"""Prepare an NWB file (sorted units) into the trial-aligned parquet layout.

Units come from the NWB ``units`` table (spike times, ids, an optional ``depth`` column) with
region labels from its ``location`` column, else the ``location`` of each unit's first
electrode, else its electrode group's location. Windows are the rows of the ``trials`` table
aligned to a column (when the file has one, or when asked), otherwise fixed windows of a
given length and step cut from the whole recording or from an epoch / time range.

Behaviour time series (``SpatialSeries`` / ``TimeSeries`` given by NWB path, e.g.
``acquisition/CompassDirection/rz``, or found automatically) are resampled to the spike
bins: the mean of the samples inside each bin (``behavior_reduce="mean"``; a bin without
samples takes the value interpolated at its centre) or the value interpolated at each bin end
(``"bin_end"``). Angles (series in radians) become two fields ``<name>-sin`` and ``<name>-cos``
(sine and cosine of each sample, then averaged: a circular mean that does not jump at ±π),
or one unwrapped field (``angle_mode="unwrap"``), or stay raw (``"raw"``).

Shape letters: K trials / windows, T time bins, N units.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spikemask.data.session import Session
from spikemask.data.sources import binning
from spikemask.data.sources._nwb_read import read_nwb_file
from spikemask.data.sources.binning import PrepareReport
from spikemask.errors import SpikemaskError

__all__ = ["NWBPrepareConfig", "fixed_windows", "load_nwb_session", "prepare_nwb"]


@dataclass(frozen=True)
class NWBPrepareConfig:
    """How an NWB file is cut into windows, binned and split.

    Attributes:
        bin_size_s: Bin width in seconds.
        use_trials: True: use the trials table (error if absent); False: fixed windows;
            None: the trials table when the file has one, else fixed windows.
        align_column: Trials column the window is aligned to.
        window_s: (start, end) of the window around ``align_column`` (trials mode).
        window_length_s: Length of each fixed window.
        step_s: Start-to-start step of fixed windows; None = ``window_length_s``.
        epoch: Restrict to an epoch: a tag of the ``epochs`` table (e.g. "wake") or the
            name of an ``intervals`` table (all its intervals).
        time_range_s: Restrict to (start, end) seconds (intersected with ``epoch``).
        behavior_paths: NWB paths of behaviour series; None = every SpatialSeries in
            acquisition / processing and every TimeSeries in a processing module
            "behavior"; () = none.
        behavior_reduce: "mean" (within bin) or "bin_end" (interpolated at bin ends).
        angle_mode: For series in radians: "sincos", "unwrap" or "raw".
        drop_nan_behavior: Drop windows whose behaviour is undefined somewhere (e.g. outside
            the tracked period), counted as ``nan_behavior``.
        split: (train, val, test) fractions; seed: their seed.
        session_id: Dataset id; default the file's identifier.
    """

    bin_size_s: float = 0.02
    use_trials: bool | None = None
    align_column: str = "start_time"
    window_s: tuple[float, float] = (-0.5, 1.5)
    window_length_s: float = 2.0
    step_s: float | None = None
    epoch: str | None = None
    time_range_s: tuple[float, float] | None = None
    behavior_paths: tuple[str, ...] | None = None
    behavior_reduce: str = "mean"
    angle_mode: str = "sincos"
    drop_nan_behavior: bool = True
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)
    seed: int = 0
    session_id: str | None = None

    def __post_init__(self) -> None:
        binning.check_window(self.window_s, self.bin_size_s)
        binning.check_window((0.0, self.window_length_s), self.bin_size_s)
        binning.check_split(self.split)
        if self.step_s is not None and not self.step_s > 0:
            raise SpikemaskError(f"step_s={self.step_s}; expected a window step in seconds > 0")
        if self.time_range_s is not None and not self.time_range_s[0] < self.time_range_s[1]:
            raise SpikemaskError(
                f"time_range_s={tuple(self.time_range_s)}: start >= end; expected start < end"
            )
        if self.behavior_reduce not in ("mean", "bin_end"):
            raise SpikemaskError(
                f"behavior_reduce={self.behavior_reduce!r}; expected 'mean' or 'bin_end'"
            )
        if self.angle_mode not in ("sincos", "unwrap", "raw"):
            raise SpikemaskError(
                f"angle_mode={self.angle_mode!r}; expected 'sincos', 'unwrap' or 'raw'"
            )


def fixed_windows(intervals: np.ndarray, window_length_s: float, step_s: float) -> np.ndarray:
    """Starts of all whole windows of ``window_length_s`` inside each interval (M, 2)."""
    starts = []
    for start, stop in np.asarray(intervals, dtype=np.float64).reshape(-1, 2):
        count = int(np.floor((stop - start - window_length_s) / step_s + 1e-9)) + 1
        starts.append(start + step_s * np.arange(max(count, 0)))
    return np.concatenate(starts) if starts else np.zeros(0)


def _bin_behavior(
    series: dict[str, Any], edges: np.ndarray, config: NWBPrepareConfig
) -> dict[str, np.ndarray]:
    """Per-bin (K, T) behaviour fields (angles expanded per ``angle_mode``)."""
    reduce = binning.bin_mean if config.behavior_reduce == "mean" else binning.sample_at_bin_ends
    out = {}
    for name, (times, values, is_angle) in series.items():
        for column in range(values.shape[1]):
            label = name if values.shape[1] == 1 else f"{name}-{column}"
            trace = values[:, column]
            if is_angle and config.angle_mode == "sincos":
                out[f"{label}-sin"] = reduce(times, np.sin(trace), edges)
                out[f"{label}-cos"] = reduce(times, np.cos(trace), edges)
                continue
            if is_angle and config.angle_mode == "unwrap":
                order = np.argsort(times, kind="stable")
                finite = np.isfinite(trace[order])
                times, trace = times[order][finite], np.unwrap(trace[order][finite])
            out[label] = reduce(times, trace, edges)
    return out


# ---------------------------------------------------------------------------- session
def _windows(data: dict[str, Any], config: NWBPrepareConfig) -> tuple[np.ndarray, dict, dict]:
    """Window starts (K,), per-trial behaviour, drop reasons; NaN starts mark dropped rows."""
    trials, intervals = data["trials"], data["intervals"]
    if trials is None:
        if intervals is None:
            times = data["units"]["times"]
            intervals = np.array([[times.min(), times.max()]]) if times.size else np.zeros((0, 2))
        step = config.step_s or config.window_length_s
        starts = fixed_windows(intervals, config.window_length_s, step)
        return starts, {}, {}
    align = trials[config.align_column]
    starts = align + config.window_s[0]
    length = config.window_s[1] - config.window_s[0]
    dropped = {"nan_align": int(np.isnan(align).sum())}
    if intervals is not None:
        inside = np.any(
            (starts[:, None] >= intervals[None, :, 0])
            & (starts[:, None] + length <= intervals[None, :, 1]),
            axis=1,
        )
        dropped["outside_epoch"] = int((~inside & ~np.isnan(align)).sum())
        starts = np.where(inside, starts, np.nan)
    behavior = {k: v for k, v in trials.items() if k not in ("start_time", "stop_time")}
    return starts, behavior, dropped


def load_nwb_session(
    path: str | Path, config: NWBPrepareConfig | None = None
) -> tuple[Session, PrepareReport]:
    """Read, window, bin and split an NWB file (nothing is written).

    Raises:
        SpikemaskError: File not found / unreadable, no units, no trials when asked for,
            unknown epoch or behaviour path, no window left, no spike in the windows.
    """
    config = config or NWBPrepareConfig()
    path = Path(path).expanduser()
    data = read_nwb_file(path, config)
    windows = _select_windows(data, config, path)
    units, keep = data["units"], windows["keep"]
    counts = binning.bin_spike_counts(
        units["times"],
        units["units"],
        len(units["ids"]),
        windows["starts"][keep],
        windows["num_bins"],
        config.bin_size_s,
    )  # (K, T, N)
    if counts.max(initial=0) == 0:
        raise SpikemaskError(
            f"{str(path)!r}: no spike in the {int(keep.sum())} windows; expected spikes in them"
        )
    rows = binning.split_trials(int(keep.sum()), config.split, np.random.default_rng(config.seed))
    splits = binning.make_splits(
        counts,
        np.flatnonzero(keep),
        {k: v[keep] for k, v in windows["trial_behavior"].items()},
        {k: v[keep] for k, v in windows["bin_behavior"].items()},
        rows,
    )
    is_trial = data["trials"] is not None
    session = Session(
        session_id=str(data["session_id"]),
        bin_size_s=config.bin_size_s,
        window_start_s=float(config.window_s[0]) if is_trial else 0.0,
        align_event=config.align_column if is_trial else "window_start",
        unit_ids=units["ids"],
        unit_regions=units["regions"],
        unit_depths=units["depths"],
        splits=splits,
        metadata={**{k: v for k, v in data["metadata"].items() if v}, "nwb_file": str(path)},
    )
    report = PrepareReport.describe(
        session, trials_total=len(keep), trials_dropped=windows["dropped"],
        probes=units["probes"], config=config,
    )  # fmt: skip
    return session, report


def _select_windows(data: dict[str, Any], config: NWBPrepareConfig, path: Path) -> dict:
    """Window starts (K,), which to keep, their per-trial and per-bin behaviour."""
    starts, trial_behavior, dropped = _windows(data, config)
    is_trial = data["trials"] is not None
    length = config.window_s[1] - config.window_s[0] if is_trial else config.window_length_s
    num_bins = binning.check_window((0.0, length), config.bin_size_s)
    keep = ~np.isnan(starts)
    edges = binning.bin_edges(np.nan_to_num(starts), num_bins, config.bin_size_s)
    bin_behavior = _bin_behavior(data["behavior"], edges, config)
    if config.drop_nan_behavior and bin_behavior:
        undefined = np.any([np.isnan(v).any(axis=1) for v in bin_behavior.values()], axis=0)
        dropped["nan_behavior"] = int((undefined & keep).sum())
        keep &= ~undefined
    if not keep.any():
        raise SpikemaskError(
            f"{str(path)!r}: no {'trial' if is_trial else 'window'} left "
            f"({len(starts)} before filtering, dropped: {dropped}); expected at least one"
        )
    return {
        "starts": starts, "keep": keep, "num_bins": num_bins, "dropped": dropped,
        "trial_behavior": trial_behavior, "bin_behavior": bin_behavior,
    }  # fmt: skip


def prepare_nwb(
    path: str | Path,
    out_dir: str | Path,
    *,
    config: NWBPrepareConfig | None = None,
    overwrite: bool = False,
) -> PrepareReport:
    """Prepare an NWB file into ``out_dir`` (``data/*.parquet`` + ``prepare_report.json``)."""
    return binning.prepare_into(
        out_dir, lambda: load_nwb_session(path, config), overwrite=overwrite
    )
