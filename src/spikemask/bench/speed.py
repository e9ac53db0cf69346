"""``spikemask bench speed``: training throughput through the real training loop.

On the machine it runs on it measures the device's fp32 and bf16 matmul peak (timed large
matmuls, the best of one measurement before every block), and trains one or two settings
(A and B) on a synthetic session made in-process through
:func:`spikemask.training.run.fit` (Lightning's ``Trainer.fit``, as ``spikemask train``
runs it with ``--quiet``). The two settings take turns in short timed
blocks (A, B, A, B, ...) so their ratio survives a machine whose load changes. Each block
is one ``fit`` of ``warmup_steps + block_steps`` steps; only the last ``block_steps`` are
timed (the device is synchronised at both ends).

Reported per setting: trials/s, tokens/s (time-bin tokens), achieved FLOP/s from a FLOP
count of one training step (``torch.utils.flop_counter``: forward and backward of the
model), its fraction of the measured matmul peak of that precision (for bf16: of the
faster of the bf16 and fp32 peaks, see :func:`reference_peak`), and peak memory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from spikemask.config import RunConfig, load_config
from spikemask.data.session import Session, TrialSet
from spikemask.errors import SpikemaskError

__all__ = [
    "SpeedConfig",
    "SpeedSetting",
    "count_step_flops",
    "matmul_peak",
    "reference_peak",
    "run_speed_benchmark",
    "synthetic_session",
]


@dataclass(frozen=True)
class SpeedSetting:
    """One side of the comparison.

    Attributes:
        label: Name in the table.
        sets: ``section.key=value`` overrides on top of the preset (as ``--set``).
    """

    label: str
    sets: tuple[str, ...] = ()


@dataclass(frozen=True)
class SpeedConfig:
    """What to measure.

    Attributes:
        preset: ``small`` or ``paper``.
        units / bins / batch_size: The synthetic session's shape and the trials per batch.
        settings: One or two :class:`SpeedSetting` (A, then B).
        blocks: Timed blocks per setting.
        block_steps: Timed steps per block.
        warmup_steps: Untimed steps at the start of every block.
        masking: Masking preset trained with.
        accelerator: ``auto``, ``cpu`` or ``cuda`` (``gpu`` is accepted too).
        peak_size: Matrix size of the peak matmuls (0: by device, 1024 CPU, 8192 GPU).
        seed: Seed of the synthetic data and of training.
    """

    preset: str = "small"
    units: int = 668
    bins: int = 100
    batch_size: int = 16
    settings: tuple[SpeedSetting, ...] = (SpeedSetting("default"),)
    blocks: int = 3
    block_steps: int = 10
    warmup_steps: int = 3
    masking: str = "mtm"
    accelerator: str = "auto"
    peak_size: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("units", "bins", "batch_size", "blocks", "block_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpikemaskError(f"bench speed: {name}={value!r}; expected a positive integer")
        if self.units < 4 or self.bins < 2:
            raise SpikemaskError("bench speed: needs at least 4 units and 2 bins")
        if self.warmup_steps < 1:
            raise SpikemaskError(f"bench speed: warmup_steps={self.warmup_steps}; expected >= 1")
        if not 1 <= len(self.settings) <= 2:
            raise SpikemaskError("bench speed: expected one or two settings (A, B)")
        if self.accelerator not in ("auto", "cpu", "cuda", "gpu"):
            raise SpikemaskError(
                f"bench speed: device {self.accelerator!r}; expected auto, cpu or cuda (or gpu)"
            )


def synthetic_session(units: int, bins: int, trials: int, *, seed: int = 0) -> Session:
    """A Poisson session of ``trials`` training trials (and a few validation trials),
    its units spread over four labelled regions (so region masking applies).

    At most 64 distinct trials are drawn and repeated: speed does not depend on the
    counts, and a batch of 256 trials of 668 units would otherwise take seconds to draw.
    """
    rng = np.random.default_rng(seed)
    rates = rng.gamma(0.5, 0.1, size=(1, 1, units))  # (1, 1, N) counts per bin

    def split(count: int, start: int) -> TrialSet:
        distinct = rng.poisson(rates, size=(min(count, 64), bins, units)).astype(np.uint8)
        spikes = np.resize(distinct, (count, bins, units))  # (K, T, N), repeats the draws
        return TrialSet(spikes=spikes, trial_index=np.arange(start, start + count))

    num_val = max(2, min(trials // 16, 64))
    return Session(
        session_id="bench-speed",
        bin_size_s=0.01,
        window_start_s=0.0,
        align_event="stimOn_times",
        unit_ids=tuple(f"u{i}" for i in range(units)),
        unit_regions=tuple(("VISp", "CA1", "MOs", "LGd")[i % 4] for i in range(units)),
        splits={"train": split(trials, 0), "val": split(num_val, trials)},
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, *, repeats: int = 10) -> float:
    """Best FLOP/s of ``size`` x ``size`` matmuls in ``dtype`` on ``device``."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    a @ b  # warm-up (kernel selection)
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def step_inputs(config: RunConfig, session: Session, num_trials: int) -> tuple[Any, dict]:
    """A fresh MtM training module of ``config`` for ``session`` and a batch of its first
    ``num_trials`` training trials (units in 4 regions by index), as one training step
    takes them: ``module._loss_terms(batch, module.mixture.sample(...))``."""
    from spikemask.masking import SCHEMES
    from spikemask.models import build_model
    from spikemask.training.module import MtMModule

    model = build_model(
        config.model, sessions={session.session_id: session.num_units}, num_prompts=len(SCHEMES)
    )
    module = MtMModule(model, masking=config.masking, train=config.train)
    spikes = session.split("train").spikes[:num_trials].astype(np.float32)  # (B, T, N)
    region_ids = torch.arange(session.num_units) % 4
    batch = {
        "spikes": torch.from_numpy(spikes),
        "session_id": session.session_id,
        "region_ids": region_ids,
    }
    return module, batch


