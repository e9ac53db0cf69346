"""The usual IBL unit filters, shared by ``prepare ibl`` and ``prepare brainsets``.

Two filters, applied after binning so that every source uses the same definitions:

- **QC label** (``good_only``): keep the units whose IBL quality label is 1 ("good"
  clusters: ``clusters.metrics.label == 1`` in IBL's ALF files, ``units.label`` in the IBL
  brainsets). A source without a label cannot be filtered this way; that is an error, not a
  silent pass.
- **Minimum firing rate** (``min_rate_hz``): keep the units whose mean rate inside the kept
  trial windows is at least this many spikes per second (the rate brainsets stores as
  ``units.trial_aligned_firing_rate``).

Shape letters: K trials, T time bins, N units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spikemask.errors import SpikemaskError

__all__ = ["GOOD_LABEL", "UnitFilter", "apply_unit_filter"]

GOOD_LABEL = 1.0
"""IBL's QC label of a "good" cluster (labels are 0, 1/3, 2/3 or 1)."""


@dataclass(frozen=True)
class UnitFilter:
    """Which units a prepared session keeps.

    Attributes:
        good_only: Keep only units with IBL QC label 1 ("good").
        min_rate_hz: Keep only units firing at least this rate (spikes / s) inside the kept
            trial windows; None keeps every rate.
    """

    good_only: bool = False
    min_rate_hz: float | None = None

    def __post_init__(self) -> None:
        rate = self.min_rate_hz
        if rate is not None and not (isinstance(rate, int | float) and math.isfinite(rate)):
            raise SpikemaskError(f"min_rate_hz={rate!r}; expected a firing rate in Hz >= 0")
        if rate is not None and rate < 0:
            raise SpikemaskError(f"min_rate_hz={rate}; expected a firing rate in Hz >= 0")

    @property
    def active(self) -> bool:
        """True when the filter can drop a unit."""
        return self.good_only or bool(self.min_rate_hz)


def apply_unit_filter(
    unit_filter: UnitFilter,
    counts: np.ndarray,
    bin_size_s: float,
    *,
    labels: np.ndarray | None,
    where: str,
) -> tuple[np.ndarray, dict[str, int]]:
    """The units ``unit_filter`` keeps, and how many each filter dropped.

    Args:
        unit_filter: The filter.
        counts: (K, T, N) spike counts of the kept trial windows.
        bin_size_s: Bin width in seconds.
        labels: (N,) IBL QC label of every unit, or None when the source has none.
        where: The session / file, for error messages.

    Returns:
        (N,) bool, True for the units kept; reason (``qc_label``, ``min_rate``) -> number of
        units dropped for it (a unit failing both counts under ``qc_label``).

    Raises:
        SpikemaskError: ``good_only`` without labels, or no unit left.
    """
    num_units = counts.shape[2]
    keep = np.ones(num_units, dtype=bool)
    dropped: dict[str, int] = {}
    if unit_filter.good_only:
        if labels is None:
            raise SpikemaskError(
                f"{where}: the units carry no IBL QC label (clusters.metrics 'label' / "
                "units.label); expected labels to keep only good units, or drop the good-only "
                "filter"
            )
        good = np.isclose(np.asarray(labels, dtype=np.float64), GOOD_LABEL)
        dropped["qc_label"] = int((~good).sum())
        keep &= good
    if unit_filter.min_rate_hz:
        duration_s = counts.shape[0] * counts.shape[1] * bin_size_s
        rate_hz = counts.sum(axis=(0, 1), dtype=np.int64) / max(duration_s, 1e-12)  # (N,)
        fast = rate_hz >= unit_filter.min_rate_hz
        dropped["min_rate"] = int((keep & ~fast).sum())
        keep &= fast
    if not keep.any():
        raise SpikemaskError(
            f"{where}: no unit passes the unit filters (dropped: {dropped} of {num_units}); "
            "expected at least one unit: lower the minimum firing rate or keep all QC labels"
        )
    return keep, dropped
