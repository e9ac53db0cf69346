"""Sessions from pynapple objects, and predictions back as pynapple objects.

pynapple (``pip install spikemask[pynapple]``) is how many labs hold spike times: a
``TsGroup`` of units (with metadata columns such as ``location``), an ``IntervalSet`` of
trials or a ``Ts`` of events, and ``Tsd`` / ``TsdFrame`` behaviour traces. This module cuts
them into the trial-aligned :class:`~spikemask.data.session.Session` every model consumes,
with the same binning code as the IBL and NWB pipelines (:mod:`spikemask.data.sources.binning`).

Example::

    import pynapple as nap
    from spikemask.data.sources.pynapple_io import session_from_pynapple

    data = nap.load_file("recording.nwb")
    session = session_from_pynapple(
        data["units"], events=data["stim_on"], window_s=(-0.1, 0.4), bin_size_s=0.01,
        session_id="mouse1-day3", behavior={"speed": data["speed"]},
    )

Every trial keeps its absolute time as the per-trial field ``align_time_s`` (seconds on the
recording's clock), so :func:`to_pynapple` can put predictions back on that clock.

Shape letters: K trials, T time bins, N units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from spikemask.data.session import Session
from spikemask.data.sources.binning import (
    bin_edges,
    bin_mean,
    bin_spike_counts,
    check_window,
    make_splits,
    split_trials,
)
from spikemask.errors import SpikemaskError

__all__ = ["ALIGN_TIME", "REGION_COLUMNS", "session_from_pynapple", "to_pynapple"]

#: Per-trial field holding the absolute time (s) of the event each trial is aligned to.
ALIGN_TIME = "align_time_s"

#: TsGroup metadata columns read as unit regions, first match wins.
REGION_COLUMNS: tuple[str, ...] = ("region", "location", "brain_area", "area", "acronym")


def _pynapple() -> Any:
    try:
        import pynapple
    except ImportError:
        raise SpikemaskError(
            "pynapple is not installed; install it with pip install 'spikemask[pynapple]'"
        ) from None
    return pynapple


def session_from_pynapple(
    units: Any,
    *,
    session_id: str,
    bin_size_s: float,
    trials: Any = None,
    events: Any = None,
    window_s: Sequence[float] | None = None,
    region_column: str | None = None,
    behavior: Mapping[str, Any] | None = None,
    split: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    align_event: str | None = None,
) -> Session:
    """Bin a pynapple ``TsGroup`` into a trial-aligned, split :class:`Session`.

    Trials come either from ``trials`` (an ``IntervalSet``; without ``window_s`` every
    interval must have the same length, which becomes the window, aligned to its start;
    with ``window_s`` the window is placed relative to each interval's start) or from
    ``events`` (a ``Ts`` / ``Tsd`` of event times) plus ``window_s``. Numeric metadata
    columns of the ``IntervalSet`` (e.g. ``choice``, ``reward``) become per-trial fields.

    Args:
        units: ``TsGroup``; its keys become unit ids, a region column unit regions (units
            without one are unlabelled) and a ``depth`` column unit depths.
        session_id: Identifier keying the model's per-session layers.
        bin_size_s: Bin width in seconds.
        trials: ``IntervalSet`` of trials (exclusive with ``events``).
        events: ``Ts`` of alignment events, with ``window_s`` (exclusive with ``trials``).
        window_s: (start, end) of every trial window in seconds relative to the event or
            interval start, a whole number of bins long.
        region_column: Metadata column naming each unit's region; default the first of
            :data:`REGION_COLUMNS` present.
        behavior: name -> ``Tsd`` (one per-bin field) or ``TsdFrame`` (one field per
            column, named ``name.column``), averaged within every bin.
        split: train / val / test fractions of the trials, drawn at random with ``seed``.
        seed: Seed of the split.
        align_event: Name of the alignment event (default ``trial_start`` or ``event``).

    Returns:
        A Session with (K, T, N) counts split into train / val / test, and the per-trial
        field ``align_time_s`` (K,) holding each trial's event time on the recording clock.

    Raises:
        SpikemaskError: Not a TsGroup, neither or both of ``trials`` / ``events``, unequal
            trial lengths, a window that is not a whole number of bins, or too few trials.
    """
    nap = _pynapple()
    if not isinstance(units, nap.TsGroup):
        raise SpikemaskError(f"units is a {type(units).__name__}; expected a pynapple TsGroup")
    align_times, window, default_event, trial_fields = _trial_windows(nap, trials, events, window_s)
    num_bins = check_window(window, bin_size_s)
    starts = align_times + window[0]
    keys = list(units.keys())
    times = [np.asarray(units[k].t, dtype=np.float64) for k in keys]
    spike_units = np.repeat(np.arange(len(keys)), [len(t) for t in times])
    all_times = np.concatenate(times) if times else np.zeros(0)
    counts = bin_spike_counts(all_times, spike_units, len(keys), starts, num_bins, bin_size_s)
    edges = bin_edges(starts, num_bins, bin_size_s)
    rows = split_trials(len(starts), split, np.random.default_rng(seed))
    trial_fields = {**trial_fields, ALIGN_TIME: align_times}
    splits = make_splits(
        counts, np.arange(len(starts)), trial_fields, _bin_behavior(nap, behavior, edges), rows
    )
    return Session(
        session_id=session_id,
        bin_size_s=float(bin_size_s),
        window_start_s=float(window[0]),
        align_event=align_event or default_event,
        unit_ids=tuple(str(k) for k in keys),
        unit_regions=_unit_regions(units, region_column),
        unit_depths=_metadata_column(units, "depth"),
        splits=splits,
        metadata={"source": "pynapple", "num_trials_total": len(starts)},
    )


def _trial_windows(
    nap: Any, trials: Any, events: Any, window_s: Sequence[float] | None
) -> tuple[np.ndarray, tuple[float, float], str, dict[str, np.ndarray]]:
    """Alignment times (K,), the relative window, the event name and per-trial fields."""
    if (trials is None) == (events is None):
        raise SpikemaskError("give trials (an IntervalSet) or events (a Ts), exactly one")
    if events is not None:
        if not isinstance(events, nap.Ts | nap.Tsd):
            raise SpikemaskError(f"events is a {type(events).__name__}; expected a pynapple Ts")
        if window_s is None:
            raise SpikemaskError("events need window_s=(start, end) in seconds around each event")
        return np.asarray(events.t, np.float64), _pair(window_s), "event", {}
    if not isinstance(trials, nap.IntervalSet):
        raise SpikemaskError(f"trials is a {type(trials).__name__}; expected an IntervalSet")
    starts = np.asarray(trials.start, dtype=np.float64)
    if window_s is None:
        lengths = np.asarray(trials.end, dtype=np.float64) - starts
        if lengths.size and np.ptp(lengths) > 1e-9 * max(1.0, float(lengths.max())):
            raise SpikemaskError(
                f"trial intervals last {lengths.min():g} to {lengths.max():g} s; expected equal "
                "lengths, or pass window_s=(start, end) relative to each interval's start"
            )
        window_s = (0.0, float(lengths[0]) if lengths.size else 0.0)
    return starts, _pair(window_s), "trial_start", _interval_fields(trials)


def _pair(window_s: Sequence[float]) -> tuple[float, float]:
    if len(window_s) != 2:
        raise SpikemaskError(f"window_s={tuple(window_s)!r}; expected (start, end) in seconds")
    return float(window_s[0]), float(window_s[1])


def _interval_fields(trials: Any) -> dict[str, np.ndarray]:
    """Numeric metadata columns of an IntervalSet, as per-trial fields (K,)."""
    columns = getattr(trials, "metadata_columns", None) or []
    fields = {}
    for name in columns:
        values = np.asarray(trials.metadata[name])
        if np.issubdtype(values.dtype, np.number) or values.dtype == bool:
            fields[str(name)] = values.astype(np.float64)
    return fields


def _metadata_column(units: Any, name: str) -> np.ndarray | None:
    columns = getattr(units, "metadata_columns", None) or []
    return np.asarray(units.metadata[name]) if name in columns else None


def _unit_regions(units: Any, region_column: str | None) -> tuple[str, ...]:
    columns = list(getattr(units, "metadata_columns", None) or [])
    if region_column is not None and region_column not in columns:
        raise SpikemaskError(
            f"the TsGroup has no metadata column {region_column!r}; it has {columns}"
        )
    name = region_column or next((c for c in REGION_COLUMNS if c in columns), None)
    if name is None:
        return ("",) * len(units)
    return tuple("" if v is None else str(v) for v in units.metadata[name])


def _bin_behavior(
    nap: Any, behavior: Mapping[str, Any] | None, edges: np.ndarray
) -> dict[str, np.ndarray]:
    """name -> (K, T) per-bin means of Tsd / TsdFrame traces."""
    fields: dict[str, np.ndarray] = {}
    for name, trace in (behavior or {}).items():
        if isinstance(trace, nap.TsdFrame):
            table = np.asarray(trace.d, dtype=np.float64)  # (S, C)
            for index, column in enumerate(trace.columns):
                fields[f"{name}.{column}"] = bin_mean(trace.t, table[:, index], edges)
        elif isinstance(trace, nap.Tsd):
            fields[name] = bin_mean(trace.t, np.asarray(trace.d, np.float64), edges)
        else:
            raise SpikemaskError(
                f"behaviour {name!r} is a {type(trace).__name__}; expected a Tsd or TsdFrame"
            )
    return fields


def to_pynapple(
    values: np.ndarray, session: Session, split: str, *, clock: str = "perievent"
) -> Any:
    """Predictions or latents of ``split`` as a pynapple object aligned to its trials.

    Args:
        values: (K, T, N) log-rates (or (K, T, D) latents) of the trials of ``split``.
        session: The session the values belong to.
        split: Their split.
        clock: ``perievent``: a ``TsdTensor`` (T, K, N) whose time is the bin centre
            relative to the alignment event, the layout of pynapple's
            ``compute_perievent_continuous``. ``absolute``: a ``TsdFrame`` (K * T, N) at
            the bin centres on the recording clock, its time support the trial windows
            (needs the per-trial field ``align_time_s`` and trials that do not overlap).

    Raises:
        SpikemaskError: An unknown clock, values that do not fit the split, or a session
            without trial times for the absolute clock.
    """
    nap = _pynapple()
    trials = session.split(split)
    if values.ndim != 3 or values.shape[:2] != (trials.num_trials, session.num_bins):
        raise SpikemaskError(
            f"values have shape {values.shape}; expected ({trials.num_trials}, "
            f"{session.num_bins}, ...) for split {split!r} of {session.session_id!r}"
        )
    offset = session.window_start_s or 0.0
    centres = offset + (np.arange(session.num_bins) + 0.5) * session.bin_size_s  # (T,)
    if clock == "perievent":
        return nap.TsdTensor(t=centres, d=np.transpose(values, (1, 0, 2)))  # (T, K, N)
    if clock != "absolute":
        raise SpikemaskError(f"clock={clock!r}; expected 'perievent' or 'absolute'")
    return _absolute_frame(nap, values, session, trials, centres, offset)


def _absolute_frame(nap, values, session, trials, centres, offset) -> Any:
    if ALIGN_TIME not in trials.trial_behavior:
        raise SpikemaskError(
            f"session {session.session_id!r} has no per-trial {ALIGN_TIME!r} field; the "
            "absolute clock needs a session built by session_from_pynapple"
        )
    align = np.asarray(trials.trial_behavior[ALIGN_TIME], dtype=np.float64)  # (K,)
    order = np.argsort(align, kind="stable")
    starts = align[order] + offset
    ends = starts + session.duration_s
    if np.any(starts[1:] < ends[:-1]):
        raise SpikemaskError(
            f"trials of split of {session.session_id!r} overlap in time; use clock='perievent'"
        )
    times = (align[order, None] + centres[None, :]).reshape(-1)  # (K * T,)
    data = values[order].reshape(len(times), values.shape[2])  # (K * T, N)
    columns = list(session.unit_ids) if data.shape[1] == session.num_units else None
    support = nap.IntervalSet(start=starts, end=ends)
    return nap.TsdFrame(t=times, d=data, columns=columns, time_support=support)
