"""Sub-commands that hand results to other tools: ``export nlb|bwb`` and ``push`` (the Hub)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spikemask.cli.evaluate import DEVICE_HELP
from spikemask.errors import SpikemaskError

__all__ = ["COMMANDS", "add_commands"]

COMMANDS: dict = {}


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a model's predictions in another tool's format")
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    q = formats.add_parser(
        "nlb",
        help="Neural Latents Benchmark submission (h5)",
        description="Predict held-out units (co-smoothing) and the trailing bins (forward "
        "prediction) of one session and write them in NLB's submission layout. nlb_tools' "
        "evaluate scores only NLB's dataset names (mc_maze, mc_rtt, area2_bump, dmfc_rsg, "
        "mc_maze_large/medium/small; add _20 for 20 ms bins).",
    )
    q.add_argument("run", help="run folder (or hf://ORG/NAME) of the trained model")
    q.add_argument("data", help="dataset folder of the session to export")
    q.add_argument("--out", type=Path, required=True, help="submission .h5 file (appended)")
    q.add_argument("--dataset", help="group name in the file (default: the session id)")
    q.add_argument("--targets", type=Path, help="also write the matching NLB eval targets")
    q.add_argument("--heldout-fraction", type=float, default=0.25, help="default 0.25")
    q.add_argument("--heldout-units", nargs="+", metavar="UNIT_ID", help="held-out unit ids")
    q.add_argument("--forward-bins", type=int, help="trailing forward bins (default 10 %%)")
    q.add_argument("--split", choices=("train", "val", "test"), default="test")
    q.add_argument("--seed", type=int, default=0, help="seed of the held-out unit choice")
    q.add_argument("--overwrite", action="store_true", help="replace the dataset group")
    q.add_argument("--device", default="auto", help=DEVICE_HELP)

    _add_export_bwb(formats)


def _add_export_bwb(formats: argparse._SubParsersAction) -> None:
    q = formats.add_parser(
        "bwb",
        help="IBL BrainWideBench TS2 predictions (ibl-bwb-eval's safetensors files)",
        description="Predict held-out units (ts2-co_smoothing, scored on the trailing second) "
        "and the trailing bins (ts2-forecasting) of one session and write them with "
        "ibl-bwb-eval's PredictionsWriter: OUT/LABEL/TASK/RECORDING/seed_N.safetensors. Score "
        "them with python -m ibl_bwb_eval.scoring.ts2 --pred_dir OUT --gt_dir GT.",
    )
    q.add_argument("run", help="run folder (or hf://ORG/NAME) of the trained model")
    q.add_argument("data", help="dataset folder of the session to export")
    q.add_argument("--out", type=Path, required=True, help="predictions folder")
    q.add_argument("--label", default="spikemask", help="submission label (default spikemask)")
    q.add_argument(
        "--ground-truth", type=Path, metavar="DIR",
        help="also write the session's targets where the TS2 scorer reads them",
    )  # fmt: skip
    q.add_argument("--heldout-fraction", type=float, default=0.25, help="default 0.25")
    q.add_argument("--heldout-units", nargs="+", metavar="UNIT_ID", help="held-out unit ids")
    q.add_argument("--forward-bins", type=int, help="forecast bins (default 10 %%)")
    q.add_argument("--split", choices=("train", "val", "test"), default="test")
    q.add_argument("--seed", type=int, default=0, help="seed (held-out units, file name)")


def _cmd_export_bwb(args: argparse.Namespace) -> int:
    from spikemask.api import load_run
    from spikemask.data.loading import load_session
    from spikemask.export.bwb import (
        make_bwb_export,
        write_bwb_ground_truth,
        write_bwb_predictions,
    )
    from spikemask.export.nlb import choose_heldout_units

    model = load_run(args.run)
    session = load_session(args.data, region_level=model.checkpoint.config.data.region_level)
    heldout = choose_heldout_units(
        session, fraction=args.heldout_fraction, unit_ids=args.heldout_units, seed=args.seed
    )
    export = make_bwb_export(
        model, session, label=args.label, seed=args.seed, heldout=heldout,
        forward_bins=args.forward_bins, split=args.split,
    )  # fmt: skip
    for path in write_bwb_predictions(export, args.out):
        print(f"predictions    {path}")
    if args.ground_truth:
        for path in write_bwb_ground_truth(export, args.ground_truth):
            print(f"ground truth   {path}")
    for task in export.tasks.values():
        print(f"spikemask      {task.task} {json.dumps(task.scores)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from spikemask.api import load_run
    from spikemask.data.loading import load_session
    from spikemask.export.nlb import choose_heldout_units, make_nlb_export, write_nlb_h5

    if args.format == "bwb":
        return _cmd_export_bwb(args)
    if args.format != "nlb":  # pragma: no cover - argparse restricts the choices
        raise SpikemaskError(f"unknown export format {args.format!r}; expected 'nlb' or 'bwb'")
    model = load_run(args.run, device=args.device)
    session = load_session(args.data, region_level=model.checkpoint.config.data.region_level)
    heldout = choose_heldout_units(
        session, fraction=args.heldout_fraction, unit_ids=args.heldout_units, seed=args.seed
    )
    export = make_nlb_export(
        model, session, dataset=args.dataset, heldout=heldout,
        forward_bins=args.forward_bins, eval_split=args.split,
    )  # fmt: skip
    print(f"submission     {write_nlb_h5(export, args.out, overwrite=args.overwrite)}")
    if args.targets:
        path = write_nlb_h5(export, args.targets, which="targets", overwrite=args.overwrite)
        print(f"targets        {path}")
    print(f"dataset        {export.dataset}")
    print(f"units          {len(export.heldin_unit_ids)} held-in, "
          f"{len(export.heldout_unit_ids)} held-out")  # fmt: skip
    print(f"spikemask      {json.dumps(export.scores)}")
    return 0


COMMANDS["export"] = cmd_export


def _add_push(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "push",
        help="upload a run's checkpoint with a model card to the Hugging Face Hub",
        description="Upload the best (or last) checkpoint of RUN to hf://ORG/NAME: the "
        "safetensors weights, config and vocabularies, a model card and the run record. "
        "Load it with spikemask.load_run('hf://ORG/NAME[@REV]') or pass it to finetune / "
        "evaluate. Needs the hub extra and a login (huggingface-cli login or HF_TOKEN).",
    )
    p.add_argument("run", help="run folder")
    p.add_argument("target", help="hf://ORG/NAME (optionally @REVISION)")
    p.add_argument("--revision", help="branch to push to (created from main if missing)")
    p.add_argument("--which", choices=("best", "last"), default="best")
    p.add_argument("--metrics", type=Path, help="results JSON of spikemask evaluate, for the card")
    p.add_argument("--license", default="mit", help="licence id of the weights (default mit)")
    p.add_argument("--private", action="store_true", help="create a private repository")
    p.add_argument("--message", help="commit message")


def cmd_push(args: argparse.Namespace) -> int:
    from spikemask.hub import push_run

    metrics = None
    if args.metrics:
        try:
            metrics = json.loads(args.metrics.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SpikemaskError(
                f"--metrics {str(args.metrics)!r}: not a results JSON ({err})"
            ) from None
    result = push_run(
        args.run, args.target, revision=args.revision, which=args.which, metrics=metrics,
        license=args.license, private=args.private, message=args.message,
    )  # fmt: skip
    print(f"pushed         hf://{result['repo_id']}@{result['revision']}")
    print(f"commit         {result['commit'] or '-'}  {result['url']}")
    return 0


COMMANDS["push"] = cmd_push


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``export`` and ``push`` to the ``spikemask`` parser."""
    _add_export(sub)
    _add_push(sub)
