"""The command line: inspect on real and tiny data, and clean errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from spikemask.cli import main
from spikemask.data.bundled import bundled_session_dir
from spikemask.data.parquet import write_session

from conftest import make_session, steinmetz_dirs


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_inspect_json_has_the_documented_keys(tmp_path, capsys):
    folder = write_session(make_session(), tmp_path / "ds")
    code, out, _ = run_cli(capsys, "inspect", str(folder), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["session_id"] == "tiny"
    assert summary["num_units"] == 11 and summary["num_bins"] == 7
    assert summary["bin_size_s"] == 0.02
    assert summary["num_trials"] == {"train": 9, "val": 4, "test": 5}
    assert summary["regions"] == {"VISp": 4, "CA1": 4, "LGd": 3}
    assert set(summary["total_spikes"]) == {"train", "val", "test"}
    assert summary["bin_behavior"] == ["wheel-speed"]


def test_inspect_text_on_the_bundled_real_session(capsys):
    code, out, _ = run_cli(capsys, "inspect", str(bundled_session_dir()))
    assert code == 0
    assert "steinmetz2019-s03-cori-2016-12-18" in out
    assert "units          619" in out and "train 160, val 23, test 45" in out
    assert "MG" in out and "Hz" in out


def test_inspect_every_real_session_matches_an_independent_read(capsys):
    import pyarrow.parquet as pq

    for folder in steinmetz_dirs():
        code, out, _ = run_cli(capsys, "inspect", str(folder), "--json")
        assert code == 0
        summary = json.loads(out)
        for split in ("train", "val", "test"):
            table = pq.read_table(
                next((folder / "data").glob(f"{split}-*.parquet")),
                columns=["spikes_sparse_data", "spikes_sparse_shape"],
            )
            spikes = sum(sum(r) for r in table.column("spikes_sparse_data").to_pylist())
            assert summary["num_trials"][split] == table.num_rows
            assert summary["total_spikes"][split] == spikes
            assert summary["num_units"] == table.column("spikes_sparse_shape")[0].as_py()[1]
        assert sum(summary["regions"].values()) == summary["num_units"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect", "/nonexistent/folder"], "does not exist"),
        (["train", "/nonexistent/folder", "--out", "{tmp}/r"], "does not exist"),
        (
            ["train", str(bundled_session_dir()), "--out", "{tmp}/r", "--set", "model.widht=3"],
            "unknown key 'widht'",
        ),
        (
            ["train", str(bundled_session_dir()), "--out", "{tmp}/r", "--set", "train.lr=fast"],
            "train: lr: expected a number",
        ),
        (
            ["train", str(bundled_session_dir()), "--out", "{tmp}/r", "--max-epochs", "0"],
            "max_epochs=0; expected a positive number",
        ),
        (
            ["train", str(bundled_session_dir()), "--out", "{tmp}/r", "--config", "{tmp}/no.yaml"],
            "config file .* does not exist",
        ),
        (
            ["finetune", "{tmp}/norun", str(bundled_session_dir()), "--out", "{tmp}/f"],
            "run folder .* does not exist",
        ),
    ],
)
def test_user_mistakes_give_one_line_and_exit_2(tmp_path, capsys, args, message):
    import re

    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert re.search(message, err), err
    assert "Traceback" not in err and err.startswith(f"spikemask {args[0]}: error:")


def test_console_script_exits_nonzero_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "spikemask.cli", "inspect", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_bad_flag_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "x", "--out", "y", "--masking", "bogus"])
    assert info.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


def test_masking_choices_match_the_masking_presets():
    # cli/train.py lists them itself so that parsing arguments does not import torch
    from spikemask.cli.train import MASKING_CHOICES
    from spikemask.masking.mixture import PRESETS

    assert set(MASKING_CHOICES) == set(PRESETS)


def test_budget_flags_keep_the_other_budgets_and_help_says_the_defaults(capsys):
    from spikemask.cli import _parser
    from spikemask.cli.train import _budget_sets
    from spikemask.config import load_config

    args = _parser().parse_args(["train", "x", "--out", "y", "--max-steps", "7"])
    config = load_config(preset="small", sets=_budget_sets(args))
    # the first budget reached stops training: the preset's epochs stay
    assert (config.train.max_steps, config.train.max_epochs) == (7, 300)
    assert config.train.max_minutes is None
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "300 for small and 1000 for paper" in text
    assert "the first budget reached stops training" in text


def test_train_keeps_stdout_for_results(tmp_path, capfd):
    from conftest import TINY_MODEL

    folder = write_session(make_session(), tmp_path / "ds")
    sets = [a for s in [*TINY_MODEL, "train.tensorboard=false"] for a in ("--set", s)]
    code = main(["train", str(folder), "--out", str(tmp_path / "r"), "--max-steps", "2", *sets])
    out, err = capfd.readouterr()
    assert code == 0
    assert out.splitlines()[0].startswith("run folder") and "\r" not in out
    assert "Epoch" in err  # the progress bar draws on stderr
    assert "GPU available" not in out + err and "TPU available" not in out + err


def test_lightning_console_noise_is_filtered():
    import logging

    from spikemask.cli import _NoAdverts

    def kept(message: str) -> bool:
        record = logging.LogRecord("lightning", logging.INFO, __file__, 1, message, None, None)
        return _NoAdverts().filter(record)

    assert not kept("GPU available: False, used: False")
    assert not kept("Loading `train_dataloader` to estimate number of stepping batches.")
    assert kept("Using bfloat16 Automatic Mixed Precision (AMP)")


@pytest.mark.filterwarnings("default::spikemask.errors.SpikemaskWarning")  # as outside pytest
def test_train_on_few_trials_prints_one_warning_line(tmp_path, capfd):
    from conftest import TINY_MODEL

    folder = write_session(make_session(session_id="small"), tmp_path / "ds")  # 9 train trials
    sets = [a for s in [*TINY_MODEL, "train.tensorboard=false"] for a in ("--set", s)]
    code = main(["train", str(folder), "--out", str(tmp_path / "r"), "--max-steps", "1", "--quiet",
                 *sets])  # fmt: skip
    err = capfd.readouterr().err
    assert code == 0
    warning = [line for line in err.splitlines() if "few training trials" in line]
    assert len(warning) == 1
    assert warning[0].startswith("spikemask train: warning: few training trials: small (9);")
    assert "spikemask finetune" in warning[0] and "Traceback" not in err and ".py:" not in err
