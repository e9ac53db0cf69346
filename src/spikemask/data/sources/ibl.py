"""Prepare IBL sessions through the ONE API into the trial-aligned parquet layout.

One session (``eid``) becomes one dataset folder: its probes are found through ONE (every
collection holding ``spikes.times``: ``alf/probe00/pykilosort``, ``alf/probe01``, ...), their
spike sortings merged into one population (unit ids are ``clusters.uuids`` when present, else
``"<probe>-<cluster id>"``; units are the clusters that fire at least once), each unit labelled
with the Allen acronym of its channel, trials filtered as in the paper, spikes binned (20 ms,
-0.5..+1.5 s around ``stimOn_times``), behaviour derived, and the trials split 70/10/20 with a
recorded seed. Works against the public IBL server and against a local ONE cache folder.

Shape letters: K trials, T time bins, N units.
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spikemask.data.session import Session
from spikemask.data.sources import _ibl_one as sources
from spikemask.data.sources import binning
from spikemask.data.sources.binning import PrepareReport
from spikemask.data.sources.unit_filters import UnitFilter, apply_unit_filter
from spikemask.errors import SpikemaskError

__all__ = [
    "IBLPrepareConfig",
    "filter_trials",
    "load_ibl_session",
    "make_one",
    "prepare_ibl",
    "prepare_ibl_many",
]

PUBLIC_BASE_URL = sources.PUBLIC_BASE_URL

_DEFAULT_FIELDS = (
    "stimOn_times",
    "goCue_times",
    "feedback_times",
    "firstMovement_times",
    "choice",
    "feedbackType",
    "probabilityLeft",
)


@dataclass(frozen=True)
class IBLPrepareConfig:
    """How one IBL session is turned into a trial-aligned dataset (paper defaults).

    Attributes:
        align_event: Trial event the window is aligned to.
        window_s: (start, end) of the window around ``align_event`` in seconds.
        bin_size_s: Bin width in seconds; the window must hold a whole number of bins.
        min_rt_s / max_rt_s: Keep trials with ``min_rt_s <= firstMovement - stimOn <=
            max_rt_s``; None disables that bound.
        max_feedback_delay_s: Drop trials with ``feedback - goCue`` above it; None disables.
        required_fields: Trial fields that must be present and not NaN.
        split: (train, val, test) fractions.
        seed: Seed of the split (recorded in the report).
        spike_sorters: Preferred spike-sorting sub-collections, best first ("" = the probe
            collection itself); unlisted sorters rank last.
        probes: Restrict to these probe labels (e.g. ``("probe00",)``); None keeps all.
        camera: Camera whose ``ROIMotionEnergy`` gives ``whisker-motion-energy``.
        task_collection: Collection of trials, wheel and camera (falls back to any holding them).
        region_mapping: Allen acronyms as recorded ("Allen"), or IBL's "Beryl" / "Cosmos"
            groupings (needs iblatlas).
        allow_unlabelled: Label units of probes without histology "unknown" instead of failing.
        require_behavior: Fail when wheel or camera data are missing (else omit them, noted).
        good_units_only: Keep only the units with IBL QC label 1 (``clusters.metrics``
            ``label == 1``, "good" clusters); fails when the sorting has no metrics table.
        min_rate_hz: Keep only the units firing at least this rate (spikes / s) inside the
            kept trial windows; None keeps all.
    """

    align_event: str = "stimOn_times"
    window_s: tuple[float, float] = (-0.5, 1.5)
    bin_size_s: float = 0.02
    min_rt_s: float | None = 0.08
    max_rt_s: float | None = 2.0
    max_feedback_delay_s: float | None = 10.0
    required_fields: tuple[str, ...] = _DEFAULT_FIELDS
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)
    seed: int = 0
    spike_sorters: tuple[str, ...] = ("iblsorter", "pykilosort", "")
    probes: tuple[str, ...] | None = None
    camera: str = "left"
    task_collection: str = "alf"
    region_mapping: str = "Allen"
    allow_unlabelled: bool = False
    require_behavior: bool = False
    good_units_only: bool = False
    min_rate_hz: float | None = None

    def __post_init__(self) -> None:
        binning.check_window(self.window_s, self.bin_size_s)
        UnitFilter(good_only=self.good_units_only, min_rate_hz=self.min_rate_hz)  # validates
        binning.check_split(self.split)
        bounds = (self.min_rt_s, self.max_rt_s)
        if None not in bounds and self.min_rt_s >= self.max_rt_s:  # type: ignore[operator]
            raise SpikemaskError(
                f"min_rt_s={self.min_rt_s} >= max_rt_s={self.max_rt_s}; expected min < max"
            )
        if self.region_mapping not in ("Allen", "Beryl", "Cosmos"):
            raise SpikemaskError(
                f"region_mapping={self.region_mapping!r}; expected 'Allen', 'Beryl' or 'Cosmos'"
            )

    @property
    def num_bins(self) -> int:
        return binning.check_window(self.window_s, self.bin_size_s)

    @property
    def unit_filter(self) -> UnitFilter:
        """The unit filters of this config."""
        return UnitFilter(good_only=self.good_units_only, min_rate_hz=self.min_rate_hz)


def make_one(
    cache_dir: str | Path | None = None,
    *,
    base_url: str | None = None,
    password: str | None = None,
    local: bool = False,
) -> Any:
    """A ONE instance: the public IBL server by default, or a local cache folder.

    Args:
        cache_dir: Where ONE keeps (or, with ``local``, finds) the data.
        base_url: Alyx server; default the public IBL server (public password filled in).
        password: Alyx password for a non-public server.
        local: Offline mode on ``cache_dir``: a folder of ALF sessions
            (``<lab>/Subjects/<subject>/<date>/<number>/alf/...``). When it has no cache
            tables yet they are built (``one.alf.cache.make_parquet_db``).
    """
    return sources.make_one(cache_dir, base_url=base_url, password=password, local=local)


# ---------------------------------------------------------------------------- trial filters
def filter_trials(
    trials: Mapping[str, np.ndarray],
    config: IBLPrepareConfig,
    recording_s: tuple[float, float] | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Apply the paper's trial filters.

    Each dropped trial is counted under the first reason it fails, in this order:
    ``nan_fields`` (a required field is NaN), ``no_go`` (choice == 0), ``reaction_time``
    (firstMovement - stimOn outside [min_rt_s, max_rt_s]), ``feedback_delay``
    (feedback - goCue > max_feedback_delay_s), ``outside_recording`` (the window is not
    inside ``recording_s``, the time span covered by the spike sorting).

    Args:
        trials: field name -> (K,) values (IBL ``trials`` object).
        config: Thresholds and window.
        recording_s: (first, last) spike time of the recording, or None to skip that check.

    Returns:
        (K,) bool, True for trials kept; reason -> number dropped.
    """
    fields = tuple(dict.fromkeys((*config.required_fields, config.align_event)))
    missing = [f for f in fields if f not in trials]
    if missing:
        raise SpikemaskError(
            f"trials lack field(s) {missing}; expected IBL trial fields {list(fields)}"
        )
    values = {f: np.asarray(trials[f], dtype=np.float64) for f in fields}
    num_trials = len(values[config.align_event])
    dropped = np.zeros(num_trials, dtype=bool)
    reasons: dict[str, int] = {}

    def drop(reason: str, bad: np.ndarray) -> None:
        new = np.asarray(bad, dtype=bool) & ~dropped
        reasons[reason] = int(new.sum())
        dropped[new] = True

    drop("nan_fields", np.any([np.isnan(v) for v in values.values()], axis=0))
    with np.errstate(invalid="ignore"):
        if "choice" in values:
            drop("no_go", values["choice"] == 0)
        drop("reaction_time", _rt_out_of_range(trials, config))
        if config.max_feedback_delay_s is not None:
            delay = _field(trials, "feedback_times") - _field(trials, "goCue_times")
            drop("feedback_delay", delay > config.max_feedback_delay_s)
        if recording_s is not None:
            align = values[config.align_event]
            start, end = align + config.window_s[0], align + config.window_s[1]
            drop("outside_recording", (start < recording_s[0]) | (end > recording_s[1]))
    return ~dropped, reasons


