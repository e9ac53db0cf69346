"""The training progress bar: Lightning's, with a readable epoch label.

Both bars draw on stderr, so stdout holds only results.

Step-budgeted runs have no epoch limit (``max_epochs=-1``), which Lightning's rich bar
prints as ``Epoch 3/-2``; this one prints ``Epoch 3`` then. Neither bar shows the logger's
``v_num``.
"""

from __future__ import annotations

import contextlib
import sys
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
    """Lightning's tqdm bar, on stderr (Lightning writes it to stdout)."""

    def init_sanity_tqdm(self) -> Any:
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_sanity_tqdm()

    def init_train_tqdm(self) -> Any:
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_train_tqdm()

    def init_validation_tqdm(self) -> Any:
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_validation_tqdm()

    def init_predict_tqdm(self) -> Any:
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_predict_tqdm()

    def init_test_tqdm(self) -> Any:
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_test_tqdm()

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict:
        return _without_version(super().get_metrics(trainer, pl_module))


def progress_bar() -> Callback:
    """Lightning's rich progress bar when ``rich`` is installed, else its tqdm bar."""
    return _RichBar(console_kwargs={"stderr": True}) if _RICH_AVAILABLE else _TQDMBar()
