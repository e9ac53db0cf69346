"""Read and write the IBL trial-aligned parquet layout.

Layout (one dataset per session, one parquet row per trial)::

    <dir>/data/{train,val,test}-*.parquet

Columns: ``spikes_sparse_data / _indices / _indptr / _shape`` hold each trial's (T, N) count
matrix in CSR form (rows = time bins, columns = units); ``cluster_*`` list columns hold
per-unit metadata repeated on every row (``cluster_regions``, ``cluster_uuids``,
``cluster_depths``, ...); numeric scalar columns are per-trial behaviour, numeric list columns
of length T are per-bin behaviour (hyphenated names such as ``whisker-motion-energy`` kept);
``binsize``, ``interval_len``, ``window_start``, ``align_event``, ``eid``, ``subject``,
``lab`` describe the session.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from spikemask.data import _csr
from spikemask.data import cache as cache_mod
from spikemask.data.session import SPLITS, Session, TrialSet
from spikemask.errors import SpikemaskError

__all__ = ["find_split_files", "read_session", "write_session"]

SPIKE_COLUMNS = tuple(f"spikes_sparse_{p}" for p in ("data", "indices", "indptr", "shape"))
_SESSION_COLUMNS = {"binsize", "interval_len", "window_start", "align_event", "eid", "trial_index"}
_UNIT_PREFIX = "cluster_"
_UNIT_EXTRA = {"good_clusters"}


def find_split_files(directory: str | Path) -> dict[str, list[Path]]:
    """The parquet files of each split under ``directory`` (or ``directory/data``)."""
    root = Path(directory).expanduser()
    if not root.exists():
        raise SpikemaskError(f"dataset folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise SpikemaskError(f"{str(root)!r} is not a folder; expected a dataset folder")
    data_dir = root / "data" if (root / "data").is_dir() else root
    files = {s: sorted(data_dir.glob(f"{s}-*.parquet")) for s in SPLITS}
    missing = [s for s, f in files.items() if not f]
    if missing:
        raise SpikemaskError(
            f"{str(data_dir)!r}: no parquet file for split(s) {missing}; expected "
            f"files named data/<split>-*.parquet for splits {list(SPLITS)}"
        )
    return files


def read_session(
    directory: str | Path, *, session_id: str | None = None, cache: bool = True
) -> Session:
    """Load one session stored in the IBL parquet layout.

    Args:
        directory: The dataset folder (holding ``data/``) or the ``data/`` folder itself.
        session_id: Overrides the id; by default the ``eid`` column, else the folder name.
        cache: Keep decoded spike counts in the on-disk cache (see ``spikemask.data.cache``)
            so that later reads are memory-mapped and near-instant.

    Returns:
        The validated :class:`Session`.

    Raises:
        SpikemaskError: Missing split files, malformed CSR columns, invalid counts,
            inconsistent unit metadata; the message names the file and the field.
    """
    try:
        return _read_session(directory, session_id, cache)
    finally:
        # Arrow's allocator keeps freed blocks; without this each session read leaves
        # ~7 MB of heap behind (measured on the Steinmetz sessions), which adds up over
        # hundreds of sessions.
        pa.default_memory_pool().release_unused()


def _read_session(directory: str | Path, session_id: str | None, cache: bool) -> Session:
    files = find_split_files(directory)
    units = None
    splits: dict[str, TrialSet] = {}
    first_table = None
    for split, paths in files.items():
        loaded = [_load_file(path, cache=cache) for path in paths]
        first_table = first_table or loaded[0][0]
        trials, unit_meta = _read_split(loaded, paths)
        if units is None:
            units = (unit_meta, paths[0])
        else:
            _check_same_units(units, unit_meta, paths[0])
        splits[split] = trials
    unit_meta = units[0]
    info = _session_info(first_table, files["train"][0])
    sid = session_id or info.pop("eid", None) or _default_id(directory)
    info.pop("eid", None)
    num_units = splits["train"].spikes.shape[2]
    regions = unit_meta.pop("cluster_regions", None)
    if regions is None:
        regions = np.array(["unknown"] * num_units)
    uuids = unit_meta.pop("cluster_uuids", None)
    if uuids is None:
        uuids = np.array([f"unit{i:04d}" for i in range(num_units)])
    depths = unit_meta.pop("cluster_depths", None)
    session = Session(
        session_id=str(sid),
        bin_size_s=float(info.pop("bin_size_s")),
        window_start_s=info.pop("window_start_s"),
        align_event=str(info.pop("align_event")),
        unit_ids=tuple(uuids),
        unit_regions=tuple(regions),
        unit_depths=None if depths is None else np.asarray(depths, dtype=np.float64),
        unit_attributes=unit_meta,
        splits=splits,
        metadata={**info, "source": str(Path(directory).expanduser().resolve())},
    )
    for trials in splits.values():  # validation read every count: hand the pages back
        cache_mod.release_pages(trials.spikes)
    return session


def _default_id(directory: str | Path) -> str:
    path = Path(directory).expanduser().resolve()
    return path.parent.name if path.name == "data" else path.name


def _load_file(path: Path, *, cache: bool) -> tuple[pa.Table, np.ndarray]:
    """The non-spike columns of one parquet file and its decoded (K, T, N) counts."""
    if cache:
        table = _read_table(path, spikes=False)
        counts = cache_mod.load_counts(path, table.num_rows)
        if counts is not None:
            return table, counts
    table = _read_table(path, spikes=True)
    counts = _csr.decode_table(table, path)
    if cache:
        cache_mod.store_counts(path, counts)
        # hand out the memory-mapped copy: many sessions then cost page cache, not RAM
        mapped = cache_mod.load_counts(path, table.num_rows)
        counts = mapped if mapped is not None else counts
    return table.drop_columns(list(SPIKE_COLUMNS)), counts


def _read_table(path: Path, *, spikes: bool) -> pa.Table:
    try:
        names = pq.read_schema(path).names
        columns = None if spikes else [c for c in names if c not in SPIKE_COLUMNS]
        table = pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as err:
        raise SpikemaskError(f"{str(path)!r}: not a readable parquet file ({err})") from None
    missing = [c for c in SPIKE_COLUMNS if c not in names]
    if missing:
        raise SpikemaskError(
            f"{str(path)!r}: missing column(s) {missing}; "
            f"expected CSR spike columns {SPIKE_COLUMNS}"
        )
    return table


def _read_split(
    loaded: list[tuple[pa.Table, np.ndarray]], paths: list[Path]
) -> tuple[TrialSet, dict[str, np.ndarray]]:
    spikes_parts, index_parts, trial_parts, bin_parts = [], [], [], []
    unit_meta: dict[str, np.ndarray] | None = None
    for path, (table, counts) in zip(paths, loaded, strict=True):
        spikes_parts.append(counts)
        num_trials, num_bins = counts.shape[:2]
        meta = _unit_columns(table, path, counts.shape[2])
        if unit_meta is None:
            unit_meta = meta
        else:
            _check_same_units((unit_meta, paths[0]), meta, path)
        index_parts.append(_trial_index(table, num_trials))
        trial, per_bin = _behaviour_columns(table, path, num_bins)
        trial_parts.append(trial)
        bin_parts.append(per_bin)
    spikes = spikes_parts[0] if len(spikes_parts) == 1 else np.concatenate(spikes_parts)
    trials = TrialSet(
        spikes=spikes,
        trial_index=np.concatenate(index_parts),
        trial_behavior=_concat_dicts(trial_parts),
        bin_behavior=_concat_dicts(bin_parts),
    )
    return trials, unit_meta or {}


def _concat_dicts(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    keys = [k for k in parts[0] if all(k in p for p in parts)]
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def _trial_index(table: pa.Table, num_trials: int) -> np.ndarray:
    if "trial_index" in table.column_names:
        return table.column("trial_index").to_numpy(zero_copy_only=False).astype(np.int64)
    return np.arange(num_trials, dtype=np.int64)


def _unit_columns(table: pa.Table, path: Path, num_units: int) -> dict[str, np.ndarray]:
    """Per-unit metadata; every row must repeat the same values."""
    meta: dict[str, np.ndarray] = {}
    for name in table.column_names:
        if not (name.startswith(_UNIT_PREFIX) or name in _UNIT_EXTRA):
            continue
        column = table.column(name).combine_chunks()
        if not pa.types.is_list(column.type) and not pa.types.is_large_list(column.type):
            continue
        lengths = column.value_lengths().to_numpy(zero_copy_only=False)
        if np.any(lengths != num_units):
            bad = int(np.flatnonzero(lengths != num_units)[0])
            raise SpikemaskError(
                f"{str(path)!r}: field {name!r} has {int(lengths[bad])} entries in row {bad}; "
                f"expected one per unit ({num_units}, from spikes_sparse_shape)"
            )
        values = np.asarray(column.flatten().to_numpy(zero_copy_only=False))
        rows = values.reshape(len(column), num_units) if len(column) else values.reshape(0, 0)
        if len(rows) > 1 and not np.all(rows == rows[0]):
            bad = int(np.flatnonzero(~np.all(rows == rows[0], axis=1))[0])
            raise SpikemaskError(
                f"{str(path)!r}: field {name!r} differs between row 0 and row {bad}; expected "
                "the same unit metadata on every row of a session"
            )
        if len(rows):
            meta[name] = rows[0].astype(str) if rows.dtype == object else rows[0]
    return meta


def _behaviour_columns(
    table: pa.Table, path: Path, num_bins: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    trial: dict[str, np.ndarray] = {}
    per_bin: dict[str, np.ndarray] = {}
    for name in table.column_names:
        if name in SPIKE_COLUMNS or name in _SESSION_COLUMNS or name.startswith(_UNIT_PREFIX):
            continue
        column = table.column(name).combine_chunks()
        kind = column.type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
            trial[name] = column.to_numpy(zero_copy_only=False).astype(np.float64)
        elif (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and _numeric(kind):
            per_bin[name] = _per_bin_column(column, name, path, num_bins)
    return trial, per_bin


def _numeric(list_type: pa.DataType) -> bool:
    value = list_type.value_type
    return pa.types.is_integer(value) or pa.types.is_floating(value)


def _per_bin_column(column: pa.Array, name: str, path: Path, num_bins: int) -> np.ndarray:
    lengths = column.value_lengths().to_numpy(zero_copy_only=False)
    if np.any(lengths != num_bins):
        bad = int(np.flatnonzero(lengths != num_bins)[0])
        raise SpikemaskError(
            f"{str(path)!r}: per-bin field {name!r} has {int(lengths[bad])} values in row {bad}; "
            f"expected one per time bin ({num_bins})"
        )
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return values.reshape(len(column), num_bins)


def _session_info(table: pa.Table, path: Path) -> dict[str, Any]:
    first = {
        name: table.column(name)[0].as_py()
        for name in table.column_names
        if name not in SPIKE_COLUMNS
        and not name.startswith(_UNIT_PREFIX)
        and table.num_rows
        and (pa.types.is_string(table.column(name).type) or name in _SESSION_COLUMNS)
    }
    bin_size = first.pop("binsize", None)
    if bin_size is None or not np.isfinite(bin_size) or bin_size <= 0:
        raise SpikemaskError(
            f"{str(path)!r}: field 'binsize' is {bin_size!r}; expected a bin width in seconds > 0"
        )
    window = first.pop("window_start", None)
    info = {
        "bin_size_s": float(bin_size),
        "window_start_s": None if window is None else float(window),
        "align_event": first.pop("align_event", None) or "unknown",
    }
    first.pop("interval_len", None)
    first.pop("trial_index", None)
    info.update({k: v for k, v in first.items() if isinstance(v, str)})
    return info


def _check_same_units(
    reference: tuple[dict[str, np.ndarray], Path], meta: dict[str, np.ndarray], path: Path
) -> None:
    ref_meta, ref_path = reference
    for name in sorted(set(ref_meta) | set(meta)):
        a, b = ref_meta.get(name), meta.get(name)
        if a is None or b is None or a.shape != b.shape or not np.array_equal(a, b):
            raise SpikemaskError(
                f"{str(path)!r}: unit field {name!r} differs from {str(ref_path)!r}; expected "
                "the same units in every split of a session"
            )


# ---------------------------------------------------------------------------- writing
def write_session(session: Session, directory: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``session`` in the IBL parquet layout under ``directory/data``.

    Files are written to a temporary name and renamed, so a crash never leaves a
    half-written split. Returns the dataset folder.
    """
    root = Path(directory).expanduser()
    data_dir = root / "data"
    if data_dir.exists() and any(data_dir.glob("*.parquet")) and not overwrite:
        raise SpikemaskError(
            f"{str(data_dir)!r} already holds parquet files; choose an empty folder or overwrite"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, trials in session.splits.items():
        table = _split_table(session, trials)
        _atomic_write(table, data_dir / f"{split}-00000-of-00001.parquet")
    return root


def _split_table(session: Session, trials: TrialSet) -> pa.Table:
    k = trials.num_trials
    columns: dict[str, Any] = _csr.encode(trials.spikes)
    columns["trial_index"] = pa.array(trials.trial_index.astype(np.int64))
    for name, values in trials.trial_behavior.items():
        columns[name] = pa.array(np.asarray(values, dtype=np.float64))
    for name, values in trials.bin_behavior.items():
        columns[name] = _repeat_rows(np.asarray(values, dtype=np.float32), k, per_row=True)
    columns["binsize"] = pa.array([session.bin_size_s] * k, pa.float64())
    columns["interval_len"] = pa.array([session.duration_s] * k, pa.float64())
    if session.window_start_s is not None:
        columns["window_start"] = pa.array([session.window_start_s] * k, pa.float64())
    columns["align_event"] = pa.array([session.align_event] * k, pa.string())
    columns["eid"] = pa.array([session.session_id] * k, pa.string())
    for key, value in session.metadata.items():
        if isinstance(value, str) and key not in columns and key != "source":
            columns[key] = pa.array([value] * k, pa.string())
    unit_columns: Mapping[str, np.ndarray] = {
        "cluster_regions": np.array(session.unit_regions),
        "cluster_uuids": np.array(session.unit_ids),
        **({"cluster_depths": session.unit_depths} if session.unit_depths is not None else {}),
        **session.unit_attributes,
    }
    for name, values in unit_columns.items():
        columns[name] = _repeat_rows(np.asarray(values), k, per_row=False)
    return pa.table(columns)


def _repeat_rows(values: np.ndarray, num_rows: int, *, per_row: bool) -> pa.Array:
    """A list column: ``values`` (K, L) per row, or the same (L,) list repeated K times."""
    flat = values.reshape(-1) if per_row else np.tile(values, num_rows)
    length = values.shape[1] if per_row else len(values)
    offsets = pa.array(np.arange(num_rows + 1, dtype=np.int32) * length)
    items = pa.array(flat.astype(str) if flat.dtype.kind in "OU" else flat)
    return pa.ListArray.from_arrays(offsets, items)


def _atomic_write(table: pa.Table, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
