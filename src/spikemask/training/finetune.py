"""Fine-tuning a trained model on sessions it has not seen."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from spikemask.config import RunConfig, apply_overrides, parse_set_options, run_preset
from spikemask.config import _read_yaml as read_yaml
from spikemask.data.loading import load_sessions
from spikemask.data.session import Session
from spikemask.devices import lightning_accelerator
from spikemask.errors import SpikemaskError
from spikemask.models import build_model
from spikemask.models.config import ModelConfig
from spikemask.training.checkpoint import Checkpoint, load_run_checkpoint
from spikemask.training.run import TrainResult, fit, init_unit_rates, session_info

__all__ = [
    "FINETUNE_MODES",
    "add_sessions",
    "finetune",
    "finetune_budget",
    "load_run_checkpoint",
]

FINETUNE_MODES = ("full", "session", "staged")


class SharedFrozenFirst(Callback):
    """Staged fine-tuning: the shared weights get no update during the first ``fraction``
    of training (their gradients are dropped before each optimiser step, so AdamW leaves
    them and their moments alone); the new session layers learn from the first step.

    Progress is measured like the learning-rate schedule (steps, or wall-clock time under
    a minutes budget), so a resumed run continues in the same stage.
    """

    def __init__(self, shared: Sequence[nn.Parameter], fraction: float):
        self.shared = list(shared)
        self.fraction = fraction
        self._progress = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from spikemask.training.module import schedule_progress

        minutes = pl_module.train_config.max_minutes
        self._progress = schedule_progress(
            total_steps=trainer.estimated_stepping_batches,
            budget_s=minutes * 60 if minutes else None,
        )

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._progress is not None and self._progress(trainer.global_step) < self.fraction:
            for parameter in self.shared:
                parameter.grad = None


def add_sessions(checkpoint: Checkpoint, sessions: Sequence[Session]) -> None:
    """Give the model fresh session layers (stitchers, session token) for new sessions.

    Raises:
        SpikemaskError: A session the model already has layers for.
    """
    for session in sessions:
        if session.session_id in checkpoint.sessions:
            raise SpikemaskError(
                f"session {session.session_id!r} is already in the model (it was trained on it); "
                "fine-tuning adds unseen sessions — evaluate it directly, or train a new run"
            )
    for session in sessions:
        checkpoint.model.add_session(session.session_id, session.num_units)
        checkpoint.sessions[session.session_id] = session_info(session)
    init_unit_rates(checkpoint.model, sessions)
    new_regions = [r for s in sessions for r in s.unit_regions]
    checkpoint.regions = checkpoint.regions.extend(new_regions)


def finetune(
    run: str | Path,
    data: Sequence[str | Path | Session],
    out: str | Path,
    *,
    mode: str = "staged",
    which: str = "best",
    config: RunConfig | None = None,
    config_path: str | Path | None = None,
    sets: Sequence[str] = (),
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    device: str = "auto",
) -> TrainResult:
    """Adapt a trained model to new sessions.

    Args:
        run: Run folder of the pre-trained model.
        data: Dataset folders (or sessions) the model has not seen.
        out: New run folder.
        mode: ``staged`` (default) trains only the new sessions' read-in / read-out
            layers and session tokens for the first ``config.train.staged_fraction`` of
            the budget (default a quarter), then every weight; ``full`` trains every
            weight from the start (the pre-trained ones at
            ``train.lr * train.shared_lr_scale``, by default twice the rate; in
            ``staged`` mode too once they learn);
            ``session`` trains only the new sessions' layers (fast, the shared model
            frozen). On the validation splits of all 11 shared sessions, each held out with
            its animal, staged was ahead of full on co-smoothing, inter- and intra-region
            prediction, and session behind both and behind training from scratch
            (BENCHMARKS.md §7).
        which: Start from the run's ``best`` or ``last`` checkpoint.
        config: Replaces the run's masking / data / training settings (model must match).
            Without it, the run's settings are kept except the budget, which is the
            preset's from-scratch budget (300 passes over the new sessions' training
            trials for the small preset; :func:`finetune_budget`), not the pre-training's.
        config_path: YAML file of overrides applied on top.
        sets: ``key=value`` overrides applied after ``config_path``.
        resume: Continue an interrupted fine-tuning run in ``out``.
        device: Where fine-tuning runs: ``auto`` (default; the config's
            ``train.accelerator`` / ``train.devices``, which pick every GPU there is, else
            the CPU), ``cpu``, ``cuda`` or ``mps``; checked before anything is loaded.
    """
    if mode not in FINETUNE_MODES:
        raise SpikemaskError(f"mode={mode!r}; expected one of {FINETUNE_MODES}")
    accelerator, devices = lightning_accelerator(device)
    checkpoint = load_run_checkpoint(run, which)
    config = _finetune_config(checkpoint.config, config, config_path, sets)
    if accelerator != "auto":
        train = dataclasses.replace(config.train, accelerator=accelerator, devices=devices)
        config = dataclasses.replace(config, train=train)
    if config.model != checkpoint.config.model:
        raise SpikemaskError("fine-tuning cannot change the model architecture (model.* keys)")
    if isinstance(data, str | Path) or not data:
        data = [data] if data else []
    sessions = (
        list(data)
        if data and isinstance(data[0], Session)
        else load_sessions(list(data), region_level=config.data.region_level)
    )
    if not sessions:
        raise SpikemaskError("no dataset given to fine-tune on")
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    add_sessions(checkpoint, sessions)
    trainable = None
    model = checkpoint.model
    own = [p for s in sessions for p in model.session_parameters(s.session_id)]
    if mode == "session":
        trainable = own
        keep = {id(p) for p in trainable}
        for parameter in model.parameters():
            parameter.requires_grad_(id(parameter) in keep)
    elif mode == "staged":
        keep = {id(p) for p in own}
        shared = [p for p in model.parameters() if id(p) not in keep]
        callbacks = [SharedFrozenFirst(shared, config.train.staged_fraction), *callbacks]
    if config.train.finetune_shrink != 1.0:
        shrink_towards_fresh(checkpoint, config, keep=own)
    checkpoint.model.train()
    record = {
        "kind": "finetune",
        "mode": mode,
        "parent": run if str(run).startswith("hf://") else str(Path(run).resolve()),
        "sessions": [s.session_id for s in sessions],
        "sources": [str(s.metadata.get("source", "")) for s in sessions],
    }
    return fit(
        checkpoint.model,
        sessions,
        checkpoint.regions,
        out,
        config=config,
        record=record,
        infos=checkpoint.sessions,
        trainable=trainable,
        new_params=own,
        resume=resume,
        callbacks=callbacks,
    )


@torch.no_grad()
def shrink_towards_fresh(
    checkpoint: Checkpoint, config: RunConfig, keep: Sequence[nn.Parameter] = ()
) -> None:
    """Move the pre-trained weights part of the way back to a fresh initialisation.

    Every parameter not in ``keep`` becomes ``s * pre-trained + (1 - s) * fresh`` with
    ``s = config.train.finetune_shrink`` and ``fresh`` drawn from a generator seeded by
    ``config.train.seed`` (the same seed gives the same start). The weights the caller
    keeps (the new sessions' layers, initialised already) are left alone.
    """
    shrink = config.train.finetune_shrink
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        torch.manual_seed(config.train.seed)
        fresh = build_model(
            config.model,
            sessions={sid: info.num_units for sid, info in checkpoint.sessions.items()},
            num_prompts=checkpoint.model.num_prompts,
        )
    skip = {id(p) for p in keep}
    new = dict(fresh.named_parameters())
    for name, parameter in checkpoint.model.named_parameters():
        if id(parameter) in skip:
            continue
        start = new[name].to(device=parameter.device, dtype=parameter.dtype)
        parameter.mul_(shrink).add_(start, alpha=1.0 - shrink)


def finetune_budget(base: RunConfig) -> RunConfig:
    """``base`` with the budget a fine-tuning gets unless one is given.

    The pre-training's budget does not carry over (15,000 steps over many sessions would be
    far too long for one new session): a fine-tuning gets the from-scratch budget of its
    preset, ``train.max_epochs`` passes over the new sessions' training trials (300 for the
    ``small`` preset, 1000 for ``paper``; 300 for a model that matches neither), with no step
    or time limit, the budget the benchmark gives it (BENCHMARKS.md section 7).
    """
    epochs = next(
        (
            preset.train.max_epochs
            for preset in (run_preset("small"), run_preset("paper"))
            if _same_architecture(preset.model, base.model)
        ),
        run_preset("small").train.max_epochs,
    )
    train = dataclasses.replace(base.train, max_epochs=epochs, max_steps=None, max_minutes=None)
    return dataclasses.replace(base, train=train)


def _same_architecture(preset: ModelConfig, model: ModelConfig) -> bool:
    # the model's size only: a run may change its dropout, stitchers, ... and keep its preset
    keys = ("architecture", "width", "num_layers", "num_heads", "mlp_width")
    return all(getattr(preset, key) == getattr(model, key) for key in keys)


def _finetune_config(
    base: RunConfig, given: RunConfig | None, path: str | Path | None, sets: Sequence[str]
) -> RunConfig:
    config = given or finetune_budget(base)
    if path is not None:
        config = apply_overrides(config, read_yaml(Path(path)), where=str(path))
    if sets:
        config = apply_overrides(config, parse_set_options(list(sets)), where="--set")
    return config
