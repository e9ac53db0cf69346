"""``spikemask inspect``, ``spikemask synth`` and ``spikemask demo``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["COMMANDS", "add_demo", "add_inspect_synth"]


def add_inspect_synth(sub: argparse._SubParsersAction) -> None:
    """Add ``spikemask inspect`` and ``spikemask synth``."""
    p = sub.add_parser("inspect", help="summarise a dataset folder")
    # a str, not a Path: Path("hf://org/ds") would become "hf:/org/ds"
    p.add_argument("data", help="dataset folder in the IBL parquet layout, or hf://<org>/<dataset>")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("synth", help="write synthetic sessions with known true rates")
    p.add_argument("--out", type=Path, required=True, help="new output folder")
    p.add_argument("--sessions", type=int, default=3, help="number of sessions (animals)")
    p.add_argument("--seed", type=int, default=0)


def add_demo(sub: argparse._SubParsersAction) -> None:
    """Add ``spikemask demo``."""
    p = sub.add_parser("demo", help="train, evaluate and report on the shipped real session")
    p.add_argument("--out", type=Path, default=Path("spikemask-demo"), help="output folder")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--epochs",
        type=int,
        help="passes over the training trials for each of the two models (default: the "
        "small preset's train.max_epochs, 300, as spikemask train)",
    )
    budget.add_argument(
        "--steps", type=int, help="optimiser steps of each of the two models, instead of --epochs"
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="optional cap on the total training time of the two models",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace an earlier demo's results")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_inspect(args: argparse.Namespace) -> int:
    from spikemask.data.loading import load_session

    session = load_session(args.data)
    summary = session.summary()
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(_format_summary(summary))
    return 0


def _format_summary(s: dict) -> str:
    lines = [
        f"session        {s['session_id']}",
        f"units          {s['num_units']}",
        f"time bins      {s['num_bins']} x {s['bin_size_s'] * 1000:g} ms "
        f"(window start {s['window_start_s']} s, aligned to {s['align_event']})",
        "trials         " + ", ".join(f"{k} {v}" for k, v in s["num_trials"].items()),
        "total spikes   " + ", ".join(f"{k} {v:,}" for k, v in s["total_spikes"].items()),
        f"mean rate      {s['mean_rate_hz']:.2f} Hz",
        "trial fields   " + (", ".join(s["trial_behavior"]) or "-"),
        "per-bin fields " + (", ".join(s["bin_behavior"]) or "-"),
        f"regions        {len(s['regions'])}",
    ]
    lines += [f"  {name:<12} {count:>5} units" for name, count in s["regions"].items()]
    return "\n".join(lines)


def cmd_synth(args: argparse.Namespace) -> int:
    from spikemask.data.synthetic import synthesize

    paths = synthesize(args.out, num_sessions=args.sessions, seed=args.seed)
    for path in paths:
        print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from spikemask.demo import run_demo

    run_demo(
        args.out,
        epochs=args.epochs,
        steps=args.steps,
        minutes=args.minutes,
        seed=args.seed,
        force=args.force,
        progress=not args.quiet,
    )
    return 0


COMMANDS = {"demo": cmd_demo, "inspect": cmd_inspect, "synth": cmd_synth}
