"""Using a trained model from Python: load a run, predict log-rates, get latents.

Example::

    import spikemask
    model = spikemask.load_run("runs/mtm")
    session = spikemask.load_session("data/my-session")
    log_rates = model.predict(session, split="test", masking="neuron")   # (K, T, N)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spikemask.data.session import Session
from spikemask.devices import resolve_device
from spikemask.errors import SpikemaskError
from spikemask.masking import SCHEMES, MaskingMixture, MaskSpec
from spikemask.models.config import ModelOutput
from spikemask.training.checkpoint import Checkpoint, load_run_checkpoint

__all__ = ["TrainedModel", "load_run"]


def load_run(
    run: str | Path, *, which: str = "best", device: str | torch.device = "auto"
) -> TrainedModel:
    """Load the ``best`` (default) or ``last`` checkpoint of a run folder.

    ``run`` may also be ``hf://ORG/NAME[@revision]``: the checkpoint pushed to the Hugging
    Face Hub with ``spikemask push`` (downloaded or taken from the cache; needs the ``hub``
    extra), verified like a local one.

    Args:
        run: Run folder, checkpoint folder or ``hf://`` id.
        which: ``best`` or ``last`` checkpoint.
        device: Where the model runs: ``auto`` (default; the GPU when there is one, else the
            CPU), ``cpu``, ``cuda``, ``cuda:INDEX`` or ``mps``. Outputs always come back as
            CPU tensors / numpy arrays.

    Raises:
        SpikemaskError: A missing or corrupted run, an unknown device or one this machine
            does not have (checked before the checkpoint is read).
    """
    resolved = resolve_device(device)
    return TrainedModel(load_run_checkpoint(run, which), device=resolved)


class TrainedModel:
    """A trained model and the sessions / regions it knows, in evaluation mode.

    Args:
        checkpoint: The loaded checkpoint (its model is moved to ``device``).
        device: ``auto`` (the GPU when there is one), ``cpu``, ``cuda``, ``cuda:INDEX``,
            ``mps`` or a :class:`torch.device`; see :func:`~spikemask.devices.resolve_device`.
    """

    def __init__(self, checkpoint: Checkpoint, *, device: str | torch.device = "auto") -> None:
        self.checkpoint = checkpoint
        self.device = resolve_device(device)
        self.model = checkpoint.model.to(self.device).eval()

    @property
    def session_ids(self) -> list[str]:
        return list(self.checkpoint.sessions)

    @property
    def trained_schemes(self) -> tuple[str, ...]:
        return tuple(self.checkpoint.config.masking.schemes)

    def prompt_for(self, scheme: str) -> int:
        """Prompt index for a task: the scheme's own prompt when the model was trained with
        it, else the prompt of the model's first training scheme (an untrained prompt
        embedding would only add noise)."""
        if scheme not in SCHEMES:
            raise SpikemaskError(f"unknown scheme {scheme!r}; expected one of {SCHEMES}")
        chosen = scheme if scheme in self.trained_schemes else self.trained_schemes[0]
        return SCHEMES.index(chosen)

    def check_session(self, session: Session) -> None:
        """The model must have layers for this session, with the same units."""
        info = self.checkpoint.sessions.get(session.session_id)
        if info is None:
            known = ", ".join(repr(s) for s in self.session_ids[:5])
            more = "" if len(self.session_ids) <= 5 else f" (+{len(self.session_ids) - 5} more)"
            raise SpikemaskError(
                f"session {session.session_id!r} is not in this model (it has {known}{more}); "
                "fine-tune the model on it first (spikemask finetune)"
            )
        if info.num_units != session.num_units:
            raise SpikemaskError(
                f"session {session.session_id!r} has {session.num_units} units but the model's "
                f"layers for it have {info.num_units}; expected the same units as in training"
            )
        if info.unit_ids != session.unit_ids:
            raise SpikemaskError(
                f"session {session.session_id!r}: unit ids differ from those the model was "
                "trained with (same count, different units or order)"
            )

    def region_ids(self, session: Session) -> torch.Tensor:
        """(N,) region index of every unit in the model's region vocabulary (-1 unlabelled)."""
        regions = self.checkpoint.regions.extend(session.unit_regions)
        return torch.as_tensor(regions.encode(session.unit_regions), dtype=torch.long)

    @torch.inference_mode()
    def forward(
        self,
        spikes: torch.Tensor | np.ndarray,
        session: Session,
        *,
        hidden: torch.Tensor | None = None,
        prompt: int | None = None,
        causal: bool = False,
        batch_size: int = 256,
    ) -> Iterator[ModelOutput]:
        """Run the model over (M, T, N) inputs in chunks of ``batch_size`` rows.

        ``hidden`` (M, T, N) bool zeroes the withheld entries first (and is passed to a
        model with ``hidden_flags``). Yields one
        :class:`ModelOutput` per chunk (on the CPU).
        """
        self.check_session(session)
        spikes = torch.as_tensor(np.asarray(spikes, dtype=np.float32))
        region_ids = self.region_ids(session).to(self.device)
        for start in range(0, spikes.shape[0], batch_size):
            chunk = spikes[start : start + batch_size].to(self.device)
            chunk_hidden = None
            if hidden is not None:
                chunk_hidden = torch.as_tensor(hidden[start : start + batch_size]).to(self.device)
                chunk = chunk.masked_fill(chunk_hidden, 0.0)
            out = self.model(
                chunk,
                session_id=session.session_id,
                prompt=prompt,
                causal=causal,
                region_ids=region_ids,
                hidden=chunk_hidden,
            )
            yield ModelOutput(
                log_rates=out.log_rates.float().cpu(), latents=out.latents.float().cpu()
            )

    def predict(
        self,
        session: Session,
        *,
        split: str = "test",
        masking: str | MaskSpec | None = None,
        seed: int = 0,
        batch_size: int = 256,
        as_pynapple: bool | str = False,
    ) -> np.ndarray | Any:
        """Predicted log-rates (K, T, N) for the trials of ``split``.

        Args:
            masking: None (nothing hidden; the prompt of the model's first scheme), a scheme
                name (a mask drawn with ``seed``, the scheme's prompt and attention), or a
                prepared :class:`MaskSpec` over (K, T, N).
            as_pynapple: False (a numpy array), True or ``"perievent"`` (a pynapple
                ``TsdTensor`` (T, K, N), time relative to the trials' alignment event), or
                ``"absolute"`` (a ``TsdFrame`` (K * T, N) on the recording clock, for
                sessions built by
                :func:`~spikemask.data.sources.pynapple_io.session_from_pynapple`).
        """
        log_rates = self._run(session, split, masking, seed, batch_size, "log_rates")
        if not as_pynapple:
            return log_rates
        from spikemask.data.sources.pynapple_io import to_pynapple

        clock = "perievent" if as_pynapple is True else str(as_pynapple)
        return to_pynapple(log_rates, session, split, clock=clock)

    def latents(
        self,
        session: Session,
        *,
        split: str = "test",
        masking: str | MaskSpec | None = None,
        seed: int = 0,
        batch_size: int = 256,
    ) -> np.ndarray:
        """Final-layer states (K, T, D) of the time-bin tokens for the trials of ``split``."""
        return self._run(session, split, masking, seed, batch_size, "latents")

    def _run(self, session, split, masking, seed, batch_size, field) -> np.ndarray:
        spikes = session.split(split).spikes
        spec = self._spec(masking, session, spikes.shape, seed)
        prompt = (
            self.prompt_for(spec.scheme)
            if spec is not None
            else self.prompt_for(self.trained_schemes[0])
        )
        outputs = self.forward(
            spikes,
            session,
            hidden=None if spec is None else spec.hidden,
            prompt=prompt,
            causal=bool(spec is not None and spec.causal),
            batch_size=batch_size,
        )
        return torch.cat([getattr(o, field) for o in outputs]).numpy()

    def _spec(self, masking, session, shape, seed) -> MaskSpec | None:
        if masking is None or isinstance(masking, MaskSpec):
            return masking
        mixture = MaskingMixture(self.checkpoint.config.masking)
        generator = torch.Generator().manual_seed(seed)
        return mixture.build(
            masking, tuple(shape), generator=generator, region_ids=self.region_ids(session)
        )
