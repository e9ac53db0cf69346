"""Prepare brainsets / temporaldata session files (HDF5) into the trial-aligned parquet layout.

A brainsets session file is a :class:`temporaldata.Data` saved with ``Data.to_hdf5``; the
IBL brainsets (and so IBL's BrainWideBench) lay a session out as::

    spikes          IrregularTimeSeries: timestamps (s), unit_index (into units)
    units           ArrayDict: id (uuid), acronym (Allen region), label (QC), depths, ...
    trials          Interval: start, end, stimOn_times, ..., choice, probabilityLeft, ...
    wheel, whisker  IrregularTimeSeries: speed / motion_energy, ... (behaviour)
    train_domain, valid_domain, test_domain   Interval: the windows of each split
    session.id, subject.id, brainset.id, domain

The file is read with ``temporaldata.Data.from_hdf5``. Windows are the split domains when
the file has all three (``use_domains=None`` or True: the benchmark's own trial windows and
split, each window matched to the trial whose ``align_event`` lies inside it), else windows
``window_s`` around the trials' ``align_event``, split 70/10/20 with a seed. Spikes are binned
with :func:`spikemask.data.sources.binning.bin_spike_counts`; every numeric field of the file's
other time series is averaged per bin (``wheel.speed`` -> ``wheel-speed``); the IBL unit filters
of :mod:`spikemask.data.sources.unit_filters` apply. The brainsets IBL pipeline stores
``choice`` as a class index (0 = left / -1, 1 = right / +1, 2 = no-go / 0); it is mapped back
to IBL's sign.

Each trial's window start in session seconds is kept as the per-trial field
``window_start_time_s`` (``spikemask export bwb`` writes it as the benchmark's
``window_timestamps``).

Shape letters: K trials / windows, T time bins, N units.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spikemask.data.session import SPLITS, Session
from spikemask.data.sources import binning
from spikemask.data.sources.binning import PrepareReport
from spikemask.data.sources.unit_filters import UnitFilter, apply_unit_filter
from spikemask.errors import SpikemaskError

__all__ = ["BrainsetsPrepareConfig", "load_brainsets_session", "prepare_brainsets"]

#: Split name -> the attribute of a brainsets session holding its windows.
SPLIT_DOMAINS = {"train": "train_domain", "val": "valid_domain", "test": "test_domain"}
#: units columns tried for region labels, first match wins.
REGION_FIELDS = ("acronym", "brain_region", "region", "location")
WINDOW_START_FIELD = "window_start_time_s"
_BRAINSETS_CHOICE = np.array([-1.0, 1.0, 0.0])  # class index -> IBL choice sign


@dataclass(frozen=True)
class BrainsetsPrepareConfig:
    """How a brainsets session file is windowed, binned, filtered and split.

    Attributes:
        bin_size_s: Bin width in seconds.
        align_event: Trials field the windows are aligned to.
        window_s: (start, end) of the window around ``align_event`` (trial windows).
        use_domains: True: the file's train / valid / test domains are the windows and the
            split (error if absent); False: trial windows and a seeded split; None: the
            domains when the file has all three.
        behavior_paths: ``object.field`` of the time series to bin (e.g. ``wheel.speed``);
            None = every numeric field of every time series but ``spikes``; () = none.
        good_units_only: Keep only units with ``units.label == 1`` (IBL "good").
        min_rate_hz: Keep only units firing at least this rate in the kept windows.
        split: (train, val, test) fractions and seed: for trial windows only.
        seed: Seed of the split.
        session_id: Dataset id; default the file's ``session.id``, else its name.
    """

    bin_size_s: float = 0.02
    align_event: str = "stimOn_times"
    window_s: tuple[float, float] = (-0.5, 1.5)
    use_domains: bool | None = None
    behavior_paths: tuple[str, ...] | None = None
    good_units_only: bool = False
    min_rate_hz: float | None = None
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)
    seed: int = 0
    session_id: str | None = None

    def __post_init__(self) -> None:
        binning.check_window(self.window_s, self.bin_size_s)
        binning.check_split(self.split)
        UnitFilter(good_only=self.good_units_only, min_rate_hz=self.min_rate_hz)  # validates

    @property
    def unit_filter(self) -> UnitFilter:
        """The unit filters of this config."""
        return UnitFilter(good_only=self.good_units_only, min_rate_hz=self.min_rate_hz)


# ---------------------------------------------------------------------------- reading
def _keys(value: Any) -> list[str]:
    """The attribute names of a temporaldata object (they define no ``__contains__``)."""
    return list(value.keys())


def read_brainsets_file(path: Path) -> Any:
    """The file's :class:`temporaldata.Data`, read fully into memory."""
    try:
        import h5py
        from temporaldata import Data
    except ImportError:
        raise SpikemaskError(
            "reading brainsets files needs temporaldata; install it with "
            "pip install 'spikemask[brainsets]'"
        ) from None
    if not path.is_file():
        raise SpikemaskError(f"brainsets file {str(path)!r} does not exist")
    try:
        with h5py.File(path, "r") as handle:
            if handle.attrs.get("object") != "Data":
                raise SpikemaskError(
                    f"{str(path)!r} is an HDF5 file but not a temporaldata Data object (no "
                    "'object' = 'Data' attribute); expected a brainsets session file"
                )
            return Data.from_hdf5(handle, lazy=False)
    except OSError as err:
        raise SpikemaskError(f"{str(path)!r}: not a readable HDF5 file ({err})") from None


