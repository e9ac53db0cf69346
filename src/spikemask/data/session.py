"""The in-memory form of one recording session.

A :class:`Session` holds the trial-aligned spike counts of one recording, split into
``train`` / ``val`` / ``test`` trial sets, together with per-unit metadata (ids, Allen
region acronyms, depths) and per-trial and per-bin behaviour. Every reader (IBL parquet,
ONE, NWB, the synthetic generator) produces this one form, and everything downstream
(models, training, evaluation) consumes it.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from spikemask.errors import SpikemaskError

__all__ = ["SPLITS", "UNLABELLED_REGIONS", "Session", "TrialSet", "counts_dtype"]

SPLITS: tuple[str, ...] = ("train", "val", "test")

#: Region labels that name no brain region (outside the brain, unassigned, missing).
UNLABELLED_REGIONS: frozenset[str] = frozenset({"", "root", "void", "unknown", "nan", "none"})


def counts_dtype(max_count: int) -> np.dtype:
    """The compact integer dtype used to hold spike counts up to ``max_count``."""
    return np.dtype(np.uint16) if max_count <= np.iinfo(np.uint16).max else np.dtype(np.int32)


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, eq=False)
class TrialSet:
    """The trials of one split of a session.

    Attributes:
        spikes: (K, T, N) non-negative integer spike counts (K trials).
        trial_index: (K,) trial number of each row within the session.
        trial_behavior: name -> (K,) float64 per-trial values (choice, reward, ...).
        bin_behavior: name -> (K, T) float32 per-bin values (wheel speed, ...).
    """

    spikes: np.ndarray
    trial_index: np.ndarray
    trial_behavior: Mapping[str, np.ndarray] = field(default_factory=dict)
    bin_behavior: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "trial_behavior", _frozen(self.trial_behavior))
        object.__setattr__(self, "bin_behavior", _frozen(self.bin_behavior))

    @property
    def num_trials(self) -> int:
        return int(self.spikes.shape[0])

    @property
    def total_spikes(self) -> int:
        return int(self.spikes.sum(dtype=np.int64))

    def select(self, rows: np.ndarray) -> TrialSet:
        """A new trial set holding only ``rows`` (indices or a boolean selector)."""
        return TrialSet(
            spikes=self.spikes[rows],
            trial_index=self.trial_index[rows],
            trial_behavior={k: v[rows] for k, v in self.trial_behavior.items()},
            bin_behavior={k: v[rows] for k, v in self.bin_behavior.items()},
        )


@dataclass(frozen=True, eq=False)
class Session:
    """One recording session, trial-aligned and split.

    Attributes:
        session_id: Stable identifier (IBL eid or dataset name); keys per-session layers.
        bin_size_s: Width of one time bin in seconds.
        window_start_s: Start of the trial window relative to ``align_event`` (seconds),
            or None when the source does not say.
        align_event: Name of the event trials are aligned to (e.g. ``stimOn_times``).
        unit_ids: (N,) stable unit identifiers.
        unit_regions: (N,) region label (Allen acronym) of every unit.
        splits: split name -> :class:`TrialSet`; at least ``train``.
        unit_depths: (N,) depth of every unit in micrometres, when known.
        unit_attributes: other per-unit columns (``cluster_*``), name -> (N,) array.
        metadata: free-form session metadata (subject, lab, source, ...).
    """

    session_id: str
    bin_size_s: float
    window_start_s: float | None
    align_event: str
    unit_ids: tuple[str, ...]
    unit_regions: tuple[str, ...]
    splits: Mapping[str, TrialSet]
    unit_depths: np.ndarray | None = None
    unit_attributes: Mapping[str, np.ndarray] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "unit_ids", tuple(str(u) for u in self.unit_ids))
        object.__setattr__(self, "unit_regions", tuple(str(r) for r in self.unit_regions))
        object.__setattr__(self, "splits", _frozen(self.splits))
        object.__setattr__(self, "unit_attributes", _frozen(self.unit_attributes))
        object.__setattr__(self, "metadata", _frozen(self.metadata))
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        where = f"session {self.session_id!r}"
        if not self.session_id:
            raise SpikemaskError("session_id is empty; expected a non-empty string")
        if not (np.isfinite(self.bin_size_s) and self.bin_size_s > 0):
            raise SpikemaskError(f"{where}: bin_size_s={self.bin_size_s}; expected > 0")
        if not self.splits:
            raise SpikemaskError(f"{where}: no trial splits; expected train/val/test")
        unknown = set(self.splits) - set(SPLITS)
        if unknown:
            raise SpikemaskError(f"{where}: unknown split(s) {sorted(unknown)}; expected {SPLITS}")
        self._validate_units(where)
        num_bins = None
        for split, trials in self.splits.items():
            num_bins = self._validate_split(split, trials, len(self.unit_ids), num_bins)
        if sum(t.num_trials for t in self.splits.values()) == 0:
            raise SpikemaskError(f"{where}: has no trials; expected at least one")
        self._validate_not_silent(where)

    def _validate_not_silent(self, where: str) -> None:
        """An all-zero session would train to loss 0 and score NaN."""
        if all(not np.asarray(t.spikes).any() for t in self.splits.values()):
            raise SpikemaskError(
                f"{where}: every spike count is 0; expected a recording with spikes (check the "
                "binning window and the units' spike times)"
            )

    def _validate_units(self, where: str) -> None:
        num_units = len(self.unit_ids)
        if num_units == 0:
            raise SpikemaskError(f"{where}: has no units; expected at least one")
        if len(set(self.unit_ids)) != num_units:
            dupes = [u for u, c in Counter(self.unit_ids).items() if c > 1][:3]
            raise SpikemaskError(f"{where}: duplicate unit ids {dupes}; expected unique ids")
        per_unit = {
            "region labels": self.unit_regions,
            "unit depths": self.unit_depths,
            **{f"values of unit attribute {k!r}": v for k, v in self.unit_attributes.items()},
        }
        for name, values in per_unit.items():
            if values is not None and len(values) != num_units:
                raise SpikemaskError(
                    f"{where}: {len(values)} {name} for {num_units} units; expected one per unit"
                )

    def _validate_split(
        self, split: str, trials: TrialSet, num_units: int, num_bins: int | None
    ) -> int:
        where = f"session {self.session_id!r}, split {split!r}"
        spikes = trials.spikes
        if spikes.ndim != 3:
            raise SpikemaskError(f"{where}: spikes have shape {spikes.shape}; expected (K, T, N)")
        if spikes.shape[2] != num_units:
            raise SpikemaskError(
                f"{where}: spikes have {spikes.shape[2]} units; the unit metadata has {num_units}"
            )
        if num_bins is not None and spikes.shape[1] != num_bins:
            raise SpikemaskError(
                f"{where}: {spikes.shape[1]} time bins; other splits have {num_bins}"
            )
        if not np.issubdtype(spikes.dtype, np.integer):
            raise SpikemaskError(f"{where}: spikes dtype {spikes.dtype}; expected integers")
        if spikes.size and np.issubdtype(spikes.dtype, np.signedinteger) and spikes.min() < 0:
            raise SpikemaskError(f"{where}: negative spike counts; expected counts >= 0")
        _validate_rows(where, trials, spikes.shape)
        return int(spikes.shape[1])

    # ------------------------------------------------------------------ properties
    @property
    def num_units(self) -> int:
        return len(self.unit_ids)

    @property
    def num_bins(self) -> int:
        return int(next(iter(self.splits.values())).spikes.shape[1])

    @property
    def duration_s(self) -> float:
        """Length of the trial window in seconds."""
        return self.num_bins * self.bin_size_s

    @property
    def region_names(self) -> tuple[str, ...]:
        """Sorted distinct region labels of this session (unlabelled ones included)."""
        return tuple(sorted(set(self.unit_regions)))

    @property
    def units_per_region(self) -> dict[str, int]:
        """Region label -> number of units, largest region first."""
        return dict(Counter(self.unit_regions).most_common())

    @property
    def labelled_units(self) -> np.ndarray:
        """(N,) bool: True where the unit carries a real region label."""
        return np.array([r.lower() not in UNLABELLED_REGIONS for r in self.unit_regions])

    @property
    def trial_behavior_names(self) -> tuple[str, ...]:
        return tuple(next(iter(self.splits.values())).trial_behavior)

    @property
    def bin_behavior_names(self) -> tuple[str, ...]:
        return tuple(next(iter(self.splits.values())).bin_behavior)

    def split(self, name: str) -> TrialSet:
        """The trials of split ``name``; a clear error when the session lacks it."""
        if name not in self.splits:
            raise SpikemaskError(
                f"session {self.session_id!r} has no {name!r} split; it has {sorted(self.splits)}"
            )
        return self.splits[name]

    def mean_rate_hz(self, split: str | None = None) -> float:
        """Mean firing rate over units, trials and bins (all splits when ``split`` is None)."""
        sets = [self.split(split)] if split else list(self.splits.values())
        spikes = sum(t.total_spikes for t in sets)
        trials = sum(t.num_trials for t in sets)
        if trials == 0:
            return 0.0
        return spikes / (trials * self.num_units * self.duration_s)

    def replace(self, **changes: Any) -> Session:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def with_region_map(self, mapping: Mapping[str, str]) -> Session:
        """A copy whose region labels are mapped through ``mapping`` (missing keys kept)."""
        regions = tuple(mapping.get(r, r) for r in self.unit_regions)
        return self.replace(unit_regions=regions)

    def select_units(self, units: np.ndarray) -> Session:
        """A copy holding only the given units (indices or a boolean selector)."""
        idx = np.arange(self.num_units)[units]
        splits = {
            name: dataclasses.replace(t, spikes=np.ascontiguousarray(t.spikes[:, :, idx]))
            for name, t in self.splits.items()
        }
        return self.replace(
            unit_ids=tuple(self.unit_ids[i] for i in idx),
            unit_regions=tuple(self.unit_regions[i] for i in idx),
            unit_depths=None if self.unit_depths is None else self.unit_depths[idx],
            unit_attributes={k: v[idx] for k, v in self.unit_attributes.items()},
            splits=splits,
        )

    def summary(self) -> dict[str, Any]:
        """The facts ``spikemask inspect`` reports, as plain JSON-ready values."""
        return {
            "session_id": self.session_id,
            "num_units": self.num_units,
            "num_bins": self.num_bins,
            "bin_size_s": self.bin_size_s,
            "window_start_s": self.window_start_s,
            "align_event": self.align_event,
            "num_trials": {s: t.num_trials for s, t in self.splits.items()},
            "total_spikes": {s: t.total_spikes for s, t in self.splits.items()},
            "regions": self.units_per_region,
            "trial_behavior": list(self.trial_behavior_names),
            "bin_behavior": list(self.bin_behavior_names),
            "mean_rate_hz": round(self.mean_rate_hz(), 4),
            "metadata": {k: v for k, v in self.metadata.items() if _is_json_scalar(v)},
        }


def _validate_rows(where: str, trials: TrialSet, shape: tuple[int, ...]) -> None:
    """Per-trial and per-bin fields must have one row per trial (and one value per bin)."""
    k = shape[0]
    if len(trials.trial_index) != k:
        raise SpikemaskError(f"{where}: trial_index has {len(trials.trial_index)} rows for {k}")
    expected = {
        **dict.fromkeys(trials.trial_behavior, (k,)),
        **dict.fromkeys(trials.bin_behavior, tuple(shape[:2])),
    }
    values = {**trials.trial_behavior, **trials.bin_behavior}
    for name, want in expected.items():
        if values[name].shape != want:
            raise SpikemaskError(
                f"{where}: behaviour {name!r} has shape {values[name].shape}; expected {want}"
            )


def _is_json_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)
