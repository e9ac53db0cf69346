"""IBL / ONE pipeline on a local ONE cache built from real IBL bytes (no network).

The cache (built once per module in tmp) lays out real files of ``shared/data/ibl-alf-fixture``
with ALF names: the real spike times / clusters (two probes: ``alf/probe00/pykilosort`` and
``alf/probe01`` — the latter holding the clusters < 50 of the same recording again, to check
probe merging and uuids), the real trial table, the real wheel trace ``wheel1``. Filled in
by the test (the fixture has none): channel acronyms and cluster channels / depths, a left
camera with motion energy ``2 * t`` (so its value at a bin end is exactly known), and
``firstMovement_times = stimOn + 0.25 s``. Five of the 23 trials that fall inside the 120 s of
spikes are edited to hit every filter (trial 2 no-go, 5 NaN movement, 7 and 9 reaction time,
11 feedback delay). Spikes and trials come from different recordings, so only those 23
trials overlap the spikes; the others are dropped as ``outside_recording``.
"""

from __future__ import annotations

import functools
import pickle
import shutil
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

try:
    import pandas as pd
except ImportError:  # comes with the ibl extra; every test using it needs ONE and skips
    pd = None

from spikemask.data.parquet import read_session
from spikemask.data.sources._ibl_one import _atlas_acronyms
from spikemask.data.sources.binning import REPORT_NAME, bin_edges, is_prepared, read_report
from spikemask.data.sources.ibl import (
    IBLPrepareConfig,
    filter_trials,
    load_ibl_session,
    make_one,
    prepare_ibl,
    prepare_ibl_many,
)
from spikemask.errors import SpikemaskError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FIXTURE = SHARED_DATA / "ibl-alf-fixture"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

EDITED = {2: "no_go", 5: "nan_fields", 7: "reaction_time", 9: "reaction_time", 11: "feedback"}
IN_RECORDING = range(23)
KEPT = [t for t in IN_RECORDING if t not in EDITED]


def _region_of_channel(channel: np.ndarray) -> np.ndarray:
    return np.where(channel < 192, "VISp", "CA1")


def _trials() -> pd.DataFrame:
    trials = pd.read_parquet(FIXTURE / "_ibl_trials.table.pqt")
    trials.loc[2, "choice"] = 0
    trials.loc[11, "feedback_times"] = trials.loc[11, "goCue_times"] + 10.5
    return trials


def _first_movement(trials: pd.DataFrame) -> np.ndarray:
    movement = trials["stimOn_times"].to_numpy() + 0.25
    movement[5] = np.nan
    movement[7] = trials.loc[7, "stimOn_times"] + 0.05
    movement[9] = trials.loc[9, "stimOn_times"] + 2.5
    return movement


def _session(root: Path, name: str) -> Path:
    alf = root / "testlab" / "Subjects" / "mouse1" / "2020-01-01" / name / "alf"
    alf.mkdir(parents=True)
    return alf


def _probe(folder: Path, times: np.ndarray, clusters: np.ndarray, *, histology: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "spikes.times.npy", times)
    np.save(folder / "spikes.clusters.npy", clusters)
    num_clusters = int(clusters.max()) + 1
    np.save(folder / "clusters.channels.npy", (np.arange(num_clusters) * 7) % 384)
    np.save(folder / "clusters.depths.npy", np.arange(num_clusters) * 10.0)
    if histology == "acronym":
        np.save(folder / "channels.acronym.npy", _region_of_channel(np.arange(384)))
    elif histology == "atlas":  # Allen ids: 385 = VISp, 382 = CA1
        np.save(
            folder / "channels.brainLocationIds_ccf_2017.npy",
            np.where(np.arange(384) < 192, 385, 382),
        )