def count_step_flops(config: RunConfig, session: Session, batch_size: int) -> float:
    """FLOPs of one training step of ``batch_size`` trials: forward and backward of the
    model, counted by ``torch.utils.flop_counter.FlopCounterMode`` on one trial on the CPU
    and multiplied by ``batch_size`` (every operation acts on each trial alone; the count
    does not depend on the device or precision)."""
    from torch.utils.flop_counter import FlopCounterMode

    from spikemask.training.module import step_generator

    module, batch = step_inputs(config, session, 1)
    spec = module.mixture.sample(
        tuple(batch["spikes"].shape), generator=step_generator(0), region_ids=batch["region_ids"]
    )
    with FlopCounterMode(display=False) as counter:
        total, _ = module._loss_terms(batch, spec)
        total.backward()
    return float(counter.get_total_flops()) * batch_size


class _StepTimer(Callback):
    """Times the steps after the first ``warmup`` of one fit."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup = warmup
        self.device = device
        self.start: float | None = None
        self.seconds = 0.0
        self.steps = 0
        self.threads = 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.start is None and trainer.global_step >= self.warmup:
            _sync(self.device)
            self.start = time.perf_counter()
            self.threads = torch.get_num_threads()
        elif self.start is not None and trainer.global_step > self.warmup:
            _sync(self.device)
            self.seconds = time.perf_counter() - self.start
            self.steps = trainer.global_step - self.warmup


@dataclass
class _Side:
    """One setting's state across blocks."""

    setting: SpeedSetting
    config: RunConfig
    model: torch.nn.Module
    session: Session
    flop_per_batch: float = 0.0
    seconds: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    cuda_peak_bytes: int = 0
    threads: int = 0
    peaks: dict[str, float] = field(default_factory=dict)


def _side_config(bench: SpeedConfig, setting: SpeedSetting) -> RunConfig:
    from spikemask.masking import MaskingConfig

    base = [
        f"data.batch_size={bench.batch_size}",
        f"train.accelerator={bench.accelerator}",
        f"train.seed={bench.seed}",
    ]
    config = load_config(preset=bench.preset, sets=[*base, *setting.sets])
    config.masking = MaskingConfig.preset(bench.masking)
    config.train.max_steps = bench.warmup_steps + bench.block_steps
    config.train.max_epochs = None
    config.train.max_minutes = None
    config.train.progress_bar = False
    config.train.tensorboard = False
    config.train.val_every_n_steps = 10**9  # only the final validation, outside the timing
    config.train.checkpoint_every_n_steps = None
    config.train.checkpoint_every_minutes = None
    return config


