"""Where co-smoothing falls short of the oracle, unit by unit, on a `spikemask synth` session.

For each unit: bits per spike of the true rates (the oracle) and of each model's co-smoothing
prediction on the test split (or ``--split val``); then the means by quartile of the unit's
firing rate and of its modulation (standard deviation of its true log-rate over bins and
trials), both on the scored split. A gap that
is the same in every quartile points at how the latents are inferred; one concentrated in the
quiet units points at their read-out.

    python scripts/synthetic_unit_gap.py synth6/synth-0-00 \\
        --run "MtM scratch=OUT/runs/synth-00/synth-0-00/mtm-scratch" --linear --out gap.json
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("session", type=Path, help="synthetic session folder (with truth/)")
    parser.add_argument("--run", action="append", default=[], metavar="NAME=RUN_DIR")
    parser.add_argument("--linear", action="store_true", help="add the linear baseline")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--split", default="test", choices=["val", "test"], help="trials scored")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from spikemask.data.loading import load_sessions
    from spikemask.data.synthetic import load_true_rates
    from spikemask.errors import SpikemaskError
    from spikemask.evaluation.evaluate import run_evaluation, run_linear_baseline
    from spikemask.evaluation.metrics import bits_per_spike_per_unit

    torch.set_num_threads(args.threads)
    runs = {}
    for item in args.run:
        name, sep, run = item.partition("=")
        if not sep or not name or not run:
            raise SystemExit(f"--run {item!r}: expected NAME=RUN_DIR")
        runs[name] = run
    try:
        session = load_sessions([args.session])[0]
        truth = load_true_rates(args.session)[args.split]
        spikes = session.split(args.split).spikes
        predictions = {}
        for name, run in runs.items():
            evaluation = run_evaluation(
                run, [session], split=args.split, tasks=["co-smoothing"], progress=False
            )
            tasks = evaluation.predictions[session.session_id].tasks
            predictions[name] = tasks["co_smoothing"].rates
        if args.linear:
            linear = run_linear_baseline(
                [session], split=args.split, tasks=["co-smoothing"], progress=False
            )
            tasks = linear.predictions[session.session_id].tasks
            predictions["linear"] = tasks["co_smoothing"].rates
    except SpikemaskError as err:  # a bad path or run: one line, not a traceback
        raise SystemExit(f"synthetic_unit_gap: error: {err}") from None

    oracle = bits_per_spike_per_unit(truth, spikes)
    scores = {
        name: bits_per_spike_per_unit(np.asarray(p), spikes) for name, p in predictions.items()
    }
    keep = np.isfinite(oracle) & np.all([np.isfinite(s) for s in scores.values()], axis=0)
    keys = {
        "rate (Hz)": spikes.mean(axis=(0, 1)) / session.bin_size_s,
        "modulation (sd of the true log-rate)": np.log(np.maximum(truth, 1e-12)).std(axis=(0, 1)),
    }
    result = {
        "session": session.session_id,
        "split": args.split,
        "units": int(keep.sum()),
        "oracle": float(oracle[keep].mean()),
        **{name: float(s[keep].mean()) for name, s in scores.items()},
        "quartiles": [],
    }
    print(f"{session.session_id}: {result['units']} units, oracle {result['oracle']:.3f}")
    for by, key in keys.items():
        edges = np.quantile(key[keep], [0, 0.25, 0.5, 0.75, 1])
        for quartile, (low, high) in enumerate(itertools.pairwise(edges), start=1):
            chosen = keep & (key >= low) & (key <= high)
            row = {
                "by": by,
                "quartile": quartile,
                "range": [float(low), float(high)],
                "units": int(chosen.sum()),
                "oracle": float(oracle[chosen].mean()),
                **{name: float(s[chosen].mean()) for name, s in scores.items()},
            }
            result["quartiles"].append(row)
            shares = " | ".join(
                f"{name} {row[name]:.3f} ({row[name] / row['oracle']:.0%})" for name in scores
            )
            print(f"  {by} Q{quartile} {low:.2f}-{high:.2f}: oracle {row['oracle']:.3f} | {shares}")
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
