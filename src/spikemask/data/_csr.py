"""Vectorised decoding and encoding of per-trial CSR spike matrices.

Each parquet row holds one trial's (T, N) count matrix as four list columns:
``spikes_sparse_data`` (counts), ``_indices`` (unit of each count), ``_indptr``
(T + 1 row offsets) and ``_shape`` ([T, N]). Decoding a whole split is a handful of
numpy operations over the flattened lists; no Python loop over trials.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from spikemask.data.session import counts_dtype
from spikemask.errors import SpikemaskError

__all__ = ["decode_table", "encode"]


def _flat(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Values and per-row offsets of a list column."""
    column = table.column(name).combine_chunks()
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        raise TypeError(name)
    offsets = column.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    values = column.values.to_numpy(zero_copy_only=False)
    # `values` of a sliced array may start past 0: make offsets relative to it
    return values[offsets[0] : offsets[-1]], offsets - offsets[0]


def _fail(path: Path, field: str, what: str, expected: str) -> SpikemaskError:
    return SpikemaskError(f"{str(path)!r}: field {field!r} {what}; expected {expected}")


def _shape(table: pa.Table, path: Path) -> tuple[int, int]:
    values, offsets = _flat(table, "spikes_sparse_shape")
    field = "spikes_sparse_shape"
    if np.any(np.diff(offsets) != 2):
        raise _fail(path, field, "has a row that is not [T, N]", "two entries per row")
    shapes = values.reshape(-1, 2)
    if len(shapes) == 0:
        raise _fail(path, field, "is empty (no trials)", "at least one trial per split")
    if np.any(shapes != shapes[0]):
        bad = int(np.flatnonzero(np.any(shapes != shapes[0], axis=1))[0])
        raise _fail(
            path,
            field,
            f"is {shapes[bad].tolist()} in row {bad} but {shapes[0].tolist()} in row 0",
            "the same [T, N] on every row",
        )
    num_bins, num_units = (int(v) for v in shapes[0])
    if num_bins <= 0 or num_units <= 0:
        raise _fail(path, field, f"is {[num_bins, num_units]}", "positive [T, N]")
    return num_bins, num_units


def decode_table(table: pa.Table, path: Path) -> np.ndarray:
    """Decode the CSR spike columns of ``table`` into a dense (K, T, N) count array."""
    num_bins, num_units = _shape(table, path)
    k = table.num_rows
    data, data_off = _flat(table, "spikes_sparse_data")
    indices, idx_off = _flat(table, "spikes_sparse_indices")
    indptr, ptr_off = _flat(table, "spikes_sparse_indptr")
    if np.any(np.diff(ptr_off) != num_bins + 1):
        bad = int(np.flatnonzero(np.diff(ptr_off) != num_bins + 1)[0])
        raise _fail(
            path,
            "spikes_sparse_indptr",
            f"has {int(np.diff(ptr_off)[bad])} entries in row {bad}",
            f"T + 1 = {num_bins + 1} (from spikes_sparse_shape)",
        )
    if not np.array_equal(data_off, idx_off):
        bad = int(np.flatnonzero(np.diff(data_off) != np.diff(idx_off))[0])
        raise _fail(
            path,
            "spikes_sparse_indices",
            f"and data differ in length in row {bad}",
            "one unit index per count",
        )
    indptr = indptr.astype(np.int64).reshape(k, num_bins + 1)
    nnz = np.diff(data_off)
    per_bin = np.diff(indptr, axis=1)
    if np.any(indptr[:, 0] != 0) or np.any(per_bin < 0) or np.any(indptr[:, -1] != nnz):
        bad = int(
            np.flatnonzero(
                (indptr[:, 0] != 0) | np.any(per_bin < 0, axis=1) | (indptr[:, -1] != nnz)
            )[0]
        )
        raise _fail(
            path,
            "spikes_sparse_indptr",
            f"is not a valid row pointer in row {bad}",
            "non-decreasing offsets from 0 to the number of stored counts",
        )
    _check_indices(indices, num_units, path)
    counts = _check_counts(data, path)
    rows = np.repeat(np.arange(k * num_bins, dtype=np.int64), per_bin.reshape(-1))
    flat_index = rows * num_units + indices.astype(np.int64)
    size = k * num_bins * num_units
    if np.unique(flat_index).size == flat_index.size:  # the usual case: no repeated entries
        dense = np.zeros(size, dtype=counts_dtype(int(counts.max(initial=0))))
        dense[flat_index] = counts
    else:  # CSR allows repeated (row, column) entries: they add up
        summed = np.zeros(size, dtype=np.int64)
        np.add.at(summed, flat_index, counts)
        dense = summed.astype(counts_dtype(int(summed.max(initial=0))))
    return dense.reshape(k, num_bins, num_units)


def _check_indices(indices: np.ndarray, num_units: int, path: Path) -> None:
    if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise _fail(path, "spikes_sparse_indices", f"has dtype {indices.dtype}", "integers")
    if indices.size and (indices.min() < 0 or indices.max() >= num_units):
        bad = int(indices.max() if indices.max() >= num_units else indices.min())
        raise _fail(
            path,
            "spikes_sparse_indices",
            f"contains unit index {bad}",
            f"indices in [0, {num_units}) (N from spikes_sparse_shape)",
        )


def _check_counts(data: np.ndarray, path: Path) -> np.ndarray:
    field = "spikes_sparse_data"
    if data.size == 0:
        return data.astype(np.int64)
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise _fail(path, field, f"has dtype {data.dtype}", "integer spike counts")
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)):
            raise _fail(path, field, "contains NaN or infinite counts", "finite integer counts")
        if np.any(data != np.round(data)):
            raise _fail(path, field, "contains non-integer counts", "integer spike counts")
    if data.min() < 0:
        raise _fail(path, field, f"contains negative count {data.min()}", "counts >= 0")
    return data.astype(np.int64)


def encode(spikes: np.ndarray) -> dict[str, pa.Array]:
    """Encode (K, T, N) counts as the four CSR list columns (one row per trial)."""
    k, num_bins, num_units = spikes.shape
    flat = spikes.reshape(k * num_bins, num_units)
    rows, cols = np.nonzero(flat)
    data = flat[rows, cols].astype(np.int64)
    per_bin = np.bincount(rows, minlength=k * num_bins).reshape(k, num_bins)
    row_ptr = np.concatenate([np.zeros((k, 1), np.int64), np.cumsum(per_bin, axis=1)], axis=1)
    nnz = row_ptr[:, -1]
    data_offsets = np.concatenate([[0], np.cumsum(nnz)]).astype(np.int64)

    def listed(values: np.ndarray, offsets: np.ndarray) -> pa.Array:
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))

    return {
        "spikes_sparse_data": listed(data, data_offsets),
        "spikes_sparse_indices": listed(cols.astype(np.int64), data_offsets),
        "spikes_sparse_indptr": listed(row_ptr.reshape(-1), np.arange(k + 1) * (num_bins + 1)),
        "spikes_sparse_shape": listed(
            np.tile(np.array([num_bins, num_units], np.int64), k), np.arange(k + 1) * 2
        ),
    }
