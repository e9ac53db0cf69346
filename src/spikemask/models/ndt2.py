"""NDT2: space-time patch tokens with a shared transformer encoder.

Pipeline for spikes ``(B, T, N)`` of session ``s``, with ``C = patch_size`` and
``K = ceil(N / C)`` space patches:

1. pad the units with zeros up to ``K * C`` and cut each bin into ``K`` patches of ``C``
   units; tokens are time-major (token ``t * K + k`` is bin ``t``, patch ``k``);
2. shared patch embedding ``Linear(C -> D)`` (counts enter as they are, no log);
3. plus a space-patch embedding (``k``), a learned time embedding (``t``; or rotary angles
   by ``t`` inside attention) and, optionally, a region embedding: the mean of the region
   embeddings of the labelled units in the patch (zero when none is labelled);
4. optional session token (one per session id) and prompt token prepended;
5. the shared pre-LayerNorm encoder; in causal mode a token at bin ``t`` attends to all
   patches of bins ``<= t`` and to the special tokens, which see no data tokens;
6. shared per-token read-out ``Linear(D -> C)`` (bias starting at ``log(INITIAL_RATE)``),
   reassembled to ``(B, T, K * C)`` and cut back to the ``N`` real units.

Sessions differ only by their session token and unit count; NDT2 has no stitchers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from spikemask.errors import SpikemaskError
from spikemask.models.base import SessionAdapter, SessionModel
from spikemask.models.config import ModelConfig, ModelOutput, scale_counts
from spikemask.models.layers import INITIAL_RATE

__all__ = ["NDT2"]


class NDT2(SessionModel):
    """Space-time patch transformer (NDT2-style) for multi-session spiking data.

    Args:
        config: model hyper-parameters (``patch_size``, ``max_space_patches``,
            ``region_embedding``, ``max_regions`` are NDT2-specific).
        sessions: ordered ``session_id -> num_units``; each gets a session token (if
            enabled). The order is the session vocabulary.
        num_prompts: number of prompt tokens; must be >= 1 when ``config.prompt_token``.
        generator: random source for the initial parameters (default: torch's global one).

    Raises:
        SpikemaskError: invalid sessions, prompt count or config.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        sessions: Mapping[str, int],
        num_prompts: int,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(config, num_prompts=num_prompts)
        self.patch_embedding = nn.Linear(config.patch_size, config.width)
        self.space_embedding = nn.Embedding(config.max_space_patches, config.width)
        self.region_embedding = (
            nn.Embedding(config.max_regions, config.width) if config.region_embedding else None
        )
        self.read_out = nn.Linear(config.width, config.patch_size)
        self._add_sessions(sessions, generator)

    def _make_adapter(self, num_units: int, **factory: object) -> SessionAdapter:
        num_patches = math.ceil(num_units / self.config.patch_size)
        if num_patches > self.config.max_space_patches:
            raise SpikemaskError(
                f"{num_units} units make {num_patches} patches of {self.config.patch_size}, "
                f"more than config.max_space_patches = {self.config.max_space_patches}"
            )
        return SessionAdapter(
            self.config.width,
            num_units=num_units,
            session_token=self.config.session_token,
            **factory,
        )

    def reset_shared_parameters(self, generator: torch.Generator | None = None) -> None:
        """(Re)initialise the shared parameters; read-out bias ``log(INITIAL_RATE)``."""
        super().reset_shared_parameters(generator)
        nn.init.zeros_(self.read_out.weight)  # start at the per-unit rates (see base.py)
        nn.init.constant_(self.read_out.bias, math.log(INITIAL_RATE))

    def forward(
        self,
        spikes: Tensor,
        *,
        session_id: str,
        prompt: int | None = None,
        causal: bool = False,
        region_ids: Tensor | None = None,
        hidden: Tensor | None = None,
    ) -> ModelOutput:
        """Predict log-rates for every bin and unit.

        Args:
            spikes: ``(B, T, N)`` float counts, already masked (hidden entries are 0).
            session_id: a known session whose unit count is ``N``.
            prompt: prompt index in ``[0, num_prompts)``; required when the model has prompt
                tokens, ignored otherwise.
            causal: a token at bin ``t`` attends only to tokens of bins ``<= t`` (and the
                special tokens, which themselves see no data tokens).
            region_ids: ``(N,)`` integer region index of each unit in ``[0, max_regions)``,
                negative = unlabelled. ``None`` (or ``config.region_embedding`` off) means
                no region embedding.
            hidden: ignored (NDT2 has no hidden flags; accepted so both models share one
                interface).

        Returns:
            :class:`ModelOutput` with ``log_rates`` ``(B, T, N)`` and ``latents`` ``(B, T, D)``
            (token states averaged over the space patches of each bin).

        Raises:
            SpikemaskError: unknown session, wrong shapes / dtypes / unit count, region ids
                out of range, too many bins for learned positions, or a bad prompt.
        """
        del hidden  # no flags in NDT2
        adapter = self._checked_adapter(spikes, session_id)
        batch, num_bins, num_units = spikes.shape
        patch_size = self.config.patch_size
        num_patches = math.ceil(num_units / patch_size)
        scaled = scale_counts(spikes, self.config.input_scaling)
        padded = F.pad(scaled, (0, num_patches * patch_size - num_units))  # (B, T, K*C)
        patches = rearrange(padded, "b t (k c) -> b (t k) c", c=patch_size)  # (B, T*K, C)
        device = spikes.device
        space_index = torch.arange(num_patches, device=device)  # (K,)
        per_patch = self.space_embedding(space_index)  # (K, D)
        if self.region_embedding is not None and region_ids is not None:
            per_patch = per_patch + self._region_patch_embedding(region_ids, num_units)
        data_tokens = self.patch_embedding(patches) + repeat(
            per_patch, "k d -> (t k) d", t=num_bins
        )  # (B, T*K, D)
        time_index = repeat(
            torch.arange(num_bins, device=device), "t -> (t k)", k=num_patches
        )  # (T*K,)
        specials = self._special_tokens(adapter, prompt, batch)  # (B, S, D)
        states = self._encode(data_tokens, specials, time_index, causal=causal)  # (B, T*K, D)
        patch_log_rates = self.read_out(states)  # (B, T*K, C)
        log_rates = rearrange(patch_log_rates, "b (t k) c -> b t (k c)", k=num_patches)
        latents = rearrange(states, "b (t k) d -> b t k d", k=num_patches).mean(dim=2)
        log_rates = log_rates[..., :num_units] + adapter.unit_bias  # (B, T, N)
        return ModelOutput(log_rates=log_rates, latents=latents)

    def _region_patch_embedding(self, region_ids: Tensor, num_units: int) -> Tensor:
        """Mean region embedding of the labelled units of each patch.

        Args:
            region_ids: ``(N,)`` integer region index per unit, negative = unlabelled.
            num_units: ``N``.

        Returns:
            ``(K, D)``; a patch without labelled units gets zeros.
        """
        if not isinstance(region_ids, Tensor) or region_ids.shape != (num_units,):
            shape = tuple(region_ids.shape) if isinstance(region_ids, Tensor) else region_ids
            raise SpikemaskError(f"region_ids must have shape ({num_units},), got {shape!r}")
        if (
            region_ids.is_floating_point()
            or region_ids.is_complex()
            or region_ids.dtype == torch.bool
        ):
            raise SpikemaskError(f"region_ids must be integers, got dtype {region_ids.dtype}")
        if num_units and int(region_ids.max()) >= self.config.max_regions:
            raise SpikemaskError(
                f"region_ids must be < config.max_regions = {self.config.max_regions}, "
                f"got {int(region_ids.max())}"
            )
        patch_size = self.config.patch_size
        num_patches = math.ceil(num_units / patch_size)
        # Padding units are unlabelled (-1).
        region_ids = region_ids.to(device=self.region_embedding.weight.device, dtype=torch.long)
        padded = F.pad(region_ids, (0, num_patches * patch_size - num_units), value=-1)
        labelled = padded >= 0  # (K*C,)
        embedded = self.region_embedding(padded.clamp(min=0)) * labelled[:, None]  # (K*C, D)
        summed = rearrange(embedded, "(k c) d -> k c d", c=patch_size).sum(dim=1)  # (K, D)
        counts = rearrange(labelled, "(k c) -> k c", c=patch_size).sum(dim=1)  # (K,)
        return summed / counts.clamp(min=1)[:, None].to(summed.dtype)
