"""Masked-modelling transformers for spiking data: NDT1 (time tokens) and NDT2 (patches).

Both models share one interface::

    model = build_model(config, sessions={"sess-a": 703, "sess-b": 655}, num_prompts=4)
    output = model(spikes, session_id="sess-a", prompt=0, causal=False)
    output.log_rates  # (B, T, N)
    output.latents    # (B, T, D)

Per-session parameters are keyed by session-id strings (``model.session_ids`` is the
ordered vocabulary to store with a checkpoint); ``model.add_session`` adds a new session
for fine-tuning and ``model.session_parameters`` returns only that session's parameters.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from spikemask.errors import SpikemaskError
from spikemask.models.base import SessionModel
from spikemask.models.config import PRESETS, ModelConfig, ModelOutput, model_preset
from spikemask.models.ndt1 import NDT1
from spikemask.models.ndt2 import NDT2

__all__ = [
    "NDT1",
    "NDT2",
    "PRESETS",
    "ModelConfig",
    "ModelOutput",
    "SessionModel",
    "build_model",
    "model_preset",
]

_ARCHITECTURES = {"ndt1": NDT1, "ndt2": NDT2}


def build_model(
    config: ModelConfig,
    *,
    sessions: Mapping[str, int],
    num_prompts: int,
    generator: torch.Generator | None = None,
) -> SessionModel:
    """Build the model named by ``config.architecture``.

    Args:
        config: model hyper-parameters.
        sessions: ordered ``session_id -> num_units``.
        num_prompts: number of prompt tokens (masking schemes).
        generator: random source for the initial parameters.

    Returns:
        An :class:`NDT1` or :class:`NDT2`.

    Raises:
        SpikemaskError: ``config`` is not a :class:`ModelConfig`, or bad sessions / prompts.
    """
    if not isinstance(config, ModelConfig):
        raise SpikemaskError(f"config must be a ModelConfig, got {type(config).__name__}")
    return _ARCHITECTURES[config.architecture](
        config, sessions=sessions, num_prompts=num_prompts, generator=generator
    )
