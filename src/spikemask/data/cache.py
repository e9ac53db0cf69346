"""On-disk cache of decoded spike counts.

Decoding the CSR lists of a split happens once; the dense (K, T, N) counts are then kept
as a ``.npy`` file keyed by the parquet file's absolute path, size and modification time,
and later reads memory-map it: opening a session reads no counts, and the operating system
pages in only what a batch touches. Whoever reads a whole mapped array (validation, mean
rates) or a batch of it hands the pages back with :func:`release_pages`, so a process
training on hundreds of sessions keeps only the batch it works on resident, not every
count it has ever read (the pages stay in the page cache for the next read).

Location: ``$SPIKEMASK_CACHE_DIR``, else ``$XDG_CACHE_HOME/spikemask``, else
``~/.cache/spikemask``. Set ``SPIKEMASK_CACHE_DIR=off`` to disable caching. A cache that
cannot be written is skipped with a warning; it never makes a read fail.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from spikemask.errors import SpikemaskWarning

__all__ = ["cache_dir", "load_counts", "release_pages", "store_counts"]

_FORMAT_VERSION = "1"


def cache_dir() -> Path | None:
    """The cache folder, or None when caching is disabled."""
    configured = os.environ.get("SPIKEMASK_CACHE_DIR")
    if configured is not None:
        return None if configured.lower() in {"", "0", "off", "none"} else Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spikemask"


def _entry(path: Path) -> Path | None:
    root = cache_dir()
    if root is None:
        return None
    stat = path.stat()
    key = f"{_FORMAT_VERSION}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return root / f"{path.stem}-{digest}.npy"


def load_counts(path: Path, num_rows: int | None = None) -> np.ndarray | None:
    """The cached counts of parquet file ``path`` (memory-mapped), or None on a miss."""
    entry = _entry(path)
    if entry is None or not entry.exists():
        return None
    try:
        counts = np.load(entry, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if counts.ndim != 3 or (num_rows is not None and counts.shape[0] != num_rows):
        return None
    return counts


def store_counts(path: Path, counts: np.ndarray) -> None:
    """Save decoded counts for ``path``; atomic, and silent about an unwritable cache."""
    entry = _entry(path)
    if entry is None:
        return
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=entry.parent)
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, np.ascontiguousarray(counts), allow_pickle=False)
        os.replace(tmp, entry)
    except OSError as err:
        warnings.warn(f"spike-count cache not written ({err})", SpikemaskWarning, stacklevel=2)


def release_pages(counts: np.ndarray) -> bool:
    """Drop the resident pages of a memory-mapped array from this process (the data stay
    in the operating system's page cache, and a later read maps them again).

    Returns:
        True when ``counts`` is memory-mapped and its pages were released; False for an
        in-memory array or where the platform cannot (no ``madvise``).
    """
    mapping = getattr(counts, "_mmap", None)
    if mapping is None or not hasattr(mapping, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return False
    try:
        mapping.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):  # a closed mapping, or a platform that refuses
        return False
    return True
