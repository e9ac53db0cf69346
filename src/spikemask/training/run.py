"""Training and fine-tuning runs: the run folder, Lightning's Trainer, resume.

A run folder holds::

    run.json                  what was trained on (sources, session ids, parent run)
    config.yaml               the resolved configuration
    checkpoints/best/         safetensors checkpoint with the lowest validation loss
    checkpoints/last/         safetensors checkpoint of the latest epoch
    checkpoints/trainer/      Lightning's resume state (optimiser, schedule, loop counters,
                              data position), written every checkpoint interval
    logs/csv/version_*/       CSV logs (one version per start; a resumed run adds one)
    logs/tensorboard/         TensorBoard logs
    .lock                     while a process writes the folder: its pid and host

See :mod:`spikemask.training.resume` (resume state, signals, divergence guard) and
:mod:`spikemask.training.rundir` (lock, cleanup of failed starts).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from torch.utils.data import DataLoader

from spikemask.config import RunConfig
from spikemask.data.cache import release_pages
from spikemask.data.loading import load_sessions
from spikemask.data.regions import RegionVocabulary
from spikemask.data.session import Session
from spikemask.errors import SpikemaskError, SpikemaskWarning
from spikemask.masking import SCHEMES
from spikemask.models import build_model
from spikemask.training.batches import (
    ResumableLoader,
    SessionBatchSampler,
    SessionTrialsDataset,
    mean_log_rate,
)
from spikemask.training.checkpoint import SessionInfo
from spikemask.training.model_folder import ModelFolderCheckpoint
from spikemask.training.module import MtMModule
from spikemask.training.progress import progress_bar
from spikemask.training.resume import DivergenceGuard, ResumeCheckpoint, StopSignals
from spikemask.training.rundir import RESUME_DIR, RunFolder
from spikemask.training.speed import (
    compile_encoder,
    resolve_precision,
    torch_threads,
    uses_cuda,
    validation_interval,
)

__all__ = ["TrainResult", "build_dataloader", "fit", "init_unit_rates", "session_info", "train"]


@dataclass(frozen=True)
class TrainResult:
    """Summary of a finished (or stopped) run."""

    run_dir: Path
    best_val_loss: float
    val_null_loss: float
    epochs: int
    steps: int
    elapsed_s: float
    interrupted: bool = False


def init_unit_rates(model: nn.Module, sessions: Sequence[Session]) -> None:
    """Start each session's read-out at its units' mean training rates."""
    for session in sessions:
        log_rates = torch.from_numpy(mean_log_rate(session.split("train").spikes))
        model.set_unit_log_rates(session.session_id, log_rates)


def session_info(session: Session) -> SessionInfo:
    return SessionInfo(session.session_id, session.unit_ids, session.unit_regions)


def build_dataloader(
    sessions: Sequence[Session],
    region_ids: Sequence[Any],
    *,
    split: str,
    config: RunConfig,
    shuffle: bool,
) -> DataLoader:
    """Session-grouped batches of one split of every session."""
    dataset = SessionTrialsDataset(
        [s.session_id for s in sessions],
        [s.split(split) for s in sessions],
        region_ids,
        reference=[s.split("train") for s in sessions],
    )
    sampler = SessionBatchSampler(
        dataset.trial_counts(),
        batch_size=config.data.batch_size,
        shuffle=shuffle,
        sampling=config.data.session_sampling,
        seed=config.train.seed,
    )
    workers = config.data.num_workers
    return ResumableLoader(
        dataset,
        sampler=sampler,
        batch_size=None,
        num_workers=workers,
        persistent_workers=workers > 0,
        # page-locked batches: the copy to the GPU runs without the host waiting for it
        pin_memory=uses_cuda(str(config.train.accelerator)),
    )


def _launch_layout(cfg) -> tuple[Any, int, str]:
    """(devices, num_nodes, strategy), filled in from torchrun / SLURM when left on auto.

    Under ``torchrun --nnodes M --nproc-per-node K`` (or an ``srun`` with K tasks per node
    on M nodes) every process must tell Lightning the same layout; reading it from the
    launcher's environment means the plain training command works unchanged.
    """
    devices, nodes, strategy = cfg.devices, cfg.num_nodes, cfg.strategy
    env = os.environ
    if devices == "auto" and "LOCAL_WORLD_SIZE" in env and "WORLD_SIZE" in env:
        devices = int(env["LOCAL_WORLD_SIZE"])
        nodes = max(1, int(env["WORLD_SIZE"]) // devices)
    elif devices == "auto" and "SLURM_NTASKS_PER_NODE" in env and "SLURM_NNODES" in env:
        devices = int(env["SLURM_NTASKS_PER_NODE"].split("(")[0])
        nodes = int(env["SLURM_NNODES"])
    if strategy == "auto" and devices != "auto" and int(devices) * nodes > 1:
        strategy = "ddp"
    if strategy == "ddp":
        # a batch holds one session, so the other sessions' layers get no gradient
        strategy = "ddp_find_unused_parameters_true"
    return devices, nodes, strategy


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning warnings that are noise for spikemask users."""
    with warnings.catch_warnings():
        # advice for short epochs does not apply: logging counts global steps
        warnings.filterwarnings("ignore", message=r"The number of training batches .* logging")
        # raised inside Lightning itself with recent torch versions
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
        yield


