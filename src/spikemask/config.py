"""Typed run configuration; the only place YAML is read.

A run is described by :class:`RunConfig` (model, masking, data, training sections). Start
from a preset (``small`` or ``paper``), then apply a short YAML file and ``--set
section.key=value`` overrides. Unknown keys and values of the wrong type are errors that
name the key and what was expected.

Example YAML override::

    model:
      width: 256
      position_embedding: rotary
    train:
      max_epochs: 50
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spikemask.errors import SpikemaskError
from spikemask.masking import MaskingConfig
from spikemask.models.config import ModelConfig, model_preset

__all__ = [
    "DataConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "load_config",
    "parse_set_options",
    "run_preset",
]

REGION_LEVELS = ("allen", "beryl", "cosmos")
SAMPLING = ("proportional", "balanced")
PRECISIONS = ("auto", "32", "bf16-mixed", "16-mixed", "64")
DECAY_SCOPES = ("all", "matrices")
SELECTIONS = ("val_loss", "unit_bps")


@dataclass
class DataConfig:
    """How sessions become batches.

    Attributes:
        batch_size: Trials per batch (one session per batch), across all devices.
        region_level: Region labels used by region masking: ``allen`` (as recorded),
            ``beryl`` or ``cosmos`` (IBL's coarser groupings).
        session_sampling: ``proportional`` (every training trial once per epoch) or
            ``balanced`` (every session contributes equally many batches per epoch).
        num_workers: DataLoader worker processes.
    """

    batch_size: int = 16
    region_level: str = "allen"
    session_sampling: str = "proportional"
    num_workers: int = 0

    def __post_init__(self) -> None:
        _check_positive("data.batch_size", self.batch_size)
        _check_choice("data.region_level", self.region_level, REGION_LEVELS)
        _check_choice("data.session_sampling", self.session_sampling, SAMPLING)
        if self.num_workers < 0:
            raise SpikemaskError(f"data.num_workers={self.num_workers}; expected >= 0")


@dataclass
class TrainConfig:
    """Optimisation, budgets and hardware.

    Attributes:
        max_epochs / max_steps / max_minutes: Budgets; training stops at the first reached
            (``None`` = no limit from that budget; at least one must be set). Default 300
            passes over the training trials (the ``paper`` preset: 1000): on the validation
            splits of the 11 shared sessions, each held out with its animal, 300 was ahead
            of 100, 150 and of fixed budgets of 2,000 and 4,000 steps (BENCHMARKS.md
            section 7). A budget in passes grows with the session: small sessions over-fit
            at more steps, large ones under-fit at fewer.
        lr: Peak learning rate of the one-cycle schedule (AdamW).
        weight_decay: AdamW weight decay of training (from scratch and pre-training;
            fine-tuning uses ``finetune_weight_decay``). Default 0.1 (the ``paper`` preset:
            0.01, the paper's): on the validation splits of the 11 shared sessions, each
            held out with its animal, 0.1 was ahead of 0.01 per unit on all four activity
            tasks (BENCHMARKS.md section 7).
        weight_decay_scope: Which parameters the weight decay applies to: ``all`` of them,
            or only ``matrices`` (parameters of two or more dimensions: linear layers and
            embedding tables), leaving biases and normalisation gains undecayed (AdamW
            pulls a decayed read-out bias towards 0, a rate of one spike per bin). At
            weight decay 0.1 on the validation splits, ``matrices`` was behind ``all``
            (BENCHMARKS.md section 7), so ``all`` stays the default.
        finetune_weight_decay: Fine-tuning only: AdamW weight decay while adapting a
            pre-trained model to new sessions (``None`` = ``weight_decay``). Default 0.3: on
            the validation splits of the 11 shared sessions, each held out with its animal,
            fine-tuning at 0.3 from a pre-training at 0.1 was ahead of fine-tuning at 0.1 on
            all four activity tasks (BENCHMARKS.md section 7). Decay pulls the pre-trained
            weights towards 0 as they adapt (at 0.3, a weight that no gradient holds ends a
            default fine-tuning at about two-thirds of its size); pre-training itself at
            0.3 was worse.
        readout_l2: Ridge penalty on each unit's read-out weights (NDT1), on the scale of a
            per-unit Poisson GLM: ``readout_l2 / 2 * |w_n|^2`` against unit n's mean
            Poisson NLL per scored entry, plus the same penalty on the drift of the unit's
            read-out bias from its log mean training rate. It shrinks units with few spikes
            towards their mean rate. 0 turns it off.
        readout_l2_trials: ``None`` (default) = ``readout_l2`` for every session. A number
            K₀ = ``readout_l2`` holds for a session of K₀ training trials and a session of
            K trials gets ``readout_l2 * K₀ / K``: the same prior against the Poisson NLL
            summed over the training trials, so small sessions are shrunk harder and large
            ones less (the loss is a mean over entries, which otherwise keeps the penalty's
            weight the same whatever the amount of data).
        ema_decay: Decay of an exponential moving average of the weights (0 = off). When
            on, validation, model selection and the saved checkpoints use the averaged
            weights; the average starts as the plain weights (decay warms up as
            ``min(ema_decay, (1 + step) / (10 + step))``).
        warmup_fraction: Fraction of the schedule spent warming up.
        shared_lr_scale: Fine-tuning only: the pre-trained (shared) weights learn at
            ``lr * shared_lr_scale`` while the new sessions' layers learn at ``lr``
            (training from scratch ignores it). Default 2: on the validation splits of the
            11 shared sessions, each held out with its animal, staged fine-tuning at 2 was
            ahead of 1 on co-smoothing and inter-region prediction and level on forward
            and intra-region prediction (BENCHMARKS.md section 7); 0.3 and 0.1 were worse.
        finetune_shrink: Fine-tuning only: start each pre-trained weight at
            ``finetune_shrink * pre-trained + (1 - finetune_shrink) * fresh`` where
            ``fresh`` is a new initialisation seeded by ``seed`` ("shrink and perturb");
            1 = start from the pre-trained weights as they are.
        staged_fraction: Fine-tuning in ``staged`` mode only: the share of the budget (by
            the learning-rate schedule's progress) during which only the new sessions'
            layers learn; then every weight does.
        gradient_clip: Gradient-norm clip (0 = off).
        seed: Seed of every random choice (sampling, masks, dropout, initialisation).
        precision: ``auto`` picks bf16 autocast on GPUs that support it and on CPUs with
            bf16 instructions (``avx512_bf16`` or AMX), else 32-bit
            (see :func:`spikemask.training.speed.resolve_precision`). ``bf16-mixed`` on a
            CPU without them warns: bf16 is emulated there, ~8x slower than fp32.
        accelerator / devices / num_nodes / strategy: Passed to Lightning's Trainer.
        compile: ``torch.compile`` the shared encoder (pays off on GPUs at large batches;
            the first steps are slower while it compiles).
        fused_adamw: Use torch's fused AdamW (one kernel per parameter). ``None`` = where
            every parameter is on CUDA or every one is on the CPU, except under ``16-mixed``
            (:func:`spikemask.training.module.use_fused_adamw`); ``False`` = torch's default
            (``foreach``) AdamW, the same update up to float rounding.
        accumulate_grad_batches: Batches whose gradients add up to one optimiser step (an
            effective batch of ``accumulate_grad_batches * data.batch_size`` trials).
        select_by: Which validation keeps the ``best`` checkpoint: the lowest ``val_loss``
            (Poisson NLL per scored entry, pooled over units, so the busiest units weigh
            most) or the highest ``unit_bps`` (bits per spike of each unit against its
            mean training rate, averaged over the units with scored spikes: every unit
            weighs the same, as in the per-unit evaluation).
        val_every_n_steps: Validate every this many optimiser steps, or at the end of every
            epoch when an epoch is longer (``None`` = at the end of every epoch). Training
            also ends with a validation, so the last weights are always scored.
        num_threads: CPU threads of torch (``None`` = ``OMP_NUM_THREADS`` when set, else
            the cores this process may use that are not busy with other work, from
            ``os.sched_getaffinity`` and the load average).
        log_every_n_steps: Logging interval.
        tensorboard: Also write TensorBoard logs (CSV logs are always written).
        progress_bar: Show a progress bar.
        checkpoint_every_n_steps / checkpoint_every_minutes: How often the resume state
            (``checkpoints/trainer/last.ckpt``) is written, whichever comes first (``None`` =
            no trigger of that kind); a crash loses at most one interval.
    """

    max_epochs: int | None = 300
    max_steps: int | None = None
    max_minutes: float | None = None
    lr: float = 1e-3
    weight_decay: float = 0.1
    weight_decay_scope: str = "all"
    finetune_weight_decay: float | None = 0.3
    readout_l2: float = 0.01
    readout_l2_trials: int | None = None
    ema_decay: float = 0.0
    warmup_fraction: float = 0.15
    shared_lr_scale: float = 2.0
    finetune_shrink: float = 1.0
    staged_fraction: float = 0.25
    gradient_clip: float = 1.0
    seed: int = 0
    precision: str = "auto"
    accelerator: str = "auto"
    devices: str | int = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    compile: bool = False
    fused_adamw: bool | None = None
    accumulate_grad_batches: int = 1
    select_by: str = "val_loss"
    val_every_n_steps: int | None = 100
    num_threads: int | None = None
    log_every_n_steps: int = 10
    tensorboard: bool = True
    progress_bar: bool = True
    checkpoint_every_n_steps: int | None = 200
    checkpoint_every_minutes: float | None = 10.0

    def __post_init__(self) -> None:
        if self.max_epochs is None and self.max_steps is None and self.max_minutes is None:
            raise SpikemaskError(
                "train: no budget set; expected max_epochs, max_steps or max_minutes"
            )
        for name in ("max_epochs", "max_steps", "max_minutes"):
            value = getattr(self, name)
            if value is not None:
                _check_positive(f"train.{name}", value)
        _check_positive("train.lr", self.lr)
        _check_positive("train.shared_lr_scale", self.shared_lr_scale)
        for name, value, top_open in (
            ("finetune_shrink", self.finetune_shrink, False),
            ("staged_fraction", self.staged_fraction, True),
            ("warmup_fraction", self.warmup_fraction, True),
            ("ema_decay", self.ema_decay, True),
        ):
            if not 0 <= value <= 1 or (top_open and value == 1):
                bound = ")" if top_open else "]"
                raise SpikemaskError(f"train.{name}={value}; expected a value in [0, 1{bound}")
        for name in ("weight_decay", "finetune_weight_decay", "readout_l2", "gradient_clip"):
            _check_non_negative(f"train.{name}", getattr(self, name))
        _check_choice("train.precision", str(self.precision), PRECISIONS)
        _check_choice("train.weight_decay_scope", str(self.weight_decay_scope), DECAY_SCOPES)
        _check_choice("train.select_by", str(self.select_by), SELECTIONS)
        _check_positive("train.num_nodes", self.num_nodes)
        _check_positive("train.log_every_n_steps", self.log_every_n_steps)
        _check_positive("train.accumulate_grad_batches", self.accumulate_grad_batches)
        for name in (
            "checkpoint_every_n_steps",
            "checkpoint_every_minutes",
            "val_every_n_steps",
            "readout_l2_trials",
        ):
            if getattr(self, name) is not None:
                _check_positive(f"train.{name}", getattr(self, name))
        if self.num_threads is not None:
            _check_positive("train.num_threads", self.num_threads)


@dataclass
class RunConfig:
    """Everything that defines a training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready values (tuples become lists)."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: str = "config") -> RunConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys are errors.

        A config recorded before ``model.tied_stitchers`` existed had separate read-in and
        read-out weights: it is rebuilt with ``tied_stitchers=False``, so that its weights
        still fit the model.
        """
        model = values.get("model") if isinstance(values, dict) else None
        if isinstance(model, dict) and "tied_stitchers" not in model:
            values = {**values, "model": {**model, "tied_stitchers": False}}
        return apply_overrides(cls(), values, where=where)


_PRESET_TRAIN = {
    # CPU-friendly: minutes on 2 cores; a higher peak lr suits the short schedule.
    "small": {"lr": 1e-3, "max_epochs": 300},
    # The paper's optimisation (method.md section 5).
    "paper": {
        "lr": 1e-4,
        "max_epochs": 1000,
        "weight_decay": 0.01,
        "finetune_weight_decay": None,  # the paper fine-tunes at its 0.01
    },
}


def run_preset(name: str) -> RunConfig:
    """The ``small`` or ``paper`` preset: model size plus matching optimisation."""
    if name not in _PRESET_TRAIN:
        raise SpikemaskError(f"unknown preset {name!r}; expected one of {sorted(_PRESET_TRAIN)}")
    return RunConfig(model=model_preset(name), train=TrainConfig(**_PRESET_TRAIN[name]))


def load_config(
    *, preset: str = "small", path: str | Path | None = None, sets: list[str] | None = None
) -> RunConfig:
    """Preset, then a YAML file, then ``key=value`` overrides, in that order."""
    config = run_preset(preset)
    if path is not None:
        config = apply_overrides(config, _read_yaml(Path(path)), where=str(path))
    if sets:
        config = apply_overrides(config, parse_set_options(sets), where="--set")
    return config


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SpikemaskError(f"config file {str(path)!r} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SpikemaskError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise SpikemaskError(f"config file {str(path)!r}: expected a mapping of sections")
    return values


def parse_set_options(sets: list[str]) -> dict[str, Any]:
    """``["model.width=256", "train.lr=3e-4"]`` -> nested dict (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpikemaskError(f"--set {item!r}: expected section.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        target = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise SpikemaskError(f"--set {item!r}: {part!r} is set twice")
        target[parts[-1]] = value
    return nested


def apply_overrides(obj: Any, values: dict[str, Any], *, where: str) -> Any:
    """A copy of dataclass ``obj`` with ``values`` applied, type-checked, recursively."""
    if not isinstance(values, dict):
        raise SpikemaskError(f"{where}: expected a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise SpikemaskError(
                f"{where}: unknown key {key!r} in {type(obj).__name__}; "
                f"expected one of {sorted(fields)}"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = apply_overrides(current, value, where=f"{where}: {key}")
        else:
            changes[key] = _coerce(value, hints[key], f"{where}: {key}")
    try:
        return dataclasses.replace(obj, **changes)
    except TypeError as err:  # a dataclass rejected a value combination
        raise SpikemaskError(f"{where}: {err}") from None


class _Mismatch(SpikemaskError):
    """A value of the wrong type; ``expected`` lists the accepted kinds, so that a union
    (``int | None``) can name all of them in one message."""

    def __init__(self, where: str, expected: list[str], value: Any) -> None:
        self.expected = expected
        kinds = expected[-1]
        if len(expected) > 1:
            kinds = f"{', '.join(expected[:-1])} or {kinds}"
        super().__init__(f"{where}: expected {kinds}, got {value!r}")


def _coerce(value: Any, hint: Any, where: str) -> Any:  # noqa: C901 - one branch per type kind
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        expected: list[str] = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except _Mismatch as err:
                expected.extend(err.expected)
        if "a number" in expected:  # an integer is a number: name the wider kind only
            expected = [kind for kind in expected if kind != "an integer"]
        if type(None) in args:
            expected.append("null")
        raise _Mismatch(where, list(dict.fromkeys(expected)), value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _Mismatch(where, ["a list"], value)
        item = args[0] if args else Any
        return tuple(_coerce_item(v, item, where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch(where, ["a mapping"], value)
        return {str(k): _coerce_item(v, args[1], where) for k, v in value.items()}
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch(where, ["true", "false"], value)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch(where, ["an integer"], value)
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise _Mismatch(where, ["a number"], value)
    if hint is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise _Mismatch(where, ["a string"], value)
    return value


def _coerce_item(value: Any, hint: Any, where: str) -> Any:
    """An item of a list or mapping: its type error is final (a union around the container
    must not restate it as the container's)."""
    try:
        return _coerce(value, hint, where)
    except _Mismatch as err:
        raise SpikemaskError(str(err)) from None


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not value > 0:
        raise SpikemaskError(f"{name}={value!r}; expected a positive number")


def _check_non_negative(name: str, value: float | None) -> None:
    """``None`` passes (a key whose null means "use another setting")."""
    if value is not None and value < 0:
        raise SpikemaskError(f"{name}={value!r}; expected a value >= 0")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SpikemaskError(f"{name}={value!r}; expected one of {list(choices)}")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
