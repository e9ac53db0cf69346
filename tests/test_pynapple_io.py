"""Sessions from pynapple objects and predictions back: synthetic spike times and a real NWB."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from spikemask.data.sources.pynapple_io import ALIGN_TIME, session_from_pynapple, to_pynapple
from spikemask.errors import SpikemaskError

from conftest import SHARED_DATA, TINY_MODEL

nap = pytest.importorskip("pynapple", reason="pynapple is not installed (extra 'pynapple')")

NWB = SHARED_DATA / "nwb" / "A2929-200711.nwb"


@pytest.fixture(autouse=True)
def _quiet_pynapple():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pynapple warns on empty groups / time supports
        yield


def _units(seed: int = 0, num_units: int = 5, duration_s: float = 30.0):
    rng = np.random.default_rng(seed)
    spikes = {
        10 + i: nap.Ts(np.sort(rng.uniform(0.0, duration_s, size=int(40 + 30 * i))))
        for i in range(num_units)
    }
    regions = np.array(["CA1", "adn", "CA1", "VISp", "adn", "VISp"][:num_units])
    return nap.TsGroup(spikes, location=regions, depth=np.arange(num_units) * 100.0)


def _hand_counts(units, starts: np.ndarray, num_bins: int, bin_size_s: float) -> np.ndarray:
    counts = np.zeros((len(starts), num_bins, len(units)), dtype=np.int64)
    for n, key in enumerate(units.keys()):
        for k, start in enumerate(starts):
            edges = start + np.arange(num_bins + 1) * bin_size_s
            counts[k, :, n] = np.histogram(units[key].t, edges)[0]
            counts[k, -1, n] -= np.sum(units[key].t == edges[-1])  # half-open windows
    return counts


def _all_trials(session) -> tuple[np.ndarray, np.ndarray]:
    """Counts (K, T, N) and align times (K,) of all splits, in trial order."""
    sets = [session.split(s) for s in ("train", "val", "test")]
    index = np.concatenate([t.trial_index for t in sets])
    order = np.argsort(index)
    spikes = np.concatenate([t.spikes for t in sets])[order]
    times = np.concatenate([t.trial_behavior[ALIGN_TIME] for t in sets])[order]
    return spikes, times


def test_interval_set_trials_with_metadata_are_binned_exactly():
    units = _units()
    starts = np.arange(12) * 2.0 + 0.5
    trials = nap.IntervalSet(
        start=starts, end=starts + 0.35, metadata={"choice": np.tile([-1, 1], 6)}
    )
    session = session_from_pynapple(units, session_id="syn", bin_size_s=0.05, trials=trials)
    assert session.num_bins == 7 and session.num_units == 5
    assert session.unit_ids == ("10", "11", "12", "13", "14")
    assert session.unit_regions == ("CA1", "adn", "CA1", "VISp", "adn")
    np.testing.assert_allclose(session.unit_depths, [0, 100, 200, 300, 400])
    assert (session.window_start_s, session.align_event) == (0.0, "trial_start")
    spikes, times = _all_trials(session)
    np.testing.assert_allclose(times, starts)
    np.testing.assert_array_equal(spikes, _hand_counts(units, starts, 7, 0.05))
    train = session.split("train")
    np.testing.assert_array_equal(
        train.trial_behavior["choice"], np.tile([-1, 1], 6)[train.trial_index]
    )


def test_events_with_a_window_match_pynapple_count():
    units = _units(seed=1)
    events = nap.Ts(np.array([3.0, 7.5, 12.25, 20.0, 26.5]))
    session = session_from_pynapple(
        units, session_id="ev", bin_size_s=0.1, events=events, window_s=(-0.2, 0.5), seed=3
    )
    assert (session.window_start_s, session.align_event, session.num_bins) == (-0.2, "event", 7)
    spikes, times = _all_trials(session)
    np.testing.assert_allclose(times, events.t)
    for k, event in enumerate(events.t):  # pynapple's own binning of the same window
        window = nap.IntervalSet(start=event - 0.2, end=event + 0.5)
        expected = np.asarray(units.count(0.1, window).d)
        np.testing.assert_array_equal(spikes[k], expected[:7])


def test_behaviour_traces_are_averaged_per_bin():
    units = _units(num_units=3)
    t = np.arange(0.0, 30.0, 0.01)
    speed = nap.Tsd(t=t, d=2.0 * t)
    xy = nap.TsdFrame(t=t, d=np.stack([t, -t], axis=1), columns=["x", "y"])
    events = nap.Ts(np.array([5.0, 10.0, 15.0]))
    session = session_from_pynapple(
        units, session_id="b", bin_size_s=0.1, events=events, window_s=(0.0, 0.3),
        behavior={"speed": speed, "pos": xy},
    )  # fmt: skip
    assert set(session.bin_behavior_names) == {"speed", "pos.x", "pos.y"}
    trials = session.split("train")
    centre = trials.trial_behavior[ALIGN_TIME][:, None] + np.array([0.045, 0.145, 0.245])
    # the mean of the 10 samples of a bin is the mean of 0.00 .. 0.09 past its start
    np.testing.assert_allclose(trials.bin_behavior["speed"], 2.0 * centre, rtol=1e-5)
    np.testing.assert_allclose(trials.bin_behavior["pos.y"], -centre, rtol=1e-5)


_EVENTS = {"events": nap.Ts(np.array([1.0, 2.0, 3.0])), "window_s": (0, 0.2)}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one"),
        ({"events": _EVENTS["events"]}, "need window_s"),
        ({"trials": nap.IntervalSet(start=[0, 1, 2], end=[0.2, 1.3, 2.2])}, "equal lengths"),
        ({"trials": np.array([0.0, 1.0])}, "expected an IntervalSet"),
        ({"events": np.array([1.0, 2.0])}, "expected a pynapple Ts"),
        ({**_EVENTS, "window_s": (0, 0.25)}, "whole number"),
        ({**_EVENTS, "window_s": (0.2, 0.0)}, "start >= end"),
        ({**_EVENTS, "region_column": "area"}, "no metadata column 'area'"),
        ({**_EVENTS, "behavior": {"x": np.zeros(3)}}, "expected a Tsd or TsdFrame"),
    ],
)
def test_bad_inputs_name_the_problem(kwargs, message):
    with pytest.raises(SpikemaskError, match=message):
        session_from_pynapple(_units(), session_id="bad", bin_size_s=0.1, **kwargs)


def test_not_a_tsgroup_is_refused():
    with pytest.raises(SpikemaskError, match="expected a pynapple TsGroup"):
        session_from_pynapple({0: [1.0]}, session_id="x", bin_size_s=0.1, trials=None)


def test_tsgroup_to_training_to_pynapple_predictions(tmp_path):
    """The round trip of issue 12: TsGroup -> Session -> train -> TsdFrame / TsdTensor."""
    from spikemask.api import load_run
    from spikemask.config import load_config
    from spikemask.training.run import train

    units = _units(seed=2, num_units=6, duration_s=60.0)
    events = nap.Ts(np.arange(1.0, 59.0, 1.5))
    session = session_from_pynapple(
        units, session_id="pyn", bin_size_s=0.05, events=events, window_s=(-0.1, 0.25)
    )
    config = load_config(
        preset="small",
        sets=[*TINY_MODEL, "data.batch_size=8", "train.max_steps=3", "train.progress_bar=false",
              "train.tensorboard=false"],
    )  # fmt: skip
    train([session], tmp_path / "run", config=config)
    model = load_run(tmp_path / "run")
    plain = model.predict(session, split="test")
    tensor = model.predict(session, split="test", as_pynapple=True)
    assert isinstance(tensor, nap.TsdTensor)
    assert tensor.shape == (7, plain.shape[0], 6)  # (T, K, N)
    np.testing.assert_allclose(tensor.t, -0.1 + 0.025 + 0.05 * np.arange(7))
    np.testing.assert_array_equal(np.asarray(tensor.d), plain.transpose(1, 0, 2))
    frame = model.predict(session, split="test", as_pynapple="absolute")
    assert isinstance(frame, nap.TsdFrame)
    assert list(frame.columns) == list(session.unit_ids)
    align = session.split("test").trial_behavior[ALIGN_TIME]
    np.testing.assert_allclose(frame.t[:7], align.min() - 0.075 + 0.05 * np.arange(7))
    np.testing.assert_array_equal(np.asarray(frame.d)[:7], plain[np.argmin(align)])
    np.testing.assert_allclose(frame.time_support.start, np.sort(align) - 0.1)


def test_to_pynapple_errors():
    units = _units()
    session = session_from_pynapple(
        units, session_id="e", bin_size_s=0.1, events=nap.Ts(np.arange(1.0, 10.0)),
        window_s=(0.0, 2.0),
    )  # fmt: skip
    values = np.zeros((session.split("test").num_trials, session.num_bins, 5))
    with pytest.raises(SpikemaskError, match="overlap"):
        to_pynapple(values, session, "test", clock="absolute")
    with pytest.raises(SpikemaskError, match="clock='wall'"):
        to_pynapple(values, session, "test", clock="wall")
    with pytest.raises(SpikemaskError, match="expected"):
        to_pynapple(values[:, :3], session, "test")


def test_real_nwb_file_loaded_with_pynapple():
    """Peyrache lab recording: wake cut into 2-s windows, head direction as behaviour."""
    if not NWB.is_file():
        pytest.skip(f"real NWB file {NWB} is absent (needs ../shared/data beside the repo)")
    data = nap.load_file(str(NWB))
    units = data["units"]
    wake = data["epochs"][1]  # 600-1200 s
    events = nap.Ts(np.arange(float(wake.start[0]), float(wake.end[0]) - 2.0, 2.0))
    session = session_from_pynapple(
        units, session_id="A2929-200711", bin_size_s=0.02, events=events, window_s=(0.0, 2.0),
        behavior={"head_direction": data["rz"]},
    )  # fmt: skip
    assert session.num_units == 15 and session.num_bins == 100
    assert session.units_per_region == {"ca1": 8, "adn": 7}
    spikes, _ = _all_trials(session)
    expected = units.count(0.02, nap.IntervalSet(start=events.t, end=events.t + 2.0))
    assert spikes.sum() == int(np.asarray(expected.d).sum())
    np.testing.assert_array_equal(spikes[0], np.asarray(expected.d)[:100])
    direction = session.split("train").bin_behavior["head_direction"]
    assert np.isfinite(direction).mean() > 0.8  # tracking covers most of wake
    assert np.nanmin(direction) >= 0.0 and np.nanmax(direction) <= 2 * np.pi + 1e-6
