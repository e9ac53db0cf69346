"""Session-grouped batches of trials, split across distributed ranks.

Every batch holds trials of a single session (sessions have different units). An epoch is a
list of *global* batches (session, trial rows); with several processes (DDP) each rank takes
its own slice of every global batch, so all ranks run the same number of steps and, with the
loss normalised by the global number of scored entries, the update equals a single-process
update on the whole global batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from spikemask.data.cache import release_pages
from spikemask.data.session import TrialSet
from spikemask.errors import SpikemaskError

__all__ = [
    "BatchKey",
    "ResumableLoader",
    "SessionBatchSampler",
    "SessionTrialsDataset",
    "mean_log_rate",
    "world_info",
]


def world_info() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass(frozen=True)
class BatchKey:
    """One rank's share of a global batch.

    Attributes:
        session: Index of the session in the dataset's session list.
        rows: Trial rows (within the split) of this rank's share.
        offset: Position of this share within the global batch.
        global_size: Number of trials in the global batch.
        batch_id: Position of the global batch within the epoch (seeds validation masks).
    """

    session: int
    rows: tuple[int, ...]
    offset: int
    global_size: int
    batch_id: int


class SessionBatchSampler(Sampler[BatchKey]):
    """Yields this rank's :class:`BatchKey` for every global batch of an epoch.

    Args:
        trial_counts: Number of trials of each session in the split.
        batch_size: Trials per global batch.
        shuffle: Reshuffle trials and batch order every epoch (training) or not (evaluation).
        sampling: ``proportional`` (each trial once per epoch) or ``balanced`` (every session
            gets as many batches as the largest one, drawing extra trials of smaller ones).
        seed: Seed of the shuffles; epoch ``e`` uses ``(seed, e)``.

    The sampler is resumable mid-epoch: :meth:`state_dict` records the epoch and how many of
    its batches were consumed (``consumed``, set by the training loop), and after
    :meth:`load_state_dict` the next iteration of that epoch starts after them. The order
    itself is a function of ``(seed, epoch)``, so nothing else needs saving.
    """

    def __init__(
        self,
        trial_counts: Sequence[int],
        *,
        batch_size: int,
        shuffle: bool,
        sampling: str = "proportional",
        seed: int = 0,
    ) -> None:
        if batch_size <= 0:
            raise SpikemaskError(f"batch_size={batch_size}; expected a positive integer")
        self.trial_counts = [int(c) for c in trial_counts]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.sampling = sampling
        self.seed = seed
        self.epoch = 0
        self.consumed = 0
        self._resume_at: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        """Epoch and number of its batches consumed (what a resumed run skips)."""
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue epoch ``state["epoch"]`` after its first ``state["consumed"]`` batches."""
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])
        self._resume_at = (self.epoch, self.consumed)

    def global_batches(self) -> list[tuple[int, np.ndarray]]:
        """The epoch's global batches as (session index, trial rows)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        per_session = [self._session_rows(count, rng) for count in self.trial_counts]
        batches = [
            (s, rows[i : i + self.batch_size])
            for s, rows in enumerate(per_session)
            for i in range(0, len(rows), self.batch_size)
        ]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _session_rows(self, count: int, rng: np.random.Generator) -> np.ndarray:
        rows = rng.permutation(count) if self.shuffle else np.arange(count)
        if self.sampling == "balanced" and self.shuffle:
            target = max(self.trial_counts)
            extra = rng.integers(0, count, size=target - count) if count else np.zeros(0, int)
            rows = np.concatenate([rows, extra])
        return rows

    def __iter__(self) -> Iterator[BatchKey]:
        rank, world = world_info()
        skip = self._resume_at[1] if self._resume_at and self._resume_at[0] == self.epoch else 0
        self._resume_at = None
        position = 0
        for batch_id, (session, rows) in enumerate(self.global_batches()):
            if len(rows) < world:  # cannot give every rank a trial: skipped on all ranks
                continue
            position += 1
            if position <= skip:  # consumed before the run was interrupted
                continue
            shares = np.array_split(np.arange(len(rows)), world)
            share = shares[rank]
            yield BatchKey(
                session=session,
                rows=tuple(int(r) for r in rows[share]),
                offset=int(share[0]),
                global_size=len(rows),
                batch_id=batch_id,
            )

    def __len__(self) -> int:
        _, world = world_info()
        sizes = []
        for count in self.trial_counts:
            total = (
                max(self.trial_counts) if self.sampling == "balanced" and self.shuffle else count
            )
            sizes += [min(self.batch_size, total - i) for i in range(0, total, self.batch_size)]
        return sum(1 for size in sizes if size >= world)


class ResumableLoader(DataLoader):
    """A DataLoader whose position Lightning saves in, and restores from, its checkpoints
    (it is *stateful*: ``state_dict`` / ``load_state_dict`` delegate to the
    :class:`SessionBatchSampler`)."""

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)


class SessionTrialsDataset(Dataset):
    """Turns a :class:`BatchKey` into a batch of one session's trials.

    Each item is a dict: ``spikes`` (b, T, N) counts in their stored integer dtype (the
    training module makes them float32 on the device), ``session_id``, ``region_ids`` (N,)
    int64, ``null_log_rates`` (N,) float32 (log of each unit's mean count per bin in
    ``reference`` trials: the per-unit mean-rate model validation losses are compared with),
    ``num_trials`` (the session's number of trials here), and the global-batch bookkeeping
    ``offset``, ``global_size``, ``batch_id``.
    """

    def __init__(
        self,
        session_ids: Sequence[str],
        trial_sets: Sequence[TrialSet],
        region_ids: Sequence[np.ndarray],
        reference: Sequence[TrialSet] | None = None,
    ) -> None:
        self.session_ids = list(session_ids)
        self.trial_sets = list(trial_sets)
        self.region_ids = [torch.as_tensor(np.asarray(r), dtype=torch.long) for r in region_ids]
        self.null_log_rates = [
            torch.from_numpy(mean_log_rate(t.spikes)) for t in (reference or trial_sets)
        ]
        self._int16: dict[int, bool] = {}

    def _fits_int16(self, session: int) -> bool:
        """Whether every count of a session is below 2**15 (checked once per session)."""
        fits = self._int16.get(session)
        if fits is None:
            spikes = self.trial_sets[session].spikes
            fits = self._int16[session] = bool(spikes.size == 0 or spikes.max() < 2**15)
            release_pages(spikes)
        return fits

    def trial_counts(self) -> list[int]:
        return [t.num_trials for t in self.trial_sets]

    def __len__(self) -> int:
        return sum(self.trial_counts())

    def __getitem__(self, key: BatchKey) -> dict:
        rows = np.asarray(key.rows, dtype=np.int64)
        # integer counts as stored (2 bytes each, not 4): the module makes them float on
        # the device, so a large batch costs the host no conversion and half the copy
        spikes = self.trial_sets[key.session].spikes  # memory-mapped when read from the cache
        counts = np.ascontiguousarray(spikes[rows])
        release_pages(spikes)  # keep only the batch, not every session read so far
        if counts.dtype == np.uint16 and self._fits_int16(key.session):
            counts = counts.view(np.int16)  # torch supports int16 everywhere, uint16 barely
        elif counts.dtype not in (np.uint8, np.int16, np.int32):
            counts = counts.astype(np.float32)
        return {
            "spikes": torch.from_numpy(counts),  # (b, T, N) integer counts
            "session_id": self.session_ids[key.session],
            "region_ids": self.region_ids[key.session],
            "null_log_rates": self.null_log_rates[key.session],
            "num_trials": self.trial_sets[key.session].num_trials,
            "offset": key.offset,
            "global_size": key.global_size,
            "batch_id": key.batch_id,
        }


PSEUDO_COUNT = 0.5
"""Spikes added to every unit's training count before taking its mean rate: a unit with
no training spike starts at half a spike per training set instead of a near-zero rate
(one test spike at rate 1e-6 per bin would cost ~20 bits)."""


def mean_log_rate(spikes: np.ndarray) -> np.ndarray:
    """(N,) log of every unit's mean count per bin, with :data:`PSEUDO_COUNT` spikes added."""
    rows = spikes.reshape(-1, spikes.shape[-1])
    total = rows.sum(axis=0, dtype=np.float64) + PSEUDO_COUNT
    release_pages(spikes)
    return np.log(total / max(rows.shape[0], 1)).astype(np.float32)
