"""Multi-task masking: draw one scheme per batch by weight and build its mask.

Shape letters: B batch, T time bins, N units.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from spikemask.errors import SpikemaskError
from spikemask.masking.schemes import (
    SCHEMES,
    Device,
    MaskSpec,
    ShapeLike,
    causal_mask,
    inter_region_mask,
    intra_region_mask,
    neuron_mask,
    random_mask,
    random_token_mask,
    temporal_mask,
)

__all__ = [
    "DEFAULT_RATIOS",
    "DEFAULT_SCHEMES",
    "DEFAULT_WEIGHTS",
    "MTM_SCHEMES",
    "MaskingConfig",
    "MaskingMixture",
]

#: The paper's MtM set (the ``mtm`` preset).
MTM_SCHEMES: tuple[str, ...] = ("neuron", "causal", "inter-region", "intra-region")
#: The default training mixture (the ``mtm-temporal`` preset, the paper's variant with temporal
#: masking added): ahead of ``mtm`` on all four activity tasks on average on validation
#: splits (BENCHMARKS.md section 6).
DEFAULT_SCHEMES: tuple[str, ...] = (*MTM_SCHEMES, "temporal")
DEFAULT_RATIOS: dict[str, float] = {
    "temporal": 0.3,
    "neuron": 0.3,
    "causal": 0.6,
    "intra-region": 0.3,
    "random": 0.3,
    "random-token": 0.3,
}
#: A scheme's sampling weight when ``masking.weights`` is not given (every other scheme: 1).
#: Neuron masking drawn twice as often as each other scheme of the default mixture was ahead
#: of the equal draw on all four activity tasks over the validation splits of the 11 shared
#: sessions (BENCHMARKS.md section 7). The ``mtm`` preset keeps the paper's equal draw.
DEFAULT_WEIGHTS: dict[str, float] = {"neuron": 2.0}
REGION_SCHEMES: frozenset[str] = frozenset({"inter-region", "intra-region"})
PRESETS: dict[str, tuple[str, ...]] = {
    "mtm": MTM_SCHEMES,
    "mtm-temporal": DEFAULT_SCHEMES,
    **{name: (name,) for name in SCHEMES},
}


def _check_known(names: tuple[str, ...], what: str) -> None:
    unknown = [name for name in names if name not in SCHEMES]
    if unknown:
        raise SpikemaskError(f"unknown masking scheme(s) {unknown} in {what}; expected {SCHEMES}")


@dataclass
class MaskingConfig:
    """Which masking schemes to train with, how often, and with which ratios.

    Attributes:
        schemes: scheme names (from :data:`~spikemask.masking.SCHEMES`); default
            :data:`DEFAULT_SCHEMES`, the paper's MtM set plus temporal masking.
        weights: sampling weight per scheme (positive); ``None`` (default) gives each scheme
            its weight in :data:`DEFAULT_WEIGHTS` (neuron 2), every other scheme 1.
        ratios: hidden fraction per ratio-based scheme; entries given here override
            :data:`DEFAULT_RATIOS`, the rest keep their defaults.
        patch_size: units per patch for ``random-token`` (NDT2).
    """

    schemes: tuple[str, ...] = DEFAULT_SCHEMES
    weights: tuple[float, ...] | None = None
    ratios: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_RATIOS))
    patch_size: int = 128

    def __post_init__(self) -> None:
        if isinstance(self.schemes, str):
            self.schemes = (self.schemes,)
        self.schemes = tuple(self.schemes)
        if not self.schemes or len(set(self.schemes)) != len(self.schemes):
            raise SpikemaskError(
                f"masking schemes must be a non-empty list without repeats, got {self.schemes}"
            )
        _check_known(self.schemes, "masking.schemes")
        if self.weights is not None:
            self.weights = tuple(float(weight) for weight in self.weights)
            if len(self.weights) != len(self.schemes) or not all(
                math.isfinite(weight) and weight > 0 for weight in self.weights
            ):
                raise SpikemaskError(
                    f"masking weights must be {len(self.schemes)} positive numbers (one per "
                    f"scheme {self.schemes}), got {self.weights}"
                )
        self._check_ratios()
        if isinstance(self.patch_size, bool) or not isinstance(self.patch_size, int):
            raise SpikemaskError(
                f"masking patch_size must be a positive int, got {self.patch_size!r}"
            )
        if self.patch_size < 1:
            raise SpikemaskError(
                f"masking patch_size must be a positive int, got {self.patch_size}"
            )

    def _check_ratios(self) -> None:
        ratios = dict(self.ratios)
        unknown = sorted(set(ratios) - set(DEFAULT_RATIOS))
        if unknown:
            raise SpikemaskError(
                f"masking ratios given for {unknown}, which take no ratio; "
                f"expected keys among {sorted(DEFAULT_RATIOS)}"
            )
        for name, ratio in ratios.items():
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
                raise SpikemaskError(
                    f"masking ratio for {name!r} must be a number in (0, 1), got {ratio!r}"
                )
        self.ratios = {**DEFAULT_RATIOS, **{name: float(r) for name, r in ratios.items()}}

    @classmethod
    def preset(cls, name: str) -> MaskingConfig:
        """Config for a named set: ``"mtm"``, ``"mtm-temporal"``, or one scheme name alone."""
        if name not in PRESETS:
            raise SpikemaskError(
                f"unknown masking preset {name!r}; expected one of {list(PRESETS)}"
            )
        schemes = PRESETS[name]
        if name == "mtm":  # the paper's mixture, drawn evenly as in the paper
            return cls(schemes=schemes, weights=(1.0,) * len(schemes))
        return cls(schemes=schemes)

    @property
    def resolved_weights(self) -> tuple[float, ...]:
        """The sampling weight of each scheme: ``weights``, or the defaults when not given."""
        if self.weights is not None:
            return self.weights
        return tuple(DEFAULT_WEIGHTS.get(name, 1.0) for name in self.schemes)

    @property
    def needs_regions(self) -> bool:
        """Whether some configured scheme needs per-unit region labels."""
        return any(name in REGION_SCHEMES for name in self.schemes)


class MaskingMixture:
    """Draws one masking scheme per batch (by weight) and builds its :class:`MaskSpec`.

    Args:
        config: the schemes, weights and ratios to use.
    """

    def __init__(self, config: MaskingConfig) -> None:
        self.config = config
        weights = config.resolved_weights
        self._probabilities = torch.tensor(weights, dtype=torch.float64) / sum(weights)
        ratios = config.ratios
        self._builders: dict[str, Callable[..., MaskSpec]] = {
            "temporal": lambda **kw: temporal_mask(ratio=ratios["temporal"], **kw),
            "neuron": lambda **kw: neuron_mask(ratio=ratios["neuron"], **kw),
            "causal": lambda **kw: causal_mask(ratio=ratios["causal"], **kw),
            "random": lambda **kw: random_mask(ratio=ratios["random"], **kw),
            "random-token": lambda **kw: random_token_mask(
                ratio=ratios["random-token"], patch_size=config.patch_size, **kw
            ),
            "inter-region": lambda region_ids, **kw: inter_region_mask(region_ids=region_ids, **kw),
            "intra-region": lambda region_ids, **kw: intra_region_mask(
                region_ids=region_ids, ratio=ratios["intra-region"], **kw
            ),
        }

    def draw_scheme(self, *, generator: torch.Generator) -> str:
        """Draw one configured scheme name according to the weights."""
        index = torch.multinomial(self._probabilities, 1, generator=generator)
        return self.config.schemes[int(index)]

    def sample(
        self,
        shape: ShapeLike,
        *,
        generator: torch.Generator,
        region_ids: Tensor | None = None,
        unit_valid: Tensor | None = None,
        device: Device = None,
        mask_generator: torch.Generator | None = None,
    ) -> MaskSpec:
        """Draw one scheme for the whole batch, then build its mask.

        Args:
            shape: (B, T, N) of the counts.
            generator: CPU ``torch.Generator`` (used for the draw, and for the mask unless
                ``mask_generator`` is given).
            region_ids: (N,) long region index per unit (negative = unlabelled); needed by
                the region schemes.
            unit_valid: optional (N,) or (B, N) bool, False = padding unit.
            device: where the returned masks live (default: where they were drawn).
            mask_generator: draws the mask instead of ``generator``, on its own device (a
                generator on the GPU builds the mask there without host synchronisation).

        Returns:
            MaskSpec with (B, T, N) ``hidden`` and ``scored``.
        """
        scheme = self.draw_scheme(generator=generator)
        return self.build(
            scheme,
            shape,
            generator=mask_generator if mask_generator is not None else generator,
            region_ids=region_ids,
            unit_valid=unit_valid,
            device=device,
        )

    def build(
        self,
        scheme: str,
        shape: ShapeLike,
        *,
        generator: torch.Generator,
        region_ids: Tensor | None = None,
        unit_valid: Tensor | None = None,
        device: Device = None,
    ) -> MaskSpec:
        """Build the mask of a given scheme (any of SCHEMES) with this config's ratios.

        Arguments and return value as in :meth:`sample`; ``generator`` may be on any
        device (the mask is drawn there).
        """
        _check_known((scheme,), "MaskingMixture.build")
        kwargs = {"generator": generator, "unit_valid": unit_valid, "device": device}
        if scheme in REGION_SCHEMES:
            if region_ids is None:
                raise SpikemaskError(
                    f"{scheme} masking needs region labels: pass region_ids (one region index "
                    "per unit), or drop the region schemes from masking.schemes"
                )
            return self._builders[scheme](region_ids, shape=shape, **kwargs)
        return self._builders[scheme](shape=shape, **kwargs)
