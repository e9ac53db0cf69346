"""The mask of one batch (:class:`MaskSpec`), the scheme names and their prompt indices.

Shape letters: B batch, T time bins, N units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from spikemask.errors import SpikemaskError

__all__ = ["PROMPT_INDEX", "SCHEMES", "Device", "MaskSpec", "Shape", "ShapeLike", "apply_mask"]

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
