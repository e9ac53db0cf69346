"""evaluate(): result shape, skips, errors, behaviour decoders, linear baseline, CLI, report."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from spikemask.cli import main
from spikemask.data.parquet import write_session
from spikemask.data.session import TrialSet
from spikemask.errors import SpikemaskError
from spikemask.evaluation.behavior import decode_behaviors, trial_labels
from spikemask.evaluation.evaluate import evaluate, evaluate_linear_baseline
from spikemask.evaluation.report import markdown_table
from spikemask.evaluation.runner import predict_task
from spikemask.evaluation.tasks import plan_task, score_task
from spikemask.training.checkpoint import save_checkpoint
from test_tasks import tiny_model, tiny_session

from conftest import make_session

ACTIVITY_KEYS = ("co_smoothing", "forward_prediction", "inter_region", "intra_region")


@pytest.fixture(scope="module")
def sessions():
    return [
        tiny_session(session_id="a", trials=(16, 3, 9)),
        tiny_session(session_id="b", trials=(15, 3, 8), seed=1),
    ]


@pytest.fixture(scope="module")
def model(sessions):
    return tiny_model(*sessions)


@pytest.fixture(scope="module")
def results(model, sessions):
    return evaluate(model, sessions, progress=False)


def test_results_have_the_documented_shape(results, model, sessions):
    assert set(results) == {"sessions", "mean", "model", "split"}
    assert results["split"] == "test"
    assert results["model"]["schemes"] == list(model.trained_schemes)
    assert results["model"]["architecture"] == "ndt1"
    entry = results["sessions"]["a"]
    assert set(entry) == {*ACTIVITY_KEYS, "choice", "reward", "wheel-speed"}
    for key in ACTIVITY_KEYS:
        assert set(entry[key]) == {
            "bps",
            "bps_pooled",
            "poisson_d2",
            "poisson_d2_pooled",
            "num_units",
            "num_silent_units",
            "per_region",
        }
        for region in entry[key]["per_region"].values():
            assert set(region) == {
                "bps",
                "bps_pooled",
                "poisson_d2",
                "poisson_d2_pooled",
                "num_units",
            }
    assert entry["co_smoothing"]["num_units"] == 11
    assert set(entry["inter_region"]["per_region"]) == {"VISp", "CA1", "LGd"}
    assert entry["intra_region"]["num_units"] == 8  # 11 units minus 3 unlabelled
    assert set(entry["choice"]) == {"accuracy", "balanced_accuracy", "chance", "num_trials"}
    assert entry["choice"]["num_trials"] == 9
    assert set(entry["wheel-speed"]) == {"r2", "num_trials"}
    json.dumps(results, allow_nan=False)  # valid JSON: no NaN

    # the numbers are those of the task code, and the mean is over the sessions
    session = sessions[0]
    plan = plan_task(session, "co-smoothing")
    rates = predict_task(model, session, plan)
    direct = score_task(
        plan, rates, session.split("test").spikes, unit_regions=session.unit_regions
    )
    assert entry["co_smoothing"]["bps"] == round(direct.bps, 4)
    assert entry["co_smoothing"]["poisson_d2"] == round(direct.poisson_d2, 4)
    assert entry["co_smoothing"]["poisson_d2_pooled"] == round(direct.poisson_d2_pooled, 4)
    d2 = [results["sessions"][s]["co_smoothing"]["poisson_d2"] for s in ("a", "b")]
    assert results["mean"]["co_smoothing"]["poisson_d2"] == pytest.approx(np.mean(d2), abs=1e-4)
    assert "D² (pooled)" in markdown_table({"model": results})
    both = [results["sessions"][s]["co_smoothing"]["bps_pooled"] for s in ("a", "b")]
    assert results["mean"]["co_smoothing"]["bps_pooled"] == pytest.approx(np.mean(both), abs=1e-4)
    assert results["mean"]["choice"]["num_sessions"] == 2


def test_unknown_task_lists_the_valid_ones(model, sessions):
    with pytest.raises(SpikemaskError, match=r"unknown task\(s\) \['smoothing'\].*co-smoothing"):
        evaluate(model, sessions, tasks=["co-smoothing", "smoothing"], progress=False)


def test_single_region_session_gets_skip_entries():
    single = tiny_session(session_id="one", regions=("VISp", "root"))
    tasks = ["co-smoothing", "inter-region", "intra-region"]
    results = evaluate(tiny_model(single), [single], tasks=tasks, progress=False)
    entry = results["sessions"]["one"]
    assert entry["inter_region"] == {
        "skipped": "the session has 1 labelled region(s); region tasks need at least 2"
    }
    assert "skipped" in entry["intra_region"] and "bps" in entry["co_smoothing"]
    assert results["mean"]["inter_region"] == {"num_sessions": 0}
    assert "| one | model | " in markdown_table({"model": results})
    assert "skipped" in markdown_table({"model": results})


def planted_session():
    """Choice drives half the units (conftest's planted gain); wheel speed is linear in the
    counts of units 0 and 1."""
    session = make_session(session_id="planted", trials=(60, 4, 40), seed=3)
    rng = np.random.default_rng(4)
    splits = {}
    for name, trials in session.splits.items():
        counts = trials.spikes.astype(np.float32)
        speed = counts[:, :, 0] - counts[:, :, 1] + 0.1 * rng.standard_normal(counts.shape[:2])
        splits[name] = dataclasses.replace(trials, bin_behavior={"wheel-speed": speed})
    return session.replace(splits=splits)


def test_decoders_on_raw_counts_beat_chance_on_a_planted_signal():
    results = evaluate_linear_baseline(
        [planted_session()], tasks=["choice", "behavior"], progress=False
    )
    entry = results["sessions"]["planted"]
    assert results["model"]["name"] == "linear"
    assert entry["choice"]["accuracy"] > entry["choice"]["chance"] + 0.2
    assert entry["wheel-speed"]["r2"] > 0.8
    assert "reward" not in entry  # not asked for


def test_trial_labels_filter_and_derive():
    trials = TrialSet(
        spikes=np.zeros((5, 2, 1), dtype=np.uint16),
        trial_index=np.arange(5),
        trial_behavior={
            "choice": np.array([1.0, 0.0, np.nan, -1.0, 1.0]),
            "feedback_type": np.array([1.0, -1.0, 1.0, np.nan, -1.0]),
        },
    )
    np.testing.assert_array_equal(trial_labels(trials, "choice"), [1, np.nan, np.nan, -1, 1])
    np.testing.assert_array_equal(trial_labels(trials, "reward"), [1, 0, 1, np.nan, 0])
    bare = TrialSet(spikes=trials.spikes, trial_index=trials.trial_index)
    assert trial_labels(bare, "choice") is None and trial_labels(bare, "reward") is None
    scores, _ = decode_behaviors(np.zeros((5, 2, 1)), np.zeros((5, 2, 1)), bare, bare)
    assert scores == {}  # no field: no entry, no error


def test_linear_baseline_predicts_a_unit_without_its_own_counts():
    session = tiny_session(trials=(12, 2, 6))
    results = evaluate_linear_baseline(
        [session], tasks=["co-smoothing", "forward-prediction", "inter-region"], progress=False
    )
    entry = results["sessions"]["tiny"]
    assert set(entry) == {"co_smoothing", "forward_prediction", "inter_region"}
    assert entry["co_smoothing"]["num_units"] == 11
    assert entry["forward_prediction"]["bps"] is not None

    from spikemask.evaluation.baselines import LinearBaseline

    baseline, plan = LinearBaseline(), plan_task(session, "co-smoothing")
    rates = baseline.activity_rates(session, plan, "test")
    test = session.split("test")
    for unit, expect_same in ((0, True), (1, False)):
        changed = test.spikes.copy()
        changed[:, :, unit] += 3
        other = session.replace(
            splits={**session.splits, "test": dataclasses.replace(test, spikes=changed)}
        )
        moved = baseline.activity_rates(other, plan, "test")[:, :, 0]
        assert np.allclose(moved, rates[:, :, 0], rtol=1e-6) == expect_same


def test_cli_evaluate_writes_json_table_and_report(tmp_path, capsys, model, sessions):
    from spikemask.evaluation.evaluate import run_sources

    run = tmp_path / "mtm"
    save_checkpoint(run / "checkpoints" / "best", model.checkpoint)
    data = [str(write_session(s, tmp_path / s.session_id)) for s in sessions]
    (run / "run.json").write_text(json.dumps({"sources": data}))
    assert run_sources(run) == data
    out = tmp_path / "out" / "results.json"
    # the form RUN_DIR DATA_DIR..., with a baseline and a report
    code = main(["evaluate", str(run), data[0], "--out", str(out), "--report",
                 str(tmp_path / "rep"), "--baseline", "linear", "--tasks", "co-smoothing",
                 "choice", "--quiet"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    results = json.loads(out.read_text())
    assert set(results) == {"sessions", "mean", "model", "split", "comparisons"}
    assert set(results["sessions"]) == {"a"}
    assert set(results["sessions"]["a"]) == {"co_smoothing", "choice"}
    assert results["model"]["run"] == str(run)
    assert set(results["comparisons"]) == {"linear"}
    assert "| a | mtm |" in printed and "| a | linear |" in printed
    report = (tmp_path / "rep" / "report.md").read_text()
    figures = sorted(p.name for p in (tmp_path / "rep" / "figures").iterdir())
    assert figures == ["a-behavior.png", "a-psth.png", "a-regions.png"]
    assert all(f"figures/{name}" in report for name in figures)

    # no dataset given: the run's own (run.json); then an unknown task
    code = main(["evaluate", str(run), "--out", str(out), "--tasks", "inter-region", "--quiet"])
    assert code == 0 and set(json.loads(out.read_text())["sessions"]) == {"a", "b"}
    assert "| mean | mtm |" in capsys.readouterr().out
    code = main(["evaluate", str(run), "--out", str(out), "--tasks", "bogus"])
    assert code == 2 and "unknown task(s) ['bogus']" in capsys.readouterr().err

    # runs compared on the validation split: their scores as `bench quality` chooses
    from spikemask.bench.quality import validation_score

    other = tmp_path / "other"
    save_checkpoint(other / "checkpoints" / "best", model.checkpoint)
    code = main(["evaluate", str(run), data[0], "--compare", str(other), "--split", "val",
                 "--baseline", "linear", "--tasks", "co-smoothing", "--out", str(out),
                 "--quiet"])  # fmt: skip
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    score = validation_score(results)
    assert code == 0 and results["split"] == "val"
    assert (
        "validation score (mean per-unit bits per spike over the activity tasks): "
        f"mtm {score:+.4f}, other {score:+.4f}; highest: mtm"
    ) in printed
