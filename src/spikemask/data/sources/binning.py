"""Shared helpers of the data pipelines (IBL / ONE and NWB): binning, sampling, splits.

Every helper is vectorised over all spikes of all units and all trials at once (``np.
searchsorted`` / ``np.bincount``), so a 1,000-unit session with 600 trials bins in seconds.

Windows are half-open: bin ``b`` of trial ``k`` covers ``[edges[k, b], edges[k, b + 1])`` with
``edges[k] = start[k] + bin_size_s * arange(T + 1)``, as ``np.histogram`` counts with those
edges (a spike on an inner edge falls in the later bin) except that a spike exactly on the
window's end is outside it (``np.histogram`` closes its last bin), so back-to-back windows
never count a spike twice.

Shape letters: K trials (windows), T time bins, N units.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spikemask.data.session import SPLITS, Session, TrialSet
from spikemask.errors import SpikemaskError

__all__ = [
    "REPORT_NAME",
    "PrepareReport",
    "bin_edges",
    "bin_mean",
    "bin_spike_counts",
    "check_split",
    "check_window",
    "is_prepared",
    "make_splits",
    "read_report",
    "sample_at",
    "sample_at_bin_ends",
    "split_trials",
    "wheel_speed",
    "write_prepared",
    "write_report",
]

#: Name of the per-session report written next to ``data/``.
REPORT_NAME = "prepare_report.json"

# Cells (K * T * N) binned per np.bincount call: a small int64 scratch (16 MB) that the
# allocator reuses between chunks (fresh large buffers cost more in page faults than counting).
_CHUNK_CELLS = 2_000_000


# ---------------------------------------------------------------------------- validation
def check_window(window_s: Sequence[float], bin_size_s: float) -> int:
    """Validate a window and bin size; return the number of bins T.

    Raises:
        SpikemaskError: A non-positive bin size, ``start >= end``, or a window length that
            is not a whole number of bins.
    """
    if not (isinstance(bin_size_s, (int, float)) and math.isfinite(bin_size_s) and bin_size_s > 0):
        raise SpikemaskError(f"bin_size_s={bin_size_s!r}; expected a bin width in seconds > 0")
    if len(window_s) != 2 or not all(math.isfinite(float(v)) for v in window_s):
        raise SpikemaskError(f"window_s={tuple(window_s)!r}; expected (start, end) in seconds")
    start, end = float(window_s[0]), float(window_s[1])
    if start >= end:
        raise SpikemaskError(
            f"window_s=({start}, {end}): start >= end; expected start < end (seconds)"
        )
    ratio = (end - start) / bin_size_s
    num_bins = round(ratio)
    if num_bins < 1 or abs(ratio - num_bins) > 1e-6 * max(1.0, ratio):
        raise SpikemaskError(
            f"window_s=({start}, {end}) is {end - start:g} s long, not a whole number of "
            f"bins of bin_size_s={bin_size_s}; expected a length divisible by the bin size"
        )
    return int(num_bins)


def check_split(split: Sequence[float]) -> tuple[float, float, float]:
    """Validate train / val / test fractions: three values > 0 that sum to 1."""
    values = tuple(float(v) for v in split)
    if len(values) != 3 or min(values) <= 0 or abs(sum(values) - 1.0) > 1e-6:
        raise SpikemaskError(
            f"split={tuple(split)!r}; expected three fractions > 0 (train, val, test) summing to 1"
        )
    return values  # type: ignore[return-value]


# ---------------------------------------------------------------------------- binning
def bin_edges(starts: np.ndarray, num_bins: int, bin_size_s: float) -> np.ndarray:
    """(K, T + 1) bin edges in seconds of windows starting at ``starts`` (K,)."""
    offsets = np.arange(num_bins + 1, dtype=np.float64) * bin_size_s
    return np.asarray(starts, dtype=np.float64)[:, None] + offsets[None, :]


def bin_spike_counts(
    spike_times: np.ndarray,
    spike_units: np.ndarray,
    num_units: int,
    starts: np.ndarray,
    num_bins: int,
    bin_size_s: float,
) -> np.ndarray:
    """Count the spikes of every unit in every bin of every window.

    Args:
        spike_times: (S,) spike times in seconds, all units together (any order).
        spike_units: (S,) unit index in ``[0, num_units)`` of every spike.
        num_units: N.
        starts: (K,) window starts in seconds (windows may overlap).
        num_bins: T.
        bin_size_s: Bin width in seconds.

    Returns:
        (K, T, N) spike counts, uint16 (int32 if some bin holds more than 65,535 spikes).
    """
    times = np.asarray(spike_times, dtype=np.float64)
    units = np.asarray(spike_units, dtype=np.int64)
    if times.shape != units.shape:
        raise SpikemaskError(
            f"{len(times)} spike times but {len(units)} spike units; expected one unit per spike"
        )
    if units.size and (units.min() < 0 or units.max() >= num_units):
        raise SpikemaskError(f"spike unit indices outside [0, {num_units}); expected unit indices")
    if times.size and np.any(np.diff(times) < 0):
        order = np.argsort(times, kind="stable")
        times, units = times[order], units[order]
    edges = bin_edges(np.asarray(starts, dtype=np.float64).reshape(-1), num_bins, bin_size_s)
    num_trials = len(edges)
    counts = np.zeros((num_trials, num_bins, num_units), dtype=np.uint16)
    cells_per_trial = max(1, num_bins * num_units)
    chunk = max(1, _CHUNK_CELLS // cells_per_trial)
    for first in range(0, num_trials, chunk):  # chunks of trials bound memory; not per unit
        block = _count_block(times, units, edges[first : first + chunk], num_units, bin_size_s)
        if block.max(initial=0) > np.iinfo(np.uint16).max and counts.dtype == np.uint16:
            counts = counts.astype(np.int32)
        counts[first : first + chunk] = block
    return counts


def _count_block(
    times: np.ndarray, units: np.ndarray, edges: np.ndarray, num_units: int, bin_size_s: float
) -> np.ndarray:
    """(K, T, N) int64 counts of sorted spikes in the windows given by ``edges`` (K, T + 1)."""
    num_trials, num_bins = edges.shape[0], edges.shape[1] - 1
    first = np.searchsorted(times, edges[:, 0], side="left")
    last = np.searchsorted(times, edges[:, -1], side="left")
    lengths = last - first
    trial = np.repeat(np.arange(num_trials), lengths)
    # index of every spike of every window, windows concatenated (overlaps repeat spikes)
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    spike = np.repeat(first, lengths) + within
    t = times[spike]
    b = np.floor((t - edges[trial, 0]) / bin_size_s).astype(np.int64)
    b = np.clip(b, 0, num_bins - 1)
    # correct float rounding so bins agree exactly with the explicit edges
    b -= t < edges[trial, b]
    b = np.clip(b, 0, num_bins - 1)
    b += t >= edges[trial, b + 1]
    b = np.clip(b, 0, num_bins - 1)
    flat = (trial * num_bins + b) * num_units + units[spike]
    counts = np.bincount(flat, minlength=num_trials * num_bins * num_units)
    return counts.reshape(num_trials, num_bins, num_units)


# ---------------------------------------------------------------------------- behaviour
def sample_at(times: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``values`` (S,) sampled at ``times`` (S,) at ``query``.

    Samples with NaN time or value are ignored; queries outside the sampled time range give
    NaN (no extrapolation, no clamping). Returns an array shaped like ``query``.
    """
    t, v = _clean_series(times, values)
    query = np.asarray(query, dtype=np.float64)
    if t.size == 0:
        return np.full(query.shape, np.nan)
    out = np.interp(query.ravel(), t, v, left=np.nan, right=np.nan)
    return out.reshape(query.shape)


