"""Run a trained model over the many masked copies of an activity task, in large chunks.

Shape letters: K trials, T time bins, N units, D model width, G variants, M rows of a
chunk (pairs of one job and one trial).

A task with G variants needs up to G x K forward passes of (T, N) inputs. Two exact
shortcuts cut that down, then the passes left are stacked into chunks of M rows (a few
tens of MB each) and only the scored predictions are kept:

* **Silent rows.** A variant hides its *own* units (its hidden targets) on top of a *base*
  set shared by many variants (nothing for co-smoothing and inter-region, the units
  outside the region for intra-region). Hiding means zeroing, so in a trial where the own
  units have no spike the masked copy *is* the base copy, bit for bit. One pass of the
  base copy per trial serves all those rows: with real data's sparse counts (most units
  fire in less than half of the trials' 0.4 s windows) this skips about 60 % of the
  co-smoothing and intra-region passes of a Steinmetz session.
* **NDT1's linear maps.** For NDT1 (linear per-session read-in and read-out) the read-in of
  a masked copy is the read-in of the base copy minus the own units' share, and the
  read-out is computed for the predicted units only. For a 1,000-unit session these two
  maps would otherwise cost more than the transformer itself.

:func:`predict_task` gives the same rates as one forward pass per variant and trial, to
float32 rounding; the tests check it against exactly that.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from spikemask.api import TrainedModel
from spikemask.data.session import Session
from spikemask.evaluation.tasks import TaskPlan
from spikemask.models.config import scale_counts
from spikemask.models.ndt1 import NDT1

__all__ = ["CHUNK_BYTES", "plan_jobs", "predict_task"]

CHUNK_BYTES = 64 * 2**20
"""Approximate size of the float32 tensors of one chunk (inputs, activations, outputs)."""
_MIN_ROWS, _MAX_ROWS = 16, 4096
_MAX_BASES = 64  # cached (K, T, D_in) read-ins of the fast NDT1 path


@dataclass(frozen=True, eq=False)
class _Job:
    """One masked copy run on some trials: hide ``hidden`` (N,), predict ``targets``.

    ``own`` are the hidden units that set the copy apart from its base (``hidden`` minus
    ``own``); empty for a base copy itself.
    """

    hidden: np.ndarray
    targets: np.ndarray
    own: np.ndarray
    trials: np.ndarray


@dataclass(frozen=True)
class _Segment:
    """Rows ``offset : offset + len(trials)`` of a chunk: one job on some of its trials."""

    job: _Job
    trials: np.ndarray
    offset: int


def plan_jobs(plan: TaskPlan, spikes: np.ndarray, *, skip_silent: bool = True) -> list[_Job]:
    """The forward passes a task needs: base copies first, then each variant's own rows.

    Args:
        plan: The task.
        spikes: (K, T, N) counts of the evaluated trials.
        skip_silent: Serve the rows whose own units are silent from their base copy.

    Returns:
        Jobs in the order their predictions must be written (a later job overwrites the
        base copy's predictions of the rows it runs itself).
    """
    num_trials = spikes.shape[0]
    visible_bins = ~plan.hidden_bins
    fires = spikes[:, visible_bins].any(axis=1)  # (K, N): a spike in a visible bin
    bases: dict[bytes, tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]] = {}
    variants: list[_Job] = []
    for hidden, targets in zip(plan.hidden_units, plan.targets, strict=True):
        own = targets[hidden[targets]]
        if not skip_silent or own.size == 0:
            variants.append(_Job(hidden, targets, own, np.arange(num_trials)))
            continue
        active = fires[:, own].any(axis=1)  # (K,)
        base_hidden = hidden.copy()
        base_hidden[own] = False
        entry = bases.setdefault(np.packbits(base_hidden).tobytes(), (base_hidden, [], []))
        if not active.all():
            entry[1].append(targets)
            entry[2].append(np.flatnonzero(~active))
        if active.any():
            variants.append(_Job(hidden, targets, own, np.flatnonzero(active)))
    base_jobs = [
        _Job(base_hidden, np.unique(np.concatenate(targets)), np.zeros(0, dtype=np.int64),
             np.unique(np.concatenate(trials)))
        for base_hidden, targets, trials in bases.values()
        if targets
    ]  # fmt: skip
    return base_jobs + variants


def _chunks(jobs: list[_Job], rows: int) -> Iterator[list[_Segment]]:
    """Split the rows of ``jobs`` (in order) into chunks of at most ``rows`` rows."""
    segments: list[_Segment] = []
    used = 0
    for job in jobs:
        start = 0
        while start < job.trials.size:
            take = min(rows - used, job.trials.size - start)
            segments.append(_Segment(job, job.trials[start : start + take], used))
            start, used = start + take, used + take
            if used == rows:
                yield segments
                segments, used = [], 0
    if segments:
        yield segments


def _rows_per_chunk(num_bins: int, num_units: int, width: int, fast: bool) -> int:
    """Rows so that one chunk's float32 tensors take about :data:`CHUNK_BYTES`."""
    per_row = 4 * num_bins * ((0 if fast else 2 * num_units) + 8 * width)
    return int(np.clip(CHUNK_BYTES // per_row, _MIN_ROWS, _MAX_ROWS))


def _fast_path_ok(model: TrainedModel, session: Session, plan: TaskPlan) -> bool:
    net = model.model
    if not isinstance(net, NDT1) or plan.hidden_bins.any():
        return False
    adapter = net.adapter(session.session_id)
    return adapter.read_in is not None and adapter.read_out is not None


def predict_task(
    model: TrainedModel,
    session: Session,
    plan: TaskPlan,
    *,
    split: str = "test",
    batch_size: int | None = None,
    fast: bool = True,
    progress: bool = False,
) -> np.ndarray:
    """Predicted rates of every scored (trial, bin, unit) of an activity task.

    Args:
        model: The trained model (must know ``session``), on any device.
        session: The session evaluated.
        plan: The task's masked copies (:func:`~spikemask.evaluation.tasks.plan_task`).
        split: Trials evaluated.
        batch_size: Rows (masked trial copies) per forward pass; default: chunks of about
            :data:`CHUNK_BYTES`.
        fast: Use the exact shortcuts of this module (same result); False runs every
            variant on every trial through :meth:`TrainedModel.forward`.
        progress: Show a progress bar over chunks (stderr).

    Returns:
        (K, T, N) float32 rates (expected counts per bin); NaN where not scored.
    """
    model.check_session(session)
    counts = session.split(split).spikes
    spikes = torch.as_tensor(counts.astype(np.float32))  # (K, T, N)
    num_trials, num_bins, num_units = spikes.shape
    rates = np.full((num_trials, num_bins, num_units), np.nan, dtype=np.float32)
    if plan.num_variants == 0 or num_trials == 0:
        return rates
    use_fast = fast and _fast_path_ok(model, session, plan)
    width = model.model.config.width
    rows = batch_size or _rows_per_chunk(num_bins, num_units, width, use_fast)
    scored_bins = np.flatnonzero(plan.scored_bins)
    # a silent unit's masked copy equals its base copy, unless the model reads hidden flags
    skip_silent = fast and not model.model.config.hidden_flags
    chunks = list(_chunks(plan_jobs(plan, counts, skip_silent=skip_silent), rows))
    with torch.inference_mode():
        runner = (_FastNDT1 if use_fast else _Generic)(model, session, plan, spikes)
        for segments in tqdm(chunks, desc=plan.task, leave=False, disable=not progress):
            for segment, log_rates in runner.run(segments):
                values = log_rates.exp().numpy()[:, scored_bins]  # (k, T_scored, n_targets)
                rates[np.ix_(segment.trials, scored_bins, segment.job.targets)] = values
    return rates


class _Generic:
    """Any model through :meth:`TrainedModel.forward`: masked full inputs, full outputs."""

    def __init__(
        self, model: TrainedModel, session: Session, plan: TaskPlan, spikes: torch.Tensor
    ) -> None:
        self.model, self.session, self.plan, self.spikes = model, session, plan, spikes
        self.hidden_bins = torch.as_tensor(plan.hidden_bins)  # (T,)
        self.prompt = model.prompt_for(plan.scheme)

    def run(self, segments: list[_Segment]) -> Iterator[tuple[_Segment, torch.Tensor]]:
        """Yield each segment with its (k, T, n_targets) log-rates."""
        trials = torch.as_tensor(np.concatenate([s.trials for s in segments]))  # (M,)
        hidden_units = torch.as_tensor(
            np.concatenate(
                [
                    np.broadcast_to(s.job.hidden, (s.trials.size, s.job.hidden.size))
                    for s in segments
                ]
            )
        )  # (M, N); fmt: skip
        hidden = hidden_units[:, None, :] | self.hidden_bins[None, :, None]  # (M, T, N)
        (output,) = self.model.forward(
            self.spikes[trials],
            self.session,
            hidden=hidden,
            prompt=self.prompt,
            causal=self.plan.causal,
            batch_size=trials.numel(),
        )
        for s in segments:
            rows = output.log_rates[s.offset : s.offset + s.trials.size]
            yield s, rows[:, :, torch.as_tensor(s.job.targets)]


class _FastNDT1:
    """NDT1 with stitchers: read-in by subtraction, read-out of the targets only.

    (With ``hidden_flags``, the mean flag column of the job's hidden units, the same in
    every bin, is added to the job's copies.)

    The read-in of each distinct base (a job's hidden units minus its own) is computed
    once for all trials; a job's read-in is that minus its own units' share. Mirrors
    :meth:`NDT1.forward` through :meth:`NDT1.encode_stitched`; the tests check that both
    give the same rates.
    """

    def __init__(
        self, model: TrainedModel, session: Session, plan: TaskPlan, spikes: torch.Tensor
    ) -> None:
        net = model.model
        # the model reads scaled counts; scaling keeps 0 at 0, so hiding (zeroing) entries
        # and the subtraction below work on the scaled counts as on the counts
        self.net, self.plan = net, plan
        self.spikes = scale_counts(spikes.to(model.device), net.config.input_scaling)
        self.session_id = session.session_id
        self.adapter = net.adapter(session.session_id)
        self.prompt = model.prompt_for(plan.scheme)
        self.read_in_t = self.adapter.read_in.weight.t()  # (N, D_in)
        # hidden flags: the mean of the hidden units' columns of hidden_in, in every bin
        flags = self.adapter.hidden_in
        self.flags_t = None if flags is None else flags.weight.t()  # (N, D_in)
        self.bases: dict[bytes, torch.Tensor] = {}

    def _base(self, hidden: np.ndarray) -> torch.Tensor:
        """(K, T, D_in) read-in (with bias) of every trial with ``hidden`` (N,) zeroed."""
        key = np.packbits(hidden).tobytes()
        if key not in self.bases:
            if len(self.bases) >= _MAX_BASES:
                self.bases.clear()
            visible = torch.as_tensor(~hidden, device=self.spikes.device)
            counts = self.spikes if bool(visible.all()) else self.spikes[:, :, visible]
            flat = torch.addmm(
                self.adapter.read_in.bias, counts.flatten(0, 1), self.read_in_t[visible]
            )  # (K*T, D_in)
            self.bases[key] = flat.reshape(*self.spikes.shape[:2], -1)
        return self.bases[key]

    def _stitched(self, segment: _Segment) -> torch.Tensor:
        """(k, T, D_in) read-in of the job's masked copies of the segment's trials."""
        own = segment.job.own
        base_hidden = segment.job.hidden.copy()
        base_hidden[own] = False
        trials = torch.as_tensor(segment.trials, device=self.spikes.device)
        stitched = self._base(base_hidden)[trials]  # (k, T, D_in)
        if own.size:
            index = torch.as_tensor(own, device=self.spikes.device)
            counts = self.spikes[trials][:, :, index]  # (k, T, n_own)
            share = counts.flatten(0, 1) @ self.read_in_t[index]  # (k*T, D_in)
            stitched = stitched - share.reshape(stitched.shape)
        if self.flags_t is not None and segment.job.hidden.any():
            # the same hidden units in every bin: one mean column for all rows
            hidden = torch.as_tensor(segment.job.hidden, device=self.spikes.device)
            stitched = stitched + self.flags_t[hidden].mean(0)
        return stitched

    def run(self, segments: list[_Segment]) -> Iterator[tuple[_Segment, torch.Tensor]]:
        """Yield each segment with its (k, T, n_targets) log-rates."""
        stitched = torch.cat([self._stitched(s) for s in segments])  # (M, T, D_in)
        latents = self.net.encode_stitched(
            stitched, session_id=self.session_id, prompt=self.prompt, causal=self.plan.causal
        )  # (M, T, D)
        yield from self._read_out(segments, latents)

    def _read_out(
        self, segments: list[_Segment], latents: torch.Tensor
    ) -> Iterator[tuple[_Segment, torch.Tensor]]:
        """Log-rates of each segment's targets from (M, T, D) latents, in segment order."""
        weight, bias = self.adapter.read_out.weight, self.adapter.read_out.bias  # (N, D), (N,)
        single = [s for s in segments if s.job.targets.size == 1]
        out: dict[int, torch.Tensor] = {}
        if single:  # one target per row: one batched dot product over all their rows
            rows = np.concatenate([np.arange(s.offset, s.offset + s.trials.size) for s in single])
            per_row = np.concatenate([np.repeat(s.job.targets, s.trials.size) for s in single])
            rows_t = torch.as_tensor(rows, device=latents.device)  # (M_single,)
            per_row_t = torch.as_tensor(per_row, device=latents.device)  # (M_single,)
            dots = torch.bmm(latents[rows_t], weight[per_row_t].unsqueeze(2))  # (M_single, T, 1)
            log_rates = (dots + bias[per_row_t, None, None]).float().cpu()
            start = 0
            for s in single:
                out[s.offset] = log_rates[start : start + s.trials.size]
                start += s.trials.size
        width = latents.shape[2]
        for s in segments:
            if s.offset not in out:
                target = torch.as_tensor(s.job.targets, device=latents.device)
                rows = latents[s.offset : s.offset + s.trials.size]  # (k, T, D)
                flat = rows.reshape(-1, width) @ weight[target].t() + bias[target]  # (k*T, n)
                out[s.offset] = flat.reshape(rows.shape[0], rows.shape[1], -1).float().cpu()
            # in order: a base copy's predictions come before the rows that overwrite them
            yield s, out[s.offset]
