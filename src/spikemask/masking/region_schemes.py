"""Region masking schemes: hide one region (inter-region) or predict a region's units
from the rest of that region only (intra-region).

Shape letters: B batch, T time bins, N units, R labelled regions of the session.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spikemask.errors import SpikemaskError
from spikemask.masking._draw import (
    _check_generator,
    _check_ratio,
    _check_shape,
    _choose_per_row,
    _exact_counts,
    _per_unit,
    _spec,
    _valid_units,
)
from spikemask.masking.spec import Device, MaskSpec, Shape, ShapeLike

__all__ = ["inter_region_mask", "intra_region_mask"]


def _region_membership(region_ids: Tensor, shape: Shape, valid: Tensor, scheme: str) -> Tensor:
    """(B, R, N) bool: valid units of each labelled region present in ``region_ids``."""
    num_units = shape[2]
    if (
        not isinstance(region_ids, Tensor)
        or region_ids.dim() != 1
        or region_ids.dtype.is_floating_point
        or region_ids.dtype.is_complex
        or region_ids.dtype == torch.bool
    ):
        raise SpikemaskError(
            "region_ids must be a 1-D integer tensor (one region index per unit), got "
            f"{getattr(region_ids, 'dtype', type(region_ids).__name__)} "
            f"with shape {tuple(getattr(region_ids, 'shape', ()))}"
        )
    if region_ids.numel() != num_units:
        raise SpikemaskError(
            f"region_ids has length {region_ids.numel()} but the batch has N={num_units} units; "
            "expected one region index per unit"
        )
    region_ids = region_ids.cpu()
    labelled = region_ids >= 0
    if not (labelled[None, :] & valid).any(dim=1).all():
        raise SpikemaskError(
            f"{scheme} masking needs region labels, but some example has no valid unit with a "
            "region (region_ids are all negative = unlabelled)"
        )
    regions = torch.unique(region_ids[labelled])  # (R,)
    return (region_ids[None, None, :] == regions[None, :, None]) & valid[:, None, :]


def _choose_region(candidate: Tensor, generator: torch.Generator) -> Tensor:
    """(B, R) bool candidates (>= 1 per row) -> (B,) long index of one uniformly drawn region."""
    scores = torch.rand(candidate.shape, generator=generator).masked_fill(~candidate, -1.0)
    return scores.argmax(dim=1)


def inter_region_mask(
    shape: ShapeLike,
    region_ids: Tensor,
    *,
    generator: torch.Generator,
    unit_valid: Tensor | None = None,
    device: Device = None,
) -> MaskSpec:
    """Hide and score all units of one randomly chosen labelled region, at all bins.

    Per example, the region is drawn uniformly among the labelled regions that leave at
    least one valid unit (labelled or not) visible. Unlabelled units are never hidden.

    Args:
        shape: (B, T, N) of the counts.
        region_ids: (N,) long, region index per unit; negative = unlabelled.
        generator: CPU ``torch.Generator``.
        unit_valid: optional (N,) or (B, N) bool, False = padding unit.
        device: where the returned masks live (default CPU).

    Returns:
        MaskSpec with ``hidden == scored`` of shape (B, T, N), ``causal=False``.
    """
    _check_generator(generator)
    shape = _check_shape(shape)
    valid = _valid_units(unit_valid, shape)
    membership = _region_membership(region_ids, shape, valid, "inter-region")  # (B, R, N)
    counts = membership.sum(dim=2)  # (B, R)
    candidate = (counts >= 1) & (counts < valid.sum(dim=1, keepdim=True))
    if not candidate.any(dim=1).all():
        raise SpikemaskError(
            "inter-region masking needs at least 2 regions (or unlabelled units) so that units "
            "outside the hidden region stay visible; every valid unit is in a single region"
        )
    chosen = _choose_region(candidate, generator)
    hidden_units = membership[torch.arange(shape[0]), chosen]  # (B, N)
    hidden = _per_unit(hidden_units, shape[1])  # (B, T, N)
    return _spec("inter-region", hidden, hidden.clone(), False, device)


def intra_region_mask(
    shape: ShapeLike,
    region_ids: Tensor,
    *,
    ratio: float = 0.3,
    generator: torch.Generator,
    unit_valid: Tensor | None = None,
    device: Device = None,
) -> MaskSpec:
    """Hide everything outside one region plus a few of its units; score those few.

    Per example, the region is drawn uniformly among labelled regions with >= 2 valid
    units; round(ratio * n_region) of its units (in [1, n_region - 1]) are hidden and
    scored; every valid unit outside it (labelled or not) is hidden but not scored.

    Args:
        shape: (B, T, N) of the counts.
        region_ids: (N,) long, region index per unit; negative = unlabelled.
        ratio: fraction of the chosen region's units hidden, in (0, 1).
        generator: CPU ``torch.Generator``.
        unit_valid: optional (N,) or (B, N) bool, False = padding unit.
        device: where the returned masks live (default CPU).

    Returns:
        MaskSpec of shape (B, T, N) with ``scored`` inside ``hidden``, ``causal=False``.
    """
    _check_generator(generator)
    ratio = _check_ratio(ratio)
    shape = _check_shape(shape)
    valid = _valid_units(unit_valid, shape)
    membership = _region_membership(region_ids, shape, valid, "intra-region")  # (B, R, N)
    counts = membership.sum(dim=2)  # (B, R)
    candidate = counts >= 2
    if not candidate.any(dim=1).all():
        raise SpikemaskError(
            "intra-region masking needs a region with at least 2 valid units (one to predict, "
            "one to predict it from); every labelled region has fewer"
        )
    chosen = _choose_region(candidate, generator)
    rows = torch.arange(shape[0])
    in_region = membership[rows, chosen]  # (B, N)
    scored_units = _choose_per_row(in_region, _exact_counts(ratio, counts[rows, chosen]), generator)
    hidden_units = (valid & ~in_region) | scored_units
    hidden = _per_unit(hidden_units, shape[1])  # (B, T, N)
    scored = _per_unit(scored_units, shape[1])
    return _spec("intra-region", hidden, scored, False, device)
