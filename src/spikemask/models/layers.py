"""Transformer pieces shared by NDT1 and NDT2.

Token layout (both models): ``S`` special tokens (session token, then prompt token, each
optional) come first, followed by the ``P_time`` data tokens (time bins for NDT1,
space-time patches for NDT2). Every data token carries a time index (its bin); special
tokens have none.

Attention rules (see :func:`build_attention_mask`): in bidirectional mode every token
attends to every token. In causal mode a data token at bin ``t`` attends to the special
tokens and to the data tokens at bins ``<= t``; special tokens attend only to special
tokens, so no information from any bin can flow through them into an earlier bin.

Rotary positions: data tokens are rotated by their time index; special tokens get
position 0, i.e. the identity rotation (they are position-free).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from spikemask.models.config import ModelConfig
from spikemask.models.dropout import Dropout, dropout

__all__ = [
    "INITIAL_RATE",
    "Encoder",
    "RotaryEmbedding",
    "SelfAttention",
    "TransformerBlock",
    "apply_rotary",
    "build_attention_mask",
    "reset_parameters",
]

#: Expected count per bin that read-out biases start at (``log(0.05)``): sparse spiking
#: (a few Hz at 10-20 ms bins) so the initial Poisson loss is not dominated by a big
#: overestimate of the rates.
INITIAL_RATE = 0.05

#: Standard deviation of the initial learned embeddings and special tokens.
EMBEDDING_INIT_STD = 0.02


def build_attention_mask(num_special: int, time_index: Tensor | int, *, causal: bool) -> Tensor:
    """Which key each query may attend to, for ``S`` special tokens then data tokens.

    Args:
        num_special: number ``S`` of special tokens placed before the data tokens.
        time_index: ``(P_time,)`` integer time bin of each data token, or an int
            ``P_time`` meaning bins ``0 .. P_time - 1`` (one token per bin).
        causal: restrict data tokens to bins ``<=`` their own and keep special tokens from
            attending to any data token.

    Returns:
        ``(P, P)`` bool, ``P = S + P_time``; ``[query, key]`` is True where attention is
        allowed (the convention of ``torch.nn.functional.scaled_dot_product_attention``).
        Every row has at least one True entry.
    """
    if isinstance(time_index, int):
        time_index = torch.arange(time_index)
    num_tokens = num_special + time_index.shape[0]
    if not causal:
        return torch.ones(num_tokens, num_tokens, dtype=torch.bool, device=time_index.device)
    allowed = torch.zeros(num_tokens, num_tokens, dtype=torch.bool, device=time_index.device)
    allowed[:, :num_special] = True  # everyone reads the special tokens
    # (P_time, P_time): query bin >= key bin
    allowed[num_special:, num_special:] = time_index[None, :] <= time_index[:, None]
    return allowed


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE) angles for one attention head width.

    Args:
        head_width: per-head width ``E`` (even).
        base: frequency base; frequencies are ``base ** (-2i / E)``.
    """

    def __init__(self, head_width: int, base: float = 10000.0) -> None:
        super().__init__()
        inverse_frequency = 1.0 / base ** (torch.arange(0, head_width, 2).float() / head_width)
        # Derived from the config, not learned: kept out of the state dict.
        self.register_buffer("inverse_frequency", inverse_frequency, persistent=False)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Cosines and sines for integer positions.

        Args:
            positions: ``(P,)`` position of each token.

        Returns:
            ``(cos, sin)``, each ``(P, E)``.
        """
        angles = positions.float()[:, None] * self.inverse_frequency[None, :]  # (P, E/2)
        angles = torch.cat([angles, angles], dim=-1)  # (P, E)
        return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate query/key vectors (rotate-half convention).

    Args:
        x: ``(B, H, P, E)`` queries or keys.
        cos: ``(P, E)`` from :class:`RotaryEmbedding`.
        sin: ``(P, E)``.

    Returns:
        ``(B, H, P, E)`` rotated copy of ``x``.
    """
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention``.

    With attention dropout on a CPU in training, torch's SDPA takes its plain "math" path
    anyway; there the same computation is written out so that the dropout mask is drawn
    the cheap way (``model.cpu_dropout="bits"``, :mod:`spikemask.models.dropout`).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.attention_dropout = config.dropout
        self.cpu_dropout = config.cpu_dropout
        self.scores_in_fp32 = config.attention_scores == "fp32"
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.projection = nn.Linear(config.width, config.width)

    def forward(
        self,
        x: Tensor,
        *,
        attn_allowed: Tensor | None,
        rotary: tuple[Tensor, Tensor] | None,
    ) -> Tensor:
        """Attend.

        Args:
            x: ``(B, P, D)`` normalised token states.
            attn_allowed: ``(P, P)`` bool (True = may attend) or ``None`` for full attention.
            rotary: ``(cos, sin)``, each ``(P, E)``, or ``None`` for no rotation.

        Returns:
            ``(B, P, D)`` attention output (before the residual dropout).
        """
        query, key, value = rearrange(
            self.qkv(x), "b p (three h e) -> three b h p e", three=3, h=self.num_heads
        )  # each (B, H, P, E)
        if rotary is not None:
            query = apply_rotary(query, *rotary)
            key = apply_rotary(key, *rotary)
        p = self.attention_dropout if self.training else 0.0
        if p > 0 and self.cpu_dropout == "bits" and query.device.type == "cpu":
            attended = _math_attention(
                query, key, value, attn_allowed, p, scores_in_fp32=self.scores_in_fp32
            )
        else:
            attended = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attn_allowed, dropout_p=p
            )  # (B, H, P, E)
        return self.projection(rearrange(attended, "b h p e -> b p (h e)"))


