"""Run a trained model over the many masked copies of an activity task, in large chunks.

Shape letters: K trials, T time bins, N units, D model width, G variants, M rows of a
chunk (pairs of one variant and one trial, variant-major).

A task with G variants needs G x K forward passes of (T, N) inputs. They are stacked into
chunks of M rows (a few tens of MB each) and only the scored predictions are kept.

For NDT1 (linear per-session read-in and read-out) a faster path gives the same numbers:
the read-in of a masked copy is the read-in of the full trial minus the hidden units'
share (or, when most units are hidden, the visible units' share alone), and the read-out
is computed for the predicted units only. For a 1,000-unit session these two linear maps
would otherwise cost more than the transformer itself.
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
from spikemask.models.ndt1 import NDT1

__all__ = ["CHUNK_BYTES", "predict_task"]

CHUNK_BYTES = 64 * 2**20
"""Approximate size of the float32 tensors of one chunk (inputs, activations, outputs)."""
_MIN_ROWS, _MAX_ROWS = 16, 4096
_MAX_BASES = 64  # cached (K, T, D_in) read-ins of the fast NDT1 path


@dataclass(frozen=True)
class _Segment:
    """Rows ``offset : offset + (k_stop - k_start)`` of a chunk: variant g, trials k."""

    variant: int
    k_start: int
    k_stop: int
    offset: int


def _chunks(num_variants: int, num_trials: int, rows: int) -> Iterator[list[_Segment]]:
    """Split the G x K (variant-major) rows into chunks of at most ``rows`` rows."""
    total = num_variants * num_trials
    for start in range(0, total, rows):
        stop = min(start + rows, total)
        segments, row = [], start
        while row < stop:
            variant, k_start = divmod(row, num_trials)
            k_stop = min(num_trials, k_start + stop - row)
            segments.append(_Segment(variant, k_start, k_stop, row - start))
            row += k_stop - k_start
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
        model: The trained model (must know ``session``).
        session: The session evaluated.
        plan: The task's masked copies (:func:`~spikemask.evaluation.tasks.plan_task`).
        split: Trials evaluated.
        batch_size: Rows (masked trial copies) per forward pass; default: chunks of about
            :data:`CHUNK_BYTES`.
        fast: Use the NDT1 shortcut (same result) when the model allows it.
        progress: Show a progress bar over chunks (stderr).

    Returns:
        (K, T, N) float32 rates (expected counts per bin); NaN where not scored.
    """
    model.check_session(session)
    spikes = torch.as_tensor(session.split(split).spikes.astype(np.float32))  # (K, T, N)
    num_trials, num_bins, num_units = spikes.shape
    rates = np.full((num_trials, num_bins, num_units), np.nan, dtype=np.float32)
    if plan.num_variants == 0 or num_trials == 0:
        return rates
    use_fast = fast and _fast_path_ok(model, session, plan)
    width = model.model.config.width
    rows = batch_size or _rows_per_chunk(num_bins, num_units, width, use_fast)
    scored_bins = np.flatnonzero(plan.scored_bins)
    chunks = list(_chunks(plan.num_variants, num_trials, rows))
    with torch.inference_mode():
        runner = (_FastNDT1 if use_fast else _Generic)(model, session, plan, spikes)
        for segments in tqdm(chunks, desc=plan.task, leave=False, disable=not progress):
            for segment, log_rates in runner.run(segments):
                targets = plan.targets[segment.variant]
                trials = np.arange(segment.k_start, segment.k_stop)
                values = log_rates.exp().numpy()[:, scored_bins]  # (k, T_scored, n_targets)
                rates[np.ix_(trials, scored_bins, targets)] = values
    return rates