def _task(alf: Path, trials: pd.DataFrame) -> None:
    trials.to_parquet(alf / "_ibl_trials.table.pqt")
    np.save(alf / "_ibl_trials.firstMovement_times.npy", _first_movement(trials))
    np.save(alf / "_ibl_wheel.timestamps.npy", np.load(FIXTURE / "wheel1.timestamps.npy"))
    np.save(alf / "_ibl_wheel.position.npy", np.load(FIXTURE / "wheel1.position.npy"))
    camera_times = np.arange(0.0, 130.0, 1 / 60)
    np.save(alf / "_ibl_leftCamera.times.npy", camera_times)
    np.save(alf / "_ibl_leftCamera.ROIMotionEnergy.npy", 2.0 * camera_times)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not FIXTURE.is_dir():
        pytest.skip(f"real IBL fixture {FIXTURE} absent (needs the shared data folder)")
    pytest.importorskip("one", reason="ONE-api not installed (pip install 'spikemask[ibl]')")
    root = tmp_path_factory.mktemp("one_cache")
    times, clusters = (
        np.load(FIXTURE / "spikes.times.npy"),
        np.load(FIXTURE / "spikes.clusters.npy"),
    )
    trials = _trials()

    alf = _session(root, "001")  # the full session
    _task(alf, trials)
    _probe(alf / "probe00" / "pykilosort", times, clusters, histology="acronym")
    _probe(
        alf / "probe00", times[:10], clusters[:10], histology="none"
    )  # older sorting: not chosen
    few = clusters < 50
    _probe(alf / "probe01", times[few], clusters[few], histology="acronym")
    uuids = [str(uuid.UUID(int=c + 1)) for c in range(int(clusters[few].max()) + 1)]
    pd.DataFrame({"uuids": uuids}).to_csv(alf / "probe01" / "clusters.uuids.csv", index=False)

    alf = _session(root, "002")  # no trials
    _probe(alf / "probe00", times, clusters, histology="acronym")
    alf = _session(root, "003")  # every trial no-go
    _task(alf, trials.assign(choice=0))
    _probe(alf / "probe00", times, clusters, histology="acronym")
    alf = _session(root, "004")  # two spikes, none inside a trial window
    _task(alf, trials)
    _probe(alf / "probe00", np.array([0.0, 500.0]), np.array([0, 1]), histology="acronym")
    alf = _session(root, "005")  # no histology
    _task(alf, trials)
    _probe(alf / "probe00", times, clusters, histology="none")
    alf = _session(root, "006")  # histology as Allen atlas ids only
    _task(alf, trials)
    _probe(alf / "probe00", times, clusters, histology="atlas")

    alf = _session(root, "007")  # a QC metrics table (made up: the fixture has none)
    _task(alf, trials)
    _probe(alf / "probe00", times, clusters, histology="acronym")
    ids = np.arange(int(clusters.max()) + 1)[::-1]  # rows in reverse: matched by cluster_id
    metrics = pd.DataFrame({"cluster_id": ids, "label": np.where(ids % 2 == 0, 1.0, 1 / 3)})
    metrics.to_parquet(alf / "probe00" / "clusters.metrics.pqt")

    one = make_one(root, local=True)  # builds the cache tables
    sessions = root / "testlab" / "Subjects" / "mouse1" / "2020-01-01"
    eids = {p.name: str(one.path2eid(p)) for p in sorted(sessions.iterdir())}
    return {"root": root, "one": one, "eids": eids, "times": times, "clusters": clusters}


