"""Brain-region vocabularies and coarse region groupings.

:class:`RegionVocabulary` gives every labelled region of many sessions one integer index
(``-1`` for unlabelled units) that stays fixed for the life of a model and travels in its
checkpoint; it is built from *all* training sessions, never from the first batch seen, and
can be extended with the new regions of a fine-tuning session without moving old indices.

:func:`region_mapping`, :func:`map_regions` and :func:`group_session` map fine Allen CCF
acronyms (``VISp2/3``, ``CA1``, ``LGd``) to the International Brain Laboratory's coarser
groupings: ``beryl`` (~300 regions, e.g. ``VISp2/3 -> VISp``) and ``cosmos`` (10 major
divisions, e.g. ``VISp -> Isocortex``, ``LGd -> TH``). The mapping comes from the packaged
table ``tables/allen_groupings.csv``, generated from the ``iblatlas`` package by
``scripts/make_region_table.py`` and read lazily on first use.

One rule differs from ``iblatlas``: IBL maps a structure that is *coarser* than every
region of a grouping (``TH``, ``ACA``, ``MB`` at the Beryl level; ``CTX`` at the Cosmos
level) to ``root``, which would make its units unlabelled. Here such a structure keeps its
own acronym, so coarse histology labels stay usable for region masking. Fibre tracts and
ventricles (not coarser than any grouping region) still map to ``root``. Pass
``keep_coarser=False`` for IBL's exact behaviour.
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources

import numpy as np

from spikemask.data.session import UNLABELLED_REGIONS, Session
from spikemask.errors import SpikemaskError

__all__ = [
    "REGION_LEVELS",
    "RegionVocabulary",
    "group_session",
    "is_labelled",
    "map_regions",
    "region_mapping",
    "unknown_acronyms",
]

#: Region granularities: Allen acronyms as recorded, IBL Beryl, IBL Cosmos.
REGION_LEVELS: tuple[str, ...] = ("allen", "beryl", "cosmos")

_TABLE = "allen_groupings.csv"
_NUM_SHOWN = 5


def is_labelled(region: str) -> bool:
    """True unless ``region`` names no brain region (``root``, ``void``, empty, ...)."""
    return region.lower() not in UNLABELLED_REGIONS


def _preview(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_NUM_SHOWN])
    more = len(names) - _NUM_SHOWN
    return f"{shown}, ... ({more} more)" if more > 0 else shown


class RegionVocabulary:
    """Ordered region names shared by many sessions; index -1 = unlabelled.

    Args:
        names: Region names in index order. Duplicates keep their first position;
            unlabelled names (``root``, ``void``, ``""``, ... case-insensitive) never get
            an index.

    Attributes:
        names: (R,) the labelled region names; ``names[i]`` has index ``i``.
    """

    def __init__(self, names: Iterable[str]) -> None:
        if isinstance(names, str):
            raise SpikemaskError(
                f"region names must be a sequence of strings; got the single string {names!r}"
            )
        kept: dict[str, int] = {}
        for name in names:
            if not isinstance(name, str):
                raise SpikemaskError(
                    f"region name {name!r} is a {type(name).__name__}; expected a string"
                )
            if is_labelled(name) and name not in kept:
                kept[name] = len(kept)
        self._index = kept
        self.names: tuple[str, ...] = tuple(kept)

    @classmethod
    def from_sessions(cls, sessions: Iterable[Session]) -> RegionVocabulary:
        """The sorted union of the labelled regions of every session in ``sessions``."""
        union: set[str] = set()
        for session in sessions:
            union.update(session.unit_regions)
        return cls(sorted(union))

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __iter__(self):
        return iter(self.names)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RegionVocabulary):
            return NotImplemented
        return self.names == other.names

    def __hash__(self) -> int:
        return hash(self.names)

    def __repr__(self) -> str:
        return f"RegionVocabulary({list(self.names)!r})"

    def index(self, name: str) -> int:
        """The index of region ``name``; -1 when ``name`` is unlabelled.

        Raises:
            SpikemaskError: ``name`` is a labelled region this vocabulary does not hold.
        """
        found = self._index.get(name)
        if found is not None:
            return found
        if not is_labelled(name):
            return -1
        raise SpikemaskError(self._unknown_message([name]))

    def encode(self, regions: Sequence[str]) -> np.ndarray:
        """Indices of the regions of N units.

        Args:
            regions: (N,) region label of every unit.

        Returns:
            (N,) int64 index of each unit's region, -1 for unlabelled units.

        Raises:
            SpikemaskError: Some labelled regions are not in the vocabulary (the first few named).
        """
        indices = np.fromiter(
            (self._index.get(r, -1) for r in regions), dtype=np.int64, count=len(regions)
        )
        unknown = sorted(
            {r for r, i in zip(regions, indices, strict=True) if i < 0 and is_labelled(r)}
        )
        if unknown:
            raise SpikemaskError(self._unknown_message(unknown))
        return indices

    def extend(self, names: Iterable[str]) -> RegionVocabulary:
        """A new vocabulary with the names not yet held appended; old indices are unchanged."""
        if isinstance(names, str):
            names = [names]
        return RegionVocabulary([*self.names, *names])

    def to_list(self) -> list[str]:
        """The names in index order, as a JSON-ready list."""
        return list(self.names)

    @classmethod
    def from_list(cls, names: Sequence[str]) -> RegionVocabulary:
        """Rebuild a vocabulary saved with :meth:`to_list` (e.g. from a checkpoint)."""
        if not isinstance(names, list | tuple):
            raise SpikemaskError(
                f"saved region vocabulary is a {type(names).__name__}; expected a list of names"
            )
        vocabulary = cls(names)
        if len(vocabulary) != len(names):
            raise SpikemaskError(
                "saved region vocabulary holds duplicate or unlabelled names; expected the "
                "unique labelled names written by RegionVocabulary.to_list"
            )
        return vocabulary

    def _unknown_message(self, unknown: Sequence[str]) -> str:
        known = _preview(self.names) if self.names else "none"
        return (
            f"region(s) {_preview(list(unknown))} not in the region vocabulary of "
            f"{len(self)} regions (known: {known}); build the vocabulary from all sessions "
            "or extend it with RegionVocabulary.extend"
        )


# ---------------------------------------------------------------------------- groupings
@functools.cache
def _read_table() -> tuple[tuple[str, str, str, str], ...]:
    """Rows (acronym, parent, beryl, cosmos) of the packaged Allen groupings table."""
    text = resources.files("spikemask.data").joinpath("tables", _TABLE).read_text("utf-8")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    return tuple((r["acronym"], r["parent"], r["beryl"], r["cosmos"]) for r in reader)


@functools.cache
def _grouping(level: str, keep_coarser: bool) -> Mapping[str, str]:
    rows = _read_table()
    column = 2 if level == "beryl" else 3
    mapping = {row[0]: row[column] for row in rows}
    if not keep_coarser:
        return mapping
    parents = {row[0]: row[1] for row in rows}
    coarser: set[str] = set()  # proper ancestors of some region of this grouping
    for group in {g for g in mapping.values() if is_labelled(g)}:
        parent = parents.get(group, "")
        while parent and parent not in coarser:
            coarser.add(parent)
            parent = parents.get(parent, "")
    for acronym in coarser:
        if is_labelled(acronym) and not is_labelled(mapping[acronym]):
            mapping[acronym] = acronym
    return mapping


def _check_level(level: str) -> str:
    key = level.lower() if isinstance(level, str) else level
    if key not in REGION_LEVELS:
        raise SpikemaskError(f"unknown region level {level!r}; expected one of {REGION_LEVELS}")
    return key


def region_mapping(level: str, *, keep_coarser: bool = True) -> dict[str, str]:
    """Allen acronym -> acronym of its group at ``level``.

    Args:
        level: ``"allen"`` (no grouping: an empty mapping), ``"beryl"`` or ``"cosmos"``.
        keep_coarser: Let structures coarser than every group of ``level`` keep their own
            acronym instead of mapping to ``root`` (see the module docstring).

    Returns:
        A new dict over all 1,328 Allen structures (empty for ``"allen"``).

    Raises:
        SpikemaskError: ``level`` is not one of :data:`REGION_LEVELS`.
    """
    key = _check_level(level)
    if key == "allen":
        return {}
    return dict(_grouping(key, keep_coarser))


def map_regions(
    regions: Sequence[str], level: str, *, keep_coarser: bool = True
) -> tuple[str, ...]:
    """The group at ``level`` of each of N region labels.

    Labels that are not Allen acronyms (lookup is case-sensitive: ``CM`` and ``cm`` are
    different structures) are returned unchanged; use :func:`unknown_acronyms` to report
    them. ``root`` and ``void`` stay unlabelled.

    Args:
        regions: (N,) Allen acronyms.
        level: ``"allen"``, ``"beryl"`` or ``"cosmos"``.
        keep_coarser: See :func:`region_mapping`.

    Returns:
        (N,) the mapped labels.
    """
    key = _check_level(level)
    if key == "allen":
        return tuple(regions)
    mapping = _grouping(key, keep_coarser)
    return tuple(mapping.get(r, r) for r in regions)


def unknown_acronyms(regions: Iterable[str]) -> tuple[str, ...]:
    """The sorted distinct labelled entries of ``regions`` that are not Allen acronyms."""
    known = _grouping("beryl", False)
    return tuple(sorted({r for r in regions if is_labelled(r) and r not in known}))


def group_session(session: Session, level: str, *, keep_coarser: bool = True) -> Session:
    """A copy of ``session`` with its unit regions grouped at ``level``.

    Args:
        session: The session; left unchanged.
        level: ``"allen"`` (returns ``session`` itself), ``"beryl"`` or ``"cosmos"``.
        keep_coarser: See :func:`region_mapping`.

    Returns:
        The session with ``unit_regions`` mapped as by :func:`map_regions`.
    """
    key = _check_level(level)
    if key == "allen":
        return session
    return session.with_region_map(_grouping(key, keep_coarser))
