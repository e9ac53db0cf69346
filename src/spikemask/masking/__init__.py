"""Masking schemes (which inputs are hidden, which outputs are scored) and the MtM mixture.

Shape letters: B batch, T time bins, N units. Every scheme returns a :class:`MaskSpec` with
(B, T, N) bool ``hidden`` (withheld from the input) and ``scored`` (counted in the loss).
"""

from __future__ import annotations

from spikemask.masking.mixture import MaskingConfig, MaskingMixture
from spikemask.masking.schemes import (
    PROMPT_INDEX,
    SCHEMES,
    MaskSpec,
    apply_mask,
    causal_mask,
    forward_prediction_mask,
    inter_region_mask,
    intra_region_mask,
    neuron_mask,
    random_mask,
    random_token_mask,
    temporal_mask,
)

__all__ = [
    "PROMPT_INDEX",
    "SCHEMES",
    "MaskSpec",
    "MaskingConfig",
    "MaskingMixture",
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