@pytest.fixture(scope="module")
def prepared(cache: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("prepared") / "session"
    report = prepare_ibl(cache["eids"]["001"], out, one=cache["one"])
    return {"out": out, "report": report, "session": read_session(out, cache=False)}


# ---------------------------------------------------------------------------- filters
def test_filter_trials_hand_made() -> None:
    nan = np.nan
    trials = {
        "stimOn_times": np.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0]),
        "goCue_times": np.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0]),
        "feedback_times": np.array([11.0, 21.0, 31.0, 41.0, 61.0, 61.0, 71.0]),
        "firstMovement_times": np.array([10.5, 20.07, 32.5, nan, 50.5, 60.5, 70.5]),
        "choice": np.array([1.0, -1.0, 1.0, 1.0, 1.0, 0.0, -1.0]),
        "feedbackType": np.ones(7),
        "probabilityLeft": np.full(7, 0.5),
    }
    keep, dropped = filter_trials(trials, IBLPrepareConfig(), recording_s=(0.0, 70.0))
    np.testing.assert_array_equal(keep, [True, False, False, False, False, False, False])
    assert dropped == {
        "nan_fields": 1, "no_go": 1, "reaction_time": 2, "feedback_delay": 1,
        "outside_recording": 1,
    }  # fmt: skip
    relaxed = IBLPrepareConfig(min_rt_s=None, max_rt_s=None, max_feedback_delay_s=None)
    keep, _ = filter_trials(trials, relaxed)
    np.testing.assert_array_equal(keep, [True, True, True, False, True, False, True])


def test_filter_trials_missing_field() -> None:
    with pytest.raises(SpikemaskError, match=r"trials lack field\(s\) \['firstMovement_times'\]"):
        filter_trials(
            {"stimOn_times": np.zeros(2)},
            IBLPrepareConfig(required_fields=("firstMovement_times",)),
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"window_s": (1.0, 0.5)}, "start >= end"),
        ({"window_s": (0.5, 0.5)}, "start >= end"),
        ({"bin_size_s": 0.0}, "bin_size_s=0.0; expected a bin width"),
        ({"bin_size_s": -0.02}, "expected a bin width in seconds > 0"),
        ({"bin_size_s": 0.03}, "not a whole number of bins"),
        ({"split": (0.8, 0.2, 0.0)}, "expected three fractions > 0"),
        ({"min_rt_s": 3.0}, "min_rt_s=3.0 >= max_rt_s=2.0"),
        ({"region_mapping": "Swanson"}, "expected 'Allen', 'Beryl' or 'Cosmos'"),
    ],
)
def test_config_errors(options: dict, message: str) -> None:
    with pytest.raises(SpikemaskError, match=message):
        IBLPrepareConfig(**options)


# ---------------------------------------------------------------------------- full prepare
def test_prepare_report_counts_trials(prepared: dict, cache: dict) -> None:
    report = prepared["report"]
    trials = _trials()
    delay = (trials["feedback_times"] - trials["goCue_times"]).to_numpy()
    assert report.trials_total == 500
    assert report.trials_kept == len(KEPT) == 18
    assert report.trials_dropped == {
        "nan_fields": 1, "no_go": 1, "reaction_time": 2, "feedback_delay": int((delay > 10).sum()),
        "outside_recording": 500 - 18 - 4 - int((delay > 10).sum()),
    }  # fmt: skip
    assert report.probes == ["probe00", "probe01"]
    num_units = len(np.unique(cache["clusters"])) + len(
        np.unique(cache["clusters"][cache["clusters"] < 50])
    )
    assert report.units == num_units
    assert report.splits == {"train": 12, "val": 2, "test": 4}
    assert sorted(report.bin_behavior) == ["wheel-speed", "whisker-motion-energy"]
    assert read_report(prepared["out"]).trials_dropped == report.trials_dropped
    assert (prepared["out"] / REPORT_NAME).is_file() and is_prepared(prepared["out"])


def test_prepare_units_regions_and_split(prepared: dict, cache: dict) -> None:
    session = prepared["session"]
    ids = np.unique(cache["clusters"])
    probe00 = [f"probe00-{c}" for c in ids]
    probe01 = [str(uuid.UUID(int=c + 1)) for c in ids[ids < 50]]
    assert session.unit_ids == tuple(probe00 + probe01)
    expected_regions = _region_of_channel((np.concatenate([ids, ids[ids < 50]]) * 7) % 384)
    assert session.unit_regions == tuple(expected_regions)
    np.testing.assert_array_equal(session.unit_depths, np.concatenate([ids, ids[ids < 50]]) * 10.0)
    rows = np.concatenate([session.split(s).trial_index for s in ("train", "val", "test")])
    assert sorted(rows) == KEPT
    assert session.align_event == "stimOn_times" and session.window_start_s == -0.5
    assert session.num_bins == 100 and session.bin_size_s == 0.02


