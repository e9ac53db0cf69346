"""Neural Latents Benchmark (NLB) submissions: a trained model's rates in NLB's h5 layout.

NLB scores a model on *held-out units* (never given to the model at inference, predicted
from the *held-in* units: co-smoothing, ``co-bps``) and on *forward prediction* (the bins
after the observed window, ``fp-bps``). ``nlb_tools.evaluation.evaluate(targets,
submission)`` reads, per dataset group::

    <dataset>/eval_rates_heldin            (K_eval, T_obs, N_in)   expected counts per bin
    <dataset>/eval_rates_heldout           (K_eval, T_obs, N_out)
    <dataset>/train_rates_heldin           (K_train, T_obs, N_in)
    <dataset>/train_rates_heldout          (K_train, T_obs, N_out)
    <dataset>/eval_rates_heldin_forward    (K_eval, F, N_in)
    <dataset>/eval_rates_heldout_forward   (K_eval, F, N_out)

and the targets file (what ``nlb_tools.make_tensors.make_eval_target_tensors`` writes)::

    <dataset>/eval_spikes_heldout          (K_eval, T_obs, N_out)
    <dataset>/eval_spikes_heldin_forward   (K_eval, F, N_in)
    <dataset>/eval_spikes_heldout_forward  (K_eval, F, N_out)
    <dataset>/train_behavior, eval_behavior  (K, T_obs, B)

A spikemask session maps onto this by choosing the held-out units (a seeded fraction, or
named ids) and taking the last ``F`` bins of every trial as the forward window: the model
sees only the held-in units of the first ``T_obs = T - F`` bins. Rates are predicted with
the ``neuron`` prompt (observed bins) and the ``causal`` prompt with causal attention
(forward bins). NLB's own ``evaluate`` scores only its dataset names (``mc_maze``,
``mc_rtt``, ``area2_bump``, ``dmfc_rsg``, ``mc_maze_{large,medium,small}``, with ``_20`` for
20 ms bins); other names are written but not scored by it.

Shape letters: K trials, T time bins, N units, F forward bins, B behaviour channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spikemask.api import TrainedModel
from spikemask.data.session import Session
from spikemask.errors import SpikemaskError
from spikemask.evaluation.metrics import bits_per_spike_pooled
from spikemask.evaluation.tasks import FORWARD_FRACTION

__all__ = ["NLBExport", "choose_heldout_units", "make_nlb_export", "write_nlb_h5"]


@dataclass
class NLBExport:
    """Submission and target arrays of one dataset, and spikemask's own scores of them.

    Attributes:
        dataset: Group name in the h5 files.
        submission: name -> float32 array (the rates, expected counts per bin).
        targets: name -> float32 array (the true counts and behaviour).
        heldin_unit_ids: (N_in,) unit ids of the held-in columns, in order.
        heldout_unit_ids: (N_out,) unit ids of the held-out columns, in order.
        scores: ``co-bps`` and ``fp-bps`` computed by spikemask on the same arrays.
    """

    dataset: str
    submission: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    heldin_unit_ids: list[str]
    heldout_unit_ids: list[str]
    scores: dict[str, float] = field(default_factory=dict)


def choose_heldout_units(
    session: Session,
    *,
    fraction: float = 0.25,
    unit_ids: Sequence[str] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """(N,) bool, True for the held-out units: ``unit_ids`` if given, else a seeded fraction.

    Raises:
        SpikemaskError: Unknown unit ids, a fraction outside (0, 1), or a choice that leaves
            no held-in or no held-out unit.
    """
    if unit_ids is not None:
        unknown = sorted(set(unit_ids) - set(session.unit_ids))
        if unknown:
            raise SpikemaskError(
                f"held-out unit ids {unknown[:3]} are not units of session "
                f"{session.session_id!r}; expected ids from its unit_ids"
            )
        heldout = np.isin(np.array(session.unit_ids), list(unit_ids))
    else:
        if not 0.0 < fraction < 1.0:
            raise SpikemaskError(f"held-out fraction {fraction}; expected a value in (0, 1)")
        count = max(1, round(fraction * session.num_units))
        chosen = np.random.default_rng(seed).choice(session.num_units, count, replace=False)
        heldout = np.zeros(session.num_units, dtype=bool)
        heldout[chosen] = True
    if heldout.all() or not heldout.any():
        raise SpikemaskError(
            f"{int(heldout.sum())} of {session.num_units} units held out; expected at least "
            "one held-in and one held-out unit"
        )
    return heldout


def make_nlb_export(
    model: TrainedModel,
    session: Session,
    *,
    dataset: str | None = None,
    heldout: np.ndarray | None = None,
    forward_bins: int | None = None,
    eval_split: str = "test",
    train_split: str = "train",
    batch_size: int = 256,
) -> NLBExport:
    """Predict the NLB submission (and targets) of one session.

    Args:
        model: A trained model that has layers for ``session``.
        session: The session, with the same units as in training.
        dataset: h5 group name (default: the session id).
        heldout: (N,) bool held-out units (default :func:`choose_heldout_units`).
        forward_bins: F, the trailing bins used as the forward window (default the
            forward-prediction task's 10 %; 0 = no forward prediction).
        eval_split: Trials scored (NLB's eval trials).
        train_split: Trials whose rates NLB's behaviour decoder is fit on.
        batch_size: Trials per forward pass.
    """
    heldout = choose_heldout_units(session) if heldout is None else np.asarray(heldout, bool)
    forward = _forward_bins(session, forward_bins)
    observed = session.num_bins - forward
    submission, targets = {}, {}
    for prefix, split in (("eval", eval_split), ("train", train_split)):
        spikes = session.split(split).spikes
        co_rates, fp_rates = _predict(model, session, spikes, heldout, forward, batch_size)
        submission[f"{prefix}_rates_heldin"] = co_rates[:, :observed, ~heldout]
        submission[f"{prefix}_rates_heldout"] = co_rates[:, :observed, heldout]
        targets[f"{prefix}_behavior"] = _behavior(session, split, observed)
        if prefix == "eval":
            targets["eval_spikes_heldout"] = spikes[:, :observed, heldout].astype(np.float32)
            if forward:
                for side, units in (("heldin", ~heldout), ("heldout", heldout)):
                    submission[f"eval_rates_{side}_forward"] = fp_rates[:, observed:, units]
                    targets[f"eval_spikes_{side}_forward"] = spikes[:, observed:, units].astype(
                        np.float32
                    )
    ids = np.array(session.unit_ids)
    export = NLBExport(
        dataset=dataset or session.session_id,
        submission=submission,
        targets=targets,
        heldin_unit_ids=ids[~heldout].tolist(),
        heldout_unit_ids=ids[heldout].tolist(),
    )
    export.scores = score_export(export)
    return export


def _forward_bins(session: Session, forward_bins: int | None) -> int:
    if forward_bins is None:
        forward_bins = min(session.num_bins - 1, max(1, round(FORWARD_FRACTION * session.num_bins)))
    if not 0 <= forward_bins < session.num_bins:
        raise SpikemaskError(
            f"forward_bins={forward_bins}; expected 0 <= F < {session.num_bins} (the bins of a "
            f"trial of session {session.session_id!r})"
        )
    return int(forward_bins)


def _predict(
    model: TrainedModel,
    session: Session,
    spikes: np.ndarray,
    heldout: np.ndarray,
    forward: int,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(K, T, N) rates with the held-out units and the forward bins hidden: ``neuron``
    prompt (co-smoothing) and, when ``forward``, ``causal`` prompt with causal attention."""
    num_bins = spikes.shape[1]
    hidden = torch.zeros(spikes.shape, dtype=torch.bool)  # (K, T, N)
    hidden[:, :, torch.as_tensor(heldout)] = True
    hidden[:, num_bins - forward :, :] = True

    def rates(scheme: str, causal: bool) -> np.ndarray:
        outputs = model.forward(
            spikes, session, hidden=hidden, prompt=model.prompt_for(scheme), causal=causal,
            batch_size=batch_size,
        )  # fmt: skip
        return torch.cat([o.log_rates for o in outputs]).exp().numpy().astype(np.float32)

    return rates("neuron", False), (rates("causal", True) if forward else None)


def _behavior(session: Session, split: str, observed: int) -> np.ndarray:
    """(K, T_obs, B) behaviour for NLB's decoder: the per-bin fields, else the per-trial
    fields repeated over bins, else one zero channel (NLB's file needs the array)."""
    trials = session.split(split)
    if trials.bin_behavior:
        channels = [np.asarray(v, np.float32)[:, :observed] for v in trials.bin_behavior.values()]
    elif trials.trial_behavior:
        channels = [
            np.repeat(np.asarray(v, np.float32)[:, None], observed, axis=1)
            for v in trials.trial_behavior.values()
        ]
    else:
        channels = [np.zeros((trials.num_trials, observed), np.float32)]
    return np.stack(channels, axis=-1)


def score_export(export: NLBExport) -> dict[str, float]:
    """spikemask's pooled bits per spike (NLB's definition) of the exported arrays."""
    sub, tgt = export.submission, export.targets
    heldout = (sub["eval_rates_heldout"], tgt["eval_spikes_heldout"])
    scores = {"co-bps": bits_per_spike_pooled(*heldout)}
    if "eval_rates_heldin_forward" in sub:
        rates = np.concatenate(
            [sub["eval_rates_heldin_forward"], sub["eval_rates_heldout_forward"]], axis=-1
        )
        spikes = np.concatenate(
            [tgt["eval_spikes_heldin_forward"], tgt["eval_spikes_heldout_forward"]], axis=-1
        )
        scores["fp-bps"] = bits_per_spike_pooled(rates, spikes)
    return {k: float(v) for k, v in scores.items()}


def write_nlb_h5(
    export: NLBExport, path: str | Path, *, which: str = "submission", overwrite: bool = False
) -> Path:
    """Write the ``submission`` or ``targets`` arrays under ``/<dataset>/`` of an h5 file.

    Other dataset groups already in the file are kept (one file may hold several datasets,
    as NLB submissions do); the unit ids and scores go into the group's attributes.

    Raises:
        SpikemaskError: h5py missing, or the group exists and ``overwrite`` is False.
    """
    h5py = _h5py()
    arrays: dict[str, Any] = export.submission if which == "submission" else export.targets
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "a") as handle:
        if export.dataset in handle:
            if not overwrite:
                raise SpikemaskError(
                    f"{str(path)!r} already holds dataset {export.dataset!r}; pass --overwrite "
                    "or choose another --dataset name / file"
                )
            del handle[export.dataset]
        group = handle.create_group(export.dataset)
        for name, values in arrays.items():
            group.create_dataset(name, data=np.asarray(values, np.float32), compression="gzip")
        group.attrs["heldin_unit_ids"] = export.heldin_unit_ids
        group.attrs["heldout_unit_ids"] = export.heldout_unit_ids
        for name, value in export.scores.items():
            group.attrs[f"spikemask_{name}"] = value
    return path


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise SpikemaskError(
            "h5py is not installed; install it with pip install 'spikemask[nlb]'"
        ) from None
    return h5py
