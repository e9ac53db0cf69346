"""``spikemask bench``: benchmarks anyone can rerun (registered by ``cli._parser``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from spikemask import cli_more

_QUALITY_HELP = (
    "Leave-one-animal-out quality benchmark: for each animal held out in turn, train MtM "
    "and temporal masking from scratch on each of its sessions, pre-train MtM on the other "
    "animals and fine-tune it with the same budget, evaluate every activity task (bits per "
    "spike per unit and pooled) and choice on the test splits next to the linear baseline; "
    "write results.json, table.md and quality.png. Resumable."
)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``spikemask bench quality``."""
    bench = sub.add_parser("bench", help="benchmarks: model quality on held-out animals")
    kinds = bench.add_subparsers(dest="bench_kind", metavar="KIND", required=True)
    p = kinds.add_parser("quality", help="leave-one-animal-out quality", description=_QUALITY_HELP)
    p.add_argument("data", nargs="+", help="dataset folders (or a .txt file listing them)")
    p.add_argument("--out", type=Path, required=True, help="output folder (reused to resume)")
    p.add_argument(
        "--steps", type=int, default=3000, help="steps per from-scratch model and per fine-tuning"
    )
    p.add_argument("--pretrain-steps", type=int, default=6000, help="steps per pre-training")
    p.add_argument(
        "--held-out-by",
        default="subject",
        help="session metadata that groups sessions (default subject = animal)",
    )
    p.add_argument(
        "--held-out", nargs="+", metavar="GROUP", help="groups to hold out (default all)"
    )
    p.add_argument("--preset", choices=("small", "paper"), default="small")
    p.add_argument(
        "--finetune-mode",
        choices=("full", "session", "staged"),
        default="full",
        help="default full",
    )
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", nargs="+", metavar="TASK", help="evaluation tasks")
    p.add_argument(
        "--table-only",
        action="store_true",
        help="train nothing: tabulate what finished in --out (e.g. one process per group)",
    )
    p.add_argument(
        "--parts",
        nargs="+",
        metavar="PART",
        help="run only these parts (pretrain, mtm, temporal, finetune, linear; default all), "
        "e.g. to spread one benchmark over processes; then join with --table-only",
    )
    p.add_argument(
        "--sessions", nargs="+", metavar="ID", help="held-out session ids to run (default all)"
    )
    p.add_argument(
        "--device", default="auto", help="where models are evaluated (default auto: a GPU if any)"
    )
    cli_more.COMMANDS["bench"] = cmd_bench


def cmd_bench(args: argparse.Namespace) -> int:
    from spikemask.bench.quality import (
        DEFAULT_TASKS,
        PARTS,
        QualityConfig,
        run_quality_benchmark,
    )
    from spikemask.config import load_config
    from spikemask.data.loading import load_sessions
    from spikemask.errors import SpikemaskError
    from spikemask.evaluation.engine import resolve_tasks

    for flag, value in (("--steps", args.steps), ("--pretrain-steps", args.pretrain_steps)):
        if value < 1:
            raise SpikemaskError(f"{flag} {value}; expected a positive number of steps")
    tasks = resolve_tasks(args.tasks) if args.tasks else DEFAULT_TASKS
    load_config(preset=args.preset, sets=args.sets)  # unknown keys fail before any work
    config = QualityConfig(
        steps=args.steps,
        pretrain_steps=args.pretrain_steps,
        held_out_by=args.held_out_by,
        held_out=tuple(args.held_out) if args.held_out else None,
        preset=args.preset,
        sets=tuple(args.sets),
        finetune_mode=args.finetune_mode,
        tasks=tuple(tasks),
        seed=args.seed,
        table_only=args.table_only,
        parts=tuple(args.parts) if args.parts else PARTS,
        sessions=tuple(args.sessions) if args.sessions else None,
        device=args.device,
    )
    sessions = load_sessions(args.data)
    run_quality_benchmark(sessions, args.out, config, log=lambda line: print(line, flush=True))
    if config.partial:
        return 0
    print((args.out / "table.md").read_text())
    print(f"results        {args.out / 'results.json'}\nfigure         {args.out / 'quality.png'}")
    return 0
