"""``spikemask bench``: benchmarks anyone can rerun."""

from __future__ import annotations

import argparse
from pathlib import Path

_QUALITY_HELP = (
    "Leave-one-animal-out quality benchmark: for each animal held out in turn, train MtM "
    "and temporal masking from scratch on each of its sessions, pre-train MtM on the other "
    "animals and fine-tune it with the same budget, evaluate every activity task (bits per "
    "spike per unit and pooled) and choice on the test splits next to the linear baseline; "
    "write results.json, table.md and quality.png. Resumable. With several --seed values "
    "the whole benchmark is repeated per seed and the table shows the mean over seeds, each "
    "group's range and the seeds in which each comparison holds. On synthetic sessions "
    "(spikemask synth) the true rates join as an oracle row: co-smoothing and each model's "
    "share of it."
)


_SPEED_HELP = (
    "Training speed on this machine: the fp32 and bf16 matmul peak, then training "
    "throughput (trials/s, tokens/s, FLOP/s and fraction of the peak) and peak memory "
    "through the real training loop, on a synthetic session of the given shape. Two "
    "settings (--a, --b: config overrides) take turns in short timed blocks so their ratio "
    "survives a noisy machine. Writes results.json and table.md."
)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``spikemask bench quality`` and ``spikemask bench speed``."""
    bench = sub.add_parser("bench", help="benchmarks: model quality, training speed")
    kinds = bench.add_subparsers(dest="bench_kind", metavar="KIND", required=True)
    p = kinds.add_parser("quality", help="leave-one-animal-out quality", description=_QUALITY_HELP)
    p.add_argument("data", nargs="+", help="dataset folders (or a .txt file listing them)")
    p.add_argument("--out", type=Path, required=True, help="output folder (reused to resume)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--steps",
        type=int,
        help="steps per from-scratch model and per fine-tuning, instead of --epochs",
    )
    budget.add_argument(
        "--epochs",
        type=int,
        help="passes over each held-out session's training trials per from-scratch model "
        "and per fine-tuning (default 300, the recipe's train.max_epochs)",
    )
    p.add_argument(
        "--pretrain-steps",
        type=int,
        nargs="+",
        default=[5000, 15000],
        metavar="STEPS",
        help="steps per pre-training; several lengths: one pre-training each, and each "
        "held-out session keeps the fine-tuning that scores best on its validation split "
        "(default 5000 15000)",
    )
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
        default="staged",
        help="how fine-tuning starts (default staged, as spikemask finetune)",
    )
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--seed",
        type=int,
        nargs="+",
        default=[0],
        metavar="K",
        help="seed of every run (default 0); several seeds repeat the whole benchmark, each "
        "into OUT/seed-K, and report the mean over seeds with each group's range",
    )
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
    _add_speed(kinds)


def _add_speed(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser("speed", help="training throughput, A/B paired", description=_SPEED_HELP)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--preset", choices=("small", "paper"), default="small")
    p.add_argument("--units", type=int, default=668, help="units of the synthetic session")
    p.add_argument("--bins", type=int, default=100, help="time bins per trial")
    p.add_argument("--batch-size", type=int, default=16, help="trials per batch")
    p.add_argument("--masking", default="mtm", help="masking preset (default mtm)")
    p.add_argument("--a", nargs="*", default=[], metavar="KEY=VALUE", help="setting A overrides")
    p.add_argument("--b", nargs="*", metavar="KEY=VALUE", help="setting B overrides (optional)")
    p.add_argument("--label-a", help="name of setting A in the table")
    p.add_argument("--label-b", help="name of setting B in the table")
    p.add_argument("--blocks", type=int, default=3, help="timed blocks per setting")
    p.add_argument("--block-steps", type=int, default=10, help="timed steps per block")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps per block")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda", "gpu"),
        default="auto",
        help="where to train (default auto: a GPU if any; gpu is another name for cuda)",
    )
    p.add_argument("--peak-size", type=int, default=0, help="peak matmul size (0: by device)")
    p.add_argument("--seed", type=int, default=0)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.bench_kind == "speed":
        return _cmd_speed(args)
    return _cmd_quality(args)


def _cmd_speed(args: argparse.Namespace) -> int:
    from spikemask.bench.speed import SpeedConfig, parse_setting, run_speed_benchmark
    from spikemask.masking.mixture import PRESETS

    if args.masking not in PRESETS:
        from spikemask.errors import SpikemaskError

        raise SpikemaskError(f"--masking {args.masking!r}; expected one of {list(PRESETS)}")
    settings = [parse_setting(args.label_a, args.a, "A")]
    if args.b is not None:
        settings.append(parse_setting(args.label_b, args.b, "B"))
    config = SpeedConfig(
        preset=args.preset,
        units=args.units,
        bins=args.bins,
        batch_size=args.batch_size,
        settings=tuple(settings),
        blocks=args.blocks,
        block_steps=args.block_steps,
        warmup_steps=args.warmup_steps,
        masking=args.masking,
        accelerator=args.device,
        peak_size=args.peak_size,
        seed=args.seed,
    )
    run_speed_benchmark(config, args.out, log=lambda line: print(line, flush=True))
    print((args.out / "table.md").read_text())
    print(f"results        {args.out / 'results.json'}")
    return 0


def _cmd_quality(args: argparse.Namespace) -> int:
    from spikemask.bench.quality import (
        DEFAULT_TASKS,
        PARTS,
        QualityConfig,
        run_quality_benchmark,
        run_quality_seeds,
    )
    from spikemask.config import load_config
    from spikemask.data.loading import load_sessions
    from spikemask.errors import SpikemaskError
    from spikemask.evaluation.engine import resolve_tasks

    for flag, value, what in (
        ("--steps", args.steps, "steps"),
        *(("--pretrain-steps", value, "steps") for value in args.pretrain_steps),
        ("--epochs", args.epochs, "passes"),
    ):
        if value is not None and value < 1:
            raise SpikemaskError(f"{flag} {value}; expected a positive number of {what}")
    if len(set(args.pretrain_steps)) != len(args.pretrain_steps):
        raise SpikemaskError(
            f"--pretrain-steps {' '.join(map(str, args.pretrain_steps))}; expected different "
            "lengths"
        )
    if len(set(args.seed)) != len(args.seed):
        raise SpikemaskError(f"--seed {' '.join(map(str, args.seed))}; expected different seeds")
    tasks = resolve_tasks(args.tasks) if args.tasks else DEFAULT_TASKS
    load_config(preset=args.preset, sets=args.sets)  # unknown keys fail before any work
    config = QualityConfig(
        steps=args.steps,
        epochs=args.epochs,
        pretrain_steps=tuple(args.pretrain_steps),
        held_out_by=args.held_out_by,
        held_out=tuple(args.held_out) if args.held_out else None,
        preset=args.preset,
        sets=tuple(args.sets),
        finetune_mode=args.finetune_mode,
        tasks=tuple(tasks),
        seed=args.seed[0],
        table_only=args.table_only,
        parts=tuple(args.parts) if args.parts else PARTS,
        sessions=tuple(args.sessions) if args.sessions else None,
        device=args.device,
    )
    sessions = load_sessions(args.data)
    truth = _truth_folders(args.data, sessions)

    def log(line: str) -> None:
        print(line, flush=True)

    if len(args.seed) > 1:
        run_quality_seeds(sessions, args.out, config, args.seed, log=log, truth=truth)
    else:
        run_quality_benchmark(sessions, args.out, config, log=log, truth=truth)
    if config.partial:
        return 0
    print((args.out / "table.md").read_text())
    print(f"results        {args.out / 'results.json'}\nfigure         {args.out / 'quality.png'}")
    return 0


def _truth_folders(sources: list[str], sessions: list) -> dict[str, Path]:
    """Session id -> folder, for the synthetic sessions written with their true rates."""
    from spikemask.data.loading import expand_sources

    truth = {}
    for source, session in zip(expand_sources(sources), sessions, strict=True):
        folder = Path(source).expanduser()
        if folder.name == "data":
            folder = folder.parent
        if (folder / "truth").is_dir():
            truth[session.session_id] = folder
    return truth


COMMANDS = {"bench": cmd_bench}
