"""Model configuration, named presets and the output container.

:class:`ModelConfig` is the single constructor argument of both models
(:class:`~spikemask.models.ndt1.NDT1` and :class:`~spikemask.models.ndt2.NDT2`); it
validates itself on construction so a bad value fails before any tensor is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import Tensor

from spikemask.errors import SpikemaskError
from spikemask.models.dropout import CPU_DROPOUT_DRAWS

__all__ = [
    "INPUT_SCALINGS",
    "PRESETS",
    "ModelConfig",
    "ModelOutput",
    "model_preset",
    "scale_counts",
]

ARCHITECTURES = ("ndt1", "ndt2")
POSITION_EMBEDDINGS = ("learned", "rotary")
#: How spike counts enter the model (see :func:`scale_counts`).
INPUT_SCALINGS = ("counts", "sqrt", "log1p")
#: Precision of the attention scores and softmax on a CPU (see ``attention_scores``).
ATTENTION_SCORES = ("fp32", "input")


@dataclass
class ModelConfig:
    """Hyper-parameters of an NDT1 / NDT2 masked-modelling transformer.

    Attributes:
        architecture: ``"ndt1"`` (one token per time bin) or ``"ndt2"`` (space-time patches).
        width: model width ``D``.
        num_layers: number of pre-LayerNorm transformer blocks.
        num_heads: attention heads ``H``; ``width`` must be divisible by it.
        mlp_width: hidden width of each block's GELU MLP.
        dropout: dropout on attention weights, MLP output and residual branches.
        embed_dropout: dropout on the token embeddings entering the encoder.
        stitch_width: output width ``D_in`` of NDT1's per-session read-in; ``None`` means
            ``width``. Unused by NDT2.
        position_embedding: ``"learned"`` (absolute, added to time tokens) or ``"rotary"``
            (applied to queries and keys inside attention).
        max_bins: largest number of time bins ``T`` a learned position table covers.
        session_token: prepend a learned per-session token.
        prompt_token: prepend a learned per-masking-scheme prompt token.
        patch_size: NDT2 units per space patch.
        region_embedding: NDT2 adds a per-patch brain-region embedding.
        max_space_patches: NDT2 capacity of the space-patch embedding table.
        max_regions: NDT2 capacity of the region vocabulary.
        input_scaling: what the model reads: ``"counts"`` (as they are), ``"sqrt"`` or
            ``"log1p"`` of the counts (both keep a hidden entry at 0 and shrink the bursts
            of high-rate units). The targets are always the counts.
        cpu_dropout: how dropout masks are drawn on a CPU: ``"bits"`` (15-bit integers cut
            from 64-bit random words, ~10x cheaper than torch's ``bernoulli_``; the drop
            probability is rounded to a multiple of 1/32768, see
            :mod:`spikemask.models.dropout`) or ``"torch"`` (torch's dropout). GPUs always
            use torch's. Same model, same weights either way; only the random masks differ.
        attention_scores: on a CPU in training with attention dropout (where the attention
            is written out, see ``cpu_dropout``): ``"fp32"`` (default) computes the scores
            and the softmax in fp32 whatever the input dtype, as torch's SDPA does;
            ``"input"`` keeps them in the queries' dtype, i.e. bf16 when training in bf16
            (the matmul and the softmax still accumulate in fp32; the scores and weights
            are stored rounded to bf16). Saves the fp32 casts and halves the memory
            traffic of the largest tensors of the step. In fp32 training, with
            ``cpu_dropout="torch"``, on GPUs and in evaluation the two values give identical
            results. Measured in BENCHMARKS.md section 8 (speed) and 7 (validation quality).
        hidden_flags: NDT1 only: the read-in also learns which entries are hidden. Each
            unit has a learned ``(D_in,)`` mask column (starting at zero); in each bin the
            mean of the hidden units' columns is added to the read-in. Without it a hidden
            entry reads as 0, the same as a bin in which the unit did not fire.
        tied_stitchers: NDT1: a session's read-in uses the transpose of its read-out
            weights (unit n enters the model along the direction its rate is read from),
            plus a bias of its own; halves the per-session weights, and the read-out
            weights then start small and random (N(0, 0.02²)) instead of at zero.
            ``None`` (default) = tied wherever it can be: NDT1 with ``stitch_width`` equal
            to ``width`` (both presets). ``True`` requires that; ``False`` gives separate
            read-in and read-out (the behaviour before this key, and what a checkpoint
            recorded without the key is loaded with). On the validation splits of the 11
            shared sessions, each held out with its animal, tied stitchers were ahead on
            every activity task (BENCHMARKS.md section 7). NDT2 has no per-session
            stitchers: ``None`` and ``False`` apply, ``True`` is an error.
    """

    architecture: str = "ndt1"
    width: int = 512
    num_layers: int = 5
    num_heads: int = 8
    mlp_width: int = 1024
    dropout: float = 0.4
    embed_dropout: float = 0.2
    stitch_width: int | None = None
    position_embedding: str = "learned"
    max_bins: int = 512
    session_token: bool = True
    prompt_token: bool = True
    patch_size: int = 128
    region_embedding: bool = True
    max_space_patches: int = 64
    max_regions: int = 256
    input_scaling: str = "counts"
    cpu_dropout: str = "bits"
    attention_scores: str = "fp32"
    hidden_flags: bool = False
    tied_stitchers: bool | None = None

    def __post_init__(self) -> None:
        _check_choice("architecture", self.architecture, ARCHITECTURES)
        _check_choice("input_scaling", self.input_scaling, INPUT_SCALINGS)
        _check_choice("cpu_dropout", self.cpu_dropout, CPU_DROPOUT_DRAWS)
        _check_choice("attention_scores", self.attention_scores, ATTENTION_SCORES)
        _check_choice("position_embedding", self.position_embedding, POSITION_EMBEDDINGS)
        for name in (
            "width",
            "num_layers",
            "num_heads",
            "mlp_width",
            "max_bins",
            "patch_size",
            "max_space_patches",
            "max_regions",
        ):
            _check_positive_int(name, getattr(self, name))
        if self.stitch_width is not None:
            _check_positive_int("stitch_width", self.stitch_width)
        for name in ("dropout", "embed_dropout"):
            _check_probability(name, getattr(self, name))
        for name in ("session_token", "prompt_token", "region_embedding", "hidden_flags"):
            if not isinstance(getattr(self, name), bool):
                raise SpikemaskError(
                    f"ModelConfig.{name} must be a bool, got {getattr(self, name)!r}"
                )
        self._check_stitchers()
        if self.width % self.num_heads != 0:
            raise SpikemaskError(
                f"ModelConfig.width ({self.width}) must be divisible by num_heads "
                f"({self.num_heads})"
            )
        if self.position_embedding == "rotary" and self.head_width % 2 != 0:
            raise SpikemaskError(
                f"rotary position embeddings need an even head width, got width / num_heads "
                f"= {self.width} / {self.num_heads} = {self.head_width}"
            )

    @property
    def head_width(self) -> int:
        """Width of one attention head, ``width // num_heads``."""
        return self.width // self.num_heads

    def _check_stitchers(self) -> None:
        if self.hidden_flags and self.architecture != "ndt1":
            raise SpikemaskError(
                f"ModelConfig.hidden_flags needs architecture 'ndt1' (its per-session read-in), "
                f"got {self.architecture!r}"
            )
        if self.tied_stitchers is not None and not isinstance(self.tied_stitchers, bool):
            raise SpikemaskError(
                f"ModelConfig.tied_stitchers must be a bool or null, got {self.tied_stitchers!r}"
            )
        if self.tied_stitchers and self.architecture != "ndt1":
            raise SpikemaskError(
                f"ModelConfig.tied_stitchers needs architecture 'ndt1' (its per-session "
                f"read-in and read-out), got {self.architecture!r}"
            )
        if self.tied_stitchers and self.resolved_stitch_width != self.width:
            raise SpikemaskError(
                f"ModelConfig.tied_stitchers needs stitch_width equal to width ({self.width}), "
                f"got {self.stitch_width}"
            )

    @property
    def resolved_tied_stitchers(self) -> bool:
        """Whether NDT1's read-in is the transpose of its read-out (see ``tied_stitchers``)."""
        if self.tied_stitchers is not None:
            return self.tied_stitchers
        return self.architecture == "ndt1" and self.resolved_stitch_width == self.width

    @property
    def resolved_stitch_width(self) -> int:
        """``stitch_width``, or ``width`` when it is ``None``."""
        return self.width if self.stitch_width is None else self.stitch_width


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SpikemaskError(f"ModelConfig.{name} must be one of {list(choices)}, got {value!r}")


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SpikemaskError(f"ModelConfig.{name} must be a positive integer, got {value!r}")


def _check_probability(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise SpikemaskError(f"ModelConfig.{name} must be a number in [0, 1), got {value!r}")


PRESETS: dict[str, ModelConfig] = {
    # The paper's NDT1 / NDT2 size: ~12 M shared parameters for NDT1.
    "paper": ModelConfig(
        width=512, num_layers=5, num_heads=8, mlp_width=1024, dropout=0.4, embed_dropout=0.2
    ),
    # Trains in minutes on 2 CPU cores for ~40-100 bins x ~700 units. Dropout 0.1 / 0.05
    # was chosen over 0.2 / 0.1 and 0 / 0 on validation splits (BENCHMARKS.md section 6).
    "small": ModelConfig(
        width=128,
        num_layers=2,
        num_heads=4,
        mlp_width=256,
        dropout=0.1,
        embed_dropout=0.05,
        stitch_width=128,
    ),
}


def model_preset(name: str, **overrides: object) -> ModelConfig:
    """Return a fresh copy of a named preset with some fields replaced.

    Args:
        name: one of ``PRESETS`` (``"paper"``, ``"small"``).
        **overrides: ``ModelConfig`` fields to replace, e.g. ``architecture="ndt2"``.

    Returns:
        A new, validated :class:`ModelConfig`.

    Raises:
        SpikemaskError: unknown preset name or override field, or an invalid value.
    """
    if name not in PRESETS:
        raise SpikemaskError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}")
    fields = {field.name for field in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise SpikemaskError(
            f"unknown ModelConfig field(s) {unknown}; expected some of {sorted(fields)}"
        )
    return dataclasses.replace(PRESETS[name], **overrides)


@dataclass
class ModelOutput:
    """What a model's ``forward`` returns.

    Attributes:
        log_rates: ``(B, T, N)`` natural-log Poisson rate (expected count per bin) for every
            time bin and unit of the session.
        latents: ``(B, T, D)`` final-layer (post final LayerNorm) states of the time-bin
            tokens; for NDT2 the mean over the space patches of each bin.
    """

    log_rates: Tensor
    latents: Tensor


def scale_counts(spikes: Tensor, how: str) -> Tensor:
    """The model's input from (masked) counts: ``how`` is one of :data:`INPUT_SCALINGS`.

    Every scaling maps 0 to 0, so hiding an entry (zeroing it) commutes with scaling.
    """
    if how == "counts":
        return spikes
    if how == "sqrt":
        return spikes.clamp(min=0).sqrt()
    if how == "log1p":
        return spikes.clamp(min=0).log1p()
    raise SpikemaskError(f"input_scaling={how!r}; expected one of {INPUT_SCALINGS}")
