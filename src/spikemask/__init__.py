"""spikemask: multi-task masking (MtM) transformers for neural population spiking data.

Shape letters used in docstrings throughout the package:

- ``B`` batch (trials), ``T`` time bins, ``N`` units (neurons),
- ``D`` model width, ``H`` attention heads, ``R`` regions, ``S`` sessions,
- ``P`` tokens (time bins plus prepended special tokens, or space-time patches).

Mask polarity is always named: ``unit_valid`` (True = real unit, not padding),
``hidden`` (True = withheld from the model's input), ``scored`` (True = counted in a
loss or metric).

The top-level functions are imported on first use, so ``import spikemask`` stays cheap.

A user's mistake raises :class:`SpikemaskError` (one message naming what was wrong and what
was expected); advice about a request that works but is unlikely to give what was wanted
(for example training from scratch on a session with few trials) is a
:class:`SpikemaskWarning`.
"""

from __future__ import annotations

from typing import Any

from spikemask.errors import SpikemaskError, SpikemaskWarning

__version__ = "0.1.0"

_LAZY = {
    "Session": ("spikemask.data.session", "Session"),
    "load_session": ("spikemask.data.loading", "load_session"),
    "load_sessions": ("spikemask.data.loading", "load_sessions"),
    "train": ("spikemask.training.run", "train"),
    "finetune": ("spikemask.training.finetune", "finetune"),
    "load_run": ("spikemask.api", "load_run"),
    "evaluate": ("spikemask.evaluation.evaluate", "evaluate"),
}

__all__ = ["SpikemaskError", "SpikemaskWarning", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'spikemask' has no attribute {name!r}")
