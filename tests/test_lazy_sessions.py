"""Sessions opened lazily (memory-mapped counts whose pages are handed back) give the same
batches as sessions held in memory."""

from __future__ import annotations

import numpy as np
import torch

from spikemask.data.cache import release_pages
from spikemask.data.loading import load_sessions
from spikemask.data.parquet import write_session
from spikemask.training.batches import SessionBatchSampler, SessionTrialsDataset, mean_log_rate

from conftest import make_session


def _batches(sessions, split: str, epochs: int = 2) -> list[dict]:
    dataset = SessionTrialsDataset(
        [s.session_id for s in sessions],
        [s.split(split) for s in sessions],
        [np.arange(s.num_units) % 3 for s in sessions],
        reference=[s.split("train") for s in sessions],
    )
    sampler = SessionBatchSampler(
        dataset.trial_counts(), batch_size=4, shuffle=True, sampling="balanced", seed=7
    )
    batches = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        batches += [dataset[key] for key in sampler]
    return batches


def test_lazy_sessions_give_the_same_batches_as_eager(tmp_path):
    sessions = [
        make_session(session_id=f"s{i}", num_units=7 + 4 * i, trials=(9 + i, 3, 4), seed=i)
        for i in range(3)
    ]
    folders = [write_session(s, tmp_path / s.session_id) for s in sessions]
    load_sessions(folders)  # the first read fills the decoded-counts cache
    lazy = load_sessions(folders)
    eager = load_sessions(folders, cache=False)
    for session in lazy:
        assert all(isinstance(t.spikes, np.memmap) for t in session.splits.values())
    for session in eager:
        assert not any(isinstance(t.spikes, np.memmap) for t in session.splits.values())
    for split in ("train", "val"):
        lazy_batches, eager_batches = _batches(lazy, split), _batches(eager, split)
        assert len(lazy_batches) == len(eager_batches) >= 6
        for a, b in zip(lazy_batches, eager_batches, strict=True):
            assert a["session_id"] == b["session_id"]
            assert torch.equal(a["spikes"], b["spikes"])
            assert torch.equal(a["null_log_rates"], b["null_log_rates"])
            assert (a["offset"], a["global_size"], a["batch_id"]) == (
                b["offset"],
                b["global_size"],
                b["batch_id"],
            )


def test_released_pages_read_back_the_same_counts(tmp_path):
    session = make_session(session_id="r", num_units=13)
    folder = write_session(session, tmp_path / "r")
    load_sessions([folder])
    (lazy,) = load_sessions([folder])
    spikes = lazy.split("train").spikes
    before = np.array(spikes)
    assert release_pages(spikes)
    np.testing.assert_array_equal(np.array(spikes), before)
    np.testing.assert_array_equal(before, session.split("train").spikes)
    assert mean_log_rate(spikes).tolist() == mean_log_rate(before).tolist()
    assert not release_pages(before)  # an in-memory array: nothing to hand back
