"""The ``best`` and ``last`` safetensors checkpoints of a run folder, written during training.

``last`` is rewritten after every validation and at the end of training; ``best`` after a
validation that lowers the loss (and once at the end if no validation ran). Nothing is
written with non-finite weights (:func:`~spikemask.training.checkpoint.save_checkpoint`
refuses), so a diverged run keeps its last finite checkpoints.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from spikemask.config import RunConfig
from spikemask.data.regions import RegionVocabulary
from spikemask.training.checkpoint import Checkpoint, SessionInfo, save_checkpoint
from spikemask.training.module import MtMModule

__all__ = ["ModelFolderCheckpoint"]


class ModelFolderCheckpoint(Callback):
    """Writes safetensors checkpoints ``best`` and ``last`` (rank 0 only)."""

    def __init__(
        self,
        run_dir: Path,
        config: RunConfig,
        sessions: dict[str, SessionInfo],
        regions: RegionVocabulary,
    ) -> None:
        self.run_dir = run_dir
        self.config = config
        self.sessions = sessions
        self.regions = regions
        self.best = math.inf
        self.null = math.nan

    def _save(self, name: str, trainer: L.Trainer, module: MtMModule, val: float) -> None:
        state = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "val_loss": val,
            "val_null_loss": self.null,
        }
        checkpoint = Checkpoint(module.model, self.config, self.sessions, self.regions, state)
        with module.averaged_weights():  # the weights that were validated (EMA when on)
            save_checkpoint(self.run_dir / "checkpoints" / name, checkpoint)

    def on_validation_end(self, trainer: L.Trainer, module: MtMModule) -> None:
        if trainer.sanity_checking:
            return
        metric = trainer.callback_metrics.get("val_loss")
        val = float(metric) if metric is not None else math.nan
        null = trainer.callback_metrics.get("val_null_loss")
        self.null = float(null) if null is not None else math.nan
        if trainer.is_global_zero:
            self._save("last", trainer, module, val)
            if val < self.best:
                self._save("best", trainer, module, val)
        if val < self.best:
            self.best = val

    def on_train_end(self, trainer: L.Trainer, module: MtMModule) -> None:
        if trainer.is_global_zero:
            self._save("last", trainer, module, self.best)
            if not (self.run_dir / "checkpoints" / "best").exists():
                self._save("best", trainer, module, self.best)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "null": self.null}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = float(state_dict.get("best", math.inf))
        self.null = float(state_dict.get("null", math.nan))