class _Generic:
    """Any model through :meth:`TrainedModel.forward`: masked full inputs, full outputs."""

    def __init__(
        self, model: TrainedModel, session: Session, plan: TaskPlan, spikes: torch.Tensor
    ) -> None:
        self.model, self.session, self.plan, self.spikes = model, session, plan, spikes
        self.hidden_units = torch.as_tensor(plan.hidden_units)  # (G, N)
        self.hidden_bins = torch.as_tensor(plan.hidden_bins)  # (T,)
        self.prompt = model.prompt_for(plan.scheme)

    def run(self, segments: list[_Segment]) -> Iterator[tuple[_Segment, torch.Tensor]]:
        """Yield each segment with its (k, T, n_targets) log-rates."""
        trials = torch.cat([torch.arange(s.k_start, s.k_stop) for s in segments])
        variants = torch.cat([torch.full((s.k_stop - s.k_start,), s.variant) for s in segments])
        hidden = self.hidden_units[variants][:, None, :] | self.hidden_bins[None, :, None]
        inputs = self.spikes[trials].masked_fill_(hidden, 0.0)  # (M, T, N), a new tensor
        output = next(
            iter(
                self.model.forward(
                    inputs,
                    self.session,
                    prompt=self.prompt,
                    causal=self.plan.causal,
                    batch_size=inputs.shape[0],
                )
            )
        )
        for s in segments:
            rows = output.log_rates[s.offset : s.offset + s.k_stop - s.k_start]
            yield s, rows[:, :, torch.as_tensor(self.plan.targets[s.variant])]


class _FastNDT1:
    """NDT1 with stitchers: read-in by subtraction, read-out of the targets only.

    The hidden units of a variant are its targets plus a "base" set shared by many
    variants (none for co-smoothing and inter-region, the units outside the region for
    intra-region). The read-in of each distinct base is computed once for all trials; a
    variant's read-in is that minus its targets' share. Mirrors :meth:`NDT1.forward`
    through :meth:`NDT1.encode_stitched`; the tests check that both give the same rates.
    """

    def __init__(
        self, model: TrainedModel, session: Session, plan: TaskPlan, spikes: torch.Tensor
    ) -> None:
        net = model.model
        self.net, self.plan, self.spikes = net, plan, spikes.to(model.device)
        self.session_id = session.session_id
        self.adapter = net.adapter(session.session_id)
        self.prompt = model.prompt_for(plan.scheme)
        self.read_in_t = self.adapter.read_in.weight.t()  # (N, D_in)
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
        """(k, T, D_in) read-in of the variant's masked copies of trials k."""
        hidden = self.plan.hidden_units[segment.variant]
        targets = self.plan.targets[segment.variant]
        own = targets[hidden[targets]]  # hidden targets: subtracted from the base
        base_hidden = hidden.copy()
        base_hidden[own] = False
        base = self._base(base_hidden)[segment.k_start : segment.k_stop]
        if own.size == 0:
            return base
        index = torch.as_tensor(own, device=self.spikes.device)
        counts = self.spikes[segment.k_start : segment.k_stop, :, index]  # (k, T, n_own)
        share = counts.flatten(0, 1) @ self.read_in_t[index]  # (k*T, D_in)
        return base - share.reshape(base.shape)

    def run(self, segments: list[_Segment]) -> Iterator[tuple[_Segment, torch.Tensor]]:
        """Yield each segment with its (k, T, n_targets) log-rates."""
        stitched = torch.cat([self._stitched(s) for s in segments])  # (M, T, D_in)
        latents = self.net.encode_stitched(
            stitched, session_id=self.session_id, prompt=self.prompt, causal=self.plan.causal
        )  # (M, T, D)
        yield from self._read_out(segments, latents)

    def _read_out(self, segments: list[_Segment], latents: torch.Tensor):
        """Log-rates of each segment's targets from (M, T, D) latents."""
        weight, bias = self.adapter.read_out.weight, self.adapter.read_out.bias  # (N, D), (N,)
        targets = [torch.as_tensor(self.plan.targets[s.variant]) for s in segments]
        if all(t.numel() == 1 for t in targets):  # one target per row: a batched dot product
            sizes = [s.k_stop - s.k_start for s in segments]
            per_row = torch.cat(targets).repeat_interleave(torch.as_tensor(sizes))  # (M,)
            per_row = per_row.to(latents.device)
            dots = torch.bmm(latents, weight[per_row].unsqueeze(2))  # (M, T, 1)
            log_rates = (dots + bias[per_row, None, None]).float().cpu()
            for s in segments:
                yield s, log_rates[s.offset : s.offset + s.k_stop - s.k_start]
            return
        width = latents.shape[2]
        for s, target in zip(segments, targets, strict=True):
            target = target.to(latents.device)
            rows = latents[s.offset : s.offset + s.k_stop - s.k_start]  # (k, T, D)
            flat = rows.reshape(-1, width) @ weight[target].t() + bias[target]  # (k*T, n)
            yield s, flat.reshape(rows.shape[0], rows.shape[1], -1).float().cpu()
