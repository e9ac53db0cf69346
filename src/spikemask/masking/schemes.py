"""Masking schemes: which entries of a (B, T, N) count tensor are hidden and which are scored.

Each scheme is a small pure function returning a :class:`MaskSpec`. Masks are drawn on the
device of the caller's ``torch.Generator`` and then moved to ``device``: with a CPU
generator one seed gives the same masks on every device; a generator on an accelerator
draws there (fast, no host synchronisation; the same seed gives the same masks on the same
kind of device). Every example (row of the batch) gets its own draw.
Counts are exact, not Bernoulli: a ratio ``r`` of ``L`` candidates hides ``round(r * L)``
of them, at least 1 and at most ``L - 1`` so that something of that kind stays visible.
Padding units (``unit_valid`` False) are never hidden nor scored.

Shape letters: B batch, T time bins, N units, R regions (labelled regions of the session).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from spikemask.errors import SpikemaskError
from spikemask.masking._draw import (
    _check_generator,
    _check_ratio,
    _check_shape,
    _choose_per_row,
    _exact_counts,
    _need_candidates,
    _outer,
    _per_unit,
    _random_bins,
    _spec,
    _valid_units,
)
from spikemask.masking.region_schemes import inter_region_mask, intra_region_mask
from spikemask.masking.spec import (
    PROMPT_INDEX,
    SCHEMES,
    Device,
    MaskSpec,
    ShapeLike,
    apply_mask,
)

__all__ = [
    "PROMPT_INDEX",
    "SCHEMES",
    "MaskSpec",
    "apply_mask",
    "causal_mask",
    "forward_prediction_mask",
    "inter_region_mask",
    "intra_region_mask",
    "neuron_mask",
    "random_mask",
    "random_token_mask",
    "temporal_mask",
]


def _bin_scheme(scheme: str, shape, ratio, generator, unit_valid, device, causal) -> MaskSpec:
    where = _check_generator(generator)
    ratio = _check_ratio(ratio)
    shape = _check_shape(shape, min_bins=2)
    valid = _valid_units(unit_valid, shape, where)
    hidden_bins = _random_bins(shape, ratio, generator)
    hidden = _outer(hidden_bins, valid)  # (B, T, N)
    return _spec(scheme, hidden, hidden.clone(), causal, device)


def temporal_mask(
    shape: ShapeLike,
    *,
    ratio: float = 0.3,
    generator: torch.Generator,
    unit_valid: Tensor | None = None,
    device: Device = None,
) -> MaskSpec:
    """Hide random whole time bins (all units); score them. Bidirectional attention.

    Args:
        shape: (B, T, N) of the counts.
        ratio: fraction of the T bins hidden, in (0, 1).
        generator: ``torch.Generator``; masks are drawn on its device.
        unit_valid: optional (N,) or (B, N) bool, False = padding unit.
        device: where the returned masks live (default: where they were drawn).

    Returns:
        MaskSpec with ``hidden == scored`` of shape (B, T, N), ``causal=False``.
    """
    return _bin_scheme("temporal", shape, ratio, generator, unit_valid, device, causal=False)


def causal_mask(
    shape: ShapeLike,
    *,
    ratio: float = 0.6,
    generator: torch.Generator,
    unit_valid: Tensor | None = None,
    device: Device = None,
) -> MaskSpec:
    """Hide random whole time bins (all units); score them. Causal attention.

    Arguments as in :func:`temporal_mask`; the spec has ``causal=True``.
    """
    return _bin_scheme("causal", shape, ratio, generator, unit_valid, device, causal=True)


def neuron_mask(
    shape: ShapeLike,
    *,
    ratio: float = 0.3,
    generator: torch.Generator,
    unit_valid: Tensor | None = None,
    device: Device = None,
) -> MaskSpec:
    """Hide random whole units (all bins) among the valid ones; score them.

    Args:
        shape: (B, T, N) of the counts.
        ratio: fraction of the valid units hidden, in (0, 1).
        generator: ``torch.Generator``; masks are drawn on its device.
        unit_valid: optional (N,) or (B, N) bool, False = padding unit.
        device: where the returned masks live (default: where they were drawn).

    Returns:
        MaskSpec with ``hidden == scored`` of shape (B, T, N), ``causal=False``.
    """
    where = _check_generator(generator)
    ratio = _check_ratio(ratio)
    shape = _check_shape(shape)
    valid = _valid_units(unit_valid, shape, where)
    totals = valid.sum(dim=1)
    _need_candidates(totals if unit_valid is not None else shape[2], "valid units")
    hidden_units = _choose_per_row(valid, _exact_counts(ratio, totals), generator)  # (B, N)
    hidden = _per_unit(hidden_units, shape[1])  # (B, T, N)
    return _spec("neuron", hidden, hidden.clone(), False, device)


def random_mask(
    shape: ShapeLike,
    *,
    ratio: float = 0.3,
    generator: torch.Generator,
    unit_valid: Tensor | None = None,
    device: Device = None,
) -> MaskSpec:
    """Hide random individual (bin, unit) entries among the valid ones; score them.

    Arguments as in :func:`neuron_mask`; ``ratio`` is the fraction of the T x N_valid
    entries of each example that is hidden.
    """
    where = _check_generator(generator)
    ratio = _check_ratio(ratio)
    batch, num_bins, num_units = shape = _check_shape(shape)
    valid = _valid_units(unit_valid, shape, where)
    eligible = valid[:, None, :].expand(shape).reshape(batch, num_bins * num_units)
    totals = eligible.sum(dim=1)
    _need_candidates(
        totals if unit_valid is not None else num_bins * num_units, "valid (bin, unit) entries"
    )
    hidden = _choose_per_row(eligible, _exact_counts(ratio, totals), generator)
    hidden = hidden.reshape(shape)  # (B, T, N)
    return _spec("random", hidden, hidden.clone(), False, device)


def random_token_mask(
    shape: ShapeLike,
    *,
    patch_size: int,
    ratio: float = 0.3,
    generator: torch.Generator,
    unit_valid: Tensor | None = None,
    device: Device = None,
) -> MaskSpec:
    """Hide random NDT2 patches: 1 time bin x a group of ``patch_size`` consecutive units.

    Units are grouped as ``unit // patch_size`` (the last group may be partial). A patch is
    a candidate when it holds at least one valid unit; hidden patches are scored.

    Args:
        shape: (B, T, N) of the counts.
        patch_size: units per patch, >= 1.
        ratio: fraction of the candidate patches hidden, in (0, 1).
        generator: ``torch.Generator``; masks are drawn on its device.
        unit_valid: optional (N,) or (B, N) bool, False = padding unit.
        device: where the returned masks live (default: where they were drawn).

    Returns:
        MaskSpec with ``hidden == scored`` of shape (B, T, N), ``causal=False``.
    """
    where = _check_generator(generator)
    ratio = _check_ratio(ratio)
    batch, num_bins, num_units = shape = _check_shape(shape)
    if not isinstance(patch_size, int) or patch_size < 1:
        raise SpikemaskError(f"patch_size must be a positive int, got {patch_size!r}")
    valid = _valid_units(unit_valid, shape, where)
    num_groups = math.ceil(num_units / patch_size)
    group_of_unit = torch.arange(num_units, device=where) // patch_size  # (N,)
    padded = torch.nn.functional.pad(valid, (0, num_groups * patch_size - num_units))
    group_valid = padded.reshape(batch, num_groups, patch_size).any(dim=2)  # (B, G)
    eligible = group_valid[:, None, :].expand(batch, num_bins, num_groups).reshape(batch, -1)
    totals = eligible.sum(dim=1)
    _need_candidates(totals if unit_valid is not None else num_bins * num_groups, "patches")
    hidden_patches = _choose_per_row(eligible, _exact_counts(ratio, totals), generator)
    hidden_patches = hidden_patches.reshape(batch, num_bins, num_groups)
    hidden = hidden_patches[:, :, group_of_unit].logical_and_(valid[:, None, :])  # (B, T, N)
    return _spec("random-token", hidden, hidden.clone(), False, device)


def forward_prediction_mask(
    shape: ShapeLike,
    *,
    fraction: float = 0.1,
    unit_valid: Tensor | None = None,
    device: Device = None,
) -> MaskSpec:
    """Deterministic forward-prediction mask: hide and score the last bins of every unit.

    Args:
        shape: (B, T, N) of the counts.
        fraction: fraction of the T bins at the end that are hidden, round(fraction * T)
            clamped to [1, T - 1].
        unit_valid: optional (N,) or (B, N) bool, False = padding unit.
        device: where the returned masks live (default: where they were drawn).

    Returns:
        MaskSpec of scheme ``"causal"`` with ``hidden == scored``, ``causal=True``.
    """
    fraction = _check_ratio(fraction, "fraction")
    shape = _check_shape(shape, min_bins=2)
    valid = _valid_units(unit_valid, shape)
    num_bins = shape[1]
    num_hidden = int(_exact_counts(fraction, torch.tensor([num_bins]))[0])
    hidden_bins = torch.arange(num_bins) >= num_bins - num_hidden  # (T,)
    hidden = _outer(hidden_bins.expand(shape[0], num_bins), valid)  # (B, T, N)
    return _spec("causal", hidden, hidden.clone(), True, device)
