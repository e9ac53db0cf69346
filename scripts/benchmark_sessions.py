"""Benchmark table: temporal-masking NDT1 vs MtM NDT1 vs the linear baseline, per session.

For every session folder: train a temporal and an MtM model (single session, small preset,
the same step budget and seed), evaluate both and the linear baseline on every task of the
test split, and write ``results.json`` plus a markdown table. On synthetic sessions (folders
written by ``spikemask synth``) the true rates give an "oracle" row.

    python scripts/benchmark_sessions.py ../shared/data/steinmetz2019/* --out bench/steinmetz
    spikemask synth --out bench/synth-data --sessions 3 --seed 0
    python scripts/benchmark_sessions.py bench/synth-data/* --out bench/synth

Resumable: a session whose results are already in ``--out`` is skipped. Sessions can be
split over several processes or machines (one ``--out`` each) and joined with ``--merge``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from spikemask.config import load_config
from spikemask.data.loading import load_session
from spikemask.evaluation.engine import mean_over_sessions
from spikemask.evaluation.evaluate import evaluate, evaluate_linear_baseline
from spikemask.evaluation.metrics import bits_per_spike, bits_per_spike_pooled
from spikemask.evaluation.report import markdown_table
from spikemask.masking import MaskingConfig
from spikemask.training.run import train

MODELS = {"NDT1 temporal": "temporal", "NDT1 MtM": "mtm"}


def _train(session, out: Path, masking: str, args) -> dict:
    schemes = json.dumps(list(MaskingConfig.preset(masking).schemes))
    config = load_config(
        preset="small",
        sets=[
            f"train.max_steps={args.steps}",
            "train.max_epochs=null",
            f"train.seed={args.seed}",
            "train.progress_bar=false",
            f"masking.schemes={schemes}",
        ],
    )
    result = train([session], out, config=config)
    return {
        "steps": result.steps,
        "seconds": round(result.elapsed_s, 1),
        "val_loss": result.best_val_loss,
        "val_null_loss": result.val_null_loss,
    }


def _oracle(folder: Path, session) -> dict | None:
    """Bits per spike of the true rates on the test split (synthetic sessions only)."""
    truth = folder / "truth" / "test_rates.npy"
    if not truth.is_file():
        return None
    rates = np.load(truth)
    spikes = session.split("test").spikes
    return {
        "bps": bits_per_spike(rates, spikes),
        "bps_pooled": bits_per_spike_pooled(rates, spikes),
    }


def run_session(folder: Path, args) -> dict:
    session = load_session(folder)
    out = args.out / session.session_id
    results, training = {}, {}
    for name, masking in MODELS.items():
        run_dir = out / masking
        if not (run_dir / "checkpoints" / "best").is_dir():
            training[name] = _train(session, run_dir, masking, args)
        results[name] = evaluate(run_dir, [session], progress=False)
    started = time.perf_counter()
    results["linear"] = evaluate_linear_baseline([session], progress=False)
    timing = {"linear_seconds": round(time.perf_counter() - started, 1)}
    return {
        "results": results,
        "training": training,
        "timing": timing,
        "oracle": _oracle(folder, session),
        "units": session.num_units,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=300, help="training steps per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="print the table of the sessions already in --out and stop",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=[],
        help="first add the sessions of these other --out folders (e.g. runs "
        "of this script on other machines)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "results.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    for other in args.merge:
        if not (other / "results.json").is_file():
            raise SystemExit(f"--merge {other}: no results.json there (an --out of this script?)")
        summary.update(json.loads((other / "results.json").read_text()))
        summary_path.write_text(json.dumps(summary, indent=1))
    if args.table_only:
        print(table(summary))
        return
    folders = [f for f in args.folders if (f / "data").is_dir()]
    for index, folder in enumerate(folders, 1):
        if folder.name in summary:
            continue
        started = time.perf_counter()
        summary[folder.name] = run_session(folder, args)
        summary_path.write_text(json.dumps(summary, indent=1))
        print(
            f"[{index}/{len(folders)}] {folder.name}: {time.perf_counter() - started:.0f} s",
            flush=True,
        )
    print(table(summary))


def table(summary: dict) -> str:
    """Markdown: per-session rows per model, then the mean over sessions."""
    merged: dict[str, dict] = {}
    for entry in summary.values():
        for name, result in entry["results"].items():
            target = merged.setdefault(name, {"sessions": {}, "split": "test"})
            target["sessions"].update(result["sessions"])
    for target in merged.values():
        target["mean"] = mean_over_sessions(target["sessions"])
    text = markdown_table(merged)
    oracles = {k: v["oracle"] for k, v in summary.items() if v.get("oracle")}
    if oracles:
        text += "\n\nOracle: the true rates scored against the test split's counts:\n\n"
        text += "| session | bps (mean over units) | bps pooled |\n|---|---|---|\n"
        text += "\n".join(
            f"| {k} | {v['bps']:.3f} | {v['bps_pooled']:.3f} |" for k, v in oracles.items()
        )
    return text


if __name__ == "__main__":
    main()
