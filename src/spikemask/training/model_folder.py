"""The ``best`` and ``last`` safetensors checkpoints of a run folder, written during training.

``last`` is rewritten after every validation and at the end of training; ``best`` after a
validation that improves the selection metric (``train.select_by``: the lowest validation
loss, or the highest per-unit bits per spike), and once at the end if no validation ran. Nothing is
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
        self.select_by = config.train.select_by
        #: the best validation loss, and the monitored value (lower is better) it came with
        self.best = math.inf
        self.best_score = math.inf
        self.null = math.nan
        self.unit_bps = math.nan

    def _save(self, name: str, trainer: L.Trainer, module: MtMModule, val: float) -> None:
        state = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "val_loss": val,
            "val_null_loss": self.null,
            "val_unit_bps": self.unit_bps,
            "select_by": self.select_by,
        }
        checkpoint = Checkpoint(module.model, self.config, self.sessions, self.regions, state)
        with module.averaged_weights():  # the weights that were validated (EMA when on)
            save_checkpoint(self.run_dir / "checkpoints" / name, checkpoint)

    def on_validation_end(self, trainer: L.Trainer, module: MtMModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics

        def value(name: str) -> float:
            metric = metrics.get(name)
            return float(metric) if metric is not None else math.nan

        val = value("val_loss")
        self.null = value("val_null_loss")
        self.unit_bps = value("val_unit_bps")
        score = -self.unit_bps if self.select_by == "unit_bps" else val
        better = score < self.best_score  # False for NaN: a non-finite score never wins
        if trainer.is_global_zero:
            self._save("last", trainer, module, val)
            if better:
                self._save("best", trainer, module, val)
        if better:
            self.best, self.best_score = val, score

    def on_train_end(self, trainer: L.Trainer, module: MtMModule) -> None:
        if trainer.is_global_zero:
            self._save("last", trainer, module, self.best)
            if not (self.run_dir / "checkpoints" / "best").exists():
                self._save("best", trainer, module, self.best)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_score": self.best_score, "null": self.null}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = float(state_dict.get("best", math.inf))
        self.best_score = float(state_dict.get("best_score", self.best))
        self.null = float(state_dict.get("null", math.nan))
