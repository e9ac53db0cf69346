"""Masking schemes: which entries of a (B, T, N) count tensor are hidden and which are scored.

Each scheme is a small pure function returning a :class:`MaskSpec`. Masks are drawn on the
CPU with the caller's CPU ``torch.Generator`` and only then moved to ``device``, so one seed
gives the same masks on every device. Every example (row of the batch) gets its own draw.
Counts are exact, not Bernoulli: a ratio ``r`` of ``L`` candidates hides ``round(r * L)``
of them, at least 1 and at most ``L - 1`` so that something of that kind stays visible.
Padding units (``unit_valid`` False) are never hidden nor scored.

Shape letters: B batch, T time bins, N units, R regions (labelled regions of the session).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from spikemask.errors import SpikemaskError

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

SCHEMES: tuple[str, ...] = (
    "temporal",
    "neuron",
    "causal",
    "inter-region",
    "intra-region",
    "random",
    "random-token",
)
PROMPT_INDEX: dict[str, int] = {name: index for index, name in enumerate(SCHEMES)}

Shape = tuple[int, int, int]
ShapeLike = tuple[int, ...] | torch.Size
Device = torch.device | str | None


@dataclass(frozen=True, eq=False)
class MaskSpec:
    """One batch's masking: what the model does not see and what the loss counts.

    Attributes:
        scheme: name of the scheme, one of :data:`SCHEMES`.
        hidden: (B, T, N) bool, True = withheld from the model's input (set to 0).
        scored: (B, T, N) bool, True = counted in the loss / metric.
        causal: whether attention must be causal (bin t sees only bins <= t).
    """

    scheme: str
    hidden: Tensor
    scored: Tensor
    causal: bool

    def __post_init__(self) -> None:
        if self.scheme not in PROMPT_INDEX:
            raise SpikemaskError(
                f"unknown masking scheme {self.scheme!r}; expected one of {SCHEMES}"
            )
        for name in ("hidden", "scored"):
            value = getattr(self, name)
            if value.dtype != torch.bool or value.dim() != 3:
                raise SpikemaskError(
                    f"MaskSpec.{name} must be a (B, T, N) bool tensor, "
                    f"got dtype {value.dtype} with shape {tuple(value.shape)}"
                )
        if self.hidden.shape != self.scored.shape:
            raise SpikemaskError(
                f"MaskSpec.hidden {tuple(self.hidden.shape)} and scored "
                f"{tuple(self.scored.shape)} must have the same (B, T, N) shape"
            )

    @property
    def prompt(self) -> int:
        """Index of the prompt token for this scheme (position in :data:`SCHEMES`)."""
        return PROMPT_INDEX[self.scheme]

    def to(self, device: torch.device | str | None) -> MaskSpec:
        """Return the same spec with its tensors on ``device``."""
        return MaskSpec(self.scheme, self.hidden.to(device), self.scored.to(device), self.causal)


def apply_mask(spikes: Tensor, spec: MaskSpec) -> Tensor:
    """Return a new tensor equal to ``spikes`` with the hidden entries set to 0.

    Args:
        spikes: (B, T, N) counts; left unchanged.
        spec: the mask; its ``hidden`` must have the shape of ``spikes``.

    Returns:
        (B, T, N) masked copy of ``spikes``.
    """
    if spikes.shape != spec.hidden.shape:
        raise SpikemaskError(
            f"spikes have shape {tuple(spikes.shape)} but the mask has shape "
            f"{tuple(spec.hidden.shape)}; expected the same (B, T, N)"
        )
    return spikes.masked_fill(spec.hidden.to(spikes.device), 0)


# ----------------------------------------------------------------------------- helpers


def _check_shape(shape: ShapeLike, *, min_bins: int = 1) -> Shape:
    if len(shape) != 3 or not all(isinstance(size, int) and size >= 1 for size in shape):
        raise SpikemaskError(f"mask shape must be (B, T, N) positive ints, got {tuple(shape)}")
    if shape[1] < min_bins:
        raise SpikemaskError(
            f"this masking scheme needs at least {min_bins} time bins, got T={shape[1]}"
        )
    return int(shape[0]), int(shape[1]), int(shape[2])


def _check_ratio(ratio: float, name: str = "ratio") -> float:
    if not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0:
        raise SpikemaskError(f"masking {name} must be a number in (0, 1), got {ratio!r}")
    return float(ratio)


def _check_generator(generator: torch.Generator) -> None:
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise SpikemaskError(
            "masks are drawn on the CPU: pass a CPU torch.Generator as `generator`, "
            f"got {generator!r}"
        )


def _valid_units(unit_valid: Tensor | None, shape: Shape) -> Tensor:
    """(N,) or (B, N) bool (or None) -> (B, N) bool on the CPU; every row needs a valid unit."""
    batch, _, num_units = shape
    if unit_valid is None:
        return torch.ones(batch, num_units, dtype=torch.bool)
    if unit_valid.dtype != torch.bool or unit_valid.shape not in {(num_units,), (batch, num_units)}:
        raise SpikemaskError(
            f"unit_valid must be a bool tensor of shape ({num_units},) or ({batch}, {num_units}), "
            f"got dtype {unit_valid.dtype} with shape {tuple(unit_valid.shape)}"
        )
    valid = unit_valid.cpu().expand(batch, num_units)
    if not valid.any(dim=1).all():
        raise SpikemaskError("unit_valid has a batch row with no valid unit; expected at least one")
    return valid


def _exact_counts(ratio: float, totals: Tensor) -> Tensor:
    """round(ratio * totals), clamped to [1, totals - 1] (totals >= 2)."""
    counts = torch.round(totals.double() * ratio).long()
    return torch.minimum(counts.clamp(min=1), totals - 1)


def _choose_per_row(eligible: Tensor, counts: Tensor, generator: torch.Generator) -> Tensor:
    """Pick exactly ``counts[b]`` random eligible positions in each row.

    Args:
        eligible: (B, L) bool, positions that may be picked.
        counts: (B,) long, how many to pick per row (<= eligible per row).
        generator: CPU generator.

    Returns:
        (B, L) bool, True at the picked positions.
    """
    scores = torch.rand(eligible.shape, generator=generator).masked_fill(~eligible, 2.0)
    max_count = int(counts.max())
    # (B, K) positions of the K lowest scores, lowest first; keep the first counts[b] of row b
    lowest = scores.topk(max_count, dim=1, largest=False, sorted=True).indices
    keep = torch.arange(max_count) < counts[:, None]  # (B, K)
    return torch.zeros_like(eligible).scatter_(1, lowest, keep)


def _need_candidates(totals: Tensor, what: str) -> None:
    if (totals < 2).any():
        raise SpikemaskError(
            f"this masking scheme needs at least 2 {what} per example to hide some and keep "
            f"some visible, got {int(totals.min())}"
        )


def _random_bins(shape: Shape, ratio: float, generator: torch.Generator) -> Tensor:
    """(B, T) bool with exactly round(ratio * T) (in [1, T - 1]) True per row."""
    batch, num_bins, _ = shape
    totals = torch.full((batch,), num_bins, dtype=torch.long)
    eligible = torch.ones(batch, num_bins, dtype=torch.bool)
    return _choose_per_row(eligible, _exact_counts(ratio, totals), generator)


def _outer(bins: Tensor, units: Tensor) -> Tensor:
    """(B, T) and (B, N) bool -> (B, T, N) bool, True where both are (a fast contiguous AND)."""
    shape = (bins.shape[0], bins.shape[1], units.shape[1])
    return bins[:, :, None].expand(shape).contiguous().logical_and_(units[:, None, :])


def _per_unit(units: Tensor, num_bins: int) -> Tensor:
    """(B, N) bool -> (B, T, N) bool, the same at every bin (contiguous copy)."""
    return units[:, None, :].expand(units.shape[0], num_bins, units.shape[1]).contiguous()


def _spec(scheme: str, hidden: Tensor, scored: Tensor, causal: bool, device: Device) -> MaskSpec:
    return MaskSpec(scheme, hidden.to(device), scored.to(device), causal)


# ----------------------------------------------------------------------------- schemes


def _bin_scheme(scheme: str, shape, ratio, generator, unit_valid, device, causal) -> MaskSpec:
    _check_generator(generator)
    ratio = _check_ratio(ratio)
    shape = _check_shape(shape, min_bins=2)
    valid = _valid_units(unit_valid, shape)
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
        generator: CPU ``torch.Generator``.
        unit_valid: optional (N,) or (B, N) bool, False = padding unit.
        device: where the returned masks live (default CPU).

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
        generator: CPU ``torch.Generator``.
        unit_valid: optional (N,) or (B, N) bool, False = padding unit.
        device: where the returned masks live (default CPU).

    Returns:
        MaskSpec with ``hidden == scored`` of shape (B, T, N), ``causal=False``.
    """
    _check_generator(generator)
    ratio = _check_ratio(ratio)
    shape = _check_shape(shape)
    valid = _valid_units(unit_valid, shape)
    totals = valid.sum(dim=1)
    _need_candidates(totals, "valid units")
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
    _check_generator(generator)
    ratio = _check_ratio(ratio)
    batch, num_bins, num_units = shape = _check_shape(shape)
    valid = _valid_units(unit_valid, shape)
    eligible = valid[:, None, :].expand(shape).reshape(batch, num_bins * num_units)
    totals = eligible.sum(dim=1)
    _need_candidates(totals, "valid (bin, unit) entries")
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
        generator: CPU ``torch.Generator``.
        unit_valid: optional (N,) or (B, N) bool, False = padding unit.
        device: where the returned masks live (default CPU).

    Returns:
        MaskSpec with ``hidden == scored`` of shape (B, T, N), ``causal=False``.
    """
    _check_generator(generator)
    ratio = _check_ratio(ratio)
    batch, num_bins, num_units = shape = _check_shape(shape)
    if not isinstance(patch_size, int) or patch_size < 1:
        raise SpikemaskError(f"patch_size must be a positive int, got {patch_size!r}")
    valid = _valid_units(unit_valid, shape)
    num_groups = math.ceil(num_units / patch_size)
    group_of_unit = torch.arange(num_units) // patch_size  # (N,)
    padded = torch.nn.functional.pad(valid, (0, num_groups * patch_size - num_units))
    group_valid = padded.reshape(batch, num_groups, patch_size).any(dim=2)  # (B, G)
    eligible = group_valid[:, None, :].expand(batch, num_bins, num_groups).reshape(batch, -1)
    totals = eligible.sum(dim=1)
    _need_candidates(totals, "patches")
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
        device: where the returned masks live (default CPU).

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


# ----------------------------------------------------------------------------- region schemes


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
