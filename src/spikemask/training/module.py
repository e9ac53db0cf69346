"""The Lightning module: masking, Poisson objective, optimiser and per-scheme validation."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Iterator

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from spikemask.config import TrainConfig
from spikemask.errors import SpikemaskError
from spikemask.masking import MaskingConfig, MaskingMixture, MaskSpec, apply_mask
from spikemask.models.layers import INITIAL_RATE

__all__ = [
    "MtMModule",
    "adamw",
    "masked_poisson_nll",
    "one_cycle_factor",
    "schedule_progress",
    "step_generator",
    "use_fused_adamw",
]

_TRAIN, _VAL = 1, 2


def step_generator(*keys: int, device: torch.device | str | None = None) -> torch.Generator:
    """A generator seeded from integer keys (seed, phase, step, ...), on the CPU or on
    ``device``."""
    value = 0
    for key in keys:  # a simple, stable mixing of the keys into one 63-bit seed
        value = (value * 1_000_003 + int(key) + 0x9E3779B9) % (2**63 - 1)
    generator = torch.Generator() if device is None else torch.Generator(device=device)
    return generator.manual_seed(value)


def masked_poisson_nll(log_rates: torch.Tensor, spikes: torch.Tensor, scored: torch.Tensor):
    """Summed Poisson NLL over scored entries and their count.

    Args:
        log_rates: (B, T, N) predicted log-rates.
        spikes: (B, T, N) observed counts.
        scored: (B, T, N) bool, True where the entry counts.

    Returns:
        (sum of NLL over scored entries, number of scored entries). The log(y!) term is
        left out: it does not depend on the model.
    """
    nll = F.poisson_nll_loss(
        log_rates.float(), spikes, log_input=True, full=False, reduction="none"
    )
    return (nll * scored).sum(), scored.sum()


def _unit_nll(log_rates: torch.Tensor, spikes: torch.Tensor, scored: torch.Tensor):
    """(N,) float64: each unit's Poisson NLL summed over its scored entries (as
    :func:`masked_poisson_nll`, per unit)."""
    nll = F.poisson_nll_loss(
        log_rates.float(), spikes, log_input=True, full=False, reduction="none"
    )
    return (nll * scored).sum((0, 1)).double()


class MtMModule(L.LightningModule):
    """Trains a model with a masking mixture.

    Args:
        model: An NDT1 / NDT2 module.
        masking: Which schemes to draw and how.
        train: Optimisation settings.
        trainable: Parameters to optimise (default: all); used by session-only fine-tuning.
        new_params: Layers of sessions new to a pre-trained model (fine-tuning): they learn
            at ``train.lr``, every other parameter at ``train.lr * train.shared_lr_scale``;
            given, every parameter decays at ``train.finetune_weight_decay`` (unless null).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        masking: MaskingConfig,
        train: TrainConfig,
        trainable: Iterable[nn.Parameter] | None = None,
        new_params: Iterable[nn.Parameter] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.masking_config = masking
        self.mixture = MaskingMixture(masking)
        self.train_config = train
        self._trainable = list(trainable) if trainable is not None else None
        self._new_params = {id(p) for p in new_params} if new_params is not None else None
        self._val_sums: dict[str, list[torch.Tensor]] = {}
        #: per unit of every session, summed over a validation: (model NLL, null NLL, spikes)
        self._unit_sums: torch.Tensor | None = None
        self._unit_offsets: tuple[dict[str, int], int] | None = None
        self._ema: dict[str, torch.Tensor] | None = None
        self._swapped: dict[str, torch.Tensor] | None = None
        self._host_region_ids: dict[str, torch.Tensor] = {}
        #: global step of the latest validation (-1: none yet)
        self.validated_step = -1

    # ------------------------------------------------------------------ weight average
    def on_fit_start(self) -> None:
        if self.train_config.ema_decay > 0 and self._ema is None:
            self._ema = {n: p.detach().clone() for n, p in self.model.named_parameters()}

    @torch.no_grad()
    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        if self._ema is None:
            return
        step = self.global_step
        decay = min(self.train_config.ema_decay, (1 + step) / (10 + step))
        for name, param in self.model.named_parameters():
            self._ema[name].lerp_(param.detach(), 1.0 - decay)

    @torch.no_grad()
    def _swap_weights(self) -> None:
        """Exchange the live weights with the averaged ones (a no-op without EMA)."""
        if self._ema is None:
            return
        for name, param in self.model.named_parameters():
            live = param.detach().clone()
            param.copy_(self._ema[name])
            self._ema[name] = live

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """Inside, the model holds its averaged weights (when EMA is on)."""
        self._swap_weights()
        try:
            yield
        finally:
            self._swap_weights()

    def on_validation_epoch_start(self) -> None:
        self._swap_weights()  # validate (and select models by) the averaged weights
        # every rank holds (and later sums) the whole per-unit buffer, batches or not
        self._unit_sums = self._new_unit_sums(self.device)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._ema is not None:
            checkpoint["spikemask_ema"] = {n: t.cpu() for n, t in self._ema.items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("spikemask_ema")
        if saved is not None:
            self._ema = {n: t.to(self.device) for n, t in saved.items()}

    # ------------------------------------------------------------------ steps
    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Counts arrive as integers (smaller to copy) and become float32 on the device."""
        spikes = batch["spikes"]
        if not spikes.is_floating_point():
            batch = {**batch, "spikes": spikes.float()}
        return batch

    def _region_ids_on_host(self, batch: dict) -> torch.Tensor:
        """(N,) region ids of the batch's session on the CPU, copied once per session."""
        session_id = batch["session_id"]
        region_ids = self._host_region_ids.get(session_id)
        if region_ids is None:
            region_ids = self._host_region_ids[session_id] = batch["region_ids"].cpu()
        return region_ids

    def _global_mask(
        self, batch: dict, keys: tuple[int, ...], scheme: str | None
    ) -> tuple[MaskSpec, torch.Tensor]:
        """Mask of the whole global batch sliced to this rank's share, and the global number
        of scored entries.

        ``keys`` seed the step's generators. The scheme is drawn on the CPU; on the CPU the
        mask is drawn from the same generator (the reference draws), on an accelerator
        from a generator on the device, so no mask is copied from the host and nothing
        waits for the device.
        """
        spikes = batch["spikes"]
        shape = (int(batch["global_size"]), spikes.shape[1], spikes.shape[2])
        region_ids = self._region_ids_on_host(batch)
        generator = step_generator(*keys)
        on_device = spikes.device.type != "cpu"
        masks = step_generator(*keys, device=spikes.device) if on_device else generator
        if scheme is None:
            spec = self.mixture.sample(
                shape, generator=generator, region_ids=region_ids, mask_generator=masks
            )
        else:
            spec = self.mixture.build(scheme, shape, generator=masks, region_ids=region_ids)
        start = int(batch["offset"])
        rows = slice(start, start + spikes.shape[0])
        local = MaskSpec(
            scheme=spec.scheme,
            hidden=spec.hidden[rows].to(spikes.device),
            scored=spec.scored[rows].to(spikes.device),
            causal=spec.causal,
        )
        return local, spec.scored.sum().to(spikes.device)

    def _log_rates(self, batch: dict, spec: MaskSpec) -> torch.Tensor:
        output = self.model(
            apply_mask(batch["spikes"], spec),
            session_id=batch["session_id"],
            prompt=spec.prompt,
            causal=spec.causal,
            region_ids=batch["region_ids"],
            hidden=spec.hidden,
        )
        return output.log_rates

    def _loss_terms(self, batch: dict, spec: MaskSpec) -> tuple[torch.Tensor, torch.Tensor]:
        log_rates = self._log_rates(batch, spec)
        return masked_poisson_nll(log_rates, batch["spikes"], spec.scored)

    def _micro_batch(self, batch_idx: int) -> tuple[int, ...]:
        """() without gradient accumulation, else (index of the batch within its step,)."""
        accumulate = self.train_config.accumulate_grad_batches
        return () if accumulate == 1 else (batch_idx % accumulate,)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # Dropout draws from the global generator: reseed it from (seed, step, rank) so a
        # resumed run continues exactly as an uninterrupted one would.
        keys = (self.train_config.seed, _TRAIN, self.global_step, self.global_rank)
        seed = int(step_generator(*keys, *self._micro_batch(batch_idx)).initial_seed())
        torch.manual_seed(seed)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        keys = (self.train_config.seed, _TRAIN, self.global_step, *self._micro_batch(batch_idx))
        spec, global_scored = self._global_mask(batch, keys, scheme=None)
        total, _ = self._loss_terms(batch, spec)
        # Normalise by the GLOBAL number of scored entries (known on every rank from the
        # global mask) so DDP's gradient average equals the single-process gradient.
        world = self.trainer.world_size if self._trainer is not None else 1
        loss = total * world / global_scored.clamp_min(1)
        if self.train_config.readout_l2 > 0:
            # identical on every rank, so DDP's average keeps it as it is
            penalty = self.readout_penalty(batch["session_id"], batch["null_log_rates"])
            loss = loss + penalty * self.readout_l2_scale(batch.get("num_trials"))
        self.log(
            "train_loss",
            total.detach() / global_scored.clamp_min(1),
            reduce_fx="sum",
            sync_dist=world > 1,
            batch_size=int(batch["global_size"]),
            prog_bar=True,
        )
        self.log(
            f"train_loss/{spec.scheme}",
            total.detach() / global_scored.clamp_min(1),
            reduce_fx="sum",
            sync_dist=world > 1,
            batch_size=int(batch["global_size"]),
        )
        return loss

    def readout_l2_scale(self, num_trials: int | None) -> float:
        """Factor on the read-out penalty of a session with ``num_trials`` training trials:
        ``readout_l2_trials / num_trials`` when ``train.readout_l2_trials`` is set (a fixed
        prior against the NLL summed over the session's trials, which the mean NLL of the
        loss turns into a penalty that grows as the session shrinks), else 1."""
        reference = self.train_config.readout_l2_trials
        if reference is None or not num_trials:
            return 1.0
        return reference / int(num_trials)

    def readout_penalty(self, session_id: str, mean_log_rates: torch.Tensor) -> torch.Tensor:
        """``readout_l2 / 2 * mean_n (|w_n|^2 + (b_n - m_n)^2)`` over the session's units.

        ``w_n`` / ``b_n`` are unit n's read-out weights and bias and ``m_n`` its log mean
        training rate: the penalty shrinks every unit towards its mean-rate model, which
        decides units with few spikes (Adam's normalised steps move their weights as fast
        as those of busy units, so without it they fit noise). The loss is a mean over
        scored entries, where unit n's data term weighs about 1 / N; dividing the summed
        squares by N puts ``readout_l2`` on the scale of one GLM per unit (the penalty of
        scikit-learn's ``PoissonRegressor``).

        Args:
            session_id: The batch's session.
            mean_log_rates: (N,) log mean training count per bin of its units.
        """
        adapter = self.model.adapter(session_id)
        if adapter.read_out is None:  # NDT2: a shared read-out and per-unit offsets
            start = mean_log_rates.to(adapter.unit_bias.device) - math.log(INITIAL_RATE)
            drift = adapter.unit_bias.float() - start
            return 0.5 * self.train_config.readout_l2 * drift.square().mean()
        weight = adapter.read_out.weight.float()  # (N, D)
        drift = adapter.read_out.bias.float() - mean_log_rates.to(weight.device)  # (N,)
        squares = weight.square().sum(1) + drift.square()
        return 0.5 * self.train_config.readout_l2 * squares.mean()

    def _unit_layout(self) -> tuple[dict[str, int], int]:
        """Where each session's units start in the flat per-unit validation sums, and
        their total (rebuilt when sessions were added)."""
        layout = self.model.sessions
        if self._unit_offsets is None or len(self._unit_offsets[0]) != len(layout):
            offsets, start = {}, 0
            for session_id, num_units in layout.items():
                offsets[session_id] = start
                start += num_units
            self._unit_offsets = (offsets, start)
        return self._unit_offsets

    def _new_unit_sums(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(3, self._unit_layout()[1], dtype=torch.float64, device=device)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        spikes = batch["spikes"]
        start = self._unit_layout()[0][batch["session_id"]]
        if self._unit_sums is None:  # validation_step called outside a Lightning loop
            self._unit_sums = self._new_unit_sums(spikes.device)
        units = self._unit_sums[:, start : start + spikes.shape[-1]]
        for index, scheme in enumerate(self.masking_config.schemes):
            keys = (self.train_config.seed, _VAL, int(batch["batch_id"]), index)
            spec, _ = self._global_mask(batch, keys, scheme=scheme)
            scored = spec.scored
            model_units = _unit_nll(self._log_rates(batch, spec), spikes, scored)
            null_units = _unit_nll(batch["null_log_rates"].expand_as(spikes), spikes, scored)
            units[0] += model_units
            units[1] += null_units
            units[2] += (spikes * scored).sum((0, 1)).double()
            total, null, count = model_units.sum(), null_units.sum(), scored.sum().double()
            sums = self._val_sums.setdefault(scheme, [])
            sums.append(torch.stack([total, count, null]))

    def on_validation_epoch_end(self) -> None:
        losses, nulls = [], []
        for scheme, parts in self._val_sums.items():
            summed = torch.stack(parts).sum(0)
            summed = self.trainer.strategy.reduce(summed, reduce_op="sum")
            loss = (summed[0] / summed[1].clamp_min(1)).float()
            null = (summed[2] / summed[1].clamp_min(1)).float()
            losses.append(loss)
            nulls.append(null)
            # already summed over ranks: averaging identical values keeps them, and keeps
            # every rank's callback metrics in step
            self.log(f"val_loss/{scheme}", loss, sync_dist=True)
            self.log(f"val_null_loss/{scheme}", null, sync_dist=True)
        if losses:
            self.log("val_loss", torch.stack(losses).mean(), prog_bar=True, sync_dist=True)
            # the per-unit mean-rate model on the same scored entries: val_loss must beat it
            self.log("val_null_loss", torch.stack(nulls).mean(), sync_dist=True)
        if self._unit_sums is not None:
            units = self.trainer.strategy.reduce(self._unit_sums, reduce_op="sum")
            spiking = units[2] > 0
            if bool(spiking.any()):
                gain = (units[1] - units[0])[spiking] / (units[2][spiking] * math.log(2.0))
                self.log("val_unit_bps", gain.mean().float(), prog_bar=True, sync_dist=True)
        self._unit_sums = None
        self._val_sums = {}
        self.validated_step = self.global_step
        self._swap_weights()  # back to the live weights

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self):
        params = self._trainable if self._trainable is not None else list(self.parameters())
        params = [p for p in params if p.requires_grad]
        cfg = self.train_config
        precision = str(getattr(self._trainer, "precision", "32-true"))
        groups: list[nn.Parameter] | list[dict] = params
        if self._new_params is not None and cfg.shared_lr_scale != 1.0:
            new = [p for p in params if id(p) in self._new_params]
            shared = [p for p in params if id(p) not in self._new_params]
            groups = [
                {"params": group, "lr": lr}
                for group, lr in ((new, cfg.lr), (shared, cfg.lr * cfg.shared_lr_scale))
                if group
            ]
        decay = cfg.weight_decay
        if self._new_params is not None and cfg.finetune_weight_decay is not None:
            decay = cfg.finetune_weight_decay  # fine-tuning has its own
        if cfg.weight_decay_scope == "matrices":
            groups = decay_groups(groups, decay)
        optimizer = adamw(
            groups, lr=cfg.lr, weight_decay=decay, precision=precision, fused=cfg.fused_adamw
        )
        total = self.trainer.estimated_stepping_batches
        budget_s = cfg.max_minutes * 60 if cfg.max_minutes else None
        progress = schedule_progress(total_steps=total, budget_s=budget_s)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: one_cycle_factor(progress(step), cfg.warmup_fraction)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def decay_groups(params: list[nn.Parameter] | list[dict], weight_decay: float) -> list[dict]:
    """Parameter groups with ``weight_decay`` on matrices (two or more dimensions) and none
    on vectors (biases, normalisation gains); other group settings (``lr``) are kept."""
    grouped = params if params and isinstance(params[0], dict) else [{"params": params}]
    out = []
    for group in grouped:
        for decay in (True, False):
            chosen = [p for p in group["params"] if (p.ndim >= 2) == decay]
            if chosen:
                out.append({**group, "params": chosen, "weight_decay": weight_decay * decay})
    return out


def use_fused_adamw(params: list[nn.Parameter], precision: str) -> bool:
    """Fused AdamW (one kernel per parameter instead of a dozen element-wise passes) when
    every parameter is on CUDA or every one is on the CPU, except under 16-bit mixed
    precision, whose gradient scaler must unscale before clipping. On the CPU it is 3-4x
    faster than torch's default (``foreach``) AdamW: ~23 vs ~70-90 ms per step for the 12 M
    parameters of the ``paper`` preset on one Xeon core, a tenth of the training step; the
    same update up to float rounding."""
    if not params or precision == "16-mixed":
        return False
    kinds = {p.device.type for p in params}
    return kinds == {"cuda"} or kinds == {"cpu"}


def adamw(
    params: list[nn.Parameter] | list[dict],
    *,
    lr: float,
    weight_decay: float,
    precision: str,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """The training optimiser: AdamW, fused where :func:`use_fused_adamw` says so, or as
    ``fused`` says when given (``params``: parameters, or torch parameter groups)."""
    grouped = bool(params) and isinstance(params[0], dict)
    flat = [p for group in params for p in group["params"]] if grouped else params
    if fused is None:
        fused = use_fused_adamw(flat, precision)
    elif fused and precision == "16-mixed":
        raise SpikemaskError(
            "train.fused_adamw=true cannot train with 16-mixed precision (its gradient scaler "
            "must unscale before clipping); expected fused_adamw null or false, or another "
            "train.precision"
        )
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    if fused:
        # The flag tells a gradient scaler that step() unscales by itself; without a scaler
        # (fp32, bf16) it only makes Lightning refuse to clip gradients. Off, clipping works
        # and the step is the same fused kernel.
        optimizer._step_supports_amp_scaling = False
    return optimizer


def schedule_progress(*, total_steps: float, budget_s: float | None):
    """Fraction of training done at a step: by steps, or by wall-clock time when a time
    budget is set (whichever is further), so a run stopped by ``max_minutes`` still ends
    its schedule annealed. Step-only schedules are deterministic."""
    started = time.monotonic()

    def progress(step: int) -> float:
        done = step / total_steps if math.isfinite(total_steps) and total_steps > 0 else 0.0
        if budget_s:
            done = max(done, (time.monotonic() - started) / budget_s)
        return min(done, 1.0)

    return progress


def one_cycle_factor(
    progress: float, warmup: float, *, start: float = 0.04, end: float = 1e-3
) -> float:
    """One-cycle learning-rate multiplier: linear warm-up from ``start`` to 1 over the first
    ``warmup`` fraction, then cosine annealing down to ``end``."""
    if warmup > 0 and progress < warmup:
        return start + (1.0 - start) * progress / warmup
    tail = (progress - warmup) / max(1.0 - warmup, 1e-9)
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * min(tail, 1.0)))
