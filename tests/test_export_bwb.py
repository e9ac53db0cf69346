"""BrainWideBench export: written with ibl-bwb-eval's writer, scored by ibl-bwb-eval's TS2
scorer, and the scores equal spikemask's own; once on a tiny session, once on a brainsets
file built from the real IBL fixture bytes (``prepare brainsets`` -> train -> ``export bwb``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spikemask.api import load_run
from spikemask.cli import main
from spikemask.config import load_config
from spikemask.data.parquet import write_session
from spikemask.export.nlb import choose_heldout_units
from spikemask.training.run import train

from conftest import TINY_MODEL, make_session

bwb_ts2 = pytest.importorskip(
    "ibl_bwb_eval.scoring.ts2",
    reason="ibl-bwb-eval is not installed (pip install --no-deps ibl-bwb-eval==0.1.0)",
)
from spikemask.export.bwb import (  # noqa: E402  (needs ibl-bwb-eval at call time only)
    make_bwb_export,
    write_bwb_ground_truth,
    write_bwb_predictions,
)

SETS = [*TINY_MODEL, "data.batch_size=4", "train.max_steps=3", "train.progress_bar=false",
        "train.tensorboard=false"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("bwb")
    session = make_session(num_bins=12, trials=(9, 4, 6))
    train([session], root / "run", config=load_config(preset="small", sets=SETS))
    return root / "run", write_session(session, root / "data"), session


def _scored_by_bwb(pred_dir, gt_dir) -> dict:
    """task -> ibl_bwb_eval's scores of the one recording under pred_dir."""
    raw = bwb_ts2.score_dir(pred_dir, gt_dir)
    return {task: scores for (_label, task, _rec, _seed), scores in raw.items()}


def test_layout_and_scores_match_ibl_bwb_eval(tiny, tmp_path):
    run, _, session = tiny
    heldout = choose_heldout_units(session, fraction=0.3, seed=1)
    export = make_bwb_export(load_run(run), session, heldout=heldout, forward_bins=2, seed=43)
    co, fc = export.tasks["ts2-co_smoothing"], export.tasks["ts2-forecasting"]
    test = session.split("test").spikes
    assert co.log_rates.shape == (6, 12, 3) and fc.log_rates.shape == (6, 2, 11)
    np.testing.assert_array_equal(co.targets, test[:, :, heldout])  # 12 bins < 1 s: all
    np.testing.assert_array_equal(fc.targets, test[:, -2:, :])
    np.testing.assert_array_equal(co.window_timestamps, session.split("test").trial_index)
    paths = write_bwb_predictions(export, tmp_path / "pred")
    assert [p.relative_to(tmp_path / "pred").as_posix() for p in paths] == [
        "spikemask/ts2-co_smoothing/tiny/seed_43.safetensors",
        "spikemask/ts2-forecasting/tiny/seed_43.safetensors",
    ]
    assert all(p.is_file() for p in paths)
    write_bwb_ground_truth(export, tmp_path / "gt")
    scored = _scored_by_bwb(tmp_path / "pred", tmp_path / "gt")
    assert set(scored) == {"ts2-co_smoothing", "ts2-forecasting"}
    for task, scores in scored.items():
        ours = export.tasks[task].scores
        assert scores["poisson_d2"] == pytest.approx(ours["poisson_d2"], abs=1e-4)
        assert scores["bps"] == pytest.approx(ours["bps"], abs=1e-4)


def test_hidden_entries_never_reach_the_model(tiny):
    """Co-smoothing never sees the held-out units, forecasting never the trailing bins."""
    run, _, session = tiny
    model = load_run(run)
    heldout = choose_heldout_units(session, fraction=0.3, seed=1)
    first = make_bwb_export(model, session, heldout=heldout, forward_bins=2)
    test = session.split("test")
    for task, where in (
        ("ts2-co_smoothing", np.s_[:, :, heldout]),
        ("ts2-forecasting", np.s_[:, -2:, :]),
    ):
        changed = test.spikes.copy()
        changed[where] = 7
        altered = session.replace(splits={**session.splits, "test": test.__class__(
            spikes=changed, trial_index=test.trial_index)})  # fmt: skip
        second = make_bwb_export(model, altered, heldout=heldout, forward_bins=2)
        np.testing.assert_allclose(
            first.tasks[task].log_rates, second.tasks[task].log_rates, rtol=1e-5, atol=1e-6
        )
        assert not np.array_equal(first.tasks[task].targets, second.tasks[task].targets)


def test_real_brainsets_file_prepare_train_export_score(tmp_path, capsys):
    """prepare brainsets (real IBL spikes) -> train 3 steps -> export bwb -> ibl-bwb-eval."""
    from test_brainsets import _real, write_brainsets_file

    write_brainsets_file(tmp_path / "eid-real.h5", _real())
    data = tmp_path / "data"
    assert main(["prepare", "brainsets", str(tmp_path / "eid-real.h5"), "--out", str(data)]) == 0
    run = tmp_path / "run"
    sets = [*SETS, "train.max_steps=2"]
    assert main(["train", str(data), "--out", str(run), "--preset", "small",
                 *[a for s in sets for a in ("--set", s)]]) == 0  # fmt: skip
    capsys.readouterr()
    args = ["export", "bwb", str(run), str(data), "--out", str(tmp_path / "pred"), "--seed", "44"]
    assert main([*args, "--ground-truth", str(tmp_path / "gt")]) == 0
    printed = capsys.readouterr().out
    ours = {
        line.split()[1]: json.loads(line.split(maxsplit=2)[2])
        for line in printed.splitlines()
        if line.startswith("spikemask ")
    }
    scored = _scored_by_bwb(tmp_path / "pred", tmp_path / "gt")
    assert set(scored) == set(ours) == {"ts2-co_smoothing", "ts2-forecasting"}
    for task in scored:
        assert scored[task]["poisson_d2"] == pytest.approx(ours[task]["poisson_d2"], abs=1e-4)
        assert scored[task]["bps"] == pytest.approx(ours[task]["bps"], abs=1e-4)
    from safetensors import safe_open

    path = tmp_path / "pred/spikemask/ts2-co_smoothing/eid-test/seed_44.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["recording_id"] == "eid-test"
        stamps = handle.get_tensor("window_timestamps").numpy()
        assert handle.get_tensor("predictions").shape[1] == 50  # the trailing second
    assert stamps.dtype == np.float64 and np.all(np.diff(np.sort(stamps)) > 0.1)


def test_export_bwb_errors(tiny, tmp_path, capsys):
    run, data, _ = tiny
    args = ["export", "bwb", str(run), str(data), "--out", str(tmp_path / "p")]
    assert main([*args, "--heldout-units", "nope"]) == 2
    assert "held-out unit ids ['nope']" in capsys.readouterr().err
    assert main([*args, "--forward-bins", "0"]) == 2
    assert "expected at least one bin to forecast" in capsys.readouterr().err