def _make_trainer(
    run_dir: Path, config: RunConfig, callbacks: list[Callback], batches_per_epoch: int
) -> L.Trainer:
    """Lightning's Trainer; ``callbacks`` must include the resume-state writer."""
    cfg = config.train
    val_interval, val_epochs = validation_interval(
        cfg.val_every_n_steps, batches_per_epoch, cfg.accumulate_grad_batches
    )
    devices, num_nodes, strategy = _launch_layout(cfg)
    # version=None: a resumed run logs into version_1, version_2, ... beside the first part
    loggers: list[Any] = [CSVLogger(run_dir / "logs", name="csv")]
    if cfg.tensorboard:
        try:
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(run_dir / "logs", name="tensorboard"))
        except (ImportError, ModuleNotFoundError):  # tensorboard is an optional extra
            pass
    return L.Trainer(
        default_root_dir=run_dir,
        max_epochs=cfg.max_epochs if cfg.max_epochs is not None else -1,
        max_steps=cfg.max_steps if cfg.max_steps is not None else -1,
        max_time=timedelta(minutes=cfg.max_minutes) if cfg.max_minutes else None,
        accelerator=cfg.accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=resolve_precision(str(cfg.precision), str(cfg.accelerator)),
        gradient_clip_val=cfg.gradient_clip or None,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        val_check_interval=val_interval,
        check_val_every_n_epoch=val_epochs,
        log_every_n_steps=cfg.log_every_n_steps,
        logger=loggers,
        callbacks=[*callbacks, *([progress_bar()] if cfg.progress_bar else [])],
        enable_checkpointing=False,
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        deterministic=False,
    )


def _check_spikes(sessions: Sequence[Session]) -> None:
    for session in sessions:
        spikes = session.split("train").spikes
        silent = not spikes.any()
        release_pages(spikes)  # read in full once: only the batches' pages stay resident
        if silent:
            raise SpikemaskError(
                f"session {session.session_id!r}, split 'train': every spike count is 0; "
                "expected spikes to train on"
            )


def _check_regions(sessions: Sequence[Session], config: RunConfig) -> None:
    if not config.masking.needs_regions:
        return
    for session in sessions:
        labelled = {
            r for r, ok in zip(session.unit_regions, session.labelled_units, strict=True) if ok
        }
        if len(labelled) < 2:
            raise SpikemaskError(
                f"session {session.session_id!r} has {len(labelled)} labelled region(s); the "
                f"masking schemes {list(config.masking.schemes)} include region masking, which "
                "needs units from at least two regions (use --masking temporal/neuron/causal)"
            )


@dataclass
class _Parts:
    """What one fit needs, built once the run folder is locked."""

    trainer: L.Trainer
    module: MtMModule
    saver: ModelFolderCheckpoint
    train_loader: DataLoader
    val_loader: DataLoader


def _build(
    run_dir: Path,
    model: nn.Module,
    sessions: Sequence[Session],
    regions: RegionVocabulary,
    config: RunConfig,
    signals: StopSignals,
    *,
    infos: dict[str, SessionInfo] | None,
    trainable: list[nn.Parameter] | None,
    new_params: list[nn.Parameter] | None,
    callbacks: Sequence[Callback],
) -> _Parts:
    region_ids = [regions.encode(s.unit_regions) for s in sessions]
    train_loader = build_dataloader(
        sessions, region_ids, split="train", config=config, shuffle=True
    )
    val_loader = build_dataloader(sessions, region_ids, split="val", config=config, shuffle=False)
    infos = infos or {s.session_id: session_info(s) for s in sessions}
    saver = ModelFolderCheckpoint(run_dir, config, infos, regions)
    resumer = ResumeCheckpoint(
        run_dir / RESUME_DIR / "last.ckpt",
        train_loader.sampler,
        signals,
        every_n_steps=config.train.checkpoint_every_n_steps,
        every_minutes=config.train.checkpoint_every_minutes,
    )
    # 16-bit mixed precision skips steps with infinite gradients on purpose
    guard = DivergenceGuard(
        lr=config.train.lr, check_gradients=str(config.train.precision) != "16-mixed"
    )
    if config.train.compile:
        compile_encoder(model)
    module = MtMModule(
        model,
        masking=config.masking,
        train=config.train,
        trainable=trainable,
        new_params=new_params,
    )
    # the guard runs first: nothing is saved after a non-finite step
    trainer = _make_trainer(run_dir, config, [guard, saver, resumer, *callbacks], len(train_loader))
    return _Parts(trainer, module, saver, train_loader, val_loader)


def _run_fit(parts: _Parts, run_dir: Path, resume: bool) -> None:
    trainer, module = parts.trainer, parts.module
    ckpt = run_dir / RESUME_DIR / "last.ckpt" if resume else None
    with _quiet_lightning():
        trainer.fit(module, parts.train_loader, parts.val_loader, ckpt_path=ckpt, weights_only=True)
        unscored = module.validated_step != trainer.global_step
        if (unscored or not math.isfinite(parts.saver.best)) and not trainer.interrupted:
            # a budget ended training after the latest validation (or before any): validate
            # once now so the last weights are scored and the checkpoints carry a loss
            trainer.validate(module, parts.val_loader, verbose=False)


