"""Devices: auto / cpu / bad names, load_run and the CLI's --device, no Lightning in evaluation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from spikemask.api import TrainedModel, load_run
from spikemask.cli import main
from spikemask.devices import free_cpu_threads, lightning_accelerator, resolve_device
from spikemask.errors import SpikemaskError
from spikemask.training.checkpoint import save_checkpoint
from test_tasks import tiny_model, tiny_session


@pytest.fixture
def no_gpu(monkeypatch):
    """A machine without CUDA or MPS, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr("spikemask.devices._mps_available", lambda: False)


@pytest.fixture
def one_gpu(monkeypatch):
    """A machine that reports one CUDA GPU (nothing is moved to it in these tests)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    session = tiny_session(session_id="a")
    folder = tmp_path_factory.mktemp("run")
    save_checkpoint(folder / "checkpoints" / "best", tiny_model(session).checkpoint)
    return folder


def test_auto_is_the_cpu_without_a_gpu(no_gpu):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert lightning_accelerator("auto") == ("auto", "auto")
    assert lightning_accelerator("cpu") == ("cpu", 1)


def test_auto_is_the_first_gpu_when_there_is_one(one_gpu):
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert lightning_accelerator("cuda") == ("gpu", 1)


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("gpu0", "unknown device 'gpu0'; expected auto, cpu, cuda, cuda:INDEX or mps"),
        ("cuda:x", "unknown device 'cuda:x'"),
        ("tpu", "unknown device 'tpu'"),
        ("cuda", "device 'cuda': no CUDA GPU is available to torch on this machine"),
        ("cuda:1", "device 'cuda:1': no CUDA GPU is available"),
        ("mps", "device 'mps' is not available on this machine"),
    ],
)
def test_bad_or_absent_device_is_one_clear_error(no_gpu, device, message):
    with pytest.raises(SpikemaskError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_device(device)


def test_gpu_index_beyond_the_machine(one_gpu, monkeypatch):
    with pytest.raises(SpikemaskError, match=r"has 1 CUDA GPU\(s\) \(cuda:0 to cuda:0\)"):
        resolve_device("cuda:3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_device("cuda:3") == torch.device("cuda", 3)
    with pytest.raises(SpikemaskError, match="CUDA_VISIBLE_DEVICES=3"):
        lightning_accelerator("cuda:3")


@pytest.mark.parametrize(("load", "expected"), [(0.1, 2), (0.6, 1), (1.4, 1), (3.7, 1)])
def test_auto_threads_follow_the_free_cores(monkeypatch, load, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr("os.getloadavg", lambda: (load, load, load))
    assert free_cpu_threads("auto") == expected
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's pin wins
    assert free_cpu_threads("auto") == 3
    assert free_cpu_threads(3) == 3 and free_cpu_threads("2") == 2
    for bad in ("0", "-1", "many"):
        with pytest.raises(SpikemaskError, match=f"threads '{bad}'; expected 'auto' or a positive"):
            free_cpu_threads(bad)


def test_load_run_on_the_cpu_and_on_auto(no_gpu, run_dir):
    model = load_run(run_dir, device="cpu")
    assert model.device == torch.device("cpu")
    assert next(model.model.parameters()).device == torch.device("cpu")
    assert load_run(run_dir).device == torch.device("cpu")  # auto without a GPU
    session = tiny_session(session_id="a")
    assert model.predict(session, masking="neuron").shape == session.split("test").spikes.shape
    with pytest.raises(SpikemaskError, match="no CUDA GPU"):
        load_run(run_dir, device="cuda")


def test_trained_model_default_device_is_auto(no_gpu, run_dir):
    model = load_run(run_dir, device="cpu")
    assert TrainedModel(model.checkpoint).device == torch.device("cpu")


def test_cli_device_flags(no_gpu, run_dir, tmp_path, capsys):
    from spikemask.data.parquet import write_session

    data = str(write_session(tiny_session(session_id="a"), tmp_path / "a"))
    out = tmp_path / "r.json"
    args = ["evaluate", str(run_dir), data, "--out", str(out), "--tasks", "co-smoothing"]
    threads = torch.get_num_threads()
    assert main([*args, "--quiet", "--device", "cpu", "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1
    torch.set_num_threads(threads)
    assert json.loads(out.read_text())["sessions"]["a"]["co_smoothing"]["num_units"] == 11
    capsys.readouterr()
    assert main([*args, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spikemask evaluate: error: device 'cuda': no CUDA GPU")
    assert "Traceback" not in err
    assert main([*args, "--device", "npu"]) == 2
    assert "unknown device 'npu'" in capsys.readouterr().err
    assert main([*args, "--threads", "0"]) == 2
    assert "error: threads '0'; expected 'auto'" in capsys.readouterr().err
    finetune = ["finetune", str(run_dir), data, "--out", str(tmp_path / "ft"), "--device"]
    assert main([*finetune, "cuda"]) == 2
    assert "spikemask finetune: error: device 'cuda': no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "ft").exists()


def test_evaluation_imports_no_lightning():
    """Lightning takes seconds to import and evaluation does not need it."""
    code = (
        "import sys, spikemask, spikemask.api, spikemask.evaluation.evaluate, "
        "spikemask.evaluation.report, spikemask.cli.evaluate, spikemask.cli.share; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', "
        "'pytorch_lightning')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
