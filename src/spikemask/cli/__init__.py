"""The ``spikemask`` command line: parse, load the config, call one function.

Every user mistake surfaces as a :class:`~spikemask.errors.SpikemaskError`, printed as one
line on stderr with exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from spikemask.errors import SpikemaskError

__all__ = ["main"]

MASKING_CHOICES = (
    "mtm",
    "mtm-temporal",
    "temporal",
    "neuron",
    "causal",
    "inter-region",
    "intra-region",
    "random",
    "random-token",
)


def _add_budget_flags(parser: argparse.ArgumentParser) -> None:
    budget = "; the first budget reached stops training"
    parser.add_argument(
        "--max-epochs",
        type=int,
        help="stop after this many epochs (default: the preset's, 100 for small and 1000 for "
        f"paper{budget})",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        help=f"stop after this many optimiser steps (default: no step limit{budget})",
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        help=f"stop after this wall-clock time (default: no time limit{budget}; a time "
        "budget makes the schedule depend on speed, so a resumed run is not bit-exact)",
    )
    parser.add_argument("--seed", type=int, help="seed of every random choice (default 0)")
    parser.add_argument("--config", type=Path, help="YAML file of config overrides")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set model.width=256 (repeatable)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out from its last resume state (same options)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _device_help(verb: str) -> str:
    return (
        f"device to {verb} on: auto (default: the GPU when there is one, else the CPU), cpu, "
        "cuda or mps"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spikemask", description="Multi-task masking transformers for spiking data."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("inspect", help="summarise a dataset folder")
    # a str, not a Path: Path("hf://org/ds") would become "hf:/org/ds"
    p.add_argument("data", help="dataset folder in the IBL parquet layout, or hf://<org>/<dataset>")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("synth", help="write synthetic sessions with known true rates")
    p.add_argument("--out", type=Path, required=True, help="new output folder")
    p.add_argument("--sessions", type=int, default=3, help="number of sessions (animals)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("train", help="train a model on one or many sessions")
    p.add_argument("data", nargs="+", help="dataset folders (or a .txt file listing them)")
    p.add_argument("--out", type=Path, required=True, help="new run folder")
    p.add_argument("--preset", choices=("small", "paper"), default="small")
    p.add_argument(
        "--masking",
        choices=MASKING_CHOICES,
        help="masking scheme(s) to train with (default: mtm-temporal, the paper's MtM "
        "mixture plus temporal masking)",
    )
    p.add_argument("--model", choices=("ndt1", "ndt2"), help="architecture (default ndt1)")
    _add_budget_flags(p)

    p = sub.add_parser("finetune", help="adapt a trained model to new sessions")
    p.add_argument("run", help="run folder (or hf://ORG/NAME[@REV]) of the pre-trained model")
    p.add_argument("data", nargs="+", help="dataset folders of the new sessions")
    p.add_argument("--out", type=Path, required=True, help="new run folder")
    p.add_argument(
        "--mode",
        choices=("full", "session", "staged"),
        default="full",
        help="train all weights, only the new session's layers, or those first and then all "
        "(staged: the first quarter of the budget)",
    )
    p.add_argument(
        "--masking",
        choices=MASKING_CHOICES,
        help="masking for fine-tuning (default: the pre-training masking)",
    )
    p.add_argument(
        "--which",
        choices=("best", "last"),
        default="best",
        help="which checkpoint of the run to start from",
    )
    p.add_argument("--device", default="auto", help=_device_help("fine-tune"))
    _add_budget_flags(p)

    p = sub.add_parser("demo", help="train, evaluate and report on the shipped real session")
    p.add_argument("--out", type=Path, default=Path("spikemask-demo"), help="output folder")
    p.add_argument(
        "--steps",
        type=int,
        help="optimiser steps of each of the two models (default 2000: "
        "spikemask.demo.DEFAULT_STEPS)",
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

    from spikemask.cli_prepare import add_prepare_command

    add_prepare_command(sub)
    _add_later_commands(sub)
    return parser


def _add_later_commands(sub: argparse._SubParsersAction) -> None:
    """Commands whose modules are imported only when used."""
    from spikemask import cli_bench, cli_more, cli_share

    cli_more.add_commands(sub)
    cli_share.add_commands(sub)
    cli_bench.add_commands(sub)


def _budget_sets(args: argparse.Namespace) -> list[str]:
    # each flag sets its own budget; the others (the preset's max_epochs included) stay, and
    # the first budget reached stops training
    sets = [
        f"train.{key}={value}"
        for key, value in (
            ("max_epochs", args.max_epochs),
            ("max_steps", args.max_steps),
            ("max_minutes", args.max_minutes),
        )
        if value is not None
    ]
    if args.seed is not None:
        sets.append(f"train.seed={args.seed}")
    if args.quiet:
        sets.append("train.progress_bar=false")
    return sets


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


def cmd_train(args: argparse.Namespace) -> int:
    from spikemask.config import load_config
    from spikemask.training.run import train

    sets = _budget_sets(args)
    if args.masking:
        sets.append(f"masking={json.dumps(_masking_values(args.masking))}")
    if args.model:
        sets.append(f"model.architecture={args.model}")
    config = load_config(preset=args.preset, path=args.config, sets=[*sets, *args.sets])
    result = train(args.data, args.out, config=config, resume=args.resume)
    _report(result)
    return 0


def _masking_values(name: str) -> dict:
    from spikemask.masking import MaskingConfig

    preset = MaskingConfig.preset(name)
    return {"schemes": list(preset.schemes), "weights": preset.weights}


def cmd_finetune(args: argparse.Namespace) -> int:
    from spikemask.training.finetune import finetune

    sets = _budget_sets(args)
    if args.masking:
        sets.append(f"masking={json.dumps(_masking_values(args.masking))}")
    result = finetune(
        args.run,
        args.data,
        args.out,
        mode=args.mode,
        which=args.which,
        config_path=args.config,
        sets=[*sets, *args.sets],
        resume=args.resume,
        device=args.device,
    )
    _report(result)
    return 0


def _report(result) -> None:
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:  # one report per distributed run
        return
    print(f"run folder     {result.run_dir}")
    print(f"epochs / steps {result.epochs} / {result.steps}")
    print(
        f"best val loss  {result.best_val_loss:.5f}  (Poisson NLL per scored entry, "
        "mean over masking schemes)"
    )
    print(f"mean-rate null {result.val_null_loss:.5f}  (per-unit mean rate, same entries)")
    print(f"time           {result.elapsed_s:.1f} s")
    if result.interrupted:
        print("interrupted: continue with the same command plus --resume")


def cmd_prepare(args: argparse.Namespace) -> int:
    from spikemask.cli_prepare import cmd_prepare as run

    return run(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from spikemask.demo import DEFAULT_STEPS, run_demo

    run_demo(
        args.out,
        steps=DEFAULT_STEPS if args.steps is None else args.steps,
        minutes=args.minutes,
        seed=args.seed,
        force=args.force,
        progress=not args.quiet,
    )
    return 0


COMMANDS = {
    "demo": cmd_demo,
    "inspect": cmd_inspect,
    "synth": cmd_synth,
    "train": cmd_train,
    "finetune": cmd_finetune,
    "prepare": cmd_prepare,
}


class _NoAdverts(logging.Filter):
    """Drops Lightning's tips about third-party services and its hardware inventory
    ("GPU available: False ...", "TPU available ...") from the console."""

    NOISE = ("litlogger", "GPU available:", "TPU available:", "HPU available:")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(part in message for part in self.NOISE)


def _quiet_third_party() -> None:
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spikemask`` console script."""
    _quiet_third_party()
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        from spikemask import __version__

        print(__version__)
        return 0
    if not args.command:
        parser.print_help()
        return 2
    from spikemask import cli_more, cli_share

    handler = {**COMMANDS, **cli_more.COMMANDS, **cli_share.COMMANDS}[args.command]
    try:
        return handler(args)
    except SpikemaskError as err:
        print(f"spikemask {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spikemask {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        from spikemask.training.resume import RunInterrupted

        if not isinstance(err, RunInterrupted):
            raise
        return _interrupted(args.command, err, sys.argv[1:] if argv is None else list(argv))


def _interrupted(command: str, err, argv: list[str]) -> int:
    """Report a run stopped by a signal, with the exact command that resumes it."""
    import shlex

    print(f"spikemask {command}: interrupted: {err}", file=sys.stderr)
    if err.saved:
        again = argv if "--resume" in argv else [*argv, "--resume"]
        print(f"resume with: spikemask {shlex.join(again)}", file=sys.stderr)
    else:
        print(f"nothing was trained yet; rerun: spikemask {shlex.join(argv)}", file=sys.stderr)
    return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