def _has_saved_state(run_dir: Path) -> bool:
    """Whether a failed run left something to resume from or use (then it is kept)."""
    saved = run_dir / "checkpoints"
    return (saved / "trainer" / "last.ckpt").is_file() or (saved / "last").is_dir()


def fit(
    model: nn.Module,
    sessions: Sequence[Session],
    regions: RegionVocabulary,
    out: str | Path,
    *,
    config: RunConfig,
    record: dict[str, Any],
    infos: dict[str, SessionInfo] | None = None,
    trainable: list[nn.Parameter] | None = None,
    new_params: list[nn.Parameter] | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train ``model`` on ``sessions`` into run folder ``out`` (the shared core of train and
    finetune).

    Raises:
        SpikemaskError: Bad input, a locked or non-empty folder, or :class:`TrainingDiverged`.
        RunInterrupted: SIGINT / SIGTERM / SIGUSR1 stopped the run (resume state saved).
    """
    _check_spikes(sessions)
    _check_regions(sessions, config)
    with StopSignals() as signals, torch_threads(config.train.num_threads):
        folder = RunFolder.open(Path(out), config, record, resume=resume, rank=rank_zero_only.rank)
        parts: _Parts | None = None
        start = time.perf_counter()
        try:
            parts = _build(
                folder.path,
                model,
                sessions,
                regions,
                config,
                signals,
                infos=infos,
                trainable=trainable,
                new_params=new_params,
                callbacks=callbacks,
            )
            _run_fit(parts, folder.path, resume)
        except BaseException:
            if not resume and not _has_saved_state(folder.path):
                folder.discard()  # nothing worth keeping: the same command can run again
            raise
        finally:
            folder.release()
    trainer = parts.trainer
    return TrainResult(
        folder.path,
        parts.saver.best,
        parts.saver.null,
        trainer.current_epoch,
        trainer.global_step,
        time.perf_counter() - start,
        interrupted=trainer.interrupted,
    )


def train(
    data: Sequence[str | Path | Session],
    out: str | Path,
    *,
    config: RunConfig | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train a new model on one or many sessions.

    Args:
        data: Dataset folders (or a ``.txt`` file listing them, or loaded sessions).
        out: New run folder (or the folder of an interrupted run with ``resume=True``).
        config: Resolved run configuration (default: the ``small`` preset).
        resume: Continue the interrupted run in ``out`` exactly where its last epoch ended.
        callbacks: Extra Lightning callbacks.
    """
    from spikemask.config import run_preset

    config = config or run_preset("small")
    sessions = _as_sessions(data, config)
    _warn_if_few_trials(sessions)
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    regions = RegionVocabulary.from_sessions(sessions)
    model = build_model(
        config.model,
        sessions={s.session_id: s.num_units for s in sessions},
        num_prompts=len(SCHEMES),
    )
    init_unit_rates(model, sessions)
    record = {
        "kind": "train",
        "sessions": [s.session_id for s in sessions],
        "sources": [str(s.metadata.get("source", "")) for s in sessions],
    }
    return fit(
        model,
        sessions,
        regions,
        out,
        config=config,
        record=record,
        resume=resume,
        callbacks=callbacks,
    )


FEW_TRIALS = 120
"""Below this many training trials in every session, training from scratch is advised against:
on the Steinmetz sessions (BENCHMARKS.md §7, the trial-count curve) MtM from scratch beats
the linear baseline pooled on 5 of 5 sessions with all their trials (176-313), on 1 to 4 of
5 with 120 (depending on which trials) and on at most 1 of 5 with 80; a model pre-trained
on other animals and fine-tuned is ahead on 4 of 4 with 120."""


def _warn_if_few_trials(sessions: Sequence[Session]) -> None:
    if rank_zero_only.rank != 0:  # one warning per distributed run
        return
    counts = {s.session_id: s.split("train").num_trials for s in sessions}
    if not counts or max(counts.values()) >= FEW_TRIALS:
        return
    listed = ", ".join(f"{sid} ({n})" for sid, n in counts.items())
    warnings.warn(
        f"few training trials: {listed}; below about {FEW_TRIALS} a model trained from "
        "scratch tends to predict worse than the linear baseline (BENCHMARKS.md §7). "
        "Fine-tuning a model pre-trained on other sessions usually does better: spikemask finetune "
        "PRETRAINED_RUN DATA --out OUT",
        SpikemaskWarning,
        stacklevel=3,
    )


def _as_sessions(data: Sequence[str | Path | Session], config: RunConfig) -> list[Session]:
    if data and all(isinstance(d, Session) for d in data):
        return list(data)  # type: ignore[arg-type]
    if any(isinstance(d, Session) for d in data):
        raise SpikemaskError("pass either dataset folders or Session objects, not both")
    return load_sessions(list(data), region_level=config.data.region_level)  # type: ignore[arg-type]
