"""``spikemask evaluate``: score trained models (and baselines) on every task."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

#: help of every --device flag (here, not in spikemask.devices: building the parser
#: must not import torch)
DEVICE_HELP = (
    "device to run the model on: auto (the GPU when there is one, else the CPU), cpu, cuda, "
    "cuda:INDEX or mps (default auto)"
)

_TASKS_HELP = (
    "co-smoothing, forward-prediction, inter-region, intra-region, choice, reward, "
    "behavior (every per-bin behaviour); default: all"
)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score trained models on activity and behaviour tasks",
        description="Evaluate RUN_DIR (and --compare runs, --baseline linear) on the "
        "co-smoothing, forward-prediction, inter-/intra-region and behaviour tasks. "
        "Writes one JSON file and prints a markdown comparison table.",
    )
    p.add_argument("run", help="run folder (or hf://ORG/NAME[@REV]) of the model to evaluate")
    p.add_argument("data", nargs="*", help="dataset folders (default: those in RUN_DIR/run.json)")
    p.add_argument(
        "--data",
        dest="more_data",
        nargs="+",
        default=[],
        metavar="DATA_DIR",
        help="dataset folders (same as the positional ones)",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="RUN_DIR",
        help="more runs evaluated the same way (e.g. a temporal-masking baseline)",
    )
    p.add_argument(
        "--baseline",
        action="append",
        choices=("linear",),
        default=[],
        help="also evaluate a baseline (linear: PCA + ridge Poisson GLMs, raw-count decoders)",
    )
    p.add_argument(
        "--split",
        choices=("train", "val", "test"),
        default="test",
        help="trials evaluated (default test); decoders are always fit on train",
    )
    p.add_argument("--tasks", nargs="+", metavar="TASK", help=_TASKS_HELP)
    p.add_argument(
        "--features",
        choices=("latents", "rates"),
        default="latents",
        help="model features for behaviour decoders (default latents)",
    )
    p.add_argument("--batch-size", type=int, help="masked trial copies per forward pass")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--threads",
        default="auto",
        help="CPU threads when the model runs on the CPU: auto (default: the cores the load "
        "average leaves free, at least 1) or a number",
    )
    p.add_argument("--out", type=Path, required=True, help="results JSON file to write")
    p.add_argument(
        "--report", type=Path, metavar="DIR", help="also write DIR/report.md with figures"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _unique_name(name: str, taken: dict) -> str:
    candidate, index = name, 2
    while candidate in taken:
        candidate, index = f"{name}-{index}", index + 1
    return candidate


class _SessionCache:
    """The evaluated datasets, loaded once per region level."""

    def __init__(self, sources: list[str]) -> None:
        self.sources = sources
        self.loaded: dict[str, list] = {}

    def at(self, level: str) -> list:
        from spikemask.data.loading import load_sessions

        if level not in self.loaded:
            self.loaded[level] = load_sessions(self.sources, region_level=level)
        return self.loaded[level]


def _evaluate_all(args: argparse.Namespace, sessions: _SessionCache, common: dict) -> dict:
    """Model name -> Evaluation, for the run, the --compare runs and the baselines."""
    from spikemask.api import load_run
    from spikemask.evaluation.evaluate import run_evaluation, run_linear_baseline

    evaluations: dict = {}
    levels = []
    # every run is loaded (and so checked) before any evaluation starts
    models = [(run, load_run(run, device=args.device)) for run in [args.run, *args.compare]]
    for run, model in models:
        name = _unique_name(Path(run).name or str(run), evaluations)
        levels.append(model.checkpoint.config.data.region_level)
        evaluation = run_evaluation(
            model,
            sessions.at(levels[-1]),
            batch_size=args.batch_size,
            features=args.features,
            name=name,
            **common,
        )
        evaluation.results["model"]["run"] = str(run)
        evaluations[name] = evaluation
    for baseline in dict.fromkeys(args.baseline):  # "linear"
        name = _unique_name(baseline, evaluations)
        evaluations[name] = run_linear_baseline(sessions.at(levels[0]), **common)
    return evaluations


def _check_outputs(args: argparse.Namespace) -> None:
    """--out must name a file and --report a folder; checked before any work."""
    from spikemask.errors import SpikemaskError

    if args.out.is_dir():
        raise SpikemaskError(
            f"--out {str(args.out)!r} is a folder; expected the path of the results JSON file "
            f"(e.g. {str(args.out / 'results.json')!r})"
        )
    if args.out.parent.exists() and not args.out.parent.is_dir():
        raise SpikemaskError(f"--out {str(args.out)!r}: {str(args.out.parent)!r} is not a folder")
    if args.report is not None and args.report.exists() and not args.report.is_dir():
        raise SpikemaskError(
            f"--report {str(args.report)!r} is an existing file; expected a folder to write "
            "report.md and figures/ into"
        )


def cmd_evaluate(args: argparse.Namespace) -> int:
    from spikemask.atomic import write_text_atomic
    from spikemask.devices import free_cpu_threads, resolve_device
    from spikemask.errors import SpikemaskError
    from spikemask.evaluation.engine import resolve_tasks
    from spikemask.evaluation.evaluate import run_sources
    from spikemask.evaluation.report import LABEL_LEGEND, markdown_table, write_report

    tasks = resolve_tasks(args.tasks)
    device = resolve_device(args.device)  # an unknown or absent device fails before any work
    threads = free_cpu_threads(args.threads)
    if device.type == "cpu":
        import torch

        torch.set_num_threads(threads)
    if args.batch_size is not None and args.batch_size < 1:
        raise SpikemaskError(f"--batch-size {args.batch_size}; expected a positive integer")
    _check_outputs(args)
    sources = [*args.data, *args.more_data] or run_sources(args.run)
    keep = ("co_smoothing",) if args.report else ()
    common = {"split": args.split, "tasks": tasks, "keep_rates": keep, "progress": not args.quiet}
    evaluations = _evaluate_all(args, _SessionCache(sources), common)
    results = {name: e.results for name, e in evaluations.items()}
    primary, *others = results
    output = dict(results[primary])
    if others:
        output["comparisons"] = {name: results[name] for name in others}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(output, indent=1))
    table = markdown_table(results)
    print(table)
    if "balanced_accuracy" in table.splitlines()[0]:
        print(f"\n{LABEL_LEGEND}")
    if args.split == "val" and len(args.compare) > 0:
        print(f"\n{_validation_scores(results, len(args.compare) + 1)}")
    print(f"\nresults        {args.out}")
    if args.report:
        predictions = {name: e.predictions for name, e in evaluations.items()}
        print(f"report         {write_report(results, args.report, predictions=predictions)}")
    return 0


def _validation_scores(results: dict, num_runs: int) -> str:
    """The runs' validation scores (as ``bench quality`` chooses a fine-tuning) and the best."""
    from spikemask.bench.quality import validation_score
    from spikemask.errors import SpikemaskError

    scores = {}
    for name in list(results)[:num_runs]:  # the runs; the baselines come after them
        try:
            scores[name] = validation_score(results[name])
        except SpikemaskError:
            return "validation score: no activity task evaluated"
    best = max(scores, key=scores.get)
    listed = ", ".join(f"{name} {score:+.4f}" for name, score in scores.items())
    return (
        f"validation score (mean per-unit bits per spike over the activity tasks): {listed}; "
        f"highest: {best}"
    )


COMMANDS = {"evaluate": cmd_evaluate}


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the remaining sub-commands to the ``spikemask`` parser."""
    _add_evaluate(sub)
