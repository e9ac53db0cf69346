"""Reading an NWB file for :mod:`spikemask.data.sources.nwb`: units and their regions, trials,
epochs / time ranges and behaviour time series, with clear errors for what is missing.

pynwb is imported only here (the optional ``nwb`` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spikemask.errors import SpikemaskError

if TYPE_CHECKING:
    from spikemask.data.sources.nwb import NWBPrepareConfig

__all__ = ["read_nwb_file"]

_ANGLE_UNITS = {"radian", "radians", "rad"}
_SERIES_TYPES = ("SpatialSeries", "TimeSeries")


def read_nwb_file(path: Path, config: NWBPrepareConfig) -> dict[str, Any]:
    """Units, trials, time restriction, behaviour series and metadata of one NWB file."""
    if not path.is_file():
        raise SpikemaskError(f"NWB file {str(path)!r} not found")
    try:
        from pynwb import NWBHDF5IO
    except ImportError:
        raise SpikemaskError(
            "reading NWB files needs pynwb; install it with pip install 'spikemask[nwb]'"
        ) from None
    try:
        io = NWBHDF5IO(str(path), "r", load_namespaces=True)
    except Exception as err:  # h5py / hdmf raise many kinds for a bad file
        raise SpikemaskError(f"{str(path)!r}: not a readable NWB file ({err})") from None
    with io:
        try:
            nwb = io.read()
        except Exception as err:
            raise SpikemaskError(f"{str(path)!r}: not a readable NWB file ({err})") from None
        subject = getattr(nwb.subject, "subject_id", None) if nwb.subject is not None else None
        return {
            "units": _read_units(nwb, path),
            "intervals": _restriction(nwb, config, path),
            "trials": _read_trials(nwb, config, path),
            "behavior": _read_behavior(nwb, config, path),
            "session_id": config.session_id or nwb.identifier or path.stem,
            "metadata": {"subject": subject or "", "lab": nwb.lab or "", "source": "nwb"},
        }


def _column(table: Any, name: str) -> np.ndarray:
    values = np.asarray(table[name].data[:])
    return values.astype(str) if values.dtype.kind in "OSU" else values


def _read_units(nwb: Any, path: Path) -> dict[str, Any]:
    units = nwb.units
    if units is None or len(units) == 0 or "spike_times" not in units.colnames:
        raise SpikemaskError(
            f"NWB file {str(path)!r} has no units table with spike_times; expected sorted units"
        )
    times, ends = _ragged(units, "spike_times")
    counts = np.diff(np.concatenate([[0], ends]))
    groups = []
    if "electrode_group" in units.colnames:
        groups = [g.name for g in units["electrode_group"].data[:]]
    depths = _column(units, "depth").astype(np.float64) if "depth" in units.colnames else None
    return {
        "times": times,
        "units": np.repeat(np.arange(len(counts)), counts),
        "ids": [str(i) for i in units.id[:]],
        "regions": _unit_locations(nwb, units),
        "depths": depths,
        "probes": sorted(set(groups)),
    }


def _ragged(table: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Flat values and per-row end offsets of a ragged column."""
    column = table[name]  # a VectorIndex over the flat VectorData
    flat = column.target.data[:] if hasattr(column, "target") else column.data[:]
    ends = column.data[:] if hasattr(column, "target") else [len(flat)]
    return np.asarray(flat, dtype=np.float64), np.asarray(ends, dtype=np.int64)


def _unit_locations(nwb: Any, units: Any) -> list[str]:
    """Per unit: ``location`` column, else its first electrode's, else its group's."""
    if "location" in units.colnames:
        labels = list(_column(units, "location"))
    elif "electrodes" in units.colnames and nwb.electrodes is not None:
        rows, ends = _ragged(units, "electrodes")
        first = rows.astype(np.int64)[np.concatenate([[0], ends[:-1]])]
        labels = list(_column(nwb.electrodes, "location")[first])
    elif "electrode_group" in units.colnames:
        labels = [str(g.location) for g in units["electrode_group"].data[:]]
    else:
        labels = []
    labels = [str(label).strip() or "unknown" for label in labels]
    return labels or ["unknown"] * len(units)


