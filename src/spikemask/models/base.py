"""Per-session bookkeeping shared by NDT1 and NDT2.

:class:`SessionAdapter` holds what one session owns (session token, NDT1 stitchers);
:class:`SessionModel` is the base class of both models: session vocabulary keyed by
session-id strings, special tokens, the time embedding and the shared encoder.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from einops import repeat
from torch import Tensor, nn

from spikemask.errors import SpikemaskError
from spikemask.models.config import ModelConfig
from spikemask.models.dropout import Dropout
from spikemask.models.layers import (
    EMBEDDING_INIT_STD,
    INITIAL_RATE,
    Encoder,
    build_attention_mask,
    reset_parameters,
)

__all__ = ["SessionAdapter", "SessionModel"]

#: How many known session ids an "unknown session" error lists before truncating.
MAX_LISTED_SESSIONS = 10


class TiedReadIn(nn.Module):
    """A read-in ``N -> D`` whose weight is the transpose of a read-out ``D -> N``.

    Behaves like the ``nn.Linear`` it replaces (``weight`` is ``(D, N)``, ``bias`` is
    ``(D,)``); the weight is not a parameter of its own, so a state dict holds only the bias.
    """

    def __init__(self, read_out: nn.Linear, **factory: object) -> None:
        super().__init__()
        object.__setattr__(self, "_read_out", read_out)  # not registered: owned by the adapter
        self.bias = nn.Parameter(torch.zeros(read_out.in_features, **factory))

    @property
    def weight(self) -> Tensor:
        return self._read_out.weight.t()

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


class SessionAdapter(nn.Module):
    """Everything one session owns: an optional session token and optional stitchers.

    Args:
        width: model width ``D``.
        num_units: the session's unit count ``N_s``.
        session_token: create a learned ``(D,)`` session token.
        stitch_width: when given, create the read-in ``Linear(N_s -> stitch_width)`` and
            read-out ``Linear(D -> N_s)`` (NDT1); when ``None``, no stitchers (NDT2).
        tied: with ``stitch_width`` (equal to ``width``), the read-in is a
            :class:`TiedReadIn` of the read-out.
        hidden_flags: with ``stitch_width``, also create ``hidden_in``, a bias-free
            ``Linear(N_s -> stitch_width)`` whose columns are the units' mask vectors
            (NDT1 adds the mean over each bin's hidden units).
        device: where to create the parameters (to match an existing model).
        dtype: parameter dtype.
    """

    def __init__(
        self,
        width: int,
        *,
        num_units: int,
        session_token: bool,
        stitch_width: int | None = None,
        hidden_flags: bool = False,
        tied: bool = False,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_units = num_units
        self.session_token = nn.Parameter(torch.empty(width, **factory)) if session_token else None
        self.read_in: nn.Linear | TiedReadIn | None = None
        self.read_out: nn.Linear | None = None
        self.hidden_in: nn.Linear | None = None
        self.unit_bias: nn.Parameter | None = None
        if stitch_width is not None:
            self.read_out = nn.Linear(width, num_units, **factory)
            if tied:
                if stitch_width != width:
                    raise SpikemaskError(
                        f"tied stitchers need stitch_width equal to width ({width}), "
                        f"got {stitch_width}"
                    )
                self.read_in = TiedReadIn(self.read_out, **factory)
            else:
                self.read_in = nn.Linear(num_units, stitch_width, **factory)
            if hidden_flags:
                self.hidden_in = nn.Linear(num_units, stitch_width, bias=False, **factory)
        else:  # NDT2's read-out is shared: each unit still gets its own log-rate offset
            self.unit_bias = nn.Parameter(torch.zeros(num_units, **factory))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """(Re)initialise: token ~ N(0, 0.02²), read-out bias ``log(INITIAL_RATE)``,
        zero read-out weights (small random ones when the read-in is tied to them) and zero
        hidden-flag weights."""
        reset_parameters(self, generator)
        if self.session_token is not None:
            nn.init.normal_(self.session_token, std=EMBEDDING_INIT_STD, generator=generator)
        if self.read_out is not None:
            if isinstance(self.read_in, TiedReadIn):
                # the read-in is this weight too: at zero the model would see no spikes
                nn.init.normal_(self.read_out.weight, std=EMBEDDING_INIT_STD, generator=generator)
                nn.init.zeros_(self.read_in.bias)
            else:
                # zero read-out weights: a new session starts exactly at its per-unit rates
                # and the transformer's random initial states add no noise to the predictions
                nn.init.zeros_(self.read_out.weight)
            nn.init.constant_(self.read_out.bias, math.log(INITIAL_RATE))
        if self.hidden_in is not None:
            # a new session starts as if it had no flags; they learn from the first step
            nn.init.zeros_(self.hidden_in.weight)
        if self.unit_bias is not None:
            nn.init.zeros_(self.unit_bias)

    @torch.no_grad()
    def set_unit_log_rates(self, log_rates: Tensor) -> None:
        """Start every unit at a known log-rate (e.g. its mean count per bin)."""
        if log_rates.shape != (self.num_units,):
            raise SpikemaskError(
                f"unit log-rates have shape {tuple(log_rates.shape)}; expected ({self.num_units},)"
            )
        if self.read_out is not None:
            self.read_out.bias.copy_(log_rates)
        else:
            self.unit_bias.copy_(log_rates - math.log(INITIAL_RATE))


class SessionModel(nn.Module):
    """Session vocabulary, special tokens, time embedding and encoder shared by NDT1/NDT2.

    Per-session parameters live in ``session_adapters`` (an ``nn.ModuleList``, so state-dict
    keys are ``session_adapters.<i>.…``); ``session_ids[i]`` names adapter ``i``. That
    ordered list is the session vocabulary a checkpoint must store next to the weights.

    Subclasses build their own embedding / read-out, then call :meth:`_add_sessions`.
    """

    def __init__(self, config: ModelConfig, *, num_prompts: int) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise SpikemaskError(f"config must be a ModelConfig, got {type(config).__name__}")
        if isinstance(num_prompts, bool) or not isinstance(num_prompts, int) or num_prompts < 0:
            raise SpikemaskError(f"num_prompts must be a non-negative int, got {num_prompts!r}")
        if config.prompt_token and num_prompts < 1:
            raise SpikemaskError("config.prompt_token is True, so num_prompts must be >= 1")
        self.config = config
        self.num_prompts = num_prompts
        self.session_adapters = nn.ModuleList()
        self._session_ids: list[str] = []
        self.prompt_embedding = (
            nn.Embedding(num_prompts, config.width) if config.prompt_token else None
        )
        self.time_embedding = (
            nn.Embedding(config.max_bins, config.width)
            if config.position_embedding == "learned"
            else None
        )
        self.embed_dropout = Dropout(config.embed_dropout, config.cpu_dropout)
        self.encoder = Encoder(config)

    # ----- session vocabulary -------------------------------------------------------------
    def _make_adapter(self, num_units: int, **factory: object) -> SessionAdapter:
        raise NotImplementedError

    def _add_sessions(self, sessions: Mapping[str, int], generator: torch.Generator | None) -> None:
        """Initialise the shared parameters, then add ``sessions`` in order."""
        if not isinstance(sessions, Mapping):
            raise SpikemaskError(
                f"sessions must be a mapping session_id -> num_units, got {type(sessions).__name__}"
            )
        self.reset_shared_parameters(generator)
        for session_id, num_units in sessions.items():
            self.add_session(session_id, num_units, generator=generator)

    def reset_shared_parameters(self, generator: torch.Generator | None = None) -> None:
        """(Re)initialise every parameter not owned by a session."""
        for child in self.children():
            if child is not self.session_adapters:
                reset_parameters(child, generator)

    @property
    def session_ids(self) -> list[str]:
        """Known session ids, in adapter (insertion) order."""
        return list(self._session_ids)

    @property
    def sessions(self) -> dict[str, int]:
        """Ordered ``session_id -> num_units``: rebuilds this model's session layout."""
        return {
            session_id: adapter.num_units
            for session_id, adapter in zip(self._session_ids, self.session_adapters, strict=True)
        }

    def num_units(self, session_id: str) -> int:
        """Unit count ``N_s`` of a known session."""
        return self.session_adapters[self._session_index(session_id)].num_units

    def add_session(
        self, session_id: str, num_units: int, *, generator: torch.Generator | None = None
    ) -> None:
        """Add fresh per-session parameters (stitchers and/or session token) for a new session.

        Args:
            session_id: new, non-empty session id.
            num_units: the session's unit count ``N_s``.
            generator: random source for the new parameters.

        Raises:
            SpikemaskError: the id is already known, empty, or ``num_units`` is not positive.
        """
        if not isinstance(session_id, str) or not session_id:
            raise SpikemaskError(f"session id must be a non-empty string, got {session_id!r}")
        if session_id in self._session_ids:
            raise SpikemaskError(f"session {session_id!r} is already in the model")
        if isinstance(num_units, bool) or not isinstance(num_units, int) or num_units <= 0:
            raise SpikemaskError(
                f"num_units of session {session_id!r} must be a positive int, got {num_units!r}"
            )
        reference = next(self.encoder.parameters())
        adapter = self._make_adapter(num_units, device=reference.device, dtype=reference.dtype)
        adapter.reset_parameters(generator)
        self.session_adapters.append(adapter)
        self._session_ids.append(session_id)

    def set_unit_log_rates(self, session_id: str, log_rates: Tensor) -> None:
        """Initialise a session's read-out so unit ``n`` starts at ``log_rates[n]``.

        Starting from each unit's mean rate (instead of one shared rate) means training
        spends its steps on structure rather than on learning per-unit offsets.

        Args:
            session_id: a known session.
            log_rates: ``(N_s,)`` log mean count per bin of each unit.
        """
        adapter = self.session_adapters[self._session_index(session_id)]
        reference = next(adapter.parameters())
        adapter.set_unit_log_rates(log_rates.to(reference.device, reference.dtype))

    def adapter(self, session_id: str) -> SessionAdapter:
        """The per-session layers (read-in, read-out, session token) of ``session_id``."""
        return self.session_adapters[self._session_index(session_id)]

    def session_parameters(self, session_id: str) -> list[nn.Parameter]:
        """The parameters owned by one session (read-in, read-out, session token)."""
        return list(self.adapter(session_id).parameters())

    def _session_index(self, session_id: str) -> int:
        if session_id in self._session_ids:
            return self._session_ids.index(session_id)
        known = [repr(known_id) for known_id in self._session_ids[:MAX_LISTED_SESSIONS]]
        if len(self._session_ids) > MAX_LISTED_SESSIONS:
            known.append(f"... ({len(self._session_ids) - MAX_LISTED_SESSIONS} more)")
        raise SpikemaskError(
            f"unknown session id {session_id!r}; the model knows {len(self._session_ids)} "
            f"session(s): [{', '.join(known)}] (use add_session for a new one)"
        )

    # ----- forward helpers ----------------------------------------------------------------
    @property
    def num_special_tokens(self) -> int:
        """Number ``S`` of prepended special tokens (session and/or prompt)."""
        return int(self.config.session_token) + int(self.config.prompt_token)

    def _checked_adapter(self, spikes: Tensor, session_id: str) -> SessionAdapter:
        """Validate ``spikes`` (B, T, N) against the session; return its adapter."""
        adapter = self.session_adapters[self._session_index(session_id)]
        if not isinstance(spikes, Tensor) or spikes.dim() != 3:
            raise SpikemaskError(
                f"spikes must be a (batch, time, units) tensor, got "
                f"{tuple(spikes.shape) if isinstance(spikes, Tensor) else type(spikes).__name__}"
            )
        if not spikes.is_floating_point():
            raise SpikemaskError(f"spikes must be a float tensor, got dtype {spikes.dtype}")
        if spikes.shape[1] == 0 or spikes.shape[0] == 0:
            raise SpikemaskError(f"spikes must have batch and time bins, got {tuple(spikes.shape)}")
        if spikes.shape[2] != adapter.num_units:
            raise SpikemaskError(
                f"session {session_id!r} has {adapter.num_units} units but spikes have "
                f"{spikes.shape[2]} (shape {tuple(spikes.shape)})"
            )
        if self.time_embedding is not None and spikes.shape[1] > self.config.max_bins:
            raise SpikemaskError(
                f"spikes have {spikes.shape[1]} time bins but learned positions cover at most "
                f"config.max_bins = {self.config.max_bins}"
            )
        return adapter

    def _special_tokens(self, adapter: SessionAdapter, prompt: int | None, batch: int) -> Tensor:
        """``(B, S, D)`` session token then prompt token (each if enabled)."""
        tokens = []
        if adapter.session_token is not None:
            tokens.append(adapter.session_token)
        if self.prompt_embedding is not None:
            index = _as_index(prompt)
            if index is None or not 0 <= index < self.num_prompts:
                raise SpikemaskError(
                    f"prompt must be an int in [0, {self.num_prompts}) for a model with prompt "
                    f"tokens, got {prompt!r}"
                )
            tokens.append(self.prompt_embedding.weight[index])
        if not tokens:
            reference = self.encoder.final_norm.weight
            return reference.new_zeros(batch, 0, self.config.width)
        return repeat(torch.stack(tokens), "s d -> b s d", b=batch)  # (B, S, D)

    def _encode(
        self, data_tokens: Tensor, specials: Tensor, time_index: Tensor, *, causal: bool
    ) -> Tensor:
        """Add time embeddings, prepend specials, run the encoder; return data-token states.

        Args:
            data_tokens: ``(B, P_time, D)`` embedded data tokens.
            specials: ``(B, S, D)`` special tokens.
            time_index: ``(P_time,)`` time bin of each data token.
            causal: causal attention (see :func:`build_attention_mask`).

        Returns:
            ``(B, P_time, D)`` final-LayerNorm states of the data tokens.
        """
        if self.time_embedding is not None:
            data_tokens = data_tokens + self.time_embedding(time_index)
        num_special = specials.shape[1]
        x = self.embed_dropout(torch.cat([specials, data_tokens], dim=1))  # (B, S + P_time, D)
        positions = F.pad(time_index, (num_special, 0))  # specials at rotary position 0
        attn_allowed = (
            build_attention_mask(num_special, time_index, causal=True) if causal else None
        )
        states = self.encoder(x, positions=positions, attn_allowed=attn_allowed)
        return states[:, num_special:]


def _as_index(value: object) -> int | None:
    """``value`` as a Python int if it is an integer (not a bool), else ``None``."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # int, numpy integer, 0-d integer tensor
    except TypeError:
        return None
