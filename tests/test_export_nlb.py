"""NLB export: the h5 layout, held-out units never reach the model, and nlb_tools scores it."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from spikemask.api import load_run
from spikemask.cli import main
from spikemask.config import load_config
from spikemask.data.parquet import write_session
from spikemask.errors import SpikemaskError
from spikemask.export.nlb import choose_heldout_units, make_nlb_export, write_nlb_h5
from spikemask.training.run import train

from conftest import TINY_MODEL, make_session

h5py = pytest.importorskip("h5py", reason="h5py is not installed (extra 'nlb')")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(run folder, dataset folder) of a 3-step model on the tiny session (T 7, N 11)."""
    root = tmp_path_factory.mktemp("nlb")
    session = make_session(num_bins=10, trials=(9, 4, 6))
    config = load_config(
        preset="small",
        sets=[*TINY_MODEL, "data.batch_size=4", "train.max_steps=3", "train.progress_bar=false",
              "train.tensorboard=false"],
    )  # fmt: skip
    train([session], root / "run", config=config)
    return root / "run", write_session(session, root / "data"), session


def test_layout_shapes_and_unit_split(tiny):
    run, _, session = tiny
    heldout = choose_heldout_units(session, fraction=0.3, seed=4)
    export = make_nlb_export(load_run(run), session, heldout=heldout, forward_bins=2)
    n_out = int(heldout.sum())
    assert n_out == 3  # round(0.3 * 11)
    shapes = {k: v.shape for k, v in export.submission.items()}
    assert shapes == {
        "eval_rates_heldin": (6, 8, 8),
        "eval_rates_heldout": (6, 8, 3),
        "train_rates_heldin": (9, 8, 8),
        "train_rates_heldout": (9, 8, 3),
        "eval_rates_heldin_forward": (6, 2, 8),
        "eval_rates_heldout_forward": (6, 2, 3),
    }
    test = session.split("test").spikes
    targets = export.targets
    np.testing.assert_array_equal(targets["eval_spikes_heldout"], test[:, :8, heldout])
    np.testing.assert_array_equal(targets["eval_spikes_heldin_forward"], test[:, 8:, ~heldout])
    assert export.targets["train_behavior"].shape == (9, 8, 1)  # the per-bin wheel speed
    assert sorted(export.heldin_unit_ids + export.heldout_unit_ids) == sorted(session.unit_ids)
    assert all(np.all(v > 0) for v in export.submission.values())  # rates, not log-rates


def test_heldout_units_and_forward_bins_never_reach_the_model(tiny):
    run, _, session = tiny
    model = load_run(run)
    heldout = choose_heldout_units(session, unit_ids=["tiny-u1", "tiny-u4"])
    before = make_nlb_export(model, session, heldout=heldout, forward_bins=2)
    split = session.split("test")
    changed = split.spikes.copy()
    changed[:, :, heldout] += 5  # different held-out activity ...
    changed[:, 8:, :] += 3  # ... and different future bins
    other = session.replace(splits={**session.splits, "test": split.select(slice(None))})
    object.__setattr__(other.splits["test"], "spikes", changed)
    after = make_nlb_export(model, other, heldout=heldout, forward_bins=2)
    for name in ("eval_rates_heldin", "eval_rates_heldout", "eval_rates_heldout_forward"):
        np.testing.assert_array_equal(before.submission[name], after.submission[name])


def test_cli_export_is_scored_by_nlb_tools(tiny, tmp_path, caplog):
    """The file spikemask writes, scored by nlb_tools' own evaluate, gives spikemask's scores."""
    evaluation = pytest.importorskip("nlb_tools.evaluation", reason="nlb-tools is not installed")
    run, data, _ = tiny
    out, targets = tmp_path / "submission.h5", tmp_path / "targets.h5"
    args = ["export", "nlb", str(run), str(data), "--out", str(out), "--targets", str(targets),
            "--dataset", "mc_maze_20", "--forward-bins", "2"]  # fmt: skip
    assert main(args) == 0
    with h5py.File(out, "r") as handle:
        ours = {k[len("spikemask_") :]: v for k, v in handle["mc_maze_20"].attrs.items()
                if k.startswith("spikemask_")}  # fmt: skip
    with caplog.at_level(logging.ERROR):
        result = evaluation.evaluate(str(targets), str(out))
    scores = result[0]["mc_maze_20_split"]
    assert scores["co-bps"] == pytest.approx(ours["co-bps"], rel=1e-5, abs=1e-6)
    assert scores["fp-bps"] == pytest.approx(ours["fp-bps"], rel=1e-5, abs=1e-6)
    assert np.isfinite(scores["vel R2"])
    assert main(args) == 2  # the group exists: refused without --overwrite
    assert main([*args, "--overwrite"]) == 0


def test_written_file_holds_the_arrays_and_unit_ids(tiny, tmp_path):
    run, _, session = tiny
    export = make_nlb_export(load_run(run), session, dataset="mine", forward_bins=0)
    assert "eval_rates_heldin_forward" not in export.submission and "fp-bps" not in export.scores
    path = write_nlb_h5(export, tmp_path / "s.h5")
    with h5py.File(path, "r") as handle:
        group = handle["mine"]
        assert set(group) == {
            "eval_rates_heldin", "eval_rates_heldout", "train_rates_heldin",
            "train_rates_heldout",
        }  # fmt: skip
        written = group["eval_rates_heldout"][()]
        np.testing.assert_allclose(written, export.submission["eval_rates_heldout"])
        assert list(group.attrs["heldout_unit_ids"]) == export.heldout_unit_ids
    with pytest.raises(SpikemaskError, match="already holds dataset 'mine'"):
        write_nlb_h5(export, path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fraction": 1.0}, r"expected a value in \(0, 1\)"),
        ({"unit_ids": ["nope"]}, "are not units of session 'tiny'"),
        ({"unit_ids": [f"tiny-u{i}" for i in range(11)]}, "at least one held-in"),
    ],
)
def test_bad_heldout_choices(kwargs, message):
    with pytest.raises(SpikemaskError, match=message):
        choose_heldout_units(make_session(), **kwargs)


def test_bad_forward_bins(tiny):
    run, _, session = tiny
    with pytest.raises(SpikemaskError, match="forward_bins=10; expected 0 <= F < 10"):
        make_nlb_export(load_run(run), session, forward_bins=10)
