"""Leave-one-animal-out: does pre-training on other animals help predict a new one?

Sessions are grouped by animal (the ``subject`` of each session). One animal is held out.
MtM and temporal masking (the baseline) are pre-trained on all sessions of the other
animals, fine-tuned on each held-out session and compared with models trained from scratch
on that session alone. MtM is also pre-trained on the first 1, 3, ... sessions (the scaling
curve; ``--scaling-maskings`` adds temporal). Every model is evaluated on the held-out
sessions' test splits (all activity tasks and behaviour).

    python scripts/experiment_pretrain.py ../shared/data/steinmetz2019/*/ --held-out Cori \\
        --out bench/pretrain --pretrain-steps 3000 --finetune-steps 1000 \\
        --scratch-results bench/steinmetz3000/results.json

``--scratch-results`` takes the from-scratch rows from a ``benchmark_sessions.py`` results
file (the same single-session models and evaluation); without it the script trains them with
``--scratch-steps``; models from scratch with the fine-tuning budget are always trained here.
Writes ``results.json``, ``table.md`` and ``scaling.png`` into
``--out``. Resumable: trained runs and their evaluations (``evaluation.json`` in each run
folder) are reused.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from spikemask.config import load_config
from spikemask.data.loading import load_sessions
from spikemask.evaluation.engine import mean_over_sessions
from spikemask.evaluation.evaluate import evaluate
from spikemask.evaluation.report import markdown_table
from spikemask.masking import MaskingConfig
from spikemask.training.finetune import finetune
from spikemask.training.run import train

MASKINGS = ("mtm", "temporal")
BENCHMARK_NAMES = {"mtm": "NDT1 MtM", "temporal": "NDT1 temporal"}
ACTIVITY_TASKS = ("co_smoothing", "forward_prediction", "inter_region", "intra_region")


def _config(masking: str, steps: int, seed: int, sampling: str = "proportional"):
    schemes = json.dumps(list(MaskingConfig.preset(masking).schemes))
    return load_config(
        preset="small",
        sets=[
            f"train.max_steps={steps}",
            "train.max_epochs=null",
            f"train.seed={seed}",
            "train.progress_bar=false",
            f"masking.schemes={schemes}",
            f"data.session_sampling={sampling}",
        ],
    )


def _done(run: Path) -> bool:
    return (run / "checkpoints" / "best" / "model.safetensors").is_file()


def _timed(out: Path, label: str, work) -> None:
    """Run ``work`` and record its wall time in ``out/timings.json``."""
    started = time.perf_counter()
    work()
    seconds = round(time.perf_counter() - started, 1)
    print(f"{label}: {seconds:.0f} s", flush=True)
    path = out / "timings.json"
    timings = json.loads(path.read_text()) if path.is_file() else {}
    timings[label] = seconds
    path.write_text(json.dumps(timings, indent=1))


def _evaluate(run: Path, session, tasks) -> dict:
    """Evaluate once; the result is kept in the run folder."""
    path = run / "evaluation.json"
    if path.is_file():
        return json.loads(path.read_text())
    result = evaluate(run, [session], tasks=tasks, progress=False)
    path.write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--held-out", required=True, help="subject (animal) to hold out")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--scaling",
        type=int,
        nargs="+",
        default=[1, 3],
        help="pre-training set sizes besides 'all'",
    )
    parser.add_argument(
        "--scaling-maskings",
        nargs="+",
        default=["mtm"],
        choices=MASKINGS,
        help="maskings pre-trained at every scaling size (others: 'all' only)",
    )
    parser.add_argument("--pretrain-steps", type=int, default=3000)
    parser.add_argument("--finetune-steps", type=int, default=1000)
    parser.add_argument("--scratch-steps", type=int, default=3000)
    parser.add_argument(
        "--scratch-results",
        type=Path,
        default=None,
        help="benchmark_sessions.py results.json with the from-scratch models",
    )
    parser.add_argument("--tasks", nargs="+", default=None, help="evaluation tasks (default all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    sessions = load_sessions([f for f in args.folders if (f / "data").is_dir()])
    held = [
        s for s in sessions if str(s.metadata.get("subject", "")).lower() == args.held_out.lower()
    ]
    others = [s for s in sessions if s not in held]
    if not held or not others:
        raise SystemExit(f"need sessions of {args.held_out!r} and of other animals")
    sizes = sorted({n for n in args.scaling if n < len(others)} | {len(others)})
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"held out: {[s.session_id for s in held]}; pre-training pool: "
        f"{[s.session_id for s in others]}",
        flush=True,
    )

    results: dict[str, dict] = {}
    budgets = list(dict.fromkeys([args.scratch_steps, args.finetune_steps]))
    _pretrained_rows(results, held, others, sizes, budgets, args)
    _scratch_rows(results, held, budgets, args)
    print(_write(results, args.out, sizes, budgets))


def _pretrained_rows(results, held, others, sizes, budgets, args) -> None:
    """Pre-train, fine-tune on each held-out session, evaluate. The main comparison (all
    sessions) first, then the rest of the scaling curve."""
    plan = [(m, len(others)) for m in MASKINGS]
    plan += [(m, n) for m in args.scaling_maskings for n in sizes if n != len(others)]
    for masking, size in plan:
        pre = args.out / "pretrain" / masking / f"{size}"
        if not _done(pre):
            config = _config(masking, args.pretrain_steps, args.seed, "balanced")
            _timed(
                args.out,
                f"pre-train {masking} on {size}",
                lambda pre=pre, c=config, n=size: train(others[:n], pre, config=c),
            )
        for session in held:
            run = args.out / "finetune" / masking / f"{size}" / session.session_id
            if not _done(run):
                config = _config(masking, args.finetune_steps, args.seed)
                _timed(
                    args.out,
                    f"fine-tune {masking}/{size} on {session.session_id}",
                    lambda run=run, s=session, c=config, pre=pre: finetune(
                        pre, [s], run, mode="full", config=c
                    ),
                )
            _add(results, f"{masking} pre-trained on {size}", _evaluate(run, session, args.tasks))
        _write(results, args.out, sizes, budgets)


def _scratch_rows(results, held, budgets, args) -> None:
    """From scratch on each held-out session alone: with the full single-session budget,
    and with the fine-tuning budget (the same number of steps on the new session)."""
    for masking in MASKINGS:
        for steps in budgets:
            name = f"{masking} scratch, {steps} steps"
            for session in held:
                if steps == args.scratch_steps and args.scratch_results is not None:
                    result = _benchmark_result(args.scratch_results, masking, session, steps)
                    _add(results, name, result)
                    continue
                run = args.out / "scratch" / masking / str(steps) / session.session_id
                if not _done(run):
                    config = _config(masking, steps, args.seed)
                    _timed(
                        args.out,
                        f"scratch {masking} ({steps} steps) on {session.session_id}",
                        lambda run=run, s=session, c=config: train([s], run, config=c),
                    )
                _add(results, name, _evaluate(run, session, args.tasks))


def _benchmark_result(path: Path, masking: str, session, steps: int) -> dict:
    summary = json.loads(path.read_text())
    entry = summary.get(session.session_id)
    if entry is None:
        raise SystemExit(
            f"{path} has no results for {session.session_id}; run "
            "benchmark_sessions.py on it first or drop --scratch-results"
        )
    name = BENCHMARK_NAMES[masking]
    trained = entry.get("training", {}).get(name, {}).get("steps")
    if trained is not None and trained != steps:
        raise SystemExit(
            f"{path}: {name} of {session.session_id} trained {trained} steps, "
            f"not --scratch-steps {steps}"
        )
    return entry["results"][name]


def _add(results: dict, name: str, result: dict) -> None:
    entry = results.setdefault(
        name,
        {"sessions": {}, "split": result.get("split", "test"), "model": result.get("model", {})},
    )
    entry["sessions"].update(result["sessions"])


def _write(results: dict, out: Path, sizes: list[int], budgets: list[int]) -> str:
    for result in results.values():
        result["mean"] = mean_over_sessions(result["sessions"])
    (out / "results.json").write_text(json.dumps(results, indent=1))
    table = markdown_table(results)
    (out / "table.md").write_text(table + "\n")
    _plot(results, sizes, budgets, out / "scaling.png")
    return table


def _mean_bps(results: dict, name: str, task: str) -> float:
    value = results.get(name, {}).get("mean", {}).get(task, {}).get("bps_pooled")
    return np.nan if value is None else float(value)


def _plot(results: dict, sizes: list[int], budgets: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(ACTIVITY_TASKS), figsize=(19, 3.6), sharex=True, layout="constrained"
    )
    for ax, task in zip(axes, ACTIVITY_TASKS, strict=True):
        for masking, color in zip(MASKINGS, ("tab:orange", "tab:blue"), strict=True):
            values = [_mean_bps(results, f"{masking} pre-trained on {n}", task) for n in sizes]
            if not np.all(np.isnan(values)):
                ax.plot(
                    sizes,
                    values,
                    "o-",
                    color=color,
                    label=f"{masking}, pre-trained, then fine-tuned",
                )
            for steps, style in zip(budgets, ("--", ":"), strict=False):
                scratch = _mean_bps(results, f"{masking} scratch, {steps} steps", task)
                if not np.isnan(scratch):
                    ax.axhline(
                        scratch,
                        color=color,
                        ls=style,
                        label=f"{masking}, from scratch ({steps} steps)",
                    )
        ax.set_title(task.replace("_", " "))
        ax.set_xlabel("pre-training sessions")
        ax.set_xticks(sizes)
    axes[0].set_ylabel("bits per spike (pooled)")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right center", fontsize=8)
    fig.suptitle("Held-out animal, mean over its sessions", fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
