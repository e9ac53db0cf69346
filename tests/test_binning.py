"""Shared binning helpers against hand-computed values."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from spikemask.data.sources.binning import (
    REPORT_NAME,
    PrepareReport,
    bin_edges,
    bin_mean,
    bin_spike_counts,
    check_window,
    is_prepared,
    read_report,
    sample_at_bin_ends,
    split_trials,
    wheel_speed,
    write_report,
)
from spikemask.errors import SpikemaskError


def test_bin_spike_counts_by_hand() -> None:
    # unsorted input; windows [0, 0.4) and [0.2, 0.6) overlap; 0.1-s bins; 3 units
    times = np.array([0.35, 0.0, 0.1, 0.05, 0.2, 0.399, 0.4, 0.61, -0.01])
    units = np.array([2, 0, 1, 0, 0, 2, 1, 1, 0])
    counts = bin_spike_counts(times, units, 3, np.array([0.0, 0.2]), 4, 0.1)
    assert counts.dtype == np.uint16 and counts.shape == (2, 4, 3)
    expected = np.array(
        [
            [[2, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 2]],  # 0.0, 0.05 | 0.1 | 0.2 | 0.35, 0.399
            [[1, 0, 0], [0, 0, 2], [0, 1, 0], [0, 0, 0]],  # 0.2 | 0.35, 0.399 | 0.4 | (0.61 out)
        ]
    )
    np.testing.assert_array_equal(counts, expected)


def test_bin_spike_counts_matches_histogram() -> None:
    rng = np.random.default_rng(3)
    times = np.sort(rng.uniform(0, 50, 4000))
    units = rng.integers(0, 11, times.size)
    # spikes exactly on inner bin edges belong to the later bin, as in np.histogram (whose
    # last bin also counts its right edge, where a window is half-open: not compared here)
    starts = np.array([1.3, 7.0, 7.5, 20.02, 44.1])
    times = np.concatenate([times, bin_edges(starts, 7, 0.02)[:, :-1].ravel()])
    units = np.concatenate([units, np.arange(35) % 11])
    counts = bin_spike_counts(times, units, 11, starts, 7, 0.02)
    edges = bin_edges(starts, 7, 0.02)
    end = bin_spike_counts(np.array([edges[0, -1]]), np.array([4]), 11, starts[:1], 7, 0.02)
    assert end.sum() == 0  # a spike on the window's end is outside it
    for k in range(len(starts)):
        for n in range(11):
            expected, _ = np.histogram(times[units == n], edges[k])
            np.testing.assert_array_equal(counts[k, :, n], expected)


def test_bin_spike_counts_errors() -> None:
    with pytest.raises(SpikemaskError, match="3 spike times but 2 spike units"):
        bin_spike_counts(np.zeros(3), np.zeros(2, int), 2, np.zeros(1), 2, 0.1)
    with pytest.raises(SpikemaskError, match=r"spike unit indices outside \[0, 2\)"):
        bin_spike_counts(np.zeros(2), np.array([0, 2]), 2, np.zeros(1), 2, 0.1)


def test_wheel_speed_by_hand() -> None:
    timestamps = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    position = np.array([0.0, 1.0, 1.0, 0.0, 0.0])  # radians
    edges = bin_edges(np.array([0.0, 0.2]), 2, 0.05)  # (2, 3)
    # positions at edges: [0, 0.5, 1] and [1, 0.5, 0] -> |diff| / 0.05
    np.testing.assert_allclose(wheel_speed(timestamps, position, edges, 0.05), [[10, 10], [10, 10]])
    edges = bin_edges(np.array([0.1, 0.35]), 1, 0.1)  # 0.1-0.2 still; 0.35-0.45 leaves the trace
    speed = wheel_speed(timestamps, position, edges, 0.1)
    assert speed[0, 0] == 0.0 and np.isnan(speed[1, 0])


def test_sample_at_bin_ends_by_hand() -> None:
    times = np.array([0.0, 1.0, 2.0, np.nan])
    values = np.array([0.0, 10.0, 30.0, 5.0])  # the NaN-time sample is ignored
    edges = np.array([[0.0, 0.5, 1.5], [1.5, 2.0, 2.5]])
    np.testing.assert_allclose(
        sample_at_bin_ends(times, values, edges), [[5.0, 20.0], [30.0, np.nan]]
    )


def test_bin_mean_by_hand() -> None:
    times = np.array([0.0, 0.1, 0.2, 0.6, 0.7])
    values = np.array([1.0, 2.0, 3.0, 10.0, 20.0])
    edges = np.array([[0.0, 0.3, 0.45, 0.8]])
    # bin 1 holds no sample: value interpolated at its centre 0.375 between (0.2, 3) and (0.6, 10)
    np.testing.assert_allclose(bin_mean(times, values, edges), [[2.0, 3 + 7 * 0.175 / 0.4, 15.0]])


@pytest.mark.parametrize(
    ("window_s", "bin_size_s", "message"),
    [
        ((0.5, 0.5), 0.1, "start >= end"),
        ((1.0, -1.0), 0.1, "start >= end"),
        ((0.0, 1.0), 0.0, "expected a bin width in seconds > 0"),
        ((0.0, 1.0), float("nan"), "expected a bin width in seconds > 0"),
        ((0.0, 1.0), 0.3, "not a whole number of bins"),
        ((0.0,), 0.1, r"expected \(start, end\)"),
    ],
)
def test_check_window_errors(window_s: tuple, bin_size_s: float, message: str) -> None:
    with pytest.raises(SpikemaskError, match=message):
        check_window(window_s, bin_size_s)


def test_check_window_counts_bins() -> None:
    assert check_window((-0.5, 1.5), 0.02) == 100
    assert check_window((0.0, 0.4), 0.01) == 40


def test_split_trials_sizes_and_seed() -> None:
    rows = split_trials(10, (0.7, 0.1, 0.2), np.random.default_rng(0))
    assert {k: len(v) for k, v in rows.items()} == {"train": 7, "val": 1, "test": 2}
    assert sorted(np.concatenate(list(rows.values()))) == list(range(10))
    again = split_trials(10, (0.7, 0.1, 0.2), np.random.default_rng(0))
    other = split_trials(10, (0.7, 0.1, 0.2), np.random.default_rng(1))
    assert all(np.array_equal(rows[k], again[k]) for k in rows)
    assert not all(np.array_equal(rows[k], other[k]) for k in rows)
    small = split_trials(3, (0.7, 0.1, 0.2), np.random.default_rng(0))
    assert [len(v) for v in small.values()] == [1, 1, 1]


@pytest.mark.parametrize(
    ("num_trials", "fractions", "message"),
    [
        (2, (0.7, 0.1, 0.2), "only 2 trial"),
        (10, (0.7, 0.3, 0.0), "expected three fractions > 0"),
        (10, (0.5, 0.1, 0.1), "summing to 1"),
        (4, (0.1, 0.45, 0.45), "leaves no training trial"),
    ],
)
def test_split_trials_errors(num_trials: int, fractions: tuple, message: str) -> None:
    with pytest.raises(SpikemaskError, match=message):
        split_trials(num_trials, fractions, np.random.default_rng(0))


def test_report_round_trip(tmp_path: Path) -> None:
    report = PrepareReport(
        session_id="abc", out_dir=str(tmp_path), trials_total=9, trials_kept=7,
        trials_dropped={"no_go": 2}, units=11, probes=["probe00"], config={"window_s": (-0.5, 1.5)},
    )  # fmt: skip
    write_report(report, tmp_path)
    loaded = read_report(tmp_path)
    assert loaded.trials_dropped == {"no_go": 2} and loaded.eid == "abc"
    assert loaded.config == {"window_s": [-0.5, 1.5]}
    assert not is_prepared(tmp_path)  # no parquet files yet
    (tmp_path / REPORT_NAME).write_text("{broken")
    with pytest.raises(SpikemaskError, match="not a readable prepare report"):
        read_report(tmp_path)


@pytest.mark.slow
def test_binning_speed_full_session() -> None:
    rng = np.random.default_rng(0)
    num_units, duration_s = 1000, 3600.0
    times = np.sort(rng.uniform(0, duration_s, num_units * 5 * 3600))  # 5 Hz per unit
    units = rng.integers(0, num_units, times.size)
    starts = np.sort(rng.uniform(1, duration_s - 3, 600))
    begin = time.perf_counter()
    counts = bin_spike_counts(times, units, num_units, starts, 100, 0.02)
    assert time.perf_counter() - begin < 10.0
    assert counts.shape == (600, 100, 1000) and counts.sum() > 0
