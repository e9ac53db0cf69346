"""Tests of the leave-one-animal-out quality benchmark (spikemask.bench)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml

from spikemask.bench import QualityConfig, group_sessions, run_quality_benchmark
from spikemask.bench.quality import PARTS as PARTS_ALL
from spikemask.bench.quality_report import win_counts
from spikemask.cli import main
from spikemask.errors import SpikemaskError

from conftest import TINY_MODEL, make_session

TASKS = ("co-smoothing", "forward-prediction", "inter-region", "intra-region", "choice")


def _sessions():
    sessions = []
    for index, subject in enumerate(("ann", "ann", "bob")):
        session = make_session(session_id=f"s{index}", seed=index, num_units=9 + index)
        sessions.append(replace(session, metadata={"subject": subject}))
    return sessions


def test_quality_benchmark_runs_every_model_on_every_held_out_session(tmp_path) -> None:
    config = QualityConfig(steps=3, pretrain_steps=4, sets=tuple(TINY_MODEL), tasks=TASKS)
    lines: list[str] = []
    summary = run_quality_benchmark(_sessions(), tmp_path, config, log=lines.append)
    models = summary["models"]
    assert list(models) == ["MtM scratch", "temporal scratch", "MtM pre-trained", "linear"]
    for result in models.values():
        assert sorted(result["sessions"]) == ["s0", "s1", "s2"]
        for entry in result["sessions"].values():
            assert {"co_smoothing", "forward_prediction", "inter_region", "intra_region"} <= set(
                entry
            )
            assert entry["co_smoothing"]["bps"] is not None
    assert summary["groups"] == {"s0": "ann", "s1": "ann", "s2": "bob"}
    # pre-trained on the other animal only: the model fine-tuned on s2 never saw s2 before
    record = json.loads((tmp_path / "runs" / "bob" / "pretrain-mtm" / "run.json").read_text())
    assert record["sessions"] == ["s0", "s1"]
    tuned = json.loads(
        (tmp_path / "runs" / "bob" / "s2" / "mtm-finetuned" / "run.json").read_text()
    )
    assert tuned["kind"] == "finetune" and tuned["sessions"] == ["s2"]
    assert (tmp_path / "quality.png").stat().st_size > 10_000
    table = (tmp_path / "table.md").read_text()
    assert "| ann | MtM pre-trained |" in table and "MtM pre-trained > MtM scratch" in table
    counts = win_counts(models, summary["groups"])
    assert all(total == 2 for *_, total in counts)  # two held-out animals per comparison
    # resuming reuses every run and evaluation: nothing is trained again
    again: list[str] = []
    run_quality_benchmark(_sessions(), tmp_path, config, log=again.append)
    assert not [line for line in again if line.endswith("...")]
    assert len([line for line in lines if line.endswith("...")]) == 2 + 3 * 3 + 3
    # --table-only collects what finished (e.g. one process per held-out animal)
    (tmp_path / "runs" / "bob" / "s2" / "mtm-finetuned" / "evaluation.json").unlink()
    notes: list[str] = []
    table_only = replace(config, table_only=True)
    merged = run_quality_benchmark(_sessions(), tmp_path, table_only, log=notes.append)
    # a session's finished models stay; the unfinished one is named
    assert sorted(merged["models"]["linear"]["sessions"]) == ["s0", "s1", "s2"]
    assert sorted(merged["models"]["MtM pre-trained"]["sessions"]) == ["s0", "s1"]
    assert notes == ["s2 (bob): not finished, left out: MtM pre-trained"]
    # a folder of one pre-training length, collected with two: the hint names the fix
    notes.clear()
    run_quality_benchmark(
        _sessions(), tmp_path, replace(table_only, pretrain_steps=(4, 8)), log=notes.append
    )
    assert "collect it with that --pretrain-steps N" in notes[1]


def test_quality_benchmark_epoch_budget_grows_with_the_session(tmp_path) -> None:
    """--epochs: each from-scratch model and fine-tuning makes that many passes."""
    sessions = _sessions()
    config = QualityConfig(
        epochs=2, pretrain_steps=3, sets=(*TINY_MODEL, "data.batch_size=4"), tasks=("co-smoothing",)
    )
    run_quality_benchmark(
        sessions,
        tmp_path,
        replace(config, held_out=("bob",), parts=("pretrain", "mtm", "finetune")),
    )
    pre = json.loads(
        (tmp_path / "runs" / "bob" / "pretrain-mtm" / "bench-finished.json").read_text()
    )
    assert pre["steps"] == 3  # pre-training keeps its step budget
    batches = -(-sessions[2].split("train").num_trials // 4)
    for run in ("mtm-scratch", "mtm-finetuned"):
        folder = tmp_path / "runs" / "bob" / "s2" / run
        finished = json.loads((folder / "bench-finished.json").read_text())
        assert finished["steps"] == 2 * batches
        train = yaml.safe_load((folder / "config.yaml").read_text())["train"]
        assert (train["max_epochs"], train["max_steps"]) == (2, None)
    assert config.budget() == ("train.max_epochs=2", "train.max_steps=null")
    assert replace(config, epochs=None, steps=7).budget()[0] == "train.max_steps=7"
    with pytest.raises(SpikemaskError, match="epochs=0; expected a positive integer"):
        replace(config, epochs=0)
    with pytest.raises(SpikemaskError, match="steps=7 and epochs=2; expected one budget"):
        replace(config, steps=7)


def test_quality_benchmark_default_budget_is_the_recipes() -> None:
    """Neither budget given: 300 passes (train.max_epochs of the small preset), pre-training
    of 5,000 and 15,000 steps to choose between, in the API and on the command line."""
    from spikemask.cli import _parser
    from spikemask.config import load_config

    default = QualityConfig()
    assert (default.epochs, default.steps, default.pretrain_steps) == (300, None, (5000, 15000))
    assert default.budget() == ("train.max_epochs=300", "train.max_steps=null")
    assert load_config(preset="small").train.max_epochs == default.epochs
    args = _parser().parse_args(["bench", "quality", "d", "--out", "o"])
    assert (args.steps, args.epochs) == (None, None)
    assert tuple(args.pretrain_steps) == default.pretrain_lengths == (5000, 15000)
    two = _parser().parse_args(
        ["bench", "quality", "d", "--out", "o", "--pretrain-steps", "5", "9"]
    )
    assert two.pretrain_steps == [5, 9]


def test_quality_benchmark_chooses_the_pretraining_length_on_validation(tmp_path) -> None:
    """Several pre-training lengths: one pre-training each, a fine-tuning from each, and each
    held-out session keeps the one with the best validation score; every candidate is also
    reported."""
    from spikemask.bench.quality import validation_score

    config = QualityConfig(
        steps=2,
        pretrain_steps=(3, 5),
        sets=tuple(TINY_MODEL),
        tasks=("co-smoothing", "inter-region"),
        held_out=("bob",),
        parts=("pretrain", "finetune"),
    )
    lines: list[str] = []
    summary = run_quality_benchmark(_sessions(), tmp_path, config, log=lines.append)
    runs = tmp_path / "runs" / "bob"
    for steps in (3, 5):
        finished = json.loads((runs / f"pretrain-mtm-{steps}" / "bench-finished.json").read_text())
        assert finished["steps"] == steps
    choice = json.loads((runs / "s2" / "pretraining-choice.json").read_text())
    scores = {}
    for steps in (3, 5):
        val = json.loads((runs / "s2" / f"mtm-finetuned-{steps}" / "validation.json").read_text())
        assert val["split"] == "val" and set(val["sessions"]["s2"]) == {
            "co_smoothing",
            "inter_region",
        }
        scores[steps] = validation_score(val)
        assert choice["scores"][str(steps)] == pytest.approx(scores[steps], abs=1e-6)
    best = max((3, 5), key=scores.get)
    assert choice["chosen_steps"] == best and choice["chosen"] == f"mtm-finetuned-{best}"
    models = summary["models"]
    assert {"MtM pre-trained", "MtM pre-trained 3 steps", "MtM pre-trained 5 steps"} <= set(models)
    chosen = json.loads((runs / "s2" / f"mtm-finetuned-{best}" / "evaluation.json").read_text())
    assert models["MtM pre-trained"]["sessions"]["s2"] == chosen["sessions"]["s2"]
    assert chosen["split"] == "test"
    assert any(f"pre-training of {best} steps chosen on validation" in line for line in lines)
    # --table-only reads the choice and the candidates (nothing trained or evaluated)
    joined = run_quality_benchmark(
        _sessions(), tmp_path, replace(config, table_only=True, parts=PARTS_ALL)
    )
    assert joined["models"]["MtM pre-trained"]["sessions"]["s2"] == chosen["sessions"]["s2"]
    assert "MtM pre-trained 5 steps" in (tmp_path / "table.md").read_text()
    # a lost choice file is made again from the candidates' validation evaluations
    (runs / "s2" / "pretraining-choice.json").unlink()
    run_quality_benchmark(_sessions(), tmp_path, replace(config, table_only=True))
    assert json.loads((runs / "s2" / "pretraining-choice.json").read_text()) == choice
    with pytest.raises(SpikemaskError, match="expected a positive integer, or several different"):
        replace(config, pretrain_steps=(5, 5))
    with pytest.raises(SpikemaskError, match="pretrain_steps=0; expected a positive integer"):
        replace(config, pretrain_steps=0)
    assert replace(config, pretrain_steps=[7]).pretrain_steps == 7
    with pytest.raises(SpikemaskError, match="none of the activity tasks"):
        validation_score({"sessions": {"s2": {"choice": {"accuracy": 0.5}}}})


def test_quality_benchmark_refuses_bad_groups(tmp_path) -> None:
    sessions = _sessions()
    with pytest.raises(SpikemaskError, match="at least two groups"):
        run_quality_benchmark(sessions[:2], tmp_path, QualityConfig(steps=1))
    with pytest.raises(SpikemaskError, match="are not among"):
        run_quality_benchmark(sessions, tmp_path, QualityConfig(held_out=("carl",)))
    unnamed = [replace(s, metadata={}) for s in sessions]
    with pytest.raises(SpikemaskError, match="no 'subject' in its metadata"):
        group_sessions(unnamed, "subject")


def test_bench_quality_cli_checks_its_flags(tmp_path, capsys) -> None:
    assert (
        main(["bench", "quality", str(tmp_path), "--out", str(tmp_path / "o"), "--steps", "0"]) == 2
    )
    assert "--steps 0; expected a positive number" in capsys.readouterr().err
    code = main(
        ["bench", "quality", str(tmp_path), "--out", str(tmp_path / "o"), "--set", "model.nope=1"]
    )
    assert code == 2 and "unknown key 'nope'" in capsys.readouterr().err
    argv = ["bench", "quality", str(tmp_path), "--out", str(tmp_path / "o"), "--epochs", "0"]
    assert main(argv) == 2
    assert "--epochs 0; expected a positive number of passes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # argparse: one budget or the other
        main([*argv[:-1], "3", "--steps", "5"])
    assert info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    code = main(["bench", "quality", str(tmp_path), "--out", str(tmp_path), "--seed", "1", "1"])
    assert code == 2 and "--seed 1 1; expected different seeds" in capsys.readouterr().err
    argv = ["bench", "quality", str(tmp_path), "--out", str(tmp_path), "--pretrain-steps"]
    assert main([*argv, "9", "9"]) == 2
    assert "--pretrain-steps 9 9; expected different lengths" in capsys.readouterr().err
    assert main([*argv, "9", "0"]) == 2
    assert "--pretrain-steps 0; expected a positive number of steps" in capsys.readouterr().err


def test_quality_benchmark_parts_spread_over_processes_join(tmp_path) -> None:
    """Pre-training, per-session models and fine-tuning as separate calls, then joined."""
    base = QualityConfig(steps=2, pretrain_steps=2, sets=tuple(TINY_MODEL), tasks=TASKS)
    sessions = _sessions()
    with pytest.raises(SpikemaskError, match="has not finished; run the benchmark with"):
        run_quality_benchmark(
            sessions, tmp_path, replace(base, held_out=("bob",), parts=("finetune",))
        )
    lines: list[str] = []
    run_quality_benchmark(sessions, tmp_path, replace(base, parts=("pretrain",)), log=lines.append)
    assert not (tmp_path / "results.json").exists()  # a part writes no joined outputs
    for session_id in ("s0", "s2"):
        run_quality_benchmark(
            sessions,
            tmp_path,
            replace(base, parts=("mtm", "temporal", "finetune", "linear"), sessions=(session_id,)),
            log=lines.append,
        )
    assert len([line for line in lines if line.endswith("...")]) == 2 + 2 * 3 + 2
    assert (tmp_path / "runs" / "ann" / "s0" / "mtm-scratch" / "bench-finished.json").is_file()
    joined: list[str] = []
    summary = run_quality_benchmark(
        sessions, tmp_path, replace(base, table_only=True), log=joined.append
    )
    assert joined == [
        "s1 (ann): not finished, left out: MtM scratch, temporal scratch, MtM pre-trained, linear"
    ]
    assert sorted(summary["models"]["MtM pre-trained"]["sessions"]) == ["s0", "s2"]
    with pytest.raises(SpikemaskError, match=r"session\(s\) \['s9'\] are not among"):
        run_quality_benchmark(sessions, tmp_path, replace(base, sessions=("s9",)))
    with pytest.raises(SpikemaskError, match="expected some of"):
        replace(base, parts=("pretrain", "bogus"))
    with pytest.raises(SpikemaskError, match="expected auto, cpu, cuda"):
        replace(base, device="gpu0")
    # the benchmark's own settings cannot be changed behind its back (it would ignore them)
    with pytest.raises(SpikemaskError, match=r"sets train\.seed itself; use --seed"):
        replace(base, sets=("model.dropout=0.2", "train.seed=1"))
    with pytest.raises(SpikemaskError, match=r"train\.max_steps itself; use --steps"):
        replace(base, sets=(" train.max_steps = 5",))


def test_quality_benchmark_over_seeds_reports_mean_and_range(tmp_path) -> None:
    """Each seed is a whole benchmark in its own folder; the table is their mean."""
    from spikemask.bench import run_quality_seeds

    base = QualityConfig(
        steps=2,
        pretrain_steps=2,
        sets=tuple(TINY_MODEL),
        tasks=TASKS[:1],
        parts=("mtm", "linear"),
    )
    sessions = _sessions()
    lines: list[str] = []
    partial = run_quality_seeds(sessions, tmp_path, base, seeds=(3, 4), log=lines.append)
    assert partial["seeds"] == [3, 4] and not (tmp_path / "results.json").exists()
    for seed in (3, 4):  # each seed trained its own models with its own seed
        run = tmp_path / f"seed-{seed}" / "runs" / "ann" / "s0" / "mtm-scratch"
        assert yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"] == seed
    summary = run_quality_seeds(
        sessions, tmp_path, replace(base, table_only=True), seeds=(3, 4), log=lines.append
    )
    per_seed = [
        json.loads((tmp_path / f"seed-{k}" / "results.json").read_text())["models"] for k in (3, 4)
    ]
    values = [m["MtM scratch"]["sessions"]["s1"]["co_smoothing"]["bps"] for m in per_seed]
    assert values[0] != values[1]  # other seeds, other models
    mean = summary["models"]["MtM scratch"]["sessions"]["s1"]["co_smoothing"]
    assert mean["bps"] == pytest.approx(sum(values) / 2) and mean["num_seeds"] == 2
    assert summary["seeds"] == [3, 4] and summary["groups"]["s2"] == "bob"
    table = (tmp_path / "table.md").read_text()
    assert "then over 2 seeds (3, 4)" in table
    low, high = sorted(
        sum(m["MtM scratch"]["sessions"][s]["co_smoothing"]["bps"] for s in ("s0", "s1")) / 2
        for m in per_seed
    )
    assert f"| ann | MtM scratch | {low:.3f} – {high:.3f} (" in table
    # the linear baseline has no seed: fitted once, shared by every seed
    assert sorted(p.name for p in (tmp_path / "linear").iterdir()) == [
        "s0.json",
        "s1.json",
        "s2.json",
    ]
    assert not (tmp_path / "seed-3" / "linear").exists()
    linear = [m["linear"]["sessions"]["s0"]["co_smoothing"]["bps"] for m in per_seed]
    assert (
        linear[0]
        == linear[1]
        == summary["models"]["linear"]["sessions"]["s0"]["co_smoothing"]["bps"]
    )
    assert (tmp_path / "quality.png").stat().st_size > 10_000
    with pytest.raises(SpikemaskError, match="expected one or more different seeds"):
        run_quality_seeds(sessions, tmp_path, base, seeds=(1, 1))


def test_mean_over_seeds_names_what_a_seed_lacks() -> None:
    from spikemask.bench.quality_report import mean_over_seeds, quality_table

    def models(bps: float, sessions=("a", "b")):
        entry = {"co_smoothing": {"bps": bps, "bps_pooled": bps + 1, "num_units": 5}}
        return {"MtM scratch": {"sessions": {s: entry for s in sessions}}}

    per_seed = {0: {**models(0.1), "linear": models(0.0)["MtM scratch"]}, 1: models(0.3, "a")}
    averaged, left_out = mean_over_seeds(per_seed)
    assert list(averaged) == ["MtM scratch"]
    assert averaged["MtM scratch"]["sessions"]["a"]["co_smoothing"] == {
        "bps": pytest.approx(0.2),
        "bps_pooled": pytest.approx(1.2),
        "num_seeds": 2,
    }
    assert left_out == [
        "linear: not run for every seed, left out",
        "MtM scratch on b: not finished for every seed, left out",
    ]
    table = quality_table(averaged, {"a": "ann"}, per_seed)
    assert "| ann | MtM scratch | 0.100 – 0.300 (1.100 – 1.300)" in table


def test_quality_figure_over_seeds_with_equal_seeds(tmp_path) -> None:
    """A model with the same score in every seed (the linear baseline): the mean of three
    0.7s is one rounding step below 0.7, and the whiskers must still be drawn."""
    from spikemask.bench.quality_report import mean_over_seeds, plot_quality

    entry = {"co_smoothing": {"bps": 0.7, "bps_pooled": 0.7}}
    per_seed = {k: {"linear": {"sessions": {"a": entry}}} for k in range(3)}
    averaged, _ = mean_over_seeds(per_seed)
    assert averaged["linear"]["sessions"]["a"]["co_smoothing"]["bps"] < 0.7
    plot_quality(averaged, {"a": "ann"}, tmp_path / "q.png", per_seed)
    assert (tmp_path / "q.png").stat().st_size > 10_000


def test_quality_benchmark_adds_the_oracle_on_synthetic_sessions(tmp_path, capsys) -> None:
    """Sessions written with their true rates get an oracle row and each model's share."""
    from spikemask.data.loading import load_sessions
    from spikemask.data.synthetic import SyntheticConfig, load_true_rates, synthesize
    from spikemask.evaluation.metrics import bits_per_spike

    small = SyntheticConfig(
        num_regions=3,
        latent_dim=2,
        units_per_region=(6, 8),
        num_trials=(40, 44),
        num_bins=30,
        window_start_s=-0.2,
    )
    folders = synthesize(tmp_path / "synth", num_sessions=2, seed=5, config=small)
    out = tmp_path / "bench"
    args = ["bench", "quality", *map(str, folders), "--out", str(out), "--parts", "linear"]
    assert main([*args, "--tasks", "co-smoothing"]) == 0
    assert main([*args[:-2], "--table-only", "--tasks", "co-smoothing"]) == 0
    summary = json.loads((out / "results.json").read_text())
    session = load_sessions([folders[0]])[0]
    expected = bits_per_spike(load_true_rates(folders[0])["test"], session.split("test").spikes)
    oracle = summary["models"]["oracle"]["sessions"][session.session_id]["co_smoothing"]
    assert oracle["bps"] == pytest.approx(expected)
    linear = summary["models"]["linear"]["sessions"][session.session_id]["co_smoothing"]["bps"]
    assert linear < oracle["bps"]  # the true rates are the ceiling
    table = (out / "table.md").read_text()
    group = session.metadata["subject"]
    assert "Co-smoothing as a share of the oracle's (true rates)" in table
    assert f"| {group} | {linear / oracle['bps']:.0%} (" in table
    # sessions without truth/ (every real recording) get no oracle row
    plain = tmp_path / "plain"
    run_quality_benchmark(
        _sessions(), plain, QualityConfig(parts=("linear",), tasks=("co-smoothing",)), log=print
    )
    joined = run_quality_benchmark(
        _sessions(), plain, QualityConfig(table_only=True, tasks=("co-smoothing",)), log=print
    )
    assert "oracle" not in joined["models"]
