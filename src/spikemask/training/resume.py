"""Surviving interruptions: the periodic resume state, stop signals and the divergence guard.

* :class:`ResumeCheckpoint` writes Lightning's full trainer state (weights, optimiser,
  schedule, loop counters, data position) to ``checkpoints/trainer/last.ckpt`` every
  ``train.checkpoint_every_n_steps`` steps and every ``train.checkpoint_every_minutes``
  minutes (whichever comes first), at the end of training and when a stop signal arrives.
  Each write goes to a temporary file that is then renamed, so a kill at any moment leaves
  either the previous state or the new one.
* :class:`StopSignals` turns SIGINT, SIGTERM and SIGUSR1 (SLURM's usual pre-emption warning)
  into a request that the next training step honours: the state is saved and
  :class:`RunInterrupted` is raised (the CLI exits with ``128 + signal number``).
* :class:`DivergenceGuard` stops training with :class:`TrainingDiverged` before an optimiser
  step would apply a non-finite gradient, so the weights (and every checkpoint) stay finite.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from spikemask.errors import SpikemaskError
from spikemask.training.batches import SessionBatchSampler
from spikemask.training.checkpoint import check_finite

__all__ = [
    "EXIT_CODES",
    "DivergenceGuard",
    "ResumeCheckpoint",
    "RunInterrupted",
    "StopSignals",
    "TrainingDiverged",
]

STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name)
)
EXIT_CODES = {int(s): 128 + int(s) for s in STOP_SIGNALS}
"""Exit status of ``spikemask train`` / ``finetune`` stopped by each signal (130, 143, 138)."""


class RunInterrupted(Exception):
    """Training stopped on a signal; the resume state is at ``resume_path`` when ``saved``."""

    def __init__(self, signum: int, step: int, resume_path: Path, *, saved: bool) -> None:
        self.signum = int(signum)
        self.step = step
        self.resume_path = resume_path
        self.saved = saved
        name = signal.Signals(signum).name
        where = f"resume state saved in {str(resume_path)!r}" if saved else "nothing to save"
        super().__init__(f"stopped by {name} after step {step}; {where}")

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 1)


class TrainingDiverged(SpikemaskError):
    """The loss or a gradient became NaN or infinite."""


class StopSignals:
    """Context manager: while active, SIGINT / SIGTERM / SIGUSR1 only set :attr:`received`.

    A second SIGINT (Ctrl-C pressed twice) aborts at once with ``KeyboardInterrupt``.
    Handlers can only be installed from the main thread; elsewhere this does nothing.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signum

    def install(self) -> None:
        """(Re)install the handlers, e.g. over the ones Lightning sets when fitting starts."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            previous = signal.signal(signum, self._handle)
            self._previous.setdefault(signum, previous)

    def __enter__(self) -> StopSignals:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


class ResumeCheckpoint(Callback):
    """Writes the resume state periodically, at the end, and on a stop signal.

    Args:
        path: The resume file (``<run>/checkpoints/trainer/last.ckpt``).
        sampler: The training batch sampler, told how many batches of the epoch were used.
        signals: The active :class:`StopSignals`.
        every_n_steps: Step interval (``None``: no step trigger).
        every_minutes: Wall-clock interval (``None``: no time trigger).
    """

    def __init__(
        self,
        path: Path,
        sampler: SessionBatchSampler,
        signals: StopSignals,
        *,
        every_n_steps: int | None,
        every_minutes: float | None,
    ) -> None:
        self.path = Path(path)
        self.sampler = sampler
        self.signals = signals
        self.every_n_steps = every_n_steps
        self.every_s = every_minutes * 60 if every_minutes else None
        self._last_save = time.monotonic()
        self._first_step: int | None = None
        self._pending = False  # a save due at an epoch's last step, taken at the next one

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.signals.install()  # over Lightning's own SIGTERM / SLURM handlers
        self._last_save = time.monotonic()
        self._first_step = trainer.global_step

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self._first_step and self._any(trainer, self._stop()):
            # no step taken by this process yet: the state on disk (if any) is still current
            raise RunInterrupted(
                self._signum(), trainer.global_step, self.path, saved=self.path.is_file()
            )

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.sampler.consumed = batch_idx + 1
        stop = self._any(trainer, self._stop())
        due = self._pending or self._any(trainer, self._due(trainer))
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            # moved to the next step: a state taken between an epoch's last step and its
            # validation would skip that validation when resumed
            self._pending = due
            return
        if stop or due:
            self.save(trainer)
        if stop:
            raise RunInterrupted(self._signum(), trainer.global_step, self.path, saved=True)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.save(trainer)

    def on_load_checkpoint(
        self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        _start_next_epoch_cleanly(checkpoint)

    # Lightning restores a stateful loader only when it builds the loader after restoring,
    # which it does not when the schedule asks for ``estimated_stepping_batches`` first; the
    # callback state is always restored, so the sampler position travels here as well.
    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "sampler" in state_dict:
            self.sampler.load_state_dict(state_dict["sampler"])

    def save(self, trainer: L.Trainer) -> None:
        """Write the full trainer state atomically (all ranks call this; rank 0 writes)."""
        check_finite(dict(trainer.lightning_module.state_dict()), f"resume state {self.path}")
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp, weights_only=False)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        self._last_save = time.monotonic()
        self._pending = False

    def _stop(self) -> bool:
        return self.signals.received is not None

    def _signum(self) -> int:
        return self.signals.received if self.signals.received is not None else signal.SIGTERM

    def _due(self, trainer: L.Trainer) -> bool:
        steps = self.every_n_steps
        if steps and trainer.global_step % steps == 0:
            return True
        return bool(self.every_s and time.monotonic() - self._last_save >= self.every_s)

    @staticmethod
    def _any(trainer: L.Trainer, decision: bool) -> bool:
        """True on every rank when true on any (ranks must agree on collective saves)."""
        if trainer.world_size == 1:
            return decision
        return bool(trainer.strategy.reduce_boolean_decision(decision, all=False))


def _start_next_epoch_cleanly(checkpoint: dict[str, Any]) -> None:
    """Make a state saved after a finished epoch resume at the start of the next one.

    With a step budget Lightning treats every restore as a restart, and a state taken after
    the last batch (and validation) of an epoch then replays an empty epoch: the epoch
    counter ends one too high and the data order shifts. Clearing the finished epoch's batch
    counter (the state the next epoch starts from) avoids that; states taken mid-epoch are
    left alone. Callbacks' ``on_load_checkpoint`` runs before the loops are restored.
    """
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    epochs = loop.get("epoch_progress", {}).get("current", {})
    batches = loop.get("epoch_loop.batch_progress")
    if not epochs or not batches or len(set(epochs.values())) != 1:
        return  # mid-epoch (an epoch started but not processed): nothing to fix
    if batches.get("is_last_batch"):
        batches["current"] = dict.fromkeys(batches["current"], 0)
        batches["is_last_batch"] = False


class DivergenceGuard(Callback):
    """Stops training on a non-finite loss or gradient.

    On the CPU every step is checked before the optimiser applies it. On an accelerator,
    reading a value back every step would make the host wait for the device, so the checks
    add up on the device and are read every ``check_every_n_steps`` steps and before
    anything is saved (validation, the resume state, the end of training): training stops
    a few steps late, but no checkpoint holds non-finite weights either way.

    Args:
        lr: The configured peak learning rate (named in the message).
        check_gradients: Check gradients too (off under 16-bit mixed precision, whose gradient
            scaler skips steps with infinite gradients on purpose).
        check_every_n_steps: Steps between reads of the device-side check.
        defer: Defer the checks (default: on any device but the CPU).
    """

    def __init__(
        self,
        *,
        lr: float,
        check_gradients: bool = True,
        check_every_n_steps: int = 50,
        defer: bool | None = None,
    ) -> None:
        self.lr = lr
        self.check_gradients = check_gradients
        self.check_every_n_steps = check_every_n_steps
        self.defer = defer
        self._finite: torch.Tensor | None = None  # deferred: all checks so far passed
        self._checked_step = 0  # deferred: the last step known to be finite

    def _fail(self, step: int, what: str) -> None:
        """``step``: the last step whose update was applied (all finite)."""
        raise TrainingDiverged(
            f"training diverged at step {step + 1}: {what}; stopped before applying it (no "
            f"checkpoint holds non-finite weights; the last finite ones are from step {step}). "
            f"Lower train.lr (now {self.lr:g}) or set train.gradient_clip"
        )

    def _deferred(self, value: torch.Tensor) -> bool:
        return self.defer if self.defer is not None else value.device.type != "cpu"

    def _add(self, finite: torch.Tensor) -> None:
        finite = finite.all()
        self._finite = finite if self._finite is None else self._finite & finite

    def check_now(self, trainer: L.Trainer) -> None:
        """Read the deferred checks; raise if some step since the last read was not finite."""
        if self._finite is None:
            return
        finite, self._finite = bool(self._finite), None
        if finite:
            self._checked_step = trainer.global_step
            return
        raise TrainingDiverged(
            f"training diverged between steps {self._checked_step + 1} and "
            f"{trainer.global_step}: a loss or gradient is not finite; stopped before saving "
            f"anything (no checkpoint holds non-finite weights). Lower train.lr (now "
            f"{self.lr:g}) or set train.gradient_clip"
        )

    def on_before_optimizer_step(
        self, trainer: L.Trainer, module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self.check_gradients:
            return
        grads = [(n, p.grad) for n, p in module.named_parameters() if p.grad is not None]
        if not grads:
            return
        norms = torch.stack(torch._foreach_norm([g.detach() for _, g in grads]))
        if self._deferred(norms):
            self._add(torch.isfinite(norms))
            return
        if bool(torch.isfinite(norms).all()):
            return
        values = norms.tolist()
        bad = next(n for (n, _), v in zip(grads, values, strict=True) if not math.isfinite(v))
        self._fail(trainer.global_step, f"the gradient of {bad!r} is not finite")

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and self._deferred(loss):
            self._add(torch.isfinite(loss.detach()))
            if trainer.global_step % self.check_every_n_steps == 0:
                self.check_now(trainer)
            return
        if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss.detach()).all()):
            # the update was skipped (16-bit scaler) or finite: the weights are still finite
            self._fail(trainer.global_step - 1, f"the loss is {float(loss.detach().float().sum())}")

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.check_now(trainer)

    def on_save_checkpoint(
        self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.check_now(trainer)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.check_now(trainer)
