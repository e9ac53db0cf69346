"""Shared helpers of the masking schemes: argument checks and exact-count random draws.

Every draw uses the caller's ``torch.Generator`` and happens on its device. A CPU generator
gives the reference draws (the same masks on every device); a generator on an accelerator
draws there, without copying masks from the host or waiting for the device (no host
synchronisation), so it gives different masks from a CPU generator with the same seed.
Shape letters: B batch, T time bins, N units, L candidates per row.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spikemask.errors import SpikemaskError
from spikemask.masking.spec import Device, MaskSpec, Shape, ShapeLike


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


def _check_generator(generator: torch.Generator) -> torch.device:
    """The device the masks are drawn on: the generator's."""
    if not isinstance(generator, torch.Generator):
        raise SpikemaskError(
            "masks are drawn with the caller's generator: pass a torch.Generator (a CPU "
            f"torch.Generator, or one on the device to draw there), got {generator!r}"
        )
    return generator.device


def _on_host(generator: torch.Generator) -> bool:
    return generator.device.type == "cpu"


def _valid_units(
    unit_valid: Tensor | None, shape: Shape, device: torch.device | None = None
) -> Tensor:
    """(N,) or (B, N) bool (or None) -> (B, N) bool on ``device`` (default CPU); every row
    needs a valid unit (checked on the host)."""
    batch, _, num_units = shape
    if unit_valid is None:
        return torch.ones(batch, num_units, dtype=torch.bool, device=device)
    if unit_valid.dtype != torch.bool or unit_valid.shape not in {(num_units,), (batch, num_units)}:
        raise SpikemaskError(
            f"unit_valid must be a bool tensor of shape ({num_units},) or ({batch}, {num_units}), "
            f"got dtype {unit_valid.dtype} with shape {tuple(unit_valid.shape)}"
        )
    valid = unit_valid.cpu().expand(batch, num_units)
    if not valid.any(dim=1).all():
        raise SpikemaskError("unit_valid has a batch row with no valid unit; expected at least one")
    return valid if device is None else valid.to(device)


def _exact_counts(ratio: float, totals: Tensor) -> Tensor:
    """round(ratio * totals), clamped to [1, totals - 1] (totals >= 2)."""
    counts = torch.round(totals.double() * ratio).long()
    return torch.minimum(counts.clamp(min=1), totals - 1)


def _choose_per_row(eligible: Tensor, counts: Tensor, generator: torch.Generator) -> Tensor:
    """Pick exactly ``counts[b]`` random eligible positions in each row.

    Args:
        eligible: (B, L) bool, positions that may be picked.
        counts: (B,) long, how many to pick per row (<= eligible per row).
        generator: random source; the draw happens on its device.

    Returns:
        (B, L) bool, True at the picked positions.
    """
    if not _on_host(generator):
        return _choose_per_row_on_device(eligible, counts, generator)
    scores = torch.rand(eligible.shape, generator=generator).masked_fill(~eligible, 2.0)
    max_count = int(counts.max())
    # (B, K) positions of the K lowest scores, lowest first; keep the first counts[b] of row b
    lowest = scores.topk(max_count, dim=1, largest=False, sorted=True).indices
    keep = torch.arange(max_count) < counts[:, None]  # (B, K)
    return torch.zeros_like(eligible).scatter_(1, lowest, keep)


def _choose_per_row_on_device(
    eligible: Tensor, counts: Tensor, generator: torch.Generator
) -> Tensor:
    """:func:`_choose_per_row` without reading anything back to the host: the positions
    whose score ranks below ``counts[b]`` in row b (``topk`` would need ``max(counts)``)."""
    device = generator.device
    scores = torch.rand(eligible.shape, generator=generator, device=device)
    scores = scores.masked_fill(~eligible.to(device), 2.0)  # ineligible rank last
    order = scores.argsort(dim=1)  # (B, L)
    positions = torch.arange(eligible.shape[1], device=device).expand_as(order)
    ranks = torch.empty_like(order).scatter_(1, order, positions)  # (B, L) rank of each
    return ranks < counts.to(device)[:, None]


def _need_candidates(totals: Tensor | int, what: str) -> None:
    """Every row needs 2 candidates; ``totals`` is (B,) long, or an int shared by all rows
    (checked without reading a device tensor)."""
    if isinstance(totals, int):
        if totals < 2:
            raise SpikemaskError(
                f"this masking scheme needs at least 2 {what} per example to hide some and "
                f"keep some visible, got {totals}"
            )
        return
    if (totals < 2).any():
        raise SpikemaskError(
            f"this masking scheme needs at least 2 {what} per example to hide some and keep "
            f"some visible, got {int(totals.min())}"
        )


def _random_bins(shape: Shape, ratio: float, generator: torch.Generator) -> Tensor:
    """(B, T) bool with exactly round(ratio * T) (in [1, T - 1]) True per row."""
    batch, num_bins, _ = shape
    device = None if _on_host(generator) else generator.device
    totals = torch.full((batch,), num_bins, dtype=torch.long, device=device)
    eligible = torch.ones(batch, num_bins, dtype=torch.bool, device=device)
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