def _units(data: Any, path: Path) -> dict[str, Any]:
    """Spike times / unit indices and the unit table (ids, regions, depths, QC labels)."""
    for name in ("spikes", "units"):
        if not hasattr(data, name):
            raise SpikemaskError(
                f"{str(path)!r} has no {name!r}; expected a brainsets session with spikes "
                "(timestamps, unit_index) and units (id, ...)"
            )
    units, spikes = data.units, data.spikes
    if "id" not in _keys(units) or "unit_index" not in _keys(spikes):
        raise SpikemaskError(f"{str(path)!r}: units.id or spikes.unit_index missing; expected both")
    ids = np.asarray(units.id).astype(str)
    region_field = next((f for f in REGION_FIELDS if f in _keys(units)), None)
    regions = np.asarray(getattr(units, region_field)).astype(str) if region_field else None
    depth_field = next((f for f in ("depths", "depth") if f in _keys(units)), None)
    return {
        "times": np.asarray(spikes.timestamps, dtype=np.float64),
        "units": np.asarray(spikes.unit_index, dtype=np.int64),
        "ids": ids,
        "regions": regions if regions is not None else np.full(len(ids), "unknown"),
        "depths": None if depth_field is None else np.asarray(getattr(units, depth_field), float),
        "labels": np.asarray(units.label, float) if "label" in _keys(units) else None,
        "notes": [] if region_field else ["units have no region column: labelled 'unknown'"],
    }


# ---------------------------------------------------------------------------- windows
def _trial_fields(data: Any) -> dict[str, np.ndarray]:
    """Every 1-D numeric field of ``data.trials`` (time keys included), name -> (K,)."""
    if not hasattr(data, "trials"):
        return {}
    trials = data.trials
    fields = {}
    for key in _keys(trials):
        values = np.asarray(getattr(trials, key))
        if values.ndim == 1 and values.dtype.kind in "biuf":
            fields[key] = values.astype(np.float64)
    return fields


def _domain_windows(data: Any, config: BrainsetsPrepareConfig, path: Path) -> dict | None:
    """Windows and split rows from the file's train / valid / test domains, or None."""
    present = {s: hasattr(data, d) for s, d in SPLIT_DOMAINS.items()}
    if config.use_domains is False or (config.use_domains is None and not all(present.values())):
        return None
    if not all(present.values()):
        missing = [SPLIT_DOMAINS[s] for s, ok in present.items() if not ok]
        raise SpikemaskError(
            f"{str(path)!r} has no {missing}; expected train_domain, valid_domain and "
            "test_domain (or let the windows come from the trials)"
        )
    parts = [(s, getattr(data, SPLIT_DOMAINS[s])) for s in SPLITS]
    starts = np.concatenate([np.asarray(d.start, np.float64) for _, d in parts])
    ends = np.concatenate([np.asarray(d.end, np.float64) for _, d in parts])
    lengths = ends - starts
    if starts.size == 0 or np.ptp(lengths) > config.bin_size_s:
        raise SpikemaskError(
            f"{str(path)!r}: split domain windows last {lengths.min(initial=0):g} to "
            f"{lengths.max(initial=0):g} s; expected windows of one length (one per trial)"
        )
    split_of = np.concatenate([np.full(len(d.start), s) for s, d in parts])
    num_bins = max(1, round(lengths.min() / config.bin_size_s))
    return {"starts": starts, "split_of": split_of, "num_bins": num_bins}


def _match_trials(starts: np.ndarray, length_s: float, align: np.ndarray | None) -> np.ndarray:
    """(K,) index of the trial whose align event lies in each window, -1 where none does."""
    if align is None or align.size == 0:
        return np.full(len(starts), -1)
    order = np.argsort(align, kind="stable")
    first = np.searchsorted(align[order], starts, side="left")
    found = first < len(align)
    index = np.where(found, order[np.minimum(first, len(align) - 1)], -1)
    inside = found & (align[np.maximum(index, 0)] < starts + length_s)
    return np.where(inside, index, -1)