def _math_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_allowed: Tensor | None,
    p: float,
    *,
    scores_in_fp32: bool = True,
) -> Tensor:
    """Softmax attention with dropout on the weights (what SDPA's math path computes).

    With ``scores_in_fp32`` the scores and the softmax are computed in fp32 whatever the
    input dtype (as SDPA's CPU math path does for bf16); otherwise in the queries' dtype
    (``model.attention_scores="input"``). The weights meet ``value`` in its own dtype.
    """
    *batch, tokens, head_width = query.shape
    scale = 1.0 / math.sqrt(head_width)
    dtype = torch.float32 if scores_in_fp32 else query.dtype
    with torch.autocast(query.device.type, enabled=False):  # autocast would pick for us
        # (the heads come permuted out of the qkv projection: cast and lay out in one copy)
        contiguous = torch.contiguous_format
        q = query.to(dtype, memory_format=contiguous, copy=True).mul_(scale)
        q = q.view(-1, tokens, head_width)
        k = key.to(dtype, memory_format=contiguous).reshape(-1, tokens, head_width)
        k = k.transpose(-2, -1)
        if attn_allowed is None:
            scores = torch.bmm(q, k)
        else:  # the mask as a -inf bias added inside the matmul: no pass of its own
            bias = torch.zeros(attn_allowed.shape, dtype=q.dtype, device=q.device)
            bias.masked_fill_(~attn_allowed, float("-inf"))
            scores = torch.baddbmm(bias.expand(q.shape[0], -1, -1), q, k)
        weights = scores.view(*batch, tokens, tokens).softmax(dim=-1).to(value.dtype)
    return dropout(weights, p, training=True) @ value


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: ``x + drop(attn(ln(x)))`` then ``x + drop(mlp(ln(x)))``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.width)
        self.attention = SelfAttention(config)
        self.mlp_norm = nn.LayerNorm(config.width)
        self.mlp = nn.Sequential(
            nn.Linear(config.width, config.mlp_width),
            nn.GELU(),
            nn.Linear(config.mlp_width, config.width),
        )
        self.residual_dropout = Dropout(config.dropout, config.cpu_dropout)

    def forward(
        self,
        x: Tensor,
        *,
        attn_allowed: Tensor | None = None,
        rotary: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Apply the block.

        Args:
            x: ``(B, P, D)`` token states.
            attn_allowed: ``(P, P)`` bool or ``None`` (see :class:`SelfAttention`).
            rotary: rotary ``(cos, sin)`` or ``None``.

        Returns:
            ``(B, P, D)`` updated token states.
        """
        attended = self.attention(self.attention_norm(x), attn_allowed=attn_allowed, rotary=rotary)
        x = x + self.residual_dropout(attended)
        return x + self.residual_dropout(self.mlp(self.mlp_norm(x)))


class Encoder(nn.Module):
    """A stack of :class:`TransformerBlock` followed by a final LayerNorm."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.width)
        self.rotary = (
            RotaryEmbedding(config.head_width) if config.position_embedding == "rotary" else None
        )

    def forward(
        self, x: Tensor, *, positions: Tensor | None = None, attn_allowed: Tensor | None = None
    ) -> Tensor:
        """Encode a token sequence.

        Args:
            x: ``(B, P, D)`` embedded tokens.
            positions: ``(P,)`` integer rotary position of each token; required when the
                encoder uses rotary embeddings, ignored otherwise.
            attn_allowed: ``(P, P)`` bool (True = may attend) or ``None`` for full attention.

        Returns:
            ``(B, P, D)`` final-LayerNorm token states.
        """
        rotary = None
        if self.rotary is not None:
            if positions is None:
                raise ValueError("a rotary Encoder needs the positions of its tokens")
            rotary = self.rotary(positions)
        for block in self.blocks:
            x = block(x, attn_allowed=attn_allowed, rotary=rotary)
        return self.final_norm(x)


def reset_parameters(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """Initialise every Linear, Embedding and LayerNorm inside ``module``.

    Linear weights ~ U(±1/sqrt(fan_in)) (PyTorch's default scale) with zero biases;
    embeddings ~ N(0, 0.02²); LayerNorms to identity. Draws only from ``generator``
    (or torch's default generator when it is ``None``).

    Args:
        module: the module to initialise in place.
        generator: random source.
    """
    for submodule in module.modules():
        if isinstance(submodule, nn.Linear):
            bound = 1.0 / math.sqrt(submodule.in_features)
            nn.init.uniform_(submodule.weight, -bound, bound, generator=generator)
            if submodule.bias is not None:
                nn.init.zeros_(submodule.bias)
        elif isinstance(submodule, nn.Embedding):
            nn.init.normal_(submodule.weight, std=EMBEDDING_INIT_STD, generator=generator)
        elif isinstance(submodule, nn.LayerNorm):
            nn.init.ones_(submodule.weight)
            nn.init.zeros_(submodule.bias)
