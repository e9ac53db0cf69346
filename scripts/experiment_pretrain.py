"""Leave-one-animal-out: does pre-training on other animals help predict a new one?

Sessions are grouped by animal (the ``subject`` of each session). One animal is held out.
For MtM and for temporal masking (the baseline), models are pre-trained on 1, 3, ... and all
sessions of the other animals (the scaling curve), then fine-tuned on each held-out session
and compared with a model trained from scratch on that session alone. Every model is
evaluated on the held-out sessions' test splits (all activity tasks and behaviour).

    python scripts/experiment_pretrain.py ../shared/data/steinmetz2019/*/ --held-out Hench \\
        --out bench/pretrain --pretrain-steps 3000 --finetune-steps 600

Writes ``results.json``, ``table.md`` and ``scaling.png`` into ``--out``; resumable (runs
whose best checkpoint exists are not retrained).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spikemask.config import load_config
from spikemask.data.loading import load_sessions
from spikemask.evaluation.engine import mean_over_sessions
from spikemask.evaluation.evaluate import evaluate
from spikemask.evaluation.report import markdown_table
from spikemask.masking import MaskingConfig
from spikemask.training.finetune import finetune
from spikemask.training.run import train

MASKINGS = ("mtm", "temporal")


def _config(masking: str, steps: int, seed: int, batch: str = "proportional"):
    schemes = json.dumps(list(MaskingConfig.preset(masking).schemes))
    return load_config(preset="small", sets=[
        f"train.max_steps={steps}", "train.max_epochs=null", f"train.seed={seed}",
        "train.progress_bar=false", f"masking.schemes={schemes}",
        f"data.session_sampling={batch}",
    ])


def _done(run: Path) -> bool:
    return (run / "checkpoints" / "best" / "model.safetensors").is_file()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--held-out", required=True, help="subject (animal) to hold out")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scaling", type=int, nargs="+", default=[1, 3],
                        help="pre-training set sizes besides 'all'")
    parser.add_argument("--pretrain-steps", type=int, default=3000)
    parser.add_argument("--finetune-steps", type=int, default=600)
    parser.add_argument("--tasks", nargs="+", default=None, help="evaluation tasks (default all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    sessions = load_sessions([f for f in args.folders if (f / "data").is_dir()])
    held = [s for s in sessions if str(s.metadata.get("subject", "")).lower()
            == args.held_out.lower()]
    others = [s for s in sessions if s not in held]
    if not held or not others:
        raise SystemExit(f"need sessions of {args.held_out!r} and of other animals")
    sizes = sorted({n for n in args.scaling if n < len(others)} | {len(others)})
    results: dict[str, dict] = {}
    for masking in MASKINGS:
        for session in held:  # from scratch, this session alone
            run = args.out / "scratch" / masking / session.session_id
            if not _done(run):
                train([session], run, config=_config(masking, args.finetune_steps, args.seed))
            _add(results, f"{masking} scratch", evaluate(run, [session], tasks=args.tasks,
                                                         progress=False))
        for size in sizes:
            pre = args.out / "pretrain" / masking / f"{size}"
            if not _done(pre):
                train(others[:size], pre, config=_config(
                    masking, args.pretrain_steps, args.seed, "balanced"))
            for session in held:
                run = args.out / "finetune" / masking / f"{size}" / session.session_id
                if not _done(run):
                    finetune(pre, [session], run, mode="full",
                             config=_config(masking, args.finetune_steps, args.seed))
                _add(results, f"{masking} pre-trained on {size}",
                     evaluate(run, [session], tasks=args.tasks, progress=False))
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
    for result in results.values():
        result["mean"] = mean_over_sessions(result["sessions"])
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    table = markdown_table(results)
    (args.out / "table.md").write_text(table + "\n")
    _plot(results, sizes, args.out / "scaling.png")
    print(table)


def _add(results: dict, name: str, result: dict) -> None:
    entry = results.setdefault(name, {"sessions": {}, "split": result.get("split", "test"),
                                      "model": result.get("model", {})})
    entry["sessions"].update(result["sessions"])


def _plot(results: dict, sizes: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = ("co_smoothing", "forward_prediction", "inter_region", "intra_region")
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), sharex=True)
    for ax, task in zip(axes, tasks, strict=True):
        for masking, color in zip(MASKINGS, ("tab:orange", "tab:blue"), strict=True):
            values = [results.get(f"{masking} pre-trained on {n}", {}).get("mean", {})
                      .get(task, {}).get("bps_pooled") for n in sizes]
            ax.plot(sizes, values, "o-", color=color, label=f"{masking}, fine-tuned")
            scratch = results.get(f"{masking} scratch", {}).get("mean", {}).get(task, {})
            if scratch.get("bps_pooled") is not None:
                ax.axhline(scratch["bps_pooled"], color=color, ls="--",
                           label=f"{masking}, from scratch")
        ax.set_title(task.replace("_", " "))
        ax.set_xlabel("pre-training sessions")
        ax.set_ylabel("bits per spike (pooled)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