def _windows(data: Any, config: BrainsetsPrepareConfig, path: Path) -> dict[str, Any]:
    """Window starts, split of every window, matched trial, drop reasons, T, window start."""
    trials = _trial_fields(data)
    align = trials.get(config.align_event)
    domains = _domain_windows(data, config, path)
    if domains is not None:
        length = domains["num_bins"] * config.bin_size_s
        matched = _match_trials(domains["starts"], length, align)
        offset = align[matched] - domains["starts"] if align is not None else np.array([])
        offset = offset[matched >= 0]
        window_start = -float(np.median(offset)) if offset.size else None
        return {**domains, "matched": matched, "dropped": {}, "window_start_s": window_start}
    if align is None:
        raise SpikemaskError(
            f"{str(path)!r}: no trials field {config.align_event!r} and no split domains; "
            f"expected trials with {config.align_event!r} (trial fields: {sorted(trials)})"
        )
    starts = align + config.window_s[0]
    length = config.window_s[1] - config.window_s[0]
    first, last = float(data.spikes.timestamps.min()), float(data.spikes.timestamps.max())
    nan = np.isnan(align)
    outside = ~nan & ((starts < first) | (starts + length > last))
    rows = binning.split_trials(
        int((~nan & ~outside).sum()), config.split, np.random.default_rng(config.seed)
    )
    split_of = np.full(len(starts), "", dtype=object)
    kept = np.flatnonzero(~nan & ~outside)
    for name, index in rows.items():
        split_of[kept[index]] = name
    return {
        "starts": starts, "split_of": split_of.astype(str), "matched": np.arange(len(starts)),
        "num_bins": binning.check_window(config.window_s, config.bin_size_s),
        "dropped": {"nan_align": int(nan.sum()), "outside_recording": int(outside.sum())},
        "window_start_s": float(config.window_s[0]),
    }  # fmt: skip


# ---------------------------------------------------------------------------- behaviour
def _trial_behavior(trials: dict[str, np.ndarray], matched: np.ndarray) -> dict[str, np.ndarray]:
    """Per-window trial fields (NaN where no trial matched), IBL names as in ``prepare ibl``."""

    def at(name: str) -> np.ndarray:
        values = trials[name][np.maximum(matched, 0)]
        return np.where(matched >= 0, values, np.nan)

    out: dict[str, np.ndarray] = {}
    if "choice" in trials:
        raw = trials["choice"]
        coded = not np.any(raw == -1) and (np.any(raw == 2) or "block" in trials)
        choice = at("choice")
        if coded:  # brainsets' class index -> IBL sign
            valid = np.isin(choice, (0.0, 1.0, 2.0))
            choice = np.where(
                valid, _BRAINSETS_CHOICE[np.where(valid, choice, 0).astype(int)], np.nan
            )
        out["choice"] = choice
    if "probabilityLeft" in trials:
        out["block"] = at("probabilityLeft")
    if "feedbackType" in trials:
        out["feedback_type"] = at("feedbackType")
        out["reward"] = np.where(np.isnan(out["feedback_type"]), np.nan, out["feedback_type"] > 0)
    for side in ("Left", "Right"):
        if f"contrast{side}" in trials:
            out[f"contrast_{side.lower()}"] = np.nan_to_num(at(f"contrast{side}"), nan=0.0)
    if "firstMovement_times" in trials and "stimOn_times" in trials:
        out["reaction_time"] = at("firstMovement_times") - at("stimOn_times")
    return out


def _series(data: Any, config: BrainsetsPrepareConfig, path: Path) -> dict[str, tuple]:
    """Behaviour name -> (timestamps (S,), values (S,)) of the time series to bin."""
    from temporaldata import IrregularTimeSeries, RegularTimeSeries

    found: dict[str, tuple] = {}
    for name in _keys(data):
        value = getattr(data, name)
        if name == "spikes" or not isinstance(value, IrregularTimeSeries | RegularTimeSeries):
            continue
        if "unit_index" in _keys(value):
            continue
        for key in _keys(value):
            values = np.asarray(getattr(value, key))
            if key == "timestamps" or values.dtype.kind not in "biuf" or values.ndim > 2:
                continue
            columns = values.reshape(len(values), -1)
            for c in range(columns.shape[1]):
                label = f"{name}-{key}".replace("_", "-") + (
                    f"-{c}" if columns.shape[1] > 1 else ""
                )
                found[label] = (f"{name}.{key}", value.timestamps, columns[:, c])
    if config.behavior_paths is None:
        return {k: v[1:] for k, v in found.items()}
    by_path = {v[0]: (k, v[1:]) for k, v in found.items()}  # (S, C) series: the last column
    unknown = [p for p in config.behavior_paths if p not in by_path]
    if unknown:
        raise SpikemaskError(
            f"{str(path)!r}: no behaviour {unknown}; expected object.field paths of 1-D time "
            f"series, one of {sorted(by_path)}"
        )
    return dict(by_path[p] for p in config.behavior_paths)