def _field(trials: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    if name not in trials:
        raise SpikemaskError(f"trials lack field {name!r}; the trial filters need it")
    return np.asarray(trials[name], dtype=np.float64)


def _rt_out_of_range(trials: Mapping[str, np.ndarray], config: IBLPrepareConfig) -> np.ndarray:
    if config.min_rt_s is None and config.max_rt_s is None:
        return np.zeros(len(trials[config.align_event]), dtype=bool)
    rt = _field(trials, "firstMovement_times") - _field(trials, "stimOn_times")
    low = rt < config.min_rt_s if config.min_rt_s is not None else np.zeros(rt.shape, bool)
    high = rt > config.max_rt_s if config.max_rt_s is not None else np.zeros(rt.shape, bool)
    return low | high


def _trial_behavior(trials: Mapping[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    """choice (IBL sign, ±1), block (probabilityLeft), reward (1 if feedbackType > 0), ..."""
    get = {k: np.asarray(v, dtype=np.float64)[keep] for k, v in trials.items()}
    out = {}
    if "choice" in get:
        out["choice"] = get["choice"]
    if "probabilityLeft" in get:
        out["block"] = get["probabilityLeft"]
    if "feedbackType" in get:
        out["reward"] = (get["feedbackType"] > 0).astype(np.float64)
        out["feedback_type"] = get["feedbackType"]
    for side in ("Left", "Right"):  # NaN marks the side without a stimulus: contrast 0
        if f"contrast{side}" in get:
            out[f"contrast_{side.lower()}"] = np.nan_to_num(get[f"contrast{side}"], nan=0.0)
    if "firstMovement_times" in get and "stimOn_times" in get:
        out["reaction_time"] = get["firstMovement_times"] - get["stimOn_times"]
    return out


# ---------------------------------------------------------------------------- one session
def load_ibl_session(
    eid: str, *, one: Any, config: IBLPrepareConfig | None = None
) -> tuple[Session, PrepareReport]:
    """Load, filter, bin and split one IBL session (nothing is written).

    Returns:
        The :class:`Session` (splits hold (K, T, N) counts) and its report (``out_dir`` empty).

    Raises:
        SpikemaskError: Unknown eid, no spike sorting, missing trials, missing histology,
            no trial surviving the filters, no spike in any kept window.
    """
    config = config or IBLPrepareConfig()
    eid, index = sources.session_index(one, eid)
    trials = sources.load_trials(one, eid, index, config)
    population = sources.load_population(one, eid, index, config)
    keep, dropped = filter_trials(trials, config, population.recording_s)
    if not keep.any():
        raise SpikemaskError(
            f"no trial of session {eid} survives the trial filters (dropped: {dropped}); "
            "expected at least one trial inside the recording with valid fields"
        )
    starts = np.asarray(trials[config.align_event], dtype=np.float64)[keep] + config.window_s[0]
    counts = binning.bin_spike_counts(
        population.times,
        population.units,
        len(population.unit_ids),
        starts,
        config.num_bins,
        config.bin_size_s,
    )  # (K, T, N)
    if counts.max(initial=0) == 0:
        raise SpikemaskError(
            f"session {eid}: no spike in the {int(keep.sum())} kept trial windows "
            f"{config.window_s} s around {config.align_event}; expected spikes in the windows"
        )
    keep_units, units_dropped = apply_unit_filter(
        config.unit_filter, counts, config.bin_size_s, labels=population.labels,
        where=f"session {eid}",
    )  # fmt: skip
    counts = np.ascontiguousarray(counts[:, :, keep_units])  # (K, T, N_kept)
    notes: list[str] = list(population.notes)
    edges = binning.bin_edges(starts, config.num_bins, config.bin_size_s)
    bin_behavior = sources.load_bin_behavior(one, eid, index, edges, config, notes)
    rows = binning.split_trials(int(keep.sum()), config.split, np.random.default_rng(config.seed))
    splits = binning.make_splits(
        counts, np.flatnonzero(keep), _trial_behavior(trials, keep), bin_behavior, rows
    )
    session = Session(
        session_id=eid,
        bin_size_s=config.bin_size_s,
        window_start_s=float(config.window_s[0]),
        align_event=config.align_event,
        unit_ids=tuple(np.array(population.unit_ids)[keep_units]),
        unit_regions=tuple(np.array(population.regions)[keep_units]),
        unit_depths=population.depths[keep_units],
        unit_attributes=(
            {} if population.labels is None else {"cluster_label": population.labels[keep_units]}
        ),
        splits=splits,
        metadata={**population.metadata, "source": "ibl-one"},
    )
    report = PrepareReport.describe(
        session, trials_total=len(keep), trials_dropped=dropped, probes=population.probes,
        config=config, notes=notes, units_dropped=units_dropped,
    )  # fmt: skip
    return session, report


def prepare_ibl(
    eid: str,
    out_dir: str | Path,
    *,
    one: Any = None,
    config: IBLPrepareConfig | None = None,
    overwrite: bool = False,
) -> PrepareReport:
    """Prepare one IBL session into ``out_dir`` (``data/*.parquet`` + ``prepare_report.json``).

    Args:
        eid: IBL session id.
        out_dir: Dataset folder to write.
        one: A ONE instance; default :func:`make_one` (the public IBL server).
        config: Prepare settings; default the paper's.
        overwrite: Replace an existing dataset in ``out_dir``.
    """
    config = config or IBLPrepareConfig()
    return binning.prepare_into(
        out_dir,
        lambda: load_ibl_session(eid, one=one if one is not None else make_one(), config=config),
        overwrite=overwrite,
    )


# ---------------------------------------------------------------------------- many sessions
def prepare_ibl_many(
    eids: Iterable[str],
    out_root: str | Path,
    *,
    workers: int = 1,
    one_factory: Callable[[], Any] | None = None,
    cache_dir: str | Path | None = None,
    local: bool = False,
    config: IBLPrepareConfig | None = None,
) -> list[PrepareReport]:
    """Prepare many sessions into ``out_root/<eid>``, in parallel and resumable.

    A session whose folder already holds a successful ``prepare_report.json`` and all
    three split files is skipped (its saved report is returned with ``skipped=True``).
    A session that fails gets a report with ``error`` set (also written to its folder) and
    does not stop the others; it is retried by the next run.

    Args:
        eids: Session ids.
        out_root: Parent folder of the per-session dataset folders.
        workers: Worker processes (1 = run here, no subprocess).
        one_factory: Picklable callable returning a ONE instance (one per worker); default
            ``make_one(cache_dir, local=local)``.
        cache_dir: ONE cache folder for the default factory.
        local: Default factory in offline mode on ``cache_dir``.
        config: Prepare settings shared by all sessions.

    Returns:
        One report per eid, in the order given.
    """
    config = config or IBLPrepareConfig()
    factory = one_factory or functools.partial(make_one, cache_dir, local=local)
    root = Path(out_root).expanduser()
    eids = [str(e) for e in eids]
    reports: dict[int, PrepareReport] = {}
    todo: list[tuple[int, str]] = []
    for i, eid in enumerate(eids):
        if binning.is_prepared(root / eid):
            reports[i] = dataclasses.replace(binning.read_report(root / eid), skipped=True)
        else:
            todo.append((i, eid))
    if workers <= 1 or len(todo) <= 1:
        one = factory() if todo else None
        for i, eid in todo:
            reports[i] = _prepare_or_record(one, eid, root / eid, config)
    else:
        context = multiprocessing.get_context("spawn")  # no fork of a threaded parent
        with ProcessPoolExecutor(
            max_workers=min(workers, len(todo)),
            mp_context=context,
            initializer=_init_worker,
            initargs=(factory,),
        ) as pool:
            futures = {
                pool.submit(_worker_prepare, eid, str(root / eid), config): i for i, eid in todo
            }
            for future in as_completed(futures):
                reports[futures[future]] = future.result()
    return [reports[i] for i in range(len(eids))]


_worker_one: Any = None  # the ONE instance of a worker process (set by its initializer)


def _init_worker(factory: Callable[[], Any]) -> None:
    global _worker_one
    _worker_one = factory()


def _worker_prepare(eid: str, out_dir: str, config: IBLPrepareConfig) -> PrepareReport:
    return _prepare_or_record(_worker_one, eid, Path(out_dir), config)


def _prepare_or_record(
    one: Any, eid: str, out_dir: Path, config: IBLPrepareConfig
) -> PrepareReport:
    try:
        return prepare_ibl(eid, out_dir, one=one, config=config, overwrite=True)
    except Exception as err:  # one bad session must not stop a batch: record it, go on
        message = str(err) if isinstance(err, SpikemaskError) else f"{type(err).__name__}: {err}"
        report = PrepareReport(
            session_id=eid, out_dir=str(out_dir), config=dataclasses.asdict(config), error=message
        )
        binning.write_report(report, out_dir)
        return report