def _run_block(side: _Side, bench: SpeedConfig, device: torch.device) -> None:
    from spikemask.data.regions import RegionVocabulary
    from spikemask.training.run import fit

    session = side.session
    timer = _StepTimer(bench.warmup_steps, device)
    folder = Path(tempfile.mkdtemp(prefix="spikemask-bench-speed-"))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        fit(
            side.model,
            [session],
            RegionVocabulary.from_sessions([session]),
            folder / "run",
            config=side.config,
            record={"kind": "bench-speed"},
            callbacks=[timer],
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    side.threads = timer.threads
    if timer.steps < 1:
        raise SpikemaskError("bench speed: no timed step finished; raise --block-steps")
    side.seconds.append(timer.seconds)
    side.steps.append(timer.steps)
    if device.type == "cuda":
        side.cuda_peak_bytes = max(side.cuda_peak_bytes, torch.cuda.max_memory_allocated(device))


def _device(accelerator: str) -> torch.device:
    if accelerator in ("cuda", "gpu") and not torch.cuda.is_available():
        raise SpikemaskError(f"bench speed: --device {accelerator}, but torch sees no CUDA GPU")
    use_cuda = accelerator in ("auto", "cuda", "gpu") and torch.cuda.is_available()
    return torch.device("cuda" if use_cuda else "cpu")


def _measure_peaks(side: _Side, device: torch.device, size: int) -> None:
    """The matmul peaks with the setting's torch threads, best of every measurement so far
    (one before each block: on a shared machine a single one may fall while a neighbour
    is busy)."""
    from spikemask.training.speed import torch_threads

    with torch_threads(side.config.train.num_threads):
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            side.peaks[name] = max(side.peaks.get(name, 0.0), matmul_peak(device, dtype, size))


def reference_peak(precision: str, peaks: dict[str, float]) -> float:
    """The matmul rate a setting's FLOP/s is a fraction of: the fp32 peak for fp32, and for
    bf16 the faster of the two. A CPU without bf16 instructions emulates bf16 matmuls far
    below its fp32 rate (1 against ~90 GFLOP/s on an AMD EPYC Zen 3), and there the
    machine's limit for a bf16 run is still the fp32 rate."""
    if precision.startswith("bf16"):
        return max(peaks["bf16"], peaks["fp32"])
    return peaks["fp32"]


def _summary(side: _Side, bench: SpeedConfig) -> dict:
    from spikemask.training.speed import resolve_precision

    flops = side.flop_per_batch
    trials = side.config.data.batch_size * side.config.train.accumulate_grad_batches
    per_step = [s / n for s, n in zip(side.seconds, side.steps, strict=True)]
    step_s = statistics.median(per_step)
    # the training blocks have already warned about an emulated bf16, once
    precision = resolve_precision(str(side.config.train.precision), bench.accelerator, warn=False)
    peak = reference_peak(precision, side.peaks)
    achieved = flops * side.config.train.accumulate_grad_batches / step_s
    return {
        "label": side.setting.label,
        "sets": list(side.setting.sets),
        "batch_size": side.config.data.batch_size,
        "accumulate_grad_batches": side.config.train.accumulate_grad_batches,
        "torch_threads": side.threads,
        "precision": precision,
        "compile": side.config.train.compile,
        "step_s_per_block": per_step,
        "step_s": step_s,
        "trials_per_s": trials / step_s,
        "tokens_per_s": trials * bench.bins / step_s,
        "flop_per_step": flops * side.config.train.accumulate_grad_batches,
        "flop_per_s": achieved,
        "peak_flop_per_s": peak,
        "fraction_of_peak": achieved / peak,
        "cuda_max_allocated_bytes": side.cuda_peak_bytes or None,
    }


def run_speed_benchmark(
    bench: SpeedConfig, out: str | Path, *, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Measure, write ``out/results.json`` and ``out/table.md``, return the results."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = _device(bench.accelerator)
    # the settings first: a bad override fails before any measurement
    sides = [_make_side(bench, setting, index) for index, setting in enumerate(bench.settings)]
    size = bench.peak_size or (8192 if device.type == "cuda" else 1024)
    for block in range(bench.blocks):
        for side in sides:
            _measure_peaks(side, device, size)
            with _quiet_lightning_info():
                _run_block(side, bench, device)
            log(
                f"block {block + 1}/{bench.blocks} {side.setting.label}: "
                f"{side.seconds[-1] / side.steps[-1] * 1e3:.1f} ms/step"
            )
    peaks = {name: max(side.peaks[name] for side in sides) for name in ("fp32", "bf16")}
    log(
        f"matmul peak on {device} (best of {bench.blocks}): fp32 {peaks['fp32'] / 1e9:.1f} "
        f"GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s"
    )
    results = {
        "machine": _machine(device),
        "bench": {**asdict(bench), "settings": [asdict(s) for s in bench.settings]},
        "peak_flop_per_s": peaks,
        "settings": [_summary(side, bench) for side in sides],
        "cpu_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    if len(sides) == 2:
        a, b = sides
        ratios = [
            (sa / na) / (sb / nb)
            for sa, na, sb, nb in zip(a.seconds, a.steps, b.seconds, b.steps, strict=True)
        ]
        results["speedup_b_over_a"] = {"per_block": ratios, "median": statistics.median(ratios)}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "table.md").write_text(speed_table(results))
    return results


def _make_side(bench: SpeedConfig, setting: SpeedSetting, index: int) -> _Side:
    from spikemask.masking import SCHEMES
    from spikemask.models import build_model
    from spikemask.training.run import init_unit_rates

    config = _side_config(bench, setting)
    batch = config.data.batch_size
    steps = config.train.accumulate_grad_batches * (bench.warmup_steps + bench.block_steps)
    session = synthetic_session(bench.units, bench.bins, batch * min(steps, 8), seed=bench.seed)
    torch.manual_seed(bench.seed + index)
    model = build_model(
        config.model, sessions={session.session_id: session.num_units}, num_prompts=len(SCHEMES)
    )
    init_unit_rates(model, [session])
    side = _Side(setting, config, model, session)
    side.flop_per_batch = count_step_flops(config, session, batch)
    return side


@contextlib.contextmanager
def _quiet_lightning_info() -> Iterator[None]:
    """Lightning's per-fit notes ("GPU available", "max_steps reached") are noise here."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _machine(device: torch.device) -> dict[str, Any]:
    import os
    import platform

    info: dict[str, Any] = {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return info


def speed_table(results: dict[str, Any]) -> str:
    """The markdown table of :func:`run_speed_benchmark`'s results."""
    bench = results["bench"]
    peaks = results["peak_flop_per_s"]
    lines = [
        f"{bench['preset']} preset, {bench['units']} units x {bench['bins']} bins, batch "
        f"{bench['batch_size']}, {bench['masking']} masking, on {results['machine']['device']} "
        f"({results['machine'].get('gpu') or results['machine']['cpu']}); best matmul peak "
        f"fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s",
        "",
        "| setting | precision | compile | threads | ms/step | trials/s | tokens/s | GFLOP/s | "
        "peak GFLOP/s | of peak | CUDA max alloc. |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["settings"]:
        memory = row["cuda_max_allocated_bytes"]
        lines.append(
            f"| {row['label']} | {row['precision']} | {'on' if row['compile'] else 'off'} | "
            f"{row['torch_threads']} | {row['step_s'] * 1e3:.1f} | {row['trials_per_s']:.1f} | "
            f"{row['tokens_per_s']:.0f} | {row['flop_per_s'] / 1e9:.1f} | "
            f"{row['peak_flop_per_s'] / 1e9:.1f} | {100 * row['fraction_of_peak']:.0f} % | "
            f"{f'{memory / 2**30:.2f} GiB' if memory else '-'} |"
        )
    lines.append("")
    lines.append(f"CPU max RSS of the process: {results['cpu_max_rss_bytes'] / 2**20:.0f} MiB.")
    if "speedup_b_over_a" in results:
        speedup = results["speedup_b_over_a"]
        blocks = ", ".join(f"{r:.2f}" for r in speedup["per_block"])
        lines.append(f"B / A speed (paired blocks): median {speedup['median']:.2f}x ({blocks}).")
    return "\n".join(lines) + "\n"


def parse_setting(label: str | None, sets: Sequence[str] | None, default: str) -> SpeedSetting:
    """A :class:`SpeedSetting` from CLI values (label defaults to the overrides)."""
    sets = tuple(sets or ())
    return SpeedSetting(label or (" ".join(sets) if sets else default), sets)