def _bin_behavior(series: dict[str, tuple], edges: np.ndarray) -> dict[str, np.ndarray]:
    """(K, T) mean of every series' samples in every bin (interpolated in empty bins)."""
    return {
        name: binning.bin_mean(times, values, edges) for name, (times, values) in series.items()
    }


# ---------------------------------------------------------------------------- session
def load_brainsets_session(
    path: str | Path, config: BrainsetsPrepareConfig | None = None
) -> tuple[Session, PrepareReport]:
    """Read, window, bin, filter and split one brainsets session file (nothing is written).

    Raises:
        SpikemaskError: File missing / not a temporaldata file, no spikes or units, no
            trials and no split domains, an unknown behaviour path, no window or unit left.
    """
    config = config or BrainsetsPrepareConfig()
    path = Path(path).expanduser()
    data = read_brainsets_file(path)
    units = _units(data, path)
    windows = _windows(data, config, path)
    edges = binning.bin_edges(
        np.nan_to_num(windows["starts"]), windows["num_bins"], config.bin_size_s
    )
    bin_behavior = _bin_behavior(_series(data, config, path), edges)
    keep = (windows["split_of"] != "") & ~np.isnan(windows["starts"])
    dropped = dict(windows["dropped"])
    if bin_behavior:
        undefined = np.any([np.isnan(v).any(axis=1) for v in bin_behavior.values()], axis=0)
        dropped["nan_behavior"] = int((undefined & keep).sum())
        keep &= ~undefined
    where = f"brainsets file {str(path)!r}"
    if not keep.any():
        raise SpikemaskError(f"{where}: no window left (dropped: {dropped}); expected at least one")
    counts = binning.bin_spike_counts(
        units["times"], units["units"], len(units["ids"]), windows["starts"][keep],
        windows["num_bins"], config.bin_size_s,
    )  # (K, T, N)  # fmt: skip
    kept_units, units_dropped = apply_unit_filter(
        config.unit_filter, counts, config.bin_size_s, labels=units["labels"], where=where
    )
    counts = np.ascontiguousarray(counts[:, :, kept_units])  # (K, T, N_kept)
    if counts.max(initial=0) == 0:
        raise SpikemaskError(f"{where}: no spike in the {int(keep.sum())} windows; expected spikes")
    trial_behavior = _trial_behavior(_trial_fields(data), windows["matched"][keep])
    trial_behavior[WINDOW_START_FIELD] = windows["starts"][keep]
    matched = windows["matched"][keep]
    trial_index = np.where(matched >= 0, matched, np.flatnonzero(keep))
    split_of = windows["split_of"][keep]
    rows = {s: np.flatnonzero(split_of == s) for s in SPLITS}
    empty = [s for s, r in rows.items() if r.size == 0]
    if empty:
        raise SpikemaskError(f"{where}: no window left in split(s) {empty}; expected all three")
    splits = binning.make_splits(
        counts, trial_index, trial_behavior, {k: v[keep] for k, v in bin_behavior.items()}, rows
    )
    session = Session(
        session_id=config.session_id or _session_id(data, path),
        bin_size_s=config.bin_size_s,
        window_start_s=windows["window_start_s"],
        align_event=config.align_event,
        unit_ids=tuple(units["ids"][kept_units]),
        unit_regions=tuple(units["regions"][kept_units]),
        unit_depths=None if units["depths"] is None else units["depths"][kept_units],
        unit_attributes=(
            {} if units["labels"] is None else {"cluster_label": units["labels"][kept_units]}
        ),
        splits=splits,
        metadata={**_details(data), "source": "brainsets", "brainsets_file": str(path)},
    )
    report = PrepareReport.describe(
        session, trials_total=len(keep), trials_dropped=dropped, probes=[], config=config,
        notes=units["notes"], units_dropped=units_dropped,
    )  # fmt: skip
    return session, report


def _described(data: Any, name: str) -> str | None:
    value = getattr(data, name, None) if name in _keys(data) else None
    found = getattr(value, "id", None) if value is not None else None
    return None if found is None else str(found)


def _session_id(data: Any, path: Path) -> str:
    return _described(data, "session") or path.stem


def _details(data: Any) -> dict[str, str]:
    found = {"subject": _described(data, "subject"), "brainset": _described(data, "brainset")}
    return {k: v for k, v in found.items() if v}


def prepare_brainsets(
    path: str | Path,
    out_dir: str | Path,
    *,
    config: BrainsetsPrepareConfig | None = None,
    overwrite: bool = False,
) -> PrepareReport:
    """Prepare one brainsets file into ``out_dir`` (``data/*.parquet`` + report)."""
    return binning.prepare_into(
        out_dir, lambda: load_brainsets_session(path, config), overwrite=overwrite
    )
