"""``spikemask demo``: the whole method on the real session shipped in the package.

Trains a temporal-masking NDT1 (the paper's baseline) and an MtM NDT1 (small preset) on the
bundled Steinmetz et al. (2019) session, evaluates both and the linear baseline on every task
of the test split, prints the comparison table and writes a report (markdown + PNG figures).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from spikemask.atomic import write_text_atomic
from spikemask.errors import SpikemaskError

__all__ = ["run_demo"]

MODELS = (("NDT1 temporal", "temporal", "temporal"), ("NDT1 MtM", "mtm", "mtm-temporal"))


def _say(message: str) -> None:
    print(message, flush=True)


def run_demo(
    out: str | Path = "spikemask-demo",
    *,
    epochs: int | None = None,
    steps: int | None = None,
    minutes: float | None = None,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Train, evaluate and report; returns the path of ``report.md``.

    Args:
        out: Output folder (runs, ``results.json``, ``report.md``, ``figures/``).
        epochs: Passes over the session's training trials for each model. By default the
            budget of ``spikemask train``: the small preset's ``train.max_epochs`` (300
            passes, 3,000 steps on the shipped session). MtM and temporal masking get
            equally many steps, and a budget in passes or steps gives the same table on
            every machine.
        steps: Optimiser steps of each model, instead of ``epochs``.
        minutes: Optional cap on the total training time, shared equally by the models.
        seed: Seed of both runs.
        force: Replace the results of an earlier demo in ``out``.
        progress: Progress bars.
    """
    from spikemask.config import load_config
    from spikemask.data.bundled import CITATION, bundled_session
    from spikemask.evaluation.evaluate import run_evaluation, run_linear_baseline
    from spikemask.evaluation.report import markdown_table, write_report
    from spikemask.masking import MaskingConfig
    from spikemask.training.run import train

    if minutes is not None and not minutes > 0:
        raise SpikemaskError(f"--minutes {minutes}: expected a positive number of minutes")
    for flag, value in (("--epochs", epochs), ("--steps", steps)):
        whole = isinstance(value, int) and not isinstance(value, bool)
        if value is not None and not (whole and value >= 1):
            raise SpikemaskError(f"{flag} {value}: expected a positive whole number")
    if epochs is not None and steps is not None:
        raise SpikemaskError("--epochs and --steps: expected one budget, not both")
    cap = "null" if minutes is None else minutes / len(MODELS)
    out = Path(out).expanduser()
    _prepare(out, force)
    session = bundled_session()
    _say(
        f"Session {session.session_id}: {session.num_units} units in "
        f"{len(session.units_per_region)} regions, {session.split('train').num_trials} "
        f"training / {session.split('test').num_trials} test trials ({CITATION})."
    )
    budget = []  # the small preset's own budget (train.max_epochs) unless one is given
    if steps is not None:
        budget = [f"train.max_steps={steps}", "train.max_epochs=null"]
    elif epochs is not None:
        budget = [f"train.max_epochs={epochs}", "train.max_steps=null"]
    results, predictions = {}, {}
    started = time.perf_counter()
    for name, folder, masking in MODELS:
        preset = MaskingConfig.preset(masking)
        config = load_config(
            preset="small",
            sets=[
                *budget,
                f"train.max_minutes={cap}",
                f"train.seed={seed}",
                f"train.progress_bar={str(progress).lower()}",
                f"masking.schemes={json.dumps(list(preset.schemes))}",
            ],
        )
        limit = "" if minutes is None else f" (at most {minutes / len(MODELS):.1f} min)"
        if config.train.max_steps is not None:
            planned = f"{config.train.max_steps} steps"
        else:
            passes = config.train.max_epochs
            planned = (
                f"{passes} pass{'es' if passes != 1 else ''} over the training trials "
                f"(batch {config.data.batch_size})"
            )
        _say(f"\nTraining {name} for {planned}{limit} ...")
        result = train([session], out / "runs" / folder, config=config)
        _say(
            f"  {result.steps} steps; validation loss {result.best_val_loss:.5f} vs "
            f"{result.val_null_loss:.5f} for the per-unit mean-rate model"
        )
        evaluation = run_evaluation(result.run_dir, [session], name=name, progress=progress)
        results[name], predictions[name] = evaluation.results, evaluation.predictions
    _say("\nEvaluating the linear baseline ...")
    linear = run_linear_baseline([session], progress=progress)
    results["linear"], predictions["linear"] = linear.results, linear.predictions
    write_text_atomic(out / "results.json", json.dumps(results, indent=1))
    report = write_report(results, out, predictions=predictions)
    _say("\n" + markdown_table(results))
    _say("\n" + leaders(results))
    _say(f"\nDone in {(time.perf_counter() - started) / 60:.1f} min. Report: {report}")
    return report


def leaders(results: dict) -> str:
    """One line per activity task: the model ahead per unit and pooled, with the margin.

    Bits per spike below 0 mean worse than each unit's own mean rate on the test trials.
    """
    from spikemask.evaluation.tasks import ACTIVITY_TASKS

    lines = ["Who is ahead (bits per spike on the test split; mean over units, then pooled):"]
    for title, (key, _scheme, _causal) in ACTIVITY_TASKS.items():
        parts = []
        for metric, label in (("bps", "per unit"), ("bps_pooled", "pooled")):
            scores = {}
            for name, result in results.items():
                entry = next(iter(result["sessions"].values()), {}).get(key, {})
                if entry.get(metric) is not None:
                    scores[name] = entry[metric]
            if len(scores) < 2:
                continue
            ranked = sorted(scores, key=scores.get, reverse=True)
            margin = scores[ranked[0]] - scores[ranked[1]]
            parts.append(f"{label}: {ranked[0]} (+{margin:.3f} over {ranked[1]})")
        if parts:
            lines.append(f"- {title}: " + "; ".join(parts))
    return "\n".join(lines)


def _prepare(out: Path, force: bool) -> None:
    previous = [out / "runs", out / "results.json", out / "report.md", out / "figures"]
    if any(p.exists() for p in previous):
        if not force:
            raise SpikemaskError(
                f"{str(out)!r} already holds demo results; pass --force to replace them or "
                "choose another --out"
            )
        for path in previous:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
