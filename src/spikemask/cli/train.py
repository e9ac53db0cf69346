"""``spikemask train`` and ``spikemask finetune``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["COMMANDS", "MASKING_CHOICES", "add_finetune", "add_train"]

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


def _add_budget_flags(parser: argparse.ArgumentParser, *, finetune: bool = False) -> None:
    budget = "; the first budget reached stops training"
    of = "the pre-trained model's preset" if finetune else "the preset"
    parser.add_argument(
        "--max-epochs",
        type=int,
        help=f"stop after this many epochs (default: {of}'s, 300 for small and 1000 for "
        f"paper{budget}"
        + ("; the pre-training's budget does not carry over)" if finetune else ")"),
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


def add_train(sub: argparse._SubParsersAction) -> None:
    """Add ``spikemask train``."""
    p = sub.add_parser("train", help="train a model on one or many sessions")
    p.add_argument("data", nargs="+", help="dataset folders (or a .txt file listing them)")
    p.add_argument("--out", type=Path, required=True, help="new run folder")
    p.add_argument("--preset", choices=("small", "paper"), default="small")
    p.add_argument(
        "--masking",
        choices=MASKING_CHOICES,
        help="masking scheme(s) to train with (default: mtm-temporal, the paper's MtM "
        "mixture plus temporal masking, neuron masking drawn twice as often as each other "
        "scheme; mtm: the paper's four, drawn evenly)",
    )
    p.add_argument("--model", choices=("ndt1", "ndt2"), help="architecture (default ndt1)")
    _add_budget_flags(p)


def add_finetune(sub: argparse._SubParsersAction) -> None:
    """Add ``spikemask finetune``."""
    p = sub.add_parser("finetune", help="adapt a trained model to new sessions")
    p.add_argument("run", help="run folder (or hf://ORG/NAME[@REV]) of the pre-trained model")
    p.add_argument("data", nargs="+", help="dataset folders of the new sessions")
    p.add_argument("--out", type=Path, required=True, help="new run folder")
    p.add_argument(
        "--mode",
        choices=("full", "session", "staged"),
        default="staged",
        help="staged (default): the new session's layers alone for the first "
        "train.staged_fraction of the budget (a quarter), then all weights; full: all weights "
        "from the start; session: only the new session's layers, the pre-trained model "
        "frozen. In staged and full, the pre-trained weights learn at train.shared_lr_scale "
        "x train.lr (2x by default)",
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
    _add_budget_flags(p, finetune=True)


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


COMMANDS = {"train": cmd_train, "finetune": cmd_finetune}
