"""Per-unit diagnosis: where do models lose bits per spike? (issue: quality)

For one session and split, scores trained runs, the linear baseline and two constant
predictors (each unit's training mean rate, with and without a half-spike pseudo-count)
on the activity tasks, and prints the mean per-unit bps in bins of training firing rate
and of training spike count, plus each run's read-out weight norm per rate bin.

    python scripts/diagnose_units.py ../shared/data/steinmetz2019/<session> \\
        --runs old=runs/a new=runs/b --split val --out diag.md

Use the validation split to choose settings; the test split only to report.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from spikemask.api import load_run
from spikemask.data.loading import load_sessions
from spikemask.evaluation.evaluate import run_evaluation, run_linear_baseline
from spikemask.evaluation.metrics import bits_per_spike_per_unit

RATE_EDGES_HZ = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, np.inf)
COUNT_EDGES = (0, 1, 6, 21, 101, 501, np.inf)
TASKS = ("co-smoothing", "forward-prediction", "inter-region", "intra-region")


def _bins(values: np.ndarray, edges) -> list[tuple[str, np.ndarray]]:
    out = []
    for lo, hi in itertools.pairwise(edges):
        label = f"{lo:g}–{hi:g}" if np.isfinite(hi) else f"≥ {lo:g}"
        out.append((label, (values >= lo) & (values < hi)))
    return out


def _constant_scores(session, split: str, pseudo: float) -> np.ndarray:
    train = session.split("train").spikes.astype(float)
    evaluated = session.split(split).spikes.astype(float)
    rate = (train.sum((0, 1)) + pseudo) / (train.shape[0] * train.shape[1])
    rate = np.maximum(rate, 1e-6)
    return bits_per_spike_per_unit(np.broadcast_to(rate, evaluated.shape), evaluated)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--runs", nargs="+", default=[], metavar="NAME=RUN")
    parser.add_argument("--split", default="val")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    session = load_sessions([args.data])[0]
    train = session.split("train").spikes
    rate_hz = train.mean(axis=(0, 1)) / session.bin_size_s
    count = train.sum(axis=(0, 1))
    scores: dict[str, dict[str, np.ndarray]] = {}
    norms: dict[str, np.ndarray] = {}
    for item in args.runs:
        name, _, run = item.partition("=")
        evaluation = run_evaluation(run, [session], split=args.split, tasks=args.tasks)
        tasks = evaluation.predictions[session.session_id].tasks
        scores[name] = {t: r.bps_per_unit for t, r in tasks.items()}
        adapter = load_run(run).model.adapter(session.session_id)
        if adapter.read_out is not None:
            norms[name] = adapter.read_out.weight.detach().norm(dim=1).numpy()
    linear = run_linear_baseline([session], split=args.split, tasks=args.tasks)
    scores["linear"] = {
        t: r.bps_per_unit for t, r in linear.predictions[session.session_id].tasks.items()
    }
    lines = [f"Session {session.session_id}, {args.split} split.", ""]
    for task in scores["linear"]:
        lines += [f"### {task}", ""]
        names = list(scores)
        extra = {"train mean": _constant_scores(session, args.split, 0.0)}
        extra["train mean + 0.5 spike"] = _constant_scores(session, args.split, 0.5)
        header = ["training", "units", *names, *extra]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for kind, values, edges in (("Hz", rate_hz, RATE_EDGES_HZ), ("spikes", count, COUNT_EDGES)):
            for label, selected in _bins(values, edges):
                finite = selected & np.isfinite(scores["linear"][task])
                cells = [f"{np.nanmean(scores[n][task][finite]):+.3f}" for n in names]
                cells += [f"{np.nanmean(v[finite]):+.3f}" for v in extra.values()]
                lines.append(
                    f"| {label} {kind} | {int(finite.sum())} | " + " | ".join(cells) + " |"
                )
        cells = [f"{np.nanmean(scores[n][task]):+.3f}" for n in names]
        lines.append("| all | | " + " | ".join(cells) + " | | |")
        lines.append("")
    if norms:
        lines += ["### read-out weight norm |w_n| by training rate", ""]
        lines += [
            "| training Hz | units | " + " | ".join(norms) + " |",
            "|---|---|" + "---|" * len(norms),
        ]
        for label, selected in _bins(rate_hz, RATE_EDGES_HZ):
            cells = [f"{norms[n][selected].mean():.3f}" for n in norms]
            lines.append(f"| {label} | {int(selected.sum())} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
