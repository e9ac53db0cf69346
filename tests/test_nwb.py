"""NWB pipeline: the real pynapple test file (wake in fixed windows) and tiny synthetic files."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from spikemask.data.parquet import read_session
from spikemask.data.sources.binning import bin_edges, read_report
from spikemask.data.sources.nwb import (
    NWBPrepareConfig,
    fixed_windows,
    load_nwb_session,
    prepare_nwb,
)
from spikemask.errors import SpikemaskError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_NWB = SHARED_DATA / "nwb" / "A2929-200711.nwb"
HEAD_DIRECTION = "acquisition/CompassDirection/rz"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# synthetic file: 3 units on electrodes labelled VISp, CA1, CA1
SPIKES = [np.array([1.01, 1.06, 1.07, 3.02, 5.5]), np.array([1.09, 3.01, 3.04]), np.array([9.0])]


def _write_nwb(path: Path, *, units: bool = True, trials: bool = True) -> Path:
    pynwb = pytest.importorskip(
        "pynwb", reason="pynwb not installed (pip install 'spikemask[nwb]')"
    )
    nwb = pynwb.NWBFile(
        session_description="synthetic",
        identifier="synthetic-1",
        session_start_time=datetime(2020, 1, 1, tzinfo=timezone.utc),
    )
    group = nwb.create_electrode_group(
        "shank0", description="", location="brain", device=nwb.create_device("probe")
    )
    for location in ("VISp", "CA1", "CA1"):
        nwb.add_electrode(location=location, group=group)
    if units:
        for electrode, times in enumerate(SPIKES):
            nwb.add_unit(spike_times=times, electrodes=[electrode])
    if trials:
        nwb.add_trial_column("cue_time", "cue onset")
        nwb.add_trial_column("choice", "choice")
        for start, cue, choice in (
            (0.5, 1.1, 1.0),
            (2.5, 3.1, -1.0),
            (4.5, np.nan, 1.0),
            (6.0, 7.0, -1.0),
        ):
            nwb.add_trial(start_time=start, stop_time=start + 1.5, cue_time=cue, choice=choice)
    module = nwb.create_processing_module("behavior", "behaviour")
    speed = pynwb.TimeSeries(
        name="speed", data=np.arange(100.0), unit="m/s", starting_time=0.0, rate=10.0
    )
    module.add(speed)  # speed(t) = 10 t, sampled every 0.1 s from 0 to 9.9 s
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_nwb(tmp_path_factory.mktemp("nwb") / "synthetic.nwb")


@pytest.fixture(scope="module")
def wake(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not REAL_NWB.is_file():
        pytest.skip(f"real NWB file {REAL_NWB} absent (needs the shared data folder)")
    pytest.importorskip("pynwb", reason="pynwb not installed (pip install 'spikemask[nwb]')")
    out = tmp_path_factory.mktemp("wake")
    config = NWBPrepareConfig(epoch="wake", behavior_paths=(HEAD_DIRECTION,))
    report = prepare_nwb(REAL_NWB, out, config=config)
    return {"report": report, "session": read_session(out, cache=False), "out": out}


def _real_arrays() -> dict:
    import h5py

    with h5py.File(REAL_NWB, "r") as handle:
        units = handle["units"]
        return {
            "spikes": units["spike_times"][:],
            "ends": units["spike_times_index"][:],
            "hd_t": handle["acquisition/CompassDirection/rz/timestamps"][:],
            "hd": handle["acquisition/CompassDirection/rz/data"][:],
        }


# ---------------------------------------------------------------------------- real file
def test_wake_windows_report(wake: dict) -> None:
    report = wake["report"]
    # wake is 600-1200 s: 300 windows of 2 s; head tracking starts at 670.64 s, so the 36
    # windows starting at 600..670 s lack head direction and are dropped
    assert report.trials_total == 300
    assert report.trials_dropped == {"nan_behavior": 36}
    assert report.trials_kept == 264
    assert report.splits == {"train": 185, "val": 26, "test": 53}
    assert report.regions == {"ca1": 8, "adn": 7}
    assert report.bin_behavior == ["CompassDirection-rz-sin", "CompassDirection-rz-cos"]
    assert read_report(wake["out"]).trials_kept == 264


def test_wake_counts_and_head_direction(wake: dict) -> None:
    session, real = wake["session"], _real_arrays()
    assert session.unit_regions == ("adn",) * 7 + ("ca1",) * 8
    assert session.num_bins == 100 and session.align_event == "window_start"
    split = session.split("val")
    starts = 600.0 + 2.0 * split.trial_index  # window k starts at 600 + 2 k
    assert starts.min() >= 672.0
    for unit in (0, 9):
        times = real["spikes"][(real["ends"][unit - 1] if unit else 0) : real["ends"][unit]]
        for row in (0, split.num_trials - 1):
            expected, _ = np.histogram(times, bin_edges(starts[[row]], 100, 0.02)[0])
            np.testing.assert_array_equal(split.spikes[row, :, unit], expected)
    edges = bin_edges(starts[[0]], 100, 0.02)[0]
    sin = split.bin_behavior["CompassDirection-rz-sin"][0]
    for b in (0, 37, 99):  # circular mean: average of sin over the samples in the bin
        inside = (real["hd_t"] >= edges[b]) & (real["hd_t"] < edges[b + 1])
        assert inside.any()
        assert sin[b] == pytest.approx(np.sin(real["hd"][inside]).mean(), rel=1e-5)
    cos = split.bin_behavior["CompassDirection-rz-cos"]
    assert np.all(split.bin_behavior["CompassDirection-rz-sin"] ** 2 + cos**2 <= 1 + 1e-5)


def test_real_file_auto_behaviour_and_epoch_error() -> None:
    if not REAL_NWB.is_file():
        pytest.skip(f"real NWB file {REAL_NWB} absent (needs the shared data folder)")
    pytest.importorskip("pynwb", reason="pynwb not installed")
    config = NWBPrepareConfig(
        epoch="wake", time_range_s=(700.0, 760.0), window_length_s=4.0, step_s=3.0
    )
    session, report = load_nwb_session(REAL_NWB, config)
    assert report.trials_total == 19  # starts 700, 703, ..., 754 (754 + 4 <= 760)
    assert "CompassDirection-rz-cos" in report.bin_behavior and "Position-x" in report.bin_behavior
    assert session.num_bins == 200
    with pytest.raises(
        SpikemaskError, match=r"no epoch 'run'; expected .* among \[.*'sleep', .*'wake'\]"
    ):
        load_nwb_session(REAL_NWB, NWBPrepareConfig(epoch="run"))


# ---------------------------------------------------------------------------- synthetic files
def test_trials_table_alignment(synthetic: Path) -> None:
    config = NWBPrepareConfig(
        align_column="cue_time", window_s=(-0.1, 0.1), bin_size_s=0.05, split=(0.34, 0.33, 0.33),
        behavior_reduce="bin_end",
    )  # fmt: skip
    session, report = load_nwb_session(synthetic, config)
    assert report.trials_dropped == {"nan_align": 1, "nan_behavior": 0}
    assert report.trials_kept == 3 and session.unit_regions == ("VISp", "CA1", "CA1")
    trials = {int(i): (s, k) for s in session.splits.values() for k, i in enumerate(s.trial_index)}
    expected = {  # windows 1.0-1.2, 3.0-3.2, 6.9-7.1 s in 50 ms bins; rows are bins, columns units
        0: [[1, 0, 0], [2, 1, 0], [0, 0, 0], [0, 0, 0]],
        1: [[1, 2, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]],
        3: [[0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]],
    }
    for index, counts in expected.items():
        split, row = trials[index]
        np.testing.assert_array_equal(split.spikes[row], counts)
        cue = {0: 1.1, 1: 3.1, 3: 7.0}[index]
        np.testing.assert_allclose(
            split.bin_behavior["behavior-speed"][row],
            10 * (cue - 0.1 + 0.05 * np.arange(1, 5)),
            rtol=1e-6,
        )
        assert split.trial_behavior["choice"][row] == {0: 1.0, 1: -1.0, 3: -1.0}[index]
    assert session.align_event == "cue_time" and session.window_start_s == -0.1


def test_fixed_windows_mean_behaviour(synthetic: Path) -> None:
    config = NWBPrepareConfig(
        use_trials=False, time_range_s=(1.0, 4.0), window_length_s=1.0, bin_size_s=0.5, step_s=1.0
    )
    session, report = load_nwb_session(synthetic, config)
    assert report.trials_total == 3 and session.align_event == "window_start"
    rows = {
        int(i): (split, k)
        for split in session.splits.values()
        for k, i in enumerate(split.trial_index)
    }
    split, row = rows[0]  # window 1.0-2.0 s
    np.testing.assert_array_equal(split.spikes[row], [[3, 1, 0], [0, 0, 0]])
    # mean of speed samples 10 t at t = 1.0, 1.1, ..., 1.4 and 1.5, ..., 1.9
    np.testing.assert_allclose(split.bin_behavior["behavior-speed"][row], [12.0, 17.0])


def test_fixed_windows_helper() -> None:
    starts = fixed_windows(np.array([[0.0, 10.0], [20.0, 25.0], [30.0, 31.0]]), 2.0, 3.0)
    np.testing.assert_allclose(starts, [0.0, 3.0, 6.0, 20.0, 23.0])


# ---------------------------------------------------------------------------- errors
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpikemaskError, match=r"NWB file .*missing\.nwb' not found"):
        load_nwb_session(tmp_path / "missing.nwb")


def test_not_an_nwb_file(tmp_path: Path) -> None:
    pytest.importorskip("pynwb", reason="pynwb not installed")
    path = tmp_path / "junk.nwb"
    path.write_bytes(b"not hdf5 at all")
    with pytest.raises(SpikemaskError, match="not a readable NWB file"):
        load_nwb_session(path)


def test_file_without_units(tmp_path: Path) -> None:
    path = _write_nwb(tmp_path / "no_units.nwb", units=False)
    with pytest.raises(SpikemaskError, match="has no units table with spike_times"):
        load_nwb_session(path)


def test_synthetic_errors(tmp_path: Path) -> None:
    path = _write_nwb(tmp_path / "no_trials.nwb", trials=False)
    with pytest.raises(SpikemaskError, match="has no trials table; expected one"):
        load_nwb_session(path, NWBPrepareConfig(use_trials=True))
    with pytest.raises(SpikemaskError, match="no time series at 'acquisition/nothing'"):
        load_nwb_session(path, NWBPrepareConfig(behavior_paths=("acquisition/nothing",)))
    with pytest.raises(SpikemaskError, match="no window left"):
        load_nwb_session(path, NWBPrepareConfig(time_range_s=(0.0, 1.0)))
    with pytest.raises(SpikemaskError, match="no spike in the 3 windows"):
        load_nwb_session(
            path,
            NWBPrepareConfig(
                time_range_s=(6.0, 8.9), window_length_s=0.5, step_s=1.0, behavior_paths=()
            ),
        )
    session, _ = load_nwb_session(path, NWBPrepareConfig(bin_size_s=1.0, behavior_paths=()))
    assert session.bin_behavior_names == () and session.num_bins == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"window_s": (0.5, -0.5)}, "start >= end"),
        ({"bin_size_s": 0}, "expected a bin width in seconds > 0"),
        ({"window_length_s": 0.03}, "not a whole number of bins"),
        ({"step_s": 0.0}, "expected a window step in seconds > 0"),
        ({"time_range_s": (5.0, 1.0)}, "time_range_s=.*start >= end"),
        ({"behavior_reduce": "median"}, "expected 'mean' or 'bin_end'"),
        ({"angle_mode": "degrees"}, "expected 'sincos', 'unwrap' or 'raw'"),
    ],
)
def test_config_errors(options: dict, message: str) -> None:
    with pytest.raises(SpikemaskError, match=message):
        NWBPrepareConfig(**options)


def test_prepare_nwb_command_then_train_on_the_result(tmp_path, capsys):
    """The real head-direction recording goes through the CLI and trains unchanged."""
    pytest.importorskip("pynwb", reason="pynwb not installed (pip install 'spikemask[nwb]')")
    if not REAL_NWB.is_file():
        pytest.skip(f"real NWB file {REAL_NWB} absent (needs the shared data folder)")
    from spikemask.cli import main

    out = tmp_path / "a2929"
    assert (
        main(
            [
                "prepare",
                "nwb",
                str(REAL_NWB),
                "--out",
                str(out),
                "--epoch",
                "wake",
                "--behavior",
                "acquisition/CompassDirection/rz",
            ]
        )
        == 0
    )
    assert "264/300 windows kept, 15 units" in capsys.readouterr().out
    tiny = [
        "model.width=32",
        "model.num_layers=1",
        "model.num_heads=2",
        "model.mlp_width=32",
        "train.tensorboard=false",
        "data.batch_size=16",
    ]
    args = ["train", str(out), "--out", str(tmp_path / "run"), "--max-steps", "2", "--quiet"]
    for item in tiny:
        args += ["--set", item]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert " / 2\n" in printed and "mean-rate null 0." in printed
    results = tmp_path / "results.json"
    evaluate_args = [
        "evaluate",
        str(tmp_path / "run"),
        str(out),
        "--out",
        str(results),
        "--tasks",
        "co-smoothing",
        "inter-region",
        "--quiet",
    ]
    assert main(evaluate_args) == 0
    scores = json.loads(results.read_text())["sessions"]["A2929-200711"]
    assert scores["co_smoothing"]["num_units"] == 15
    assert set(scores["inter_region"]["per_region"]) == {"adn", "ca1"}
    capsys.readouterr()
    assert (
        main(["prepare", "nwb", str(tmp_path / "missing.nwb"), "--out", str(tmp_path / "m")]) == 2
    )
    assert "not found" in capsys.readouterr().err
