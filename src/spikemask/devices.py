"""Which torch device a model runs on: ``auto`` picks the GPU when there is one.

Used by :func:`spikemask.load_run`, ``spikemask evaluate --device``, ``spikemask finetune
--device`` and the evaluation API. Imports nothing beyond torch (no Lightning).
"""

from __future__ import annotations

import torch

from spikemask.errors import SpikemaskError

__all__ = ["free_cpu_threads", "lightning_accelerator", "resolve_device"]

_KINDS = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The torch device named by ``device``, checked to exist on this machine.

    Args:
        device: ``auto`` (or None): the first CUDA GPU when there is one, else Apple's MPS
            when available, else the CPU; or ``cpu``, ``cuda``, ``cuda:INDEX``, ``mps``, or
            a :class:`torch.device`.

    Returns:
        The device.

    Raises:
        SpikemaskError: An unknown device name, or a device this machine does not have.
    """
    if isinstance(device, torch.device):
        device = str(device)
    name = "auto" if device is None else str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    kind, _, index = name.partition(":")
    if kind not in _KINDS or kind == "auto" or (index and not index.isdigit()):
        raise SpikemaskError(
            f"unknown device {device!r}; expected auto, cpu, cuda, cuda:INDEX or mps"
        )
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not _mps_available():
            raise SpikemaskError(
                "device 'mps' is not available on this machine (no Apple GPU seen by torch); "
                "use --device cpu or auto"
            )
        return torch.device("mps")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise SpikemaskError(
            f"device {device!r}: no CUDA GPU is available to torch on this machine "
            f"(torch {torch.__version__}); use --device cpu or auto"
        )
    number = int(index) if index else 0
    if number >= count:
        raise SpikemaskError(
            f"device {device!r}: this machine has {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})"
        )
    return torch.device("cuda", number)


def lightning_accelerator(device: str | torch.device | None) -> tuple[str, str | int]:
    """(accelerator, devices) for Lightning's Trainer to train on ``device``.

    ``auto`` keeps Lightning's own choice (``("auto", "auto")``: every GPU there is, else the
    CPU); any other name is checked with :func:`resolve_device` first and gives one device.

    Raises:
        SpikemaskError: As :func:`resolve_device`, and for ``cuda:INDEX`` other than 0
            (select that GPU with ``CUDA_VISIBLE_DEVICES=INDEX`` and ``cuda`` instead).
    """
    if device is None or str(device).strip().lower() == "auto":
        return "auto", "auto"
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        if resolved.index:
            raise SpikemaskError(
                f"device {str(device)!r}: training picks GPUs through CUDA_VISIBLE_DEVICES; "
                f"run with CUDA_VISIBLE_DEVICES={resolved.index} and --device cuda"
            )
        return "gpu", 1
    return resolved.type, 1


def free_cpu_threads(threads: int | str = "auto") -> int:
    """CPU threads for torch: ``auto`` = ``OMP_NUM_THREADS`` when set, else the cores not
    already busy (at least 1).

    Busy cores are the 1-minute load average, rounded. On a shared machine two threads
    fighting a neighbour for two cores run slower than one thread alone (measured on 2
    cores at load 3.7: every evaluation task in 106 s with 2 threads, 32 s with 1).

    Raises:
        SpikemaskError: ``threads`` is neither ``auto`` nor a positive integer.
    """
    if str(threads).strip().lower() == "auto":
        # one rule for training and evaluation: OMP_NUM_THREADS when set, else the free cores
        from spikemask.training.speed import default_threads

        return default_threads()
    try:
        number = int(str(threads))
    except ValueError:
        number = 0
    if number < 1:
        raise SpikemaskError(f"threads {threads!r}; expected 'auto' or a positive integer")
    return number
