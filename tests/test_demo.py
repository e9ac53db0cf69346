"""The README's main job, end to end on the shipped session, with a tiny step budget."""

from __future__ import annotations

import json

import pytest

from spikemask.cli import main
from spikemask.data.bundled import bundled_session
from spikemask.demo import run_demo
from spikemask.errors import SpikemaskError

ACTIVITY = ("co_smoothing", "forward_prediction", "inter_region", "intra_region")


def test_demo_trains_evaluates_and_reports(tmp_path, capsys):
    report = run_demo(tmp_path / "demo", epochs=1, progress=False)
    out = tmp_path / "demo"
    assert report == out / "report.md"
    text = report.read_text()
    session_id = bundled_session().session_id
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"NDT1 temporal", "NDT1 MtM", "linear"}
    for name, result in results.items():
        scores = result["sessions"][session_id]
        for task in ACTIVITY:
            assert scores[task]["num_units"] > 0, (name, task)
            assert isinstance(scores[task]["bps_pooled"], float), (name, task)
        assert 0 <= scores["choice"]["accuracy"] <= 1
        assert name in text
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures, "the report has no figures"
    for figure in figures:
        assert figure in text
    printed = capsys.readouterr().out
    assert "co-smoothing" in printed and "linear" in printed
    assert "Who is ahead" in printed and "- intra-region: per unit: " in printed
    assert printed.count("for 1 pass over the training trials (batch 16)") == 2

    # a second demo into the same folder needs --force
    with pytest.raises(SpikemaskError, match="already holds demo results"):
        run_demo(out, steps=12, progress=False)
    assert main(["demo", "--out", str(out), "--minutes", "-1"]) == 2
    assert main(["demo", "--out", str(out), "--steps", "0"]) == 2
    assert "--steps 0: expected a positive whole number" in capsys.readouterr().err
    assert main(["demo", "--out", str(out), "--epochs", "0"]) == 2
    assert "--epochs 0: expected a positive whole number" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse: one budget or the other
        main(["demo", "--out", str(out), "--epochs", "2", "--steps", "5"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SpikemaskError, match="one budget, not both"):
        run_demo(out, epochs=2, steps=5, force=True, progress=False)


class _Stop(Exception):
    pass


@pytest.mark.parametrize(
    ("kwargs", "max_epochs", "max_steps"),
    [({}, "preset", None), ({"epochs": 7}, 7, None), ({"steps": 40}, None, 40)],
)
def test_demo_budget_is_the_recipes_unless_given(
    tmp_path, monkeypatch, kwargs, max_epochs, max_steps
):
    """By default the demo trains for ``spikemask train``'s budget (the small preset's)."""
    import spikemask.training.run
    from spikemask.config import load_config

    seen = []

    def fake_train(sessions, run_dir, *, config):
        seen.append(config)
        raise _Stop

    monkeypatch.setattr(spikemask.training.run, "train", fake_train)
    with pytest.raises(_Stop):
        run_demo(tmp_path / "demo", progress=False, **kwargs)
    if max_epochs == "preset":
        max_epochs = load_config(preset="small").train.max_epochs
        assert max_epochs == 300
    assert seen[0].train.max_epochs == max_epochs
    assert seen[0].train.max_steps == max_steps
