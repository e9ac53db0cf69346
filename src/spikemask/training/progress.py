"""The training progress bar: Lightning's, with a readable epoch label.

Step-budgeted runs have no epoch limit (``max_epochs=-1``), which Lightning's rich bar
prints as ``Epoch 3/-2``; this one prints ``Epoch 3`` then. Neither bar shows the logger's
``v_num``.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback, RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

__all__ = ["progress_bar"]


def _without_version(items: dict) -> dict:
    items.pop("v_num", None)
    return items


class _RichBar(RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:
        limit = self.trainer.max_epochs
        text = f"Epoch {current_epoch}" + (f"/{limit - 1}" if limit and limit > 0 else "")
        return f"{text:{len(self.validation_description)}}"

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict:
        return _without_version(super().get_metrics(trainer, pl_module))


class _TQDMBar(TQDMProgressBar):
    def get_metrics(self, trainer: Any, pl_module: Any) -> dict:
        return _without_version(super().get_metrics(trainer, pl_module))


def progress_bar() -> Callback:
    """Lightning's rich progress bar when ``rich`` is installed, else its tqdm bar."""
    return _RichBar() if _RICH_AVAILABLE else _TQDMBar()