def _restriction(nwb: Any, config: NWBPrepareConfig, path: Path) -> np.ndarray | None:
    """(M, 2) intervals the windows must lie in, or None for the whole recording."""
    intervals = None
    if config.epoch is not None:
        tables = dict(nwb.intervals or {})
        if config.epoch in tables:
            intervals = _start_stop(tables[config.epoch])
        elif any(config.epoch in tags for tags in _epoch_tags(nwb)):
            rows = [i for i, tags in enumerate(_epoch_tags(nwb)) if config.epoch in tags]
            intervals = _start_stop(nwb.epochs)[rows]
        if intervals is None:
            known = sorted({t for row in _epoch_tags(nwb) for t in row} | set(tables))
            raise SpikemaskError(
                f"{str(path)!r}: no epoch {config.epoch!r}; expected an epoch tag or "
                f"intervals table among {known}"
            )
    if config.time_range_s is not None:
        low, high = config.time_range_s
        base = intervals if intervals is not None else np.array([[low, high]])
        clipped = np.stack([np.maximum(base[:, 0], low), np.minimum(base[:, 1], high)], axis=1)
        intervals = clipped[clipped[:, 0] < clipped[:, 1]]
    return intervals


def _epoch_tags(nwb: Any) -> list[list[str]]:
    if nwb.epochs is None or "tags" not in nwb.epochs.colnames:
        return []
    return [list(t) for t in nwb.epochs["tags"][:]]


def _start_stop(table: Any) -> np.ndarray:
    return np.stack([_column(table, "start_time"), _column(table, "stop_time")], axis=1)


def _read_trials(nwb: Any, config: NWBPrepareConfig, path: Path) -> dict[str, np.ndarray] | None:
    table = nwb.trials
    if config.use_trials is False or (table is None and config.use_trials is None):
        return None
    if table is None or len(table) == 0:
        raise SpikemaskError(
            f"NWB file {str(path)!r} has no trials table; expected one (use_trials=True) "
            "or fixed windows (use_trials=False)"
        )
    if config.align_column not in table.colnames and config.align_column != "start_time":
        raise SpikemaskError(
            f"{str(path)!r}: trials have no column {config.align_column!r}; expected one of "
            f"{['start_time', 'stop_time', *table.colnames]}"
        )
    out = {"start_time": _column(table, "start_time"), "stop_time": _column(table, "stop_time")}
    for name in table.colnames:
        values = _column(table, name) if f"{name}_index" not in table.colnames else None
        if values is not None and values.ndim == 1 and values.dtype.kind in "biuf":
            out[name] = values.astype(np.float64)
    return out


# ---------------------------------------------------------------------------- behaviour
def _read_behavior(nwb: Any, config: NWBPrepareConfig, path: Path) -> dict[str, Any]:
    """name -> (times (S,), values (S, C), is_angle) of every behaviour series."""
    if config.behavior_paths is None:
        found = _discover(nwb)
    else:
        found = {p: _resolve(nwb, p, path) for p in config.behavior_paths}
    out = {}
    for nwb_path, series in found.items():
        values = np.asarray(series.data[:], dtype=np.float64)
        values = values.reshape(len(values), -1)
        if series.timestamps is not None:
            times = np.asarray(series.timestamps[:], dtype=np.float64)
        else:
            times = series.starting_time + np.arange(len(values)) / series.rate
        name = "-".join(nwb_path.split("/")[-2:])
        out[name] = (times, values, str(series.unit).lower() in _ANGLE_UNITS)
    return out


def _discover(nwb: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def visit(prefix: str, obj: Any, in_behavior: bool) -> None:
        kind = type(obj).__name__
        if kind == "SpatialSeries" or (kind == "TimeSeries" and in_behavior):
            found[prefix] = obj
            return
        for attribute in ("spatial_series", "time_series", "data_interfaces"):
            children = getattr(obj, attribute, None)
            if isinstance(children, dict) and kind not in _SERIES_TYPES:
                for name, child in children.items():
                    visit(f"{prefix}/{name}", child, in_behavior)

    for name, obj in nwb.acquisition.items():
        visit(f"acquisition/{name}", obj, False)
    for name, module in nwb.processing.items():
        visit(f"processing/{name}", module, name.lower() in ("behavior", "behaviour"))
    return found


def _resolve(nwb: Any, nwb_path: str, path: Path) -> Any:
    parts = [p for p in nwb_path.strip("/").split("/") if p]
    roots = {"acquisition": nwb.acquisition, "processing": nwb.processing}
    obj: Any = roots.get(parts[0]) if parts else None
    try:
        for part in parts[1:]:
            obj = obj[part]
    except (KeyError, TypeError):
        obj = None
    if obj is None or type(obj).__name__ not in _SERIES_TYPES:
        known = sorted(_discover(nwb))
        raise SpikemaskError(
            f"{str(path)!r}: no time series at {nwb_path!r}; expected an NWB path such as "
            f"{known[:6] or ['acquisition/<container>/<series>']}"
        )
    return obj
