"""MtM against the linear baseline as a session's training trials shrink.

On the shared sessions the one place where MtM trained from scratch stays behind the
linear baseline pooled is s01, the session with 80 training trials (BENCHMARKS.md §7).
This script asks whether that is the trial count: it keeps a seeded, nested subset of each
session's training trials (the first N of one permutation, so 80 ⊂ 120 ⊂ all), trains the
default MtM recipe from scratch on it (small preset, its default budget of passes), fits
the reference linear baseline on the same trials, optionally fine-tunes a pre-trained run
on them, and scores the four activity tasks on an untouched split (validation by
default)::

    python scripts/trial_count_curve.py DATA... --out OUT [--trials 80 120 0] \\
        [--pretrained RUN [--finetune-mode staged] [--skip-scratch]] [--split val] \\
        [--seed 0] [--set KEY=VALUE ...]
    python scripts/trial_count_curve.py --out OUT --table-only

``0`` stands for all training trials; ``--skip-linear`` leaves the baseline out (when
only a setting of MtM changes), ``--skip-scratch`` MtM from scratch (when only the
fine-tuning changes, e.g. ``--finetune-mode session``). Each (session, count) row is written to
``OUT/rows/`` when done, so a rerun continues and several processes may share ``OUT``
with different sessions. ``--table-only`` prints the markdown table of every row and
writes ``OUT/table.md`` and ``OUT/trial-count-curve.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from spikemask.config import load_config
from spikemask.data.loading import load_session
from spikemask.data.session import Session
from spikemask.errors import SpikemaskError
from spikemask.evaluation.evaluate import evaluate, evaluate_linear_baseline
from spikemask.evaluation.tasks import ACTIVITY_TASKS

TASK_ARGS = list(ACTIVITY_TASKS)  # the four activity tasks, as evaluate() names them
TASKS = tuple(key for key, _, _ in ACTIVITY_TASKS.values())  # their result keys


def subsample(session: Session, count: int, seed: int) -> Session:
    """``session`` with only ``count`` of its training trials (0 = all), nested in count."""
    train = session.split("train")
    if count == 0 or count >= train.num_trials:
        return session
    order = np.random.default_rng(seed).permutation(train.num_trials)
    rows = np.sort(order[:count])
    return session.replace(splits={**session.splits, "train": train.select(rows)})


def _scores(result: dict) -> dict:
    (entry,) = result["sessions"].values()
    return {t: [entry[t]["bps"], entry[t]["bps_pooled"]] for t in TASKS if t in entry}


def run_row(folder: Path, count: int, args: argparse.Namespace) -> dict | None:
    """One (session, count) row; None when the session has no more than ``count`` trials."""
    from spikemask.training.finetune import finetune
    from spikemask.training.run import train

    session = load_session(folder)
    if count >= session.split("train").num_trials:
        return None  # the same as count 0 (all trials)
    session = subsample(session, count, args.seed)
    name = f"{session.session_id}-n{count or 'all'}"
    sets = [*args.set, f"train.seed={args.seed}", "train.progress_bar=false"]
    config = load_config(preset="small", sets=sets)  # the default recipe (MtM mixture)
    row = {
        "session": session.session_id,
        "count": count,
        "train_trials": session.split("train").num_trials,
        "units": session.num_units,
        "split": args.split,
    }
    kw = {"split": args.split, "tasks": TASK_ARGS, "progress": False}
    if not args.skip_scratch:
        started = time.perf_counter()
        run = args.out / "runs" / name / "mtm-scratch"
        if not (run / "checkpoints" / "best").is_dir():
            train([session], run, config=config)
        row["mtm_seconds"] = round(time.perf_counter() - started, 1)
        row["mtm"] = _scores(evaluate(run, [session], **kw))
    if not args.skip_linear:
        row["linear"] = _scores(evaluate_linear_baseline([session], **kw))
    if args.pretrained is not None:
        run = args.out / "runs" / name / "mtm-finetuned"
        if not (run / "checkpoints" / "best").is_dir():
            finetune(args.pretrained, [session], run, config=config, mode=args.finetune_mode)
        row["finetuned"] = _scores(evaluate(run, [session], **kw))
    return row


def table(rows: list[dict]) -> str:
    models = [m for m in ("mtm", "finetuned", "linear") if any(m in r for r in rows)]
    lines = [
        "| session | train trials | units | model | co-smoothing | forward | inter-region "
        "| intra-region |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for model in models:
            if model not in r:
                continue
            cells = [f"{r[model][t][0]:.3f} ({r[model][t][1]:.3f})" for t in TASKS]
            lines.append(
                f"| {r['session']} | {r['train_trials']} | {r['units']} | {model} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines)


def figure(rows: list[dict], path: Path) -> None:
    """Each model's lead over the linear baseline against the training trials."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sessions = sorted({r["session"] for r in rows})
    fig, axes = plt.subplots(2, len(TASKS), figsize=(4 * len(TASKS), 6.5), squeeze=False)
    colors = {"mtm": "C0", "finetuned": "C2"}
    for col, task in enumerate(TASKS):
        for row_index, (label, k) in enumerate((("per unit", 0), ("pooled", 1))):
            ax = axes[row_index, col]
            ax.axhline(0.0, color="C1", lw=1.5)
            for session in sessions:
                mine = [r for r in rows if r["session"] == session and "linear" in r]
                mine.sort(key=lambda r: r["train_trials"])
                x = [r["train_trials"] for r in mine]
                for model, color in colors.items():
                    if mine and all(model in r for r in mine):
                        y = [r[model][task][k] - r["linear"][task][k] for r in mine]
                        ax.plot(x, y, "-o", color=color, ms=3, alpha=0.7)
            ax.set_title(f"{task.replace('_', ' ')}, {label}", fontsize=9)
            ax.set_xlabel("training trials")
            if col == 0:
                ax.set_ylabel("bits per spike minus the linear baseline's")
    handles = [
        plt.Line2D([], [], color="C0", marker="o", label="MtM from scratch"),
        plt.Line2D([], [], color="C2", marker="o", label="MtM pre-trained, fine-tuned"),
        plt.Line2D([], [], color="C1", label="linear baseline (0)"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8)
    fig.suptitle("Lead over the linear baseline by number of training trials (a line per session)")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--trials", type=int, nargs="+", default=[80, 120, 0])
    parser.add_argument("--pretrained", type=Path, default=None)
    parser.add_argument("--split", default="val", choices=["val", "test"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--skip-linear", action="store_true", help="no linear baseline rows")
    parser.add_argument(
        "--skip-scratch", action="store_true", help="no MtM-from-scratch rows (needs --pretrained)"
    )
    parser.add_argument(
        "--finetune-mode",
        default="staged",
        choices=["staged", "full", "session"],
        help="how the pre-trained run is fine-tuned (spikemask finetune --mode; default staged)",
    )
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    if args.skip_scratch and args.pretrained is None and not args.table_only:
        parser.error("--skip-scratch leaves only fine-tuning, which needs --pretrained RUN")
    if any(count < 0 for count in args.trials):
        parser.error(f"--trials {args.trials}: expected counts >= 0 (0 = all training trials)")
    folder = args.out / "rows"
    folder.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for data in args.data:
            for count in args.trials:
                path = folder / f"{data.name}-n{count or 'all'}.json"
                if path.is_file():
                    continue
                row = run_row(data, count, args)
                if row is None:
                    print(f"{path.stem}: skipped (no more training trials than that)")
                    continue
                path.write_text(json.dumps(row, indent=1))
                print(f"{path.stem}: done", flush=True)
    rows = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    rows.sort(key=lambda r: (r["session"], r["train_trials"]))
    text = table(rows)
    (args.out / "table.md").write_text(text + "\n")
    if any("linear" in r for r in rows):  # the figure shows leads over the baseline
        figure(rows, args.out / "trial-count-curve.png")
    print(text)


if __name__ == "__main__":
    try:
        main()
    except SpikemaskError as err:  # a user's mistake: one message, no traceback
        raise SystemExit(f"trial_count_curve.py: error: {err}") from None
