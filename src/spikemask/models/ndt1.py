"""NDT1: one token per time bin, per-session stitchers, shared transformer encoder.

Pipeline for spikes ``(B, T, N_s)`` of session ``s``:

1. per-session read-in ``Linear(N_s -> D_in)`` (the "stitcher") of the counts (as they
   are by default, else as ``config.input_scaling`` says; masked entries 0); with
   ``config.hidden_flags`` the mean of the hidden units' columns of a second bias-free
   ``Linear(N_s -> D_in)`` is added in each bin;
2. shared embedding ``Linear(D_in -> D) -> Softsign -> Linear(D -> D)``;
3. learned absolute time embedding added per bin (or rotary angles inside attention);
4. optional session token and prompt token prepended, embedding dropout;
5. pre-LayerNorm encoder with a final LayerNorm (:class:`~spikemask.models.layers.Encoder`);
6. per-session read-out ``Linear(D -> N_s)`` giving log-rates, its bias starting at
   ``log(INITIAL_RATE)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from spikemask.errors import SpikemaskError
from spikemask.models.base import SessionAdapter, SessionModel
from spikemask.models.config import ModelConfig, ModelOutput, scale_counts

__all__ = ["NDT1"]


class NDT1(SessionModel):
    """Neural Data Transformer (one token per time bin) with per-session stitchers.

    Args:
        config: model hyper-parameters (``config.architecture`` is not checked here).
        sessions: ordered ``session_id -> num_units``; each session gets its own read-in,
            read-out and (if enabled) session token. The order is the session vocabulary.
        num_prompts: number of prompt tokens (masking schemes); must be >= 1 when
            ``config.prompt_token``.
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
        self.embedding = nn.Sequential(
            nn.Linear(config.resolved_stitch_width, config.width),
            nn.Softsign(),
            nn.Linear(config.width, config.width),
        )
        self._add_sessions(sessions, generator)

    def _make_adapter(self, num_units: int, **factory: object) -> SessionAdapter:
        return SessionAdapter(
            self.config.width,
            num_units=num_units,
            session_token=self.config.session_token,
            stitch_width=self.config.resolved_stitch_width,
            hidden_flags=self.config.hidden_flags,
            tied=self.config.resolved_tied_stitchers,
            **factory,
        )

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
            prompt: prompt (masking-scheme) index in ``[0, num_prompts)``; required when
                the model has prompt tokens, ignored otherwise.
            causal: bin ``t`` attends only to bins ``<= t`` (and the special tokens, which
                themselves see no bins).
            region_ids: ignored (accepted so NDT1 and NDT2 share one interface).
            hidden: ``(B, T, N)`` bool, True where ``spikes`` was hidden; read by a model
                with ``config.hidden_flags`` (``None`` = nothing hidden), ignored otherwise.

        Returns:
            :class:`ModelOutput` with ``log_rates`` ``(B, T, N)`` and ``latents`` ``(B, T, D)``.

        Raises:
            SpikemaskError: unknown session, wrong shape / dtype / unit count, too many bins
                for learned positions, or a missing / out-of-range prompt.
        """
        del region_ids  # NDT1 has no region embedding
        adapter = self._checked_adapter(spikes, session_id)
        stitched = adapter.read_in(scale_counts(spikes, self.config.input_scaling))
        if adapter.hidden_in is not None and hidden is not None:
            if hidden.shape != spikes.shape:
                raise SpikemaskError(
                    f"hidden has shape {tuple(hidden.shape)}; expected the shape of spikes "
                    f"{tuple(spikes.shape)}"
                )
            flags = hidden.to(stitched.dtype)
            # the mean of the hidden units' columns: a bounded term however many are hidden
            per_bin = flags.sum(-1, keepdim=True).clamp_min(1.0)  # (B, T, 1)
            stitched = stitched + adapter.hidden_in(flags) / per_bin
        latents = self.encode_stitched(
            stitched,
            session_id=session_id,
            prompt=prompt,
            causal=causal,
        )  # (B, T, D)
        return ModelOutput(log_rates=adapter.read_out(latents), latents=latents)

    def encode_stitched(
        self,
        stitched: Tensor,
        *,
        session_id: str,
        prompt: int | None = None,
        causal: bool = False,
    ) -> Tensor:
        """Latents from the output of a session's read-in: the part of :meth:`forward`
        between the two per-session linear maps.

        Lets a caller compute read-in and read-out itself, e.g. evaluation, which builds
        the read-in of many masked copies by subtraction and reads out only the scored
        units. ``forward(x) == read_out(encode_stitched(read_in(scale_counts(x))))``.

        Args:
            stitched: ``(B, T, D_in)`` read-in output (``adapter(session_id).read_in``).
            session_id: as in :meth:`forward`.
            prompt: as in :meth:`forward`.
            causal: as in :meth:`forward`.

        Returns:
            ``(B, T, D)`` latents.
        """
        adapter = self.adapter(session_id)
        tokens = self.embedding(stitched)  # (B, T, D)
        specials = self._special_tokens(adapter, prompt, tokens.shape[0])  # (B, S, D)
        time_index = torch.arange(tokens.shape[1], device=tokens.device)  # (T,)
        return self._encode(tokens, specials, time_index, causal=causal)
