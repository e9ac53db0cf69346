"""Reliability of training runs: kill -9 and resume, stop signals, divergence, the run lock.

The SIGKILL and SIGTERM tests run a real ``spikemask train`` subprocess, stop it once its first
resume state exists, resume it in-process and compare the final weights bit for bit with an
uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spikemask.cli import main
from spikemask.config import load_config
from spikemask.data.parquet import write_session
from spikemask.errors import SpikemaskError
from spikemask.training.resume import RunInterrupted
from spikemask.training.run import train
from spikemask.training.rundir import LOCK_NAME, RunFolderLock

from conftest import TINY_MODEL, make_session

STEPS = 24
SETS = [
    *TINY_MODEL,
    "model.dropout=0.2",  # dropout draws must resume exactly too
    "data.batch_size=4",
    "train.tensorboard=false",
    "train.lr=0.01",
    "train.checkpoint_every_n_steps=3",
    "train.checkpoint_every_minutes=null",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    # 30 training trials in batches of 4: 8 steps per epoch, so the 3-step resume states fall
    # mid-epoch
    session = make_session(trials=(30, 4, 5), rate=0.5)
    return write_session(session, tmp_path_factory.mktemp("data") / "ds")


def train_args(dataset: Path, out: Path, *extra: str) -> list[str]:
    sets = [arg for s in SETS for arg in ("--set", s)]
    budget = ["--max-steps", str(STEPS), "--quiet"]
    return ["train", str(dataset), "--out", str(out), *budget, *sets, *extra]


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("full") / "run"
    assert main(train_args(dataset, out)) == 0
    return load_file(out / "checkpoints" / "last" / "model.safetensors")


def start_and_stop(args: list[str], how: int, out: Path) -> subprocess.CompletedProcess:
    """Start ``spikemask`` in a subprocess; send signal ``how`` once a resume state exists."""
    process = subprocess.Popen(
        [sys.executable, "-m", "spikemask.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    resume_file = out / "checkpoints" / "trainer" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not resume_file.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(how)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def resume_step(out: Path) -> int:
    state = torch.load(out / "checkpoints" / "trainer" / "last.ckpt", weights_only=True)
    return int(state["global_step"])


def assert_same_weights(out: Path, expected: dict[str, torch.Tensor]) -> None:
    weights = load_file(out / "checkpoints" / "last" / "model.safetensors")
    assert weights.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(weights[key], value), key


def test_kill_9_then_resume_is_bit_identical(dataset, uninterrupted, tmp_path, capsys):
    out = tmp_path / "run"
    stopped = start_and_stop(train_args(dataset, out), signal.SIGKILL, out)
    assert stopped.returncode == -signal.SIGKILL, stopped.stderr
    assert 3 <= resume_step(out) < STEPS  # killed mid-run, with a resume state behind it
    # the dead writer's lock is stale: taken over, with a message
    assert main(train_args(dataset, out, "--resume")) == 0
    assert "taking over the stale lock" in capsys.readouterr().err
    assert_same_weights(out, uninterrupted)
    assert not (out / LOCK_NAME).exists()


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_stop_signal_saves_hints_and_exits_non_zero(dataset, uninterrupted, tmp_path, how):
    out = tmp_path / "run"
    args = train_args(dataset, out)
    stopped = start_and_stop(args, how, out)
    assert stopped.returncode == 128 + how, stopped.stderr
    assert f"stopped by {signal.Signals(how).name} after step" in stopped.stderr
    assert "Traceback" not in stopped.stderr + stopped.stdout
    hint = next(line for line in stopped.stderr.splitlines() if line.startswith("resume with:"))
    assert hint.endswith("--resume") and f"--out {out}" in hint
    step = resume_step(out)
    assert 0 < step < STEPS
    assert main([*args, "--resume"]) == 0
    assert_same_weights(out, uninterrupted)


def test_sigterm_in_process_cli_saves_hints_and_resumes_exactly(
    dataset, uninterrupted, tmp_path, capsys
):
    import threading

    out = tmp_path / "run"
    resume_file = out / "checkpoints" / "trainer" / "last.ckpt"

    def send_sigterm_once_saved() -> None:
        deadline = time.monotonic() + 120
        while not resume_file.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)  # handled in the main thread, mid-training

    sender = threading.Thread(target=send_sigterm_once_saved)
    sender.start()
    args = train_args(dataset, out)
    code = main(args)
    sender.join()
    err = capsys.readouterr().err
    assert code == 143, err
    assert "spikemask train: interrupted: stopped by SIGTERM after step" in err
    assert f"resume with: spikemask {' '.join(args)} --resume" in err
    assert 3 <= resume_step(out) < STEPS
    assert main([*args, "--resume"]) == 0
    assert_same_weights(out, uninterrupted)


def tiny_config(*extra: str):
    sets = [*SETS, "train.progress_bar=false", "train.max_steps=6"]
    return load_config(preset="small", sets=[*sets, *extra])


def test_signal_in_process_raises_run_interrupted_with_a_saved_state(tmp_path):
    import lightning as L

    class SendSigterm(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 4:
                os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(RunInterrupted) as info:
        train([make_session()], tmp_path / "r", config=tiny_config(), callbacks=[SendSigterm()])
    # the signal arrives after the resume writer ran for step 4: saved at step 5
    assert info.value.saved and info.value.step == 5 and info.value.exit_code == 143
    assert resume_step(tmp_path / "r") == 5
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_a_save_due_at_an_epoch_end_moves_to_the_next_step(tmp_path):
    import lightning as L

    class Crash(Exception):
        pass

    class CrashAt(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 5:
                raise Crash

    # 3 batches per epoch and a save every 3 steps: each save falls on an epoch's last
    # step and is taken one step later
    with pytest.raises(Crash):
        train([make_session()], tmp_path / "r", config=tiny_config(), callbacks=[CrashAt()])
    assert resume_step(tmp_path / "r") == 4


def test_a_diverging_run_stops_and_keeps_finite_checkpoints(tmp_path, capsys):
    folder = write_session(make_session(trials=(30, 4, 5)), tmp_path / "ds")
    out = tmp_path / "run"
    # a sane learning rate for 10 steps (two validations), then 1e6
    first = ["--set", "train.max_steps=10", "--set", "train.checkpoint_every_n_steps=5"]
    sets = [arg for s in SETS[:-2] for arg in ("--set", s)]
    assert main(["train", str(folder), "--out", str(out), "--quiet", *sets, *first]) == 0
    capsys.readouterr()
    before = load_file(out / "checkpoints" / "best" / "model.safetensors")
    huge_lr = ["--set", "train.lr=1e6", "--set", "train.max_steps=10"]
    code = main(["train", str(folder), "--out", str(tmp_path / "nan"), "--quiet", *sets, *huge_lr])
    err = capsys.readouterr().err
    assert code == 2
    assert "spikemask train: error: training diverged at step" in err
    assert "lr" in err and "Traceback" not in err
    for which in ("best", "last"):
        path = tmp_path / "nan" / "checkpoints" / which / "model.safetensors"
        if path.exists():
            weights = load_file(path)
            assert all(torch.isfinite(w).all() for w in weights.values())
    assert all(torch.isfinite(w).all() for w in before.values())


def test_divergence_at_the_first_step_leaves_no_folder(tmp_path):
    with pytest.raises(SpikemaskError, match=r"training diverged at step \d"):
        train([make_session()], tmp_path / "r", config=tiny_config("train.lr=1e30"))
    assert not (tmp_path / "r").exists()


def test_save_checkpoint_refuses_non_finite_weights(tmp_path):
    from spikemask.data.regions import RegionVocabulary
    from spikemask.training.checkpoint import Checkpoint, save_checkpoint

    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    checkpoint = Checkpoint(model, tiny_config(), {}, RegionVocabulary.from_list([]))
    with pytest.raises(SpikemaskError, match=r"'weight' holds non-finite values"):
        save_checkpoint(tmp_path / "c", checkpoint)
    assert not (tmp_path / "c").exists()


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    holder = RunFolderLock(folder)
    holder.acquire()
    assert (folder / LOCK_NAME).read_text().split()[0] == str(os.getpid())
    with pytest.raises(SpikemaskError, match=rf"is in use by process {os.getpid()}"):
        train([make_session()], folder, config=tiny_config())
    with pytest.raises(SpikemaskError, match="is in use by process"):
        RunFolderLock(folder).acquire()
    holder.release()
    assert list(folder.iterdir()) == []
    # a lock file left by a process that no longer runs
    (folder / LOCK_NAME).write_text("999999999 otherhost\n")
    result = train([make_session()], folder, config=tiny_config())
    assert result.steps == 6
    assert "taking over the stale lock of process 999999999" in capsys.readouterr().err


@pytest.mark.slow
def test_concurrent_writers_one_wins(dataset, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "spikemask.cli", *train_args(dataset, out, "--max-steps", "4")]
    runs = [subprocess.Popen(args, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    err = next(err for code, err in results if code == 2)
    assert "is in use by process" in err or "is not empty" in err


def test_a_run_failing_before_its_first_step_removes_what_it_created(tmp_path):
    one_bin = make_session(num_bins=1)
    with pytest.raises(SpikemaskError, match="at least 2 time bins"):
        train([one_bin], tmp_path / "r", config=tiny_config())
    assert not (tmp_path / "r").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpikemaskError, match="at least 2 time bins"):
        train([one_bin], tmp_path / "empty", config=tiny_config())
    assert list((tmp_path / "empty").iterdir()) == []