def sample_at_bin_ends(times: np.ndarray, values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(K, T) value interpolated at the end (right edge) of every bin; ``edges`` (K, T + 1)."""
    return sample_at(times, values, edges[:, 1:])


def wheel_speed(
    timestamps: np.ndarray, position: np.ndarray, edges: np.ndarray, bin_size_s: float
) -> np.ndarray:
    """(K, T) wheel speed: |position(end) - position(start)| / bin_size_s for every bin.

    The wheel position (radians in IBL data) is linearly interpolated at every bin edge, so
    the speed of a bin is its absolute net displacement divided by the bin width (rad/s).
    Bins reaching outside the recorded wheel trace are NaN.
    """
    at_edges = sample_at(timestamps, position, edges)
    return (np.abs(np.diff(at_edges, axis=1)) / bin_size_s).astype(np.float64)


def bin_mean(times: np.ndarray, values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(K, T) mean of the samples falling in every bin ``[edges[k, b], edges[k, b + 1])``.

    A bin holding no sample gets the value interpolated at its centre (NaN outside the
    sampled range), so sparse traces still give one value per bin.
    """
    t, v = _clean_series(times, values)
    cumulative = np.concatenate([[0.0], np.cumsum(v)])
    index = np.searchsorted(t, edges, side="left")  # (K, T + 1)
    totals = cumulative[index[:, 1:]] - cumulative[index[:, :-1]]
    num = index[:, 1:] - index[:, :-1]
    centres = 0.5 * (edges[:, 1:] + edges[:, :-1])
    with np.errstate(invalid="ignore", divide="ignore"):
        means = totals / num
    return np.where(num > 0, means, sample_at(t, v, centres))


def _clean_series(times: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if t.shape != v.shape:
        raise SpikemaskError(
            f"behaviour trace has {len(t)} timestamps but {len(v)} values; expected one each"
        )
    finite = np.isfinite(t) & np.isfinite(v)
    t, v = t[finite], v[finite]
    if t.size and np.any(np.diff(t) < 0):
        order = np.argsort(t, kind="stable")
        t, v = t[order], v[order]
    return t, v


# ---------------------------------------------------------------------------- splits
def split_trials(
    num_trials: int, fractions: Sequence[float], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Random train / val / test row indices (each sorted) for ``num_trials`` trials.

    Val and test get ``round(fraction * K)`` trials but at least one each; train gets the
    rest. Every split must be non-empty (the parquet layout needs all three files).

    Raises:
        SpikemaskError: Fewer than 3 trials, or fractions that leave train empty.
    """
    fractions = check_split(fractions)
    if num_trials < 3:
        raise SpikemaskError(
            f"only {num_trials} trial(s) to split; expected at least 3 (one per train/val/test)"
        )
    num_val = max(1, round(fractions[1] * num_trials))
    num_test = max(1, round(fractions[2] * num_trials))
    num_train = num_trials - num_val - num_test
    if num_train < 1:
        raise SpikemaskError(
            f"split={fractions} leaves no training trial out of {num_trials}; "
            "expected more trials or a larger train fraction"
        )
    order = rng.permutation(num_trials)
    bounds = np.cumsum([0, num_train, num_val, num_test])
    return {name: np.sort(order[bounds[i] : bounds[i + 1]]) for i, name in enumerate(SPLITS)}


def make_splits(
    counts: np.ndarray,
    trial_index: np.ndarray,
    trial_behavior: Mapping[str, np.ndarray],
    bin_behavior: Mapping[str, np.ndarray],
    rows: Mapping[str, np.ndarray],
) -> dict[str, TrialSet]:
    """Cut (K, T, N) counts and their behaviour into the trial sets named by ``rows``."""
    whole = TrialSet(
        spikes=counts,
        trial_index=np.asarray(trial_index, dtype=np.int64),
        trial_behavior={k: np.asarray(v, dtype=np.float64) for k, v in trial_behavior.items()},
        bin_behavior={k: np.asarray(v, dtype=np.float32) for k, v in bin_behavior.items()},
    )
    return {name: whole.select(index) for name, index in rows.items()}


# ---------------------------------------------------------------------------- reports
@dataclass
class PrepareReport:
    """What one prepare run did (written as ``prepare_report.json`` next to ``data/``).

    Attributes:
        session_id: IBL eid or NWB session id.
        out_dir: Dataset folder (holding ``data/``).
        trials_total: Trials (or windows) before filtering.
        trials_kept: Trials written.
        trials_dropped: reason -> number of trials dropped for it (first failing reason).
        units: Number of units N (after the unit filters).
        units_dropped: unit filter (``qc_label``, ``min_rate``) -> number of units it dropped.
        probes: Probe (or electrode group) names merged into the population.
        splits: split name -> number of trials.
        regions: region label -> number of units.
        bin_behavior: Names of the per-bin behaviour fields written.
        trial_behavior: Names of the per-trial behaviour fields written.
        config: The resolved prepare config (JSON-able).
        notes: Things the user should know (missing optional behaviour, ...).
        error: None on success, else the error message (nothing complete was written).
        skipped: True when a batch run found this session already prepared.
    """

    session_id: str
    out_dir: str
    trials_total: int = 0
    trials_kept: int = 0
    trials_dropped: dict[str, int] = field(default_factory=dict)
    units: int = 0
    units_dropped: dict[str, int] = field(default_factory=dict)
    probes: list[str] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    regions: dict[str, int] = field(default_factory=dict)
    bin_behavior: list[str] = field(default_factory=list)
    trial_behavior: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    skipped: bool = False

    @classmethod
    def describe(
        cls,
        session: Session,
        *,
        trials_total: int,
        trials_dropped: Mapping[str, int],
        probes: Sequence[str],
        config: Any,
        notes: Sequence[str] = (),
        units_dropped: Mapping[str, int] | None = None,
    ) -> PrepareReport:
        """The report of a freshly built ``session`` (``out_dir`` is set when written)."""
        return cls(
            session_id=session.session_id, out_dir="", trials_total=int(trials_total),
            trials_kept=sum(s.num_trials for s in session.splits.values()),
            trials_dropped=dict(trials_dropped), units=session.num_units, probes=list(probes),
            splits={name: s.num_trials for name, s in session.splits.items()},
            regions=session.units_per_region, bin_behavior=list(session.bin_behavior_names),
            trial_behavior=list(session.trial_behavior_names),
            config=dataclasses.asdict(config), notes=list(notes),
            units_dropped=dict(units_dropped or {}),
        )  # fmt: skip

    @property
    def eid(self) -> str:
        """Alias of ``session_id`` for IBL sessions."""
        return self.session_id

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    return str(value)


def read_report(out_dir: str | Path) -> PrepareReport:
    """The :class:`PrepareReport` saved in ``out_dir``."""
    path = Path(out_dir) / REPORT_NAME
    try:
        payload = json.loads(path.read_text())
        names = {f.name for f in dataclasses.fields(PrepareReport)}
        return PrepareReport(**{k: v for k, v in payload.items() if k in names})
    except (OSError, ValueError, TypeError) as err:
        raise SpikemaskError(f"{str(path)!r}: not a readable prepare report ({err})") from None


def is_prepared(out_dir: str | Path) -> bool:
    """True when ``out_dir`` holds a successful report and all three split files."""
    root = Path(out_dir)
    if not (root / REPORT_NAME).is_file():
        return False
    try:
        report = read_report(root)
    except SpikemaskError:
        return False
    return report.ok and all(any((root / "data").glob(f"{s}-*.parquet")) for s in SPLITS)


def write_report(report: PrepareReport, out_dir: str | Path) -> Path:
    """Atomically write ``report`` as ``out_dir/prepare_report.json``."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{REPORT_NAME}.", dir=root)
    with os.fdopen(fd, "w") as handle:
        handle.write(report.to_json())
    os.replace(tmp, root / REPORT_NAME)
    return root / REPORT_NAME


def prepare_into(
    out_dir: str | Path,
    load: Callable[[], tuple[Session, PrepareReport]],
    *,
    overwrite: bool = False,
) -> PrepareReport:
    """The shared tail of every ``prepare_*``: refuse a folder that already holds a prepared
    dataset (unless ``overwrite``) before any reading, then ``load()`` the session and write
    it with its report into ``out_dir``."""
    out = Path(out_dir).expanduser()
    if not overwrite and any((out / "data").glob("*.parquet")):
        raise SpikemaskError(
            f"{str(out)!r} already holds a prepared dataset; choose another folder or overwrite"
        )
    session, report = load()
    report.out_dir = str(out)
    write_prepared(session, report, out, overwrite=overwrite)
    return report


def write_prepared(
    session: Session, report: PrepareReport, out_dir: str | Path, *, overwrite: bool = False
) -> Path:
    """Write ``session`` in the parquet layout, then its report (the report marks completion)."""
    from spikemask.data.parquet import write_session

    root = Path(out_dir).expanduser()
    stale = root / REPORT_NAME
    if overwrite and stale.exists():
        stale.unlink()  # an interrupted rewrite must not look complete
    write_session(session, root, overwrite=overwrite)
    write_report(report, root)
    return root
