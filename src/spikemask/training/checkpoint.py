"""Model checkpoints: safetensors weights + resolved config + vocabularies.

A checkpoint is a folder::

    model.safetensors   weights (tensors only; metadata: format, config digest)
    config.json         the resolved RunConfig
    vocab.json          session ids with their unit counts and unit ids, region vocabulary
    state.json          epoch, step, validation loss (informative)

Every file is written to a temporary name and renamed, so a crash never leaves a half-written
file; the weights carry a digest of the config and vocabularies they belong to, so a folder
whose files do not match is refused. Loading never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from spikemask.atomic import write_atomic
from spikemask.config import RunConfig
from spikemask.data.regions import RegionVocabulary
from spikemask.errors import SpikemaskError
from spikemask.masking import SCHEMES
from spikemask.models import build_model

__all__ = [
    "Checkpoint",
    "SessionInfo",
    "check_finite",
    "load_checkpoint",
    "load_run_checkpoint",
    "save_checkpoint",
]

FORMAT = "spikemask-checkpoint-1"
WEIGHTS, CONFIG, VOCAB, STATE = "model.safetensors", "config.json", "vocab.json", "state.json"


@dataclass(frozen=True)
class SessionInfo:
    """What a model knows about a session it has layers for."""

    session_id: str
    unit_ids: tuple[str, ...]
    unit_regions: tuple[str, ...]

    @property
    def num_units(self) -> int:
        return len(self.unit_ids)


@dataclass
class Checkpoint:
    """A model with everything needed to use it on its sessions."""

    model: nn.Module
    config: RunConfig
    sessions: dict[str, SessionInfo]
    regions: RegionVocabulary
    state: dict[str, Any] = field(default_factory=dict)


def _vocab_dict(sessions: dict[str, SessionInfo], regions: RegionVocabulary) -> dict[str, Any]:
    return {
        "sessions": [
            {
                "session_id": s.session_id,
                "unit_ids": list(s.unit_ids),
                "unit_regions": list(s.unit_regions),
            }
            for s in sessions.values()
        ],
        "regions": regions.to_list(),
        "prompts": list(SCHEMES),
    }


def _digest(config: dict[str, Any], vocab: dict[str, Any]) -> str:
    text = json.dumps({"config": config, "vocab": vocab}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def check_finite(
    tensors: Mapping[str, torch.Tensor],
    where: str,
    action: str = "refusing to write a checkpoint of a diverged model",
) -> None:
    """Raise :class:`SpikemaskError` naming the first tensor with a NaN or infinite value."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise SpikemaskError(
                f"{where}: weight {name!r} holds non-finite values (NaN or inf); {action}"
            )


