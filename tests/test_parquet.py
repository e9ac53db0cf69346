"""The IBL parquet layout: round trips, the real sessions, and every malformed input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spikemask.data import cache
from spikemask.data.parquet import read_session, write_session
from spikemask.errors import SpikemaskError

from conftest import make_session, steinmetz_dirs


def _write(tmp_path: Path, **kwargs) -> Path:
    return write_session(make_session(**kwargs), tmp_path / "ds")


def test_round_trip_keeps_everything(tmp_path):
    session = make_session()
    back = read_session(write_session(session, tmp_path / "ds"))
    assert back.session_id == "tiny"
    assert back.unit_ids == session.unit_ids and back.unit_regions == session.unit_regions
    assert back.bin_size_s == 0.02 and back.window_start_s == -0.04
    np.testing.assert_allclose(back.unit_depths, session.unit_depths)
    for split in ("train", "val", "test"):
        a, b = session.split(split), back.split(split)
        np.testing.assert_array_equal(a.spikes, b.spikes)
        np.testing.assert_array_equal(a.trial_index, b.trial_index)
        np.testing.assert_array_equal(a.trial_behavior["choice"], b.trial_behavior["choice"])
        np.testing.assert_allclose(a.bin_behavior["wheel-speed"], b.bin_behavior["wheel-speed"])
    assert back.metadata["subject"] == "mouse"


def test_second_read_is_served_from_the_cache(tmp_path):
    folder = _write(tmp_path)
    first = read_session(folder)
    assert isinstance(first.split("train").spikes, np.memmap)  # even the first read maps it
    assert cache.load_counts(folder / "data" / "train-00000-of-00001.parquet") is not None
    second = read_session(folder)
    assert isinstance(second.split("train").spikes, np.memmap)
    np.testing.assert_array_equal(first.split("train").spikes, second.split("train").spikes)


def test_cache_can_be_disabled(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIKEMASK_CACHE_DIR", "off")
    session = read_session(_write(tmp_path))
    assert not isinstance(session.split("train").spikes, np.memmap)


def test_repeated_csr_entries_add_up(tmp_path):
    folder = _write(tmp_path, trials=(1, 1, 1), num_bins=2, num_units=3)
    path = folder / "data" / "train-00000-of-00001.parquet"
    table = pq.read_table(path)
    table = _set(table, "spikes_sparse_data", [[2, 3]])
    table = _set(table, "spikes_sparse_indices", [[1, 1]])
    table = _set(table, "spikes_sparse_indptr", [[0, 2, 2]])
    pq.write_table(table, path)
    spikes = read_session(folder, cache=False).split("train").spikes
    assert spikes[0, 0].tolist() == [0, 5, 0] and spikes[0, 1].sum() == 0


def _set(table: pa.Table, name: str, values) -> pa.Table:
    index = table.column_names.index(name)
    return table.set_column(index, name, pa.array(values, type=table.schema.field(name).type))


def _corrupt(tmp_path: Path, split: str, name: str, make) -> Path:
    folder = _write(tmp_path)
    path = folder / "data" / f"{split}-00000-of-00001.parquet"
    table = pq.read_table(path)
    rows = table.column(name).to_pylist()
    table = table.set_column(
        table.column_names.index(name),
        name,
        pa.array(make(rows), type=_type_for(table, name, make)),
    )
    pq.write_table(table, path)
    return folder


def _type_for(table, name, make):
    return getattr(make, "type", None) or table.schema.field(name).type


def _with_type(fn, arrow_type):
    fn.type = arrow_type
    return fn


BAD_INPUTS = [
    (
        "indptr length",
        "spikes_sparse_indptr",
        lambda r: [r[0][:-1], *r[1:]],
        r"spikes_sparse_indptr.*row 0.*expected T \+ 1 = 8",
    ),
    (
        "index out of range",
        "spikes_sparse_indices",
        lambda r: [[99, *r[0][1:]], *r[1:]],
        r"spikes_sparse_indices.*unit index 99.*\[0, 11\)",
    ),
    (
        "negative count",
        "spikes_sparse_data",
        lambda r: [[-1, *r[0][1:]], *r[1:]],
        r"spikes_sparse_data.*negative count -1",
    ),
    (
        "non-integer count",
        "spikes_sparse_data",
        _with_type(lambda r: [[0.5, *r[0][1:]], *r[1:]], pa.list_(pa.float64())),
        r"spikes_sparse_data.*non-integer",
    ),
    (
        "NaN count",
        "spikes_sparse_data",
        _with_type(lambda r: [[float("nan"), *r[0][1:]], *r[1:]], pa.list_(pa.float64())),
        r"spikes_sparse_data.*NaN",
    ),
    (
        "regions length",
        "cluster_regions",
        lambda r: [x[:-1] for x in r],
        r"cluster_regions.*10 entries.*expected one per unit \(11",
    ),
    (
        "inconsistent unit metadata",
        "cluster_uuids",
        lambda r: [r[0], ["x"] * 11, *r[2:]],
        r"cluster_uuids.*differs between row 0 and row 1",
    ),
    (
        "indptr not monotone",
        "spikes_sparse_indptr",
        lambda r: [[0, 5, 2, *r[0][3:]], *r[1:]],
        r"spikes_sparse_indptr.*not a valid row pointer",
    ),
    (
        "shape differs",
        "spikes_sparse_shape",
        lambda r: [r[0], [7, 12], *r[2:]],
        r"spikes_sparse_shape.*\[7, 12\] in row 1",
    ),
]


@pytest.mark.parametrize(
    ("case", "column", "make", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_malformed_input_names_file_and_field(tmp_path, case, column, make, message):
    folder = _corrupt(tmp_path, "train", column, make)
    with pytest.raises(SpikemaskError, match=message) as info:
        read_session(folder)
    assert "train-00000-of-00001.parquet" in str(info.value)


def test_missing_split_file(tmp_path):
    folder = _write(tmp_path)
    (folder / "data" / "val-00000-of-00001.parquet").unlink()
    with pytest.raises(SpikemaskError, match=r"no parquet file for split\(s\) \['val'\]"):
        read_session(folder)


def test_missing_folder_and_not_a_folder(tmp_path):
    with pytest.raises(SpikemaskError, match="does not exist"):
        read_session(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpikemaskError, match="is not a folder"):
        read_session(tmp_path / "file")


def test_not_a_parquet_file(tmp_path):
    folder = _write(tmp_path)
    (folder / "data" / "test-00000-of-00001.parquet").write_text("garbage")
    with pytest.raises(SpikemaskError, match="not a readable parquet file"):
        read_session(folder)


def test_missing_spike_column(tmp_path):
    folder = _write(tmp_path)
    path = folder / "data" / "test-00000-of-00001.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["spikes_sparse_indptr"]), path)
    with pytest.raises(SpikemaskError, match=r"missing column\(s\) \['spikes_sparse_indptr'\]"):
        read_session(folder)


def test_empty_session(tmp_path):
    folder = _write(tmp_path)
    path = folder / "data" / "train-00000-of-00001.parquet"
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    with pytest.raises(SpikemaskError, match=r"spikes_sparse_shape.*empty \(no trials\)"):
        read_session(folder)


def test_units_differ_between_splits(tmp_path):
    folder = _write(tmp_path)
    other = write_session(make_session(num_units=12), tmp_path / "other")
    (folder / "data" / "test-00000-of-00001.parquet").write_bytes(
        (other / "data" / "test-00000-of-00001.parquet").read_bytes()
    )
    with pytest.raises(SpikemaskError, match=r"differs from .*train"):
        read_session(folder)


def test_write_refuses_to_overwrite(tmp_path):
    folder = _write(tmp_path)
    with pytest.raises(SpikemaskError, match="already holds parquet files"):
        write_session(make_session(), folder)


# ---------------------------------------------------------------------- real data
def _independent_totals(folder: Path) -> dict[str, tuple[int, int, int]]:
    """(trials, units, spikes) per split straight from the parquet columns."""
    totals = {}
    for split in ("train", "val", "test"):
        table = pq.read_table(next((folder / "data").glob(f"{split}-*.parquet")))
        shapes = table.column("spikes_sparse_shape").to_pylist()
        spikes = sum(sum(row) for row in table.column("spikes_sparse_data").to_pylist())
        totals[split] = (table.num_rows, shapes[0][1], spikes)
    return totals


def test_all_real_sessions_load_with_the_right_totals():
    folders = steinmetz_dirs()
    assert len(folders) == 11
    for folder in folders:
        session = read_session(folder)
        for split, (trials, units, spikes) in _independent_totals(folder).items():
            assert session.split(split).num_trials == trials
            assert session.num_units == units
            assert session.split(split).total_spikes == spikes
        assert session.num_bins == 40 and session.bin_size_s == pytest.approx(0.01)
        assert len(session.unit_regions) == session.num_units
        assert 0.5 < session.mean_rate_hz() < 20


def test_real_session_round_trips_through_the_writer(tmp_path):
    folder = steinmetz_dirs()[0]
    session = read_session(folder)
    back = read_session(write_session(session, tmp_path / "copy"))
    assert back.session_id == session.session_id and back.unit_regions == session.unit_regions
    np.testing.assert_array_equal(back.split("test").spikes, session.split("test").spikes)
    assert back.trial_behavior_names == session.trial_behavior_names
