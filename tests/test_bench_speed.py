"""``spikemask bench speed`` on tiny shapes on the CPU (seconds)."""

from __future__ import annotations

import json

import pytest
import torch

from spikemask.bench.speed import (
    SpeedConfig,
    SpeedSetting,
    count_step_flops,
    matmul_peak,
    reference_peak,
    run_speed_benchmark,
    synthetic_session,
)
from spikemask.cli import main
from spikemask.config import load_config
from spikemask.errors import SpikemaskError

from conftest import TINY_MODEL


def test_flop_count_is_linear_in_the_batch_and_counts_forward_and_backward():
    config = load_config(sets=TINY_MODEL)
    session = synthetic_session(11, 7, 8)
    one, three = (count_step_flops(config, session, b) for b in (1, 3))
    assert three == pytest.approx(3 * one)
    # at least the read-in, read-out and encoder matmuls, forward and backward (3x forward)
    width, units, bins = config.model.width, 11, 7
    assert one > 3 * 2 * bins * units * (config.model.resolved_stitch_width + width)


def test_matmul_peak_is_a_rate():
    peak = matmul_peak(torch.device("cpu"), torch.float32, 64, repeats=2)
    assert 1e4 < peak < 1e16  # FLOP/s (a loaded 2-core machine can be very slow)


def test_synthetic_session_has_regions_and_the_requested_shape():
    session = synthetic_session(13, 5, 70, seed=1)
    assert session.split("train").spikes.shape == (70, 5, 13)
    assert len(set(session.unit_regions)) == 4
    assert session.split("train").spikes.any()


def test_bf16_is_measured_against_the_faster_matmul_peak():
    with_bf16 = {"fp32": 90e9, "bf16": 200e9}  # a CPU with avx512_bf16
    emulated = {"fp32": 90e9, "bf16": 1e9}  # a CPU without: bf16 matmuls are emulated
    assert reference_peak("bf16-mixed", with_bf16) == 200e9
    assert reference_peak("bf16-mixed", emulated) == 90e9  # not 470 % of the emulated rate
    assert reference_peak("32-true", with_bf16) == reference_peak("32-true", emulated) == 90e9


def test_paired_benchmark_writes_json_and_table(tmp_path):
    bench = SpeedConfig(
        units=11,
        bins=7,
        batch_size=3,
        settings=(
            SpeedSetting("fp32", (*TINY_MODEL, "train.precision=32")),
            SpeedSetting("two", (*TINY_MODEL, "train.precision=32", "data.batch_size=6")),
        ),
        blocks=2,
        block_steps=2,
        warmup_steps=1,
        peak_size=64,
        accelerator="cpu",
    )
    results = run_speed_benchmark(bench, tmp_path, log=lambda line: None)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["settings"][0]["label"] == "fp32"
    a, b = saved["settings"]
    assert (a["batch_size"], b["batch_size"]) == (3, 6)
    assert b["flop_per_step"] == pytest.approx(2 * a["flop_per_step"])
    for row in saved["settings"]:
        assert len(row["step_s_per_block"]) == 2
        assert row["trials_per_s"] == pytest.approx(row["batch_size"] / row["step_s"])
        assert row["tokens_per_s"] == pytest.approx(7 * row["trials_per_s"])
        assert row["flop_per_s"] == pytest.approx(row["flop_per_step"] / row["step_s"])
        assert row["peak_flop_per_s"] <= saved["peak_flop_per_s"]["fp32"]
        assert row["fraction_of_peak"] == pytest.approx(row["flop_per_s"] / row["peak_flop_per_s"])
    assert len(results["speedup_b_over_a"]["per_block"]) == 2
    table = (tmp_path / "table.md").read_text()
    assert "| fp32 | 32-true | off | " in table
    assert "B / A speed" in table


def test_emulated_bf16_warns_once_per_training_run(tmp_path, monkeypatch):
    from spikemask.errors import SpikemaskWarning
    from spikemask.training import speed

    monkeypatch.setattr(speed, "cpu_supports_bf16", lambda: False)
    bench = SpeedConfig(
        units=11,
        bins=7,
        batch_size=3,
        settings=(SpeedSetting("bf16", (*TINY_MODEL, "train.precision=bf16-mixed")),),
        blocks=1,
        block_steps=1,
        warmup_steps=1,
        peak_size=32,
        accelerator="cpu",
    )
    with pytest.warns(SpikemaskWarning) as caught:
        results = run_speed_benchmark(bench, tmp_path, log=lambda line: None)
    emulated = [w for w in caught if "without bf16 instructions" in str(w.message)]
    assert len(emulated) == 1  # the training block's, not again from the report
    assert results["settings"][0]["precision"] == "bf16-mixed"


def test_cli_runs_one_setting(tmp_path, capsys):
    args = ["bench", "speed", "--out", str(tmp_path), "--units", "11", "--bins", "7"]
    args += ["--batch-size", "2", "--blocks", "1", "--block-steps", "1", "--warmup-steps", "1"]
    args += ["--peak-size", "32", "--device", "cpu", "--a", *TINY_MODEL, "--label-a", "tiny"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| tiny |" in out
    assert "B / A" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--units", "0"], "units=0"),
        (["--masking", "spatial"], "--masking 'spatial'"),
        (["--warmup-steps", "0"], "warmup_steps=0"),
        (["--a", "train.nope=1"], "unknown key 'nope'"),
    ],
)
def test_cli_errors_are_one_clear_line(tmp_path, capsys, args, message):
    assert main(["bench", "speed", "--out", str(tmp_path), "--device", "cpu", *args]) != 0
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_config_errors(tmp_path):
    with pytest.raises(SpikemaskError, match="one or two settings"):
        SpeedConfig(settings=())
    with pytest.raises(SpikemaskError, match="device 'tpu'; expected auto, cpu or cuda"):
        SpeedConfig(accelerator="tpu")
    if not torch.cuda.is_available():  # the same words as evaluate / finetune: cuda (or gpu)
        for name in ("cuda", "gpu"):
            with pytest.raises(SpikemaskError, match=f"--device {name}, but torch sees no"):
                run_speed_benchmark(SpeedConfig(accelerator=name), tmp_path, log=lambda _: None)