def save_checkpoint(folder: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` into ``folder`` (created; existing files replaced atomically).

    Raises:
        SpikemaskError: A weight holds NaN or inf (nothing is written then).
    """
    folder = Path(folder)
    tensors = {
        k: v.detach().to("cpu").contiguous() for k, v in checkpoint.model.state_dict().items()
    }
    check_finite(tensors, f"checkpoint {str(folder)!r}")
    folder.mkdir(parents=True, exist_ok=True)
    config = checkpoint.config.to_dict()
    vocab = _vocab_dict(checkpoint.sessions, checkpoint.regions)
    digest = _digest(config, vocab)

    def write_json(values: dict[str, Any]):
        return lambda tmp: Path(tmp).write_text(json.dumps(values, indent=1))

    write_atomic(folder / CONFIG, write_json(config))
    write_atomic(folder / VOCAB, write_json(vocab))
    write_atomic(folder / STATE, write_json(checkpoint.state))
    metadata = {"format": FORMAT, "digest": digest}
    write_atomic(folder / WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return folder


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SpikemaskError(f"checkpoint file {str(path)!r} is missing")
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SpikemaskError(f"checkpoint file {str(path)!r} is corrupted ({err})") from None
    if not isinstance(values, dict):
        raise SpikemaskError(
            f"checkpoint file {str(path)!r} is corrupted (expected a JSON object, got "
            f"{type(values).__name__})"
        )
    return values


def _session_infos(vocab: dict[str, Any], path: Path) -> dict[str, SessionInfo]:
    try:
        return {
            s["session_id"]: SessionInfo(
                str(s["session_id"]), tuple(s["unit_ids"]), tuple(s["unit_regions"])
            )
            for s in vocab.get("sessions", [])
        }
    except (KeyError, TypeError) as err:
        raise SpikemaskError(
            f"checkpoint file {str(path)!r} is corrupted (each entry of 'sessions' needs "
            f"session_id, unit_ids and unit_regions; {type(err).__name__}: {err})"
        ) from None


def load_checkpoint(folder: str | Path, *, map_location: str = "cpu") -> Checkpoint:
    """Rebuild the model of a checkpoint folder from the folder alone.

    Raises:
        SpikemaskError: Missing or corrupted files, weights that belong to another config
            or vocabulary, or weights that do not fit the rebuilt model.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SpikemaskError(f"checkpoint folder {str(folder)!r} does not exist")
    config_values = _read_json(folder / CONFIG)
    vocab = _read_json(folder / VOCAB)
    state = _read_json(folder / STATE) if (folder / STATE).is_file() else {}
    config = RunConfig.from_dict(config_values, where=str(folder / CONFIG))
    sessions = _session_infos(vocab, folder / VOCAB)
    try:
        regions = RegionVocabulary.from_list(vocab.get("regions", []))
    except (TypeError, ValueError) as err:
        raise SpikemaskError(
            f"checkpoint file {str(folder / VOCAB)!r} is corrupted (bad 'regions': {err})"
        ) from None
    tensors = _load_weights(folder / WEIGHTS, _digest(config_values, vocab))
    model = build_model(
        config.model,
        sessions={sid: info.num_units for sid, info in sessions.items()},
        num_prompts=len(SCHEMES),
    )
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise SpikemaskError(
            f"checkpoint {str(folder)!r}: weights do not fit the model its config describes "
            f"({first})"
        ) from None
    model.to(map_location).eval()
    return Checkpoint(model=model, config=config, sessions=sessions, regions=regions, state=state)


def load_run_checkpoint(run: str | Path, which: str = "best") -> Checkpoint:
    """The ``best`` or ``last`` checkpoint of a run folder (or a checkpoint folder itself).

    ``hf://ORG/NAME[@revision]`` loads the checkpoint pushed there (see :mod:`spikemask.hub`);
    ``which`` does not apply to it (a Hub repository holds the one checkpoint pushed).
    Lives here, not with fine-tuning, so that loading a model never imports Lightning.
    """
    if isinstance(run, str) and run.startswith("hf://"):
        from spikemask.hub import download_run

        return load_checkpoint(download_run(run))
    run = Path(run).expanduser()
    if which not in ("best", "last"):
        raise SpikemaskError(f"which={which!r}; expected 'best' or 'last'")
    folder = run if (run / "model.safetensors").is_file() else run / "checkpoints" / which
    if not run.exists():
        raise SpikemaskError(f"run folder {str(run)!r} does not exist")
    if not folder.is_dir():
        raise SpikemaskError(
            f"{str(run)!r} holds no {which!r} checkpoint (expected {str(folder)!r}); is it a "
            "spikemask run folder whose training finished at least one epoch?"
        )
    return load_checkpoint(folder)


def _load_weights(path: Path, digest: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise SpikemaskError(f"checkpoint file {str(path)!r} is missing")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise SpikemaskError(f"checkpoint file {str(path)!r} is corrupted ({err})") from None
    if metadata.get("format") != FORMAT:
        raise SpikemaskError(
            f"{str(path)!r} is not a spikemask checkpoint (format {metadata.get('format')!r}; "
            f"expected {FORMAT!r})"
        )
    if metadata.get("digest") != digest:
        raise SpikemaskError(
            f"checkpoint {str(path.parent)!r}: the weights belong to a different config or "
            "vocabulary than config.json / vocab.json (mismatched or partly overwritten folder)"
        )
    check_finite(
        tensors,
        f"checkpoint {str(path.parent)!r}",
        "the model diverged before it was saved; use another checkpoint or retrain",
    )
    return tensors
