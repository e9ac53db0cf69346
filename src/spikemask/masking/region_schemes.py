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


_TABLE_CACHE: dict[tuple[str, bytes], Tensor] = {}
_TABLE_CACHE_SIZE = 4096


def _region_table(region_ids: Tensor, device: torch.device) -> Tensor:
    """(R, N) bool: which units belong to each labelled region, on ``device``.

    Off the CPU the table is cached per (device, region_ids), so a training step copies
    nothing from the host once a session has been seen.
    """
    if device.type == "cpu":
        labelled = region_ids >= 0
        regions = torch.unique(region_ids[labelled])  # (R,)
        return region_ids[None, :] == regions[:, None]
    key = (str(device), region_ids.numpy().tobytes())
    table = _TABLE_CACHE.get(key)
    if table is None:
        if len(_TABLE_CACHE) >= _TABLE_CACHE_SIZE:
            _TABLE_CACHE.clear()
        table = _region_table(region_ids, torch.device("cpu")).to(device)
        _TABLE_CACHE[key] = table
    return table


def _check_region_ids(region_ids: Tensor, num_units: int) -> Tensor:
    """``region_ids`` checked and on the CPU."""
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
    return region_ids.cpu()


def _region_membership(
    region_ids: Tensor, shape: Shape, valid: Tensor, scheme: str, *, all_valid: bool
) -> tuple[Tensor, Tensor]:
    """(B, R, N) bool on ``valid``'s device: valid units of each labelled region in
    ``region_ids``; and (R,) long on the CPU: units per region when every unit is valid.

    With ``all_valid`` (no padding) every check reads only host tensors."""
    region_ids = _check_region_ids(region_ids, shape[2])
    table = _region_table(region_ids, valid.device)  # (R, N)
    labelled = region_ids >= 0
    if all_valid:
        has_labelled = bool(labelled.any())
    else:
        has_labelled = bool((labelled.to(valid.device)[None, :] & valid).any(dim=1).all())
    if not has_labelled:
        raise SpikemaskError(
            f"{scheme} masking needs region labels, but some example has no valid unit with a "
            "region (region_ids are all negative = unlabelled)"
        )
    host_counts = _region_table(region_ids, torch.device("cpu")).sum(dim=1)  # (R,)
    return table[None, :, :] & valid[:, None, :], host_counts


def _choose_region(candidate: Tensor, generator: torch.Generator) -> Tensor:
    """(B, R) bool candidates (>= 1 per row) -> (B,) long index of one uniformly drawn region."""
    scores = torch.rand(candidate.shape, generator=generator, device=generator.device)
    scores = scores.masked_fill(~candidate, -1.0)
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
        generator: ``torch.Generator``; masks are drawn on its device.
        unit_valid: optional (N,) or (B, N) bool, False = padding unit.
        device: where the returned masks live (default: where they were drawn).

    Returns:
        MaskSpec with ``hidden == scored`` of shape (B, T, N), ``causal=False``.
    """
    where = _check_generator(generator)
    shape = _check_shape(shape)
    valid = _valid_units(unit_valid, shape, where)
    all_valid = unit_valid is None
    membership, host_counts = _region_membership(
        region_ids, shape, valid, "inter-region", all_valid=all_valid
    )  # (B, R, N)
    counts = membership.sum(dim=2)  # (B, R)
    candidate = (counts >= 1) & (counts < valid.sum(dim=1, keepdim=True))
    if all_valid:
        possible = bool(((host_counts >= 1) & (host_counts < shape[2])).any())
    else:
        possible = bool(candidate.any(dim=1).all())
    if not possible:
        raise SpikemaskError(
            "inter-region masking needs at least 2 regions (or unlabelled units) so that units "
            "outside the hidden region stay visible; every valid unit is in a single region"
        )
    chosen = _choose_region(candidate, generator)
    hidden_units = membership[torch.arange(shape[0], device=where), chosen]  # (B, N)
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
        generator: ``torch.Generator``; masks are drawn on its device.
        unit_valid: optional (N,) or (B, N) bool, False = padding unit.
        device: where the returned masks live (default: where they were drawn).

    Returns:
        MaskSpec of shape (B, T, N) with ``scored`` inside ``hidden``, ``causal=False``.
    """
    where = _check_generator(generator)
    ratio = _check_ratio(ratio)
    shape = _check_shape(shape)
    valid = _valid_units(unit_valid, shape, where)
    all_valid = unit_valid is None
    membership, host_counts = _region_membership(
        region_ids, shape, valid, "intra-region", all_valid=all_valid
    )  # (B, R, N)
    counts = membership.sum(dim=2)  # (B, R)
    candidate = counts >= 2
    possible = bool((host_counts >= 2).any()) if all_valid else bool(candidate.any(1).all())
    if not possible:
        raise SpikemaskError(
            "intra-region masking needs a region with at least 2 valid units (one to predict, "
            "one to predict it from); every labelled region has fewer"
        )
    chosen = _choose_region(candidate, generator)
    rows = torch.arange(shape[0], device=where)
    in_region = membership[rows, chosen]  # (B, N)
    scored_units = _choose_per_row(in_region, _exact_counts(ratio, counts[rows, chosen]), generator)
    hidden_units = (valid & ~in_region) | scored_units
    hidden = _per_unit(hidden_units, shape[1])  # (B, T, N)
    scored = _per_unit(scored_units, shape[1])
    return _spec("intra-region", hidden, scored, False, device)
