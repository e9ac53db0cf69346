"""``prepare brainsets``: brainsets / temporaldata session files written with those packages.

The files are built like the IBL brainsets pipeline builds them (``temporaldata.Data`` with
``spikes``, ``units``, ``trials``, ``wheel``, split domains, brainsets descriptions, saved with
``Data.to_hdf5``), from the real IBL bytes of ``shared/data/ibl-alf-fixture``: real spike
times and clusters, the real trial table (``firstMovement_times = stimOn + 0.25 s`` added, the
fixture has none) and the real wheel trace ``wheel0``. Made up (the fixture has none):
region acronyms, depths and QC labels of the units. Only the 23 trials inside the 120 s of
spikes have windows.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pytest

from spikemask.data.parquet import read_session
from spikemask.data.sources.brainsets import (
    BrainsetsPrepareConfig,
    load_brainsets_session,
    prepare_brainsets,
)
from spikemask.errors import SpikemaskError

pd = pytest.importorskip("pandas")
h5py = pytest.importorskip("h5py")
temporaldata = pytest.importorskip(
    "temporaldata", reason="temporaldata not installed (pip install 'spikemask[brainsets]')"
)
descriptions = pytest.importorskip(
    "brainsets.descriptions", reason="brainsets not installed (see the brainsets extra)"
)

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "data" / "ibl-alf-fixture"
REGIONS = np.array(["VISp", "CA1", "LGd", "root"])


def _real() -> dict:
    if not FIXTURE.is_dir():
        pytest.skip(f"real IBL fixture {FIXTURE} absent (needs the shared data folder)")
    trials = pd.read_parquet(FIXTURE / "_ibl_trials.table.pqt")
    trials["firstMovement_times"] = trials["stimOn_times"] + 0.25
    return {
        "times": np.load(FIXTURE / "spikes.times.npy"),
        "clusters": np.load(FIXTURE / "spikes.clusters.npy"),
        "trials": trials,
        "wheel_t": np.load(FIXTURE / "wheel0.timestamps.npy"),
        "wheel_p": np.load(FIXTURE / "wheel0.position.npy"),
    }


def write_brainsets_file(path: Path, real: dict, *, domains: bool = True) -> dict:
    """A session file in the IBL brainsets layout; returns what the test needs to check."""
    from brainsets import serialize_fn_map
    from temporaldata import ArrayDict, Data, Interval, IrregularTimeSeries

    times, clusters = real["times"], real["clusters"]
    ids, unit_index = np.unique(clusters, return_inverse=True)
    spikes = IrregularTimeSeries(timestamps=times, unit_index=unit_index, domain="auto")
    spikes.sort()
    units = ArrayDict(
        id=np.array([f"uuid-{c:04d}" for c in ids]),
        cluster_id=ids,
        acronym=REGIONS[ids % len(REGIONS)],
        depths=ids * 10.0,
        label=np.where(ids % 3 == 0, 1.0, 2 / 3),
    )
    table = real["trials"].assign(
        start=real["trials"]["stimOn_times"] - 0.4, end=real["trials"]["feedback_times"] + 0.1
    )
    trials = Interval.from_dataframe(
        table, timekeys=["start", "end", "stimOn_times", "goCue_times", "feedback_times"]
    )
    trials.choice = np.array([0, 2, 1])[
        (table["choice"].to_numpy() + 1).astype(int)
    ]  # as brainsets
    trials.block = np.searchsorted([0.2, 0.5, 0.8], table["probabilityLeft"].to_numpy())
    position = real["wheel_p"]
    velocity = np.gradient(position, real["wheel_t"])
    wheel = IrregularTimeSeries(
        timestamps=real["wheel_t"], pos=position[:, None], vel=velocity[:, None], domain="auto"
    )
    wheel.speed = np.abs(wheel.vel)
    data = Data(
        brainset=descriptions.BrainsetDescription(
            id="ibl_test", origin_version="test", derived_version="1.0.0", source="test",
            description="real IBL fixture bytes",
        ),
        subject=descriptions.SubjectDescription(id="mouse1"),
        session=descriptions.SessionDescription(
            id="eid-test", recording_date=datetime.datetime(2020, 1, 1)
        ),
        spikes=spikes, units=units, trials=trials, wheel=wheel, domain=spikes.domain,
    )  # fmt: skip
    stim = table["stimOn_times"].to_numpy()
    inside = np.flatnonzero((stim - 0.5 >= times.min()) & (stim + 1.5 <= times.max()))
    order = np.random.default_rng(42).permutation(inside)
    parts = {
        "train": np.sort(order[:16]),
        "val": np.sort(order[16:18]),
        "test": np.sort(order[18:]),
    }
    if domains:
        for name, attr in (
            ("train", "train_domain"),
            ("val", "valid_domain"),
            ("test", "test_domain"),
        ):
            rows = parts[name]
            setattr(data, attr, Interval(start=stim[rows] - 0.5, end=stim[rows] + 1.5))
    with h5py.File(path, "w") as handle:
        data.to_hdf5(handle, serialize_fn_map=serialize_fn_map)
    return {"ids": ids, "parts": parts, "stim": stim, "inside": inside, "table": table}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    real = _real()
    root = tmp_path_factory.mktemp("brainsets")
    facts = write_brainsets_file(root / "eid-test.h5", real)
    write_brainsets_file(root / "no-domains.h5", real, domains=False)
    return {"root": root, "real": real, **facts}


def test_domains_give_windows_split_and_counts(files: dict) -> None:
    session, report = load_brainsets_session(files["root"] / "eid-test.h5")
    real, stim = files["real"], files["stim"]
    assert session.session_id == "eid-test" and session.metadata["subject"] == "mouse1"
    assert session.num_bins == 100 and session.window_start_s == pytest.approx(-0.5)
    assert report.trials_kept == 23 and report.splits == {"train": 16, "val": 2, "test": 5}
    for name, rows in files["parts"].items():
        trials = session.split(name)
        np.testing.assert_array_equal(trials.trial_index, rows)
        np.testing.assert_allclose(trials.trial_behavior["window_start_time_s"], stim[rows] - 0.5)
    # counts against np.histogram of the real spike times, unit by unit
    trials = session.split("test")
    for column in (0, 7, session.num_units - 1):
        cluster = files["ids"][column]
        unit_times = real["times"][real["clusters"] == cluster]
        for k, start in enumerate(trials.trial_behavior["window_start_time_s"]):
            edges = start + 0.02 * np.arange(101)
            expected, _ = np.histogram(unit_times[unit_times < edges[-1]], edges)
            np.testing.assert_array_equal(trials.spikes[k, :, column], expected)
    assert session.unit_ids == tuple(f"uuid-{c:04d}" for c in files["ids"])
    assert session.unit_regions == tuple(REGIONS[files["ids"] % 4])
    np.testing.assert_allclose(session.unit_depths, files["ids"] * 10.0)


def test_trial_behaviour_mapped_back_to_ibl(files: dict) -> None:
    session, _ = load_brainsets_session(files["root"] / "eid-test.h5")
    table, rows = files["table"], files["parts"]["train"]
    behavior = session.split("train").trial_behavior
    np.testing.assert_array_equal(behavior["choice"], table["choice"].to_numpy()[rows])
    np.testing.assert_array_equal(behavior["block"], table["probabilityLeft"].to_numpy()[rows])
    np.testing.assert_array_equal(
        behavior["reward"], (table["feedbackType"].to_numpy()[rows] > 0).astype(float)
    )
    np.testing.assert_allclose(behavior["reaction_time"], 0.25)
    assert set(np.unique(behavior["contrast_left"])) <= {0.0, 0.0625, 0.125, 0.25, 1.0}


def test_wheel_speed_is_the_mean_of_its_samples(files: dict) -> None:
    config = BrainsetsPrepareConfig(behavior_paths=("wheel.speed",))
    session, _ = load_brainsets_session(files["root"] / "eid-test.h5", config)
    trials = session.split("train")
    assert list(trials.bin_behavior) == ["wheel-speed"]
    real = files["real"]
    speed = np.abs(np.gradient(real["wheel_p"], real["wheel_t"]))
    start = trials.trial_behavior["window_start_time_s"][3]
    inside = (real["wheel_t"] >= start + 0.4) & (real["wheel_t"] < start + 0.42)
    assert inside.any()
    assert trials.bin_behavior["wheel-speed"][3, 20] == pytest.approx(
        speed[inside].mean(), rel=1e-5
    )


def test_trial_windows_without_domains(files: dict) -> None:
    config = BrainsetsPrepareConfig(window_s=(-0.2, 0.6), seed=3)
    session, report = load_brainsets_session(files["root"] / "no-domains.h5", config)
    assert session.num_bins == 40 and report.trials_total == 500
    assert report.trials_dropped["outside_recording"] == 500 - report.trials_kept
    starts = np.sort(
        np.concatenate([t.trial_behavior["window_start_time_s"] for t in session.splits.values()])
    )
    stim = files["stim"]
    inside = (stim - 0.2 >= files["real"]["times"].min()) & (
        stim + 0.6 <= files["real"]["times"].max()
    )
    np.testing.assert_allclose(starts, np.sort(stim[inside] - 0.2))
    with pytest.raises(SpikemaskError, match="has no \\['train_domain'"):
        load_brainsets_session(
            files["root"] / "no-domains.h5", BrainsetsPrepareConfig(use_domains=True)
        )


def test_unit_filters(files: dict) -> None:
    path = files["root"] / "eid-test.h5"
    full, _ = load_brainsets_session(path)
    spikes = np.concatenate([t.spikes for t in full.splits.values()]).astype(np.int64)
    rate = spikes.sum(axis=(0, 1)) / (spikes.shape[0] * 2.0)
    good = full.unit_attributes["cluster_label"] == 1.0
    config = BrainsetsPrepareConfig(good_units_only=True, min_rate_hz=2.0)
    session, report = load_brainsets_session(path, config)
    assert list(session.unit_ids) == list(np.array(full.unit_ids)[good & (rate >= 2.0)])
    assert report.units_dropped == {
        "qc_label": int((~good).sum()),
        "min_rate": int((good & (rate < 2.0)).sum()),
    }


def test_prepare_brainsets_command(files: dict, tmp_path: Path, capsys) -> None:
    from spikemask.cli import main

    one = ["prepare", "brainsets", str(files["root"] / "eid-test.h5")]
    assert main([*one, "--out", str(tmp_path / "one"), "--good-units"]) == 0
    assert "23/23 windows kept" in capsys.readouterr().out
    session = read_session(tmp_path / "one", cache=False)
    assert session.session_id == "eid-test" and session.num_bins == 100
    both = [*one, str(files["root"] / "no-domains.h5"), "--out", str(tmp_path / "many")]
    assert main([*both, "--behavior", "wheel.speed"]) == 0
    assert read_session(tmp_path / "many" / "no-domains", cache=False).bin_behavior_names == (
        "wheel-speed",
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"not hdf5", "not a readable HDF5 file"),
        ("empty-h5", "not a temporaldata Data object"),
    ],
)
def test_bad_files(tmp_path: Path, capsys, content, message: str) -> None:
    from spikemask.cli import main

    path = tmp_path / "session.h5"
    if content == "empty-h5":
        h5py.File(path, "w").close()
    elif content is not None:
        path.write_bytes(content)
    assert main(["prepare", "brainsets", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_behaviour_path(files: dict) -> None:
    with pytest.raises(SpikemaskError, match=r"no behaviour \['wheel\.nope'\]"):
        load_brainsets_session(
            files["root"] / "eid-test.h5", BrainsetsPrepareConfig(behavior_paths=("wheel.nope",))
        )


def test_prepare_refuses_existing_output(files: dict, tmp_path: Path) -> None:
    prepare_brainsets(files["root"] / "eid-test.h5", tmp_path)
    with pytest.raises(SpikemaskError, match="already holds a prepared dataset"):
        prepare_brainsets(files["root"] / "eid-test.h5", tmp_path)
