"""spikemask: multi-task masking (MtM) transformers for neural population spiking data.

Shape letters used in docstrings throughout the package:

- ``B`` batch (trials), ``T`` time bins, ``N`` units (neurons),
- ``D`` model width, ``H`` attention heads, ``R`` regions, ``S`` sessions,
- ``P`` tokens (time bins plus prepended special tokens, or space-time patches).

Mask polarity is always named: ``unit_valid`` (True = real unit, not padding),
``hidden`` (True = withheld from the model's input), ``scored`` (True = counted in a
loss or metric).
"""

from __future__ import annotations

from spikemask.errors import SpikemaskError

__version__ = "0.1.0"

__all__ = ["SpikemaskError", "__version__"]
