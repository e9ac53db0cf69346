"""Atomic file writes: a temporary file in the same folder, then a rename.

Readers (and a crash at any moment) see either the old file or the complete new one, never a
partial file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomic", "write_text_atomic"]


def write_atomic(path: str | Path, write: Callable[[str], object]) -> None:
    """Write ``path`` by calling ``write(temporary name)``, then renaming over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    """:func:`write_atomic` for a text file."""
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))
