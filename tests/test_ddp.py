"""Distributed data parallel on CPU (gloo): two processes equal one with the same global batch.

The two-process run is launched exactly as a user would on a GPU node, through
``torchrun`` and the ``spikemask train`` command; spikemask reads the layout from the
launcher's environment. Dropout is off so that both runs draw the same randomness.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from spikemask.data.parquet import write_session

from conftest import TINY_MODEL, make_session

SETTINGS = [
    *TINY_MODEL,
    "data.batch_size=8",
    "train.log_every_n_steps=1",
    "train.tensorboard=false",
    "train.lr=0.01",
    "train.accelerator=cpu",
    # fp32: the comparison is of the DDP arithmetic at 1e-4 (bf16 rounds per rank's shapes)
    "train.precision=32",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train(data, out, *, processes: int) -> subprocess.CompletedProcess:
    args = [
        "-m",
        "spikemask.cli",
        "train",
        *map(str, data),
        "--out",
        str(out),
        "--max-steps",
        "6",
        "--quiet",
    ]
    for item in SETTINGS:
        args += ["--set", item]
    if processes > 1:
        args = [
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={processes}",
            "--master-addr=127.0.0.1",
            f"--master-port={_free_port()}",
            *args,
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _step_losses(run_dir) -> np.ndarray:
    frame = pd.read_csv(next((run_dir / "logs" / "csv").glob("version_*/metrics.csv")))
    return frame.dropna(subset=["train_loss"]).sort_values("step")["train_loss"].to_numpy()


def test_two_process_gloo_run_matches_one_process(tmp_path):
    # two sessions with different unit counts; 16 and 8 training trials -> whole global batches
    data = [
        write_session(
            make_session(session_id="a", trials=(16, 4, 4), num_units=11), tmp_path / "a"
        ),
        write_session(
            make_session(session_id="b", trials=(8, 4, 4), num_units=9, seed=3), tmp_path / "b"
        ),
    ]
    _train(data, tmp_path / "one", processes=1)
    _train(data, tmp_path / "two", processes=2)
    one, two = _step_losses(tmp_path / "one"), _step_losses(tmp_path / "two")
    assert len(one) == len(two) == 6
    np.testing.assert_allclose(two, one, rtol=1e-4, atol=1e-6)
    w1 = load_file(tmp_path / "one" / "checkpoints" / "last" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "checkpoints" / "last" / "model.safetensors")
    for key in w1:
        # Adam divides by the gradient scale, so float-rounding differences in near-zero
        # gradients (summed in another order across ranks) move weights by up to ~lr
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-3, atol=2e-3, msg=key)
    # only rank 0 wrote logs and checkpoints: one log version, one set of checkpoint folders
    assert len(list((tmp_path / "two" / "logs" / "csv").glob("version_*"))) == 1