def test_prepare_counts_match_histogram(prepared: dict, cache: dict) -> None:
    session, times, clusters = prepared["session"], cache["times"], cache["clusters"]
    trials = _trials()
    split = session.split("train")
    ids = list(session.unit_ids)
    for row in (0, split.num_trials - 1):
        edges = bin_edges(
            trials["stimOn_times"].to_numpy()[[split.trial_index[row]]] - 0.5, 100, 0.02
        )[0]
        for cluster in (0, 7, int(clusters.max())):
            if f"probe00-{cluster}" not in ids:
                continue
            expected, _ = np.histogram(times[clusters == cluster], edges)
            np.testing.assert_array_equal(
                split.spikes[row, :, ids.index(f"probe00-{cluster}")], expected
            )
    # probe01 repeats the clusters < 50 of the same recording: identical counts
    assert split.spikes[..., : len(ids)].sum() > 0
    np.testing.assert_array_equal(
        split.spikes[..., ids.index("probe00-3")],
        split.spikes[..., ids.index(str(uuid.UUID(int=4)))],
    )


def test_prepare_behaviour(prepared: dict) -> None:
    session = prepared["session"]
    trials, movement = _trials(), _first_movement(_trials())
    split = session.split("test")
    index = split.trial_index
    np.testing.assert_array_equal(
        split.trial_behavior["choice"], trials["choice"].to_numpy()[index]
    )
    np.testing.assert_array_equal(
        split.trial_behavior["block"], trials["probabilityLeft"].to_numpy()[index]
    )
    reward = (trials["feedbackType"].to_numpy()[index] > 0).astype(float)
    np.testing.assert_array_equal(split.trial_behavior["reward"], reward)
    np.testing.assert_allclose(split.trial_behavior["reaction_time"], 0.25)
    assert not np.any(np.isnan(split.trial_behavior["contrast_left"]))
    edges = bin_edges(trials["stimOn_times"].to_numpy()[index] - 0.5, 100, 0.02)
    np.testing.assert_allclose(
        split.bin_behavior["whisker-motion-energy"], 2.0 * edges[:, 1:], rtol=1e-6
    )
    wheel_t, wheel_p = (
        np.load(FIXTURE / "wheel1.timestamps.npy"),
        np.load(FIXTURE / "wheel1.position.npy"),
    )
    at_edges = np.interp(edges, wheel_t, wheel_p)
    np.testing.assert_allclose(
        split.bin_behavior["wheel-speed"], np.abs(np.diff(at_edges, axis=1)) / 0.02, rtol=1e-5
    )
    assert np.max(split.bin_behavior["wheel-speed"]) > 0
    assert movement.shape == (500,)


def test_prepare_refuses_existing_output(prepared: dict, cache: dict) -> None:
    with pytest.raises(SpikemaskError, match="already holds a prepared dataset"):
        prepare_ibl(cache["eids"]["001"], prepared["out"], one=cache["one"])


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("002", "has no trials datasets"),
        ("003", r"no trial of session .* survives the trial filters .*'no_go': 499"),
        ("004", r"no spike in the \d+ kept trial windows"),
        ("005", "no histology"),
    ],
)
def test_prepare_errors(cache: dict, name: str, message: str) -> None:
    with pytest.raises(SpikemaskError, match=message):
        load_ibl_session(cache["eids"][name], one=cache["one"])


def test_unknown_eid(cache: dict) -> None:
    for eid in (str(uuid.uuid4()), "not-an-eid"):
        with pytest.raises(SpikemaskError, match="unknown eid"):
            load_ibl_session(eid, one=cache["one"])


def test_unlabelled_allowed(cache: dict) -> None:
    config = IBLPrepareConfig(allow_unlabelled=True)
    session, report = load_ibl_session(cache["eids"]["005"], one=cache["one"], config=config)
    assert set(session.unit_regions) == {"unknown"}
    assert any("no histology" in note for note in report.notes)


