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
    report = run_demo(tmp_path / "demo", steps=12, progress=False)
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

    # a second demo into the same folder needs --force
    with pytest.raises(SpikemaskError, match="already holds demo results"):
        run_demo(out, steps=12, progress=False)
    assert main(["demo", "--out", str(out), "--minutes", "-1"]) == 2
    assert main(["demo", "--out", str(out), "--steps", "0"]) == 2
    assert "--steps 0: expected a positive number of steps" in capsys.readouterr().err
