"""Hardware settings of a training run: precision, CPU threads, compilation, validation
interval.

Each function resolves one ``train.*`` setting left on its default into what this machine
should use; :mod:`spikemask.training.run` applies them.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import torch
from torch import nn

from spikemask.errors import SpikemaskWarning

__all__ = [
    "CPU_BF16_BY_DEFAULT",
    "compile_encoder",
    "cpu_supports_bf16",
    "free_cores",
    "resolve_precision",
    "torch_threads",
    "uses_cuda",
    "validation_interval",
]

#: Whether ``precision=auto`` trains in bf16 autocast on CPUs with bf16 instructions. On:
#: on a real session's validation split bf16 and fp32 models score within 0.004 bits per
#: spike of each other on every task, and bf16 steps are 1.4-1.6x faster (BENCHMARKS.md §8).
CPU_BF16_BY_DEFAULT = True


@cache
def cpu_supports_bf16() -> bool:
    """Whether the CPU has native bf16 matrix instructions (``avx512_bf16`` or AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def uses_cuda(accelerator: str) -> bool:
    """Whether Lightning's ``accelerator`` setting trains on a CUDA GPU here."""
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def resolve_precision(value: str, accelerator: str = "auto", *, warn: bool = True) -> str:
    """Lightning's precision for ``train.precision``.

    ``auto`` is bf16 autocast on GPUs that support it (and on CPUs with bf16 instructions
    when :data:`CPU_BF16_BY_DEFAULT`), else 32-bit. An explicit ``bf16-mixed`` on a CPU
    without bf16 instructions warns, unless ``warn`` is false (a caller that only reports
    the setting, after training has already warned).
    """
    if value != "auto":
        if (
            warn
            and value == "bf16-mixed"
            and not uses_cuda(accelerator)
            and not cpu_supports_bf16()
        ):
            _warn_slow_cpu_bf16()
        return value if value != "32" else "32-true"
    if uses_cuda(accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    if CPU_BF16_BY_DEFAULT and cpu_supports_bf16():
        return "bf16-mixed"
    return "32-true"


def _warn_slow_cpu_bf16() -> None:
    # imported here: evaluation imports this module and must not import Lightning
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:
        return
    warnings.warn(
        "train.precision=bf16-mixed on a CPU without bf16 instructions (avx512_bf16 or AMX): "
        "bf16 matrix products are emulated there and a training step is about 8x slower than "
        "in fp32 (BENCHMARKS.md §8); train.precision=auto picks fp32 on this CPU",
        SpikemaskWarning,
        stacklevel=3,
    )


def free_cores() -> int:
    """Cores this process may run on that other work is not using (at least 1).

    The cores allowed by ``os.sched_getaffinity`` minus the 1-minute load average, rounded:
    two threads next to a busy neighbour run several times slower than one thread alone.
    """
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        allowed = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return max(1, min(allowed, round(allowed - load)))


def default_threads() -> int:
    """The thread count when none is configured: ``OMP_NUM_THREADS`` when the user set it
    (the usual way to pin a job's threads, e.g. several jobs side by side), else
    :func:`free_cores`."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return free_cores()


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[int]:
    """Inside, torch uses ``num_threads`` CPU threads (``None``: :func:`default_threads`);
    the previous count is restored on exit. Yields the count used."""
    previous = torch.get_num_threads()
    count = num_threads if num_threads is not None else default_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)


def compile_encoder(model: nn.Module) -> None:
    """``torch.compile`` the model's shared encoder for training, in place (its parameter
    names and checkpoints do not change).

    The per-session layers stay eager (compiling them would compile once per session), and
    so does the encoder in eval mode: validation is a small share of the time, and would
    otherwise compile graphs of its own.
    """
    encoder = model.encoder
    if getattr(encoder, "_spikemask_compiled", False):
        return
    eager = encoder.forward
    compiled = torch.compile(eager)

    def forward(*args, **kwargs):
        return compiled(*args, **kwargs) if encoder.training else eager(*args, **kwargs)

    encoder.forward = forward
    encoder._spikemask_compiled = True


def validation_interval(val_every_n_steps: int | None, batches_per_epoch: int, accumulate: int):
    """Lightning's ``(val_check_interval, check_val_every_n_epoch)``.

    Every ``val_every_n_steps`` optimiser steps, counted across epochs, but no more often
    than once per epoch; ``None`` keeps Lightning's default (the end of every epoch).
    """
    if val_every_n_steps is None:
        return None, 1
    return max(val_every_n_steps * accumulate, batches_per_epoch), None