def test_atlas_ids_mapped_with_iblatlas(cache: dict) -> None:
    pytest.importorskip("iblatlas", reason="iblatlas not installed")
    session, _ = load_ibl_session(cache["eids"]["006"], one=cache["one"])
    ids = np.unique(cache["clusters"])
    assert session.unit_regions == tuple(_region_of_channel((ids * 7) % 384))
    assert _atlas_acronyms(np.array([385, 382, 0]), "Cosmos") == ["Isocortex", "HPF", "void"]


def test_atlas_ids_without_iblatlas(cache: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "iblatlas.regions", None)  # import fails
    with pytest.raises(SpikemaskError, match=r"install iblatlas \(pip install iblatlas\)"):
        load_ibl_session(cache["eids"]["006"], one=cache["one"])


def test_missing_cache_folder(tmp_path: Path) -> None:
    pytest.importorskip("one", reason="ONE-api not installed")
    with pytest.raises(SpikemaskError, match=r"ONE cache folder .* not found"):
        make_one(tmp_path / "missing", local=True)


# ---------------------------------------------------------------------------- many sessions
def _check_many(cache: dict, prepared: dict, out: Path, *, workers: int) -> None:
    eids = [cache["eids"]["001"], cache["eids"]["004"]]
    factory = functools.partial(make_one, cache["root"], local=True)
    reports = prepare_ibl_many(eids, out, workers=workers, one_factory=factory)
    assert [r.session_id for r in reports] == eids
    assert reports[0].ok and not reports[0].skipped and reports[0].trials_kept == 18
    assert "no spike in the" in reports[1].error
    assert is_prepared(out / eids[0]) and not is_prepared(out / eids[1])
    session = read_session(out / eids[0], cache=False)
    np.testing.assert_array_equal(
        session.split("val").spikes, prepared["session"].split("val").spikes
    )
    shutil.rmtree(out / eids[1])
    again = prepare_ibl_many(eids, out, workers=1, cache_dir=cache["root"], local=True)
    assert again[0].skipped and again[0].trials_kept == 18
    assert not again[1].skipped and "no spike in the" in again[1].error
    assert read_report(out / eids[1]).error == again[1].error


def test_prepare_many_resumable(cache: dict, prepared: dict, tmp_path: Path) -> None:
    _check_many(cache, prepared, tmp_path, workers=1)
    # what a worker process receives must pickle (spawned workers)
    factory = functools.partial(make_one, cache["root"], local=True)
    pickle.loads(pickle.dumps((factory, IBLPrepareConfig(seed=3), prepared["report"])))


@pytest.mark.slow
def test_prepare_many_parallel(cache: dict, prepared: dict, tmp_path: Path) -> None:
    _check_many(cache, prepared, tmp_path, workers=2)


