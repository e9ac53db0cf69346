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
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from spikemask.config import RunConfig
from spikemask.data.regions import RegionVocabulary
from spikemask.errors import SpikemaskError
from spikemask.masking import SCHEMES
from spikemask.models import build_model

__all__ = ["Checkpoint", "SessionInfo", "load_checkpoint", "save_checkpoint"]

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


def _write_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(folder: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` into ``folder`` (created; existing files replaced atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = checkpoint.config.to_dict()
    vocab = _vocab_dict(checkpoint.sessions, checkpoint.regions)
    digest = _digest(config, vocab)
    tensors = {
        k: v.detach().to("cpu").contiguous() for k, v in checkpoint.model.state_dict().items()
    }

    def write_json(values: dict[str, Any]):
        return lambda tmp: Path(tmp).write_text(json.dumps(values, indent=1))

    _write_atomic(folder / CONFIG, write_json(config))
    _write_atomic(folder / VOCAB, write_json(vocab))
    _write_atomic(folder / STATE, write_json(checkpoint.state))
    metadata = {"format": FORMAT, "digest": digest}
    _write_atomic(folder / WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return folder


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SpikemaskError(f"checkpoint file {str(path)!r} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SpikemaskError(f"checkpoint file {str(path)!r} is corrupted ({err})") from None


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
    sessions = {
        s["session_id"]: SessionInfo(
            s["session_id"], tuple(s["unit_ids"]), tuple(s["unit_regions"])
        )
        for s in vocab.get("sessions", [])
    }
    regions = RegionVocabulary.from_list(vocab.get("regions", []))
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
    return tensors
