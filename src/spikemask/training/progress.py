"""The training progress bar: Lightning's, with a readable epoch label.

Step-budgeted runs have no epoch limit (``max_epochs=-1``), which Lightning's rich bar
prints as ``Epoch 3/-2``; this one prints ``Epoch 3`` then, and never the logger's
``v_num``.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback

__all__ = ["progress_bar"]


def progress_bar() -> Callback | None:
    """A rich progress bar when ``rich`` is installed, else None (Lightning's default)."""
    try:
        from lightning.pytorch.callbacks import RichProgressBar
        from lightning.pytorch.utilities.imports import _RICH_AVAILABLE
    except ImportError:  # pragma: no cover - depends on the Lightning build
        return None
    if not _RICH_AVAILABLE:
        return None

    class _Bar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            limit = self.trainer.max_epochs
            text = f"Epoch {current_epoch}" + (f"/{limit - 1}" if limit and limit > 0 else "")
            return f"{text:{len(self.validation_description)}}"

        def get_metrics(self, trainer: Any, pl_module: Any) -> dict:
            items = super().get_metrics(trainer, pl_module)
            items.pop("v_num", None)
            return items

    return _Bar()