# ---------------------------------------------------------------------------- command line
def test_prepare_ibl_command_offline_then_train_ready(cache: dict, tmp_path: Path, capsys) -> None:
    from spikemask.cli import main

    out = tmp_path / "cli"
    args = [
        "prepare",
        "ibl",
        "--eid",
        cache["eids"]["001"],
        "--out",
        str(out),
        "--cache-dir",
        str(cache["root"]),
        "--local",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "18/500 trials kept" in printed and "dropped:" in printed
    session = read_session(out, cache=False)
    assert session.num_bins == 100 and session.bin_size_s == pytest.approx(0.02)
    assert (
        main(
            [
                "prepare",
                "ibl",
                "--eid",
                "not-an-eid",
                "--out",
                str(tmp_path / "x"),
                "--cache-dir",
                str(cache["root"]),
                "--local",
            ]
        )
        == 2
    )
    assert "unknown eid" in capsys.readouterr().err


# ---------------------------------------------------------------------------- unit filters
def _rates_hz(session) -> dict[str, float]:
    """Unit id -> mean rate over all kept trial windows (all splits)."""
    spikes = np.concatenate([t.spikes for t in session.splits.values()]).astype(np.int64)
    duration = spikes.shape[0] * spikes.shape[1] * session.bin_size_s
    return dict(zip(session.unit_ids, spikes.sum(axis=(0, 1)) / duration, strict=True))


def test_min_rate_filter_on_real_spikes(cache: dict, prepared: dict) -> None:
    """The minimum firing rate keeps exactly the units of the unfiltered session whose rate
    in the kept windows reaches it, with the same counts (real IBL spike times)."""
    full = prepared["session"]
    rates = _rates_hz(full)
    config = IBLPrepareConfig(min_rate_hz=5.0)
    session, report = load_ibl_session(cache["eids"]["001"], one=cache["one"], config=config)
    expected = [u for u in full.unit_ids if rates[u] >= 5.0]
    assert 0 < len(expected) < full.num_units
    assert list(session.unit_ids) == expected
    assert report.units == len(expected)
    assert report.units_dropped == {"min_rate": full.num_units - len(expected)}
    columns = [full.unit_ids.index(u) for u in expected]
    np.testing.assert_array_equal(
        session.split("test").spikes, full.split("test").spikes[:, :, columns]
    )
    assert min(_rates_hz(session).values()) >= 5.0


def test_good_units_filter(cache: dict) -> None:
    """QC label 1 only, matched through clusters.metrics' cluster_id (rows reversed)."""
    eid = cache["eids"]["007"]
    full, _ = load_ibl_session(eid, one=cache["one"])
    np.testing.assert_allclose(
        full.unit_attributes["cluster_label"],
        np.where(np.unique(cache["clusters"]) % 2 == 0, 1.0, 1 / 3),
    )
    config = IBLPrepareConfig(good_units_only=True, min_rate_hz=1.0)
    session, report = load_ibl_session(eid, one=cache["one"], config=config)
    assert np.all(session.unit_attributes["cluster_label"] == 1.0)
    good = full.unit_attributes["cluster_label"] == 1.0
    rates = np.array(list(_rates_hz(full).values()))
    assert session.num_units == int((good & (rates >= 1.0)).sum())
    assert report.units_dropped == {
        "qc_label": int((~good).sum()),
        "min_rate": int((good & (rates < 1.0)).sum()),
    }


def test_good_units_without_labels_is_an_error(cache: dict) -> None:
    with pytest.raises(SpikemaskError, match="carry no IBL QC label"):
        load_ibl_session(
            cache["eids"]["001"], one=cache["one"], config=IBLPrepareConfig(good_units_only=True)
        )
    with pytest.raises(SpikemaskError, match="no unit passes the unit filters"):
        load_ibl_session(
            cache["eids"]["001"], one=cache["one"], config=IBLPrepareConfig(min_rate_hz=1e6)
        )


@pytest.mark.parametrize("rate", [-1.0, float("nan")])
def test_min_rate_must_be_a_rate(rate: float) -> None:
    with pytest.raises(SpikemaskError, match="expected a firing rate in Hz >= 0"):
        IBLPrepareConfig(min_rate_hz=rate)


def test_prepare_ibl_command_unit_filters(cache: dict, tmp_path: Path, capsys) -> None:
    from spikemask.cli import main

    args = ["prepare", "ibl", "--eid", cache["eids"]["007"], "--cache-dir", str(cache["root"])]
    args += ["--local", "--good-units", "--min-rate", "2"]
    assert main([*args, "--out", str(tmp_path / "good")]) == 0
    printed = capsys.readouterr().out
    assert "units dropped: qc_label" in printed and "min_rate" in printed
    session = read_session(tmp_path / "good", cache=False)
    assert np.all(session.unit_attributes["cluster_label"] == 1.0)
    bad = ["prepare", "ibl", "--eid", cache["eids"]["001"], "--cache-dir", str(cache["root"])]
    assert main([*bad, "--local", "--good-units", "--out", str(tmp_path / "x")]) == 2
    assert "carry no IBL QC label" in capsys.readouterr().err
