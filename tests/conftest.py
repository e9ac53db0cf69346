"""Shared fixtures: tiny odd-sized sessions, paths to the real data, an isolated cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from spikemask.data.session import Session, TrialSet

# No test reaches the network: the Hub client answers from its cache or fails at once.
# Set before huggingface_hub is imported anywhere (it reads the variable on import).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Lightning gives its loggers a stream handler bound to sys.stderr when it is first
# imported; imported inside a test that captures output, that handler would keep writing to
# the closed capture of that test ("--- Logging error ---" in a later test's stderr, which
# depends on the test order). Import it here, with the real stderr.
import lightning  # noqa: F401

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
STEINMETZ = SHARED_DATA / "steinmetz2019"


TINY_MODEL = [
    "model.width=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.mlp_width=48",
    "model.stitch_width=16",
    "model.dropout=0.0",
    "model.embed_dropout=0.0",
]
"""``--set`` overrides for a tiny NDT1 that trains in seconds (training and DDP tests)."""


def steinmetz_dirs() -> list[Path]:
    """The real Steinmetz session folders, or a skip when ../shared/data is absent."""
    if not STEINMETZ.is_dir():
        pytest.skip(
            f"real data folder {STEINMETZ} is absent (needs ../shared/data beside the repo)"
        )
    return sorted(p for p in STEINMETZ.iterdir() if (p / "data").is_dir())


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test uses its own decoded-counts cache, never the user's."""
    monkeypatch.setenv("SPIKEMASK_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def make_session(
    *,
    session_id: str = "tiny",
    num_units: int = 11,
    num_bins: int = 7,
    trials: tuple[int, int, int] = (9, 4, 5),
    regions: tuple[str, ...] = ("VISp", "CA1", "LGd"),
    seed: int = 0,
    rate: float = 0.3,
) -> Session:
    """A small random session with odd sizes (T=7, N=11) and a planted trial signal."""
    rng = np.random.default_rng(seed)
    unit_regions = tuple(regions[i % len(regions)] for i in range(num_units))
    splits = {}
    start = 0
    for name, k in zip(("train", "val", "test"), trials, strict=True):
        side = rng.choice([-1.0, 1.0], size=k)
        gain = 1.0 + 0.8 * side[:, None, None] * (np.arange(num_units) % 2 * 2 - 1)
        spikes = rng.poisson(rate * gain * np.ones((k, num_bins, num_units))).astype(np.uint16)
        splits[name] = TrialSet(
            spikes=spikes,
            trial_index=np.arange(start, start + k),
            trial_behavior={"choice": side, "reward": (rng.random(k) > 0.3).astype(float)},
            bin_behavior={"wheel-speed": rng.random((k, num_bins)).astype(np.float32)},
        )
        start += k
    return Session(
        session_id=session_id,
        bin_size_s=0.02,
        window_start_s=-0.04,
        align_event="stimOn_times",
        unit_ids=tuple(f"{session_id}-u{i}" for i in range(num_units)),
        unit_regions=unit_regions,
        unit_depths=np.linspace(0, 3000, num_units),
        splits=splits,
        metadata={"subject": "mouse", "lab": "lab"},
    )


@pytest.fixture
def tiny_session() -> Session:
    return make_session()
