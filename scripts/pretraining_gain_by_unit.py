"""Which units gain from pre-training: per-unit co-smoothing of a fine-tuned model minus
that of a model trained from scratch, binned by each unit's number of training spikes.

    python scripts/pretraining_gain_by_unit.py --bench OUT [--split val] DATA_FOLDER...

``OUT`` is a `spikemask bench quality` output folder: for every session it reads
``OUT/runs/<group>/<session>/{mtm-scratch,mtm-finetuned}`` (the group is found from the
folder names). Prints one line per session and the mean gain per group and bin.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from spikemask.data.loading import load_session
from spikemask.evaluation.evaluate import run_evaluation

EDGES = (0, 20, 100, 500, 2000, np.inf)


def per_unit(run: Path, session, split: str) -> np.ndarray:
    evaluation = run_evaluation(run, [session], split=split, tasks="co-smoothing", progress=False)
    return np.asarray(evaluation.predictions[session.session_id].tasks["co_smoothing"].bps_per_unit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="+", type=Path)
    parser.add_argument("--bench", type=Path, required=True)
    parser.add_argument("--split", default="val")
    args = parser.parse_args()
    gains: dict[tuple[str, float], list[float]] = {}
    for folder in args.data:
        session = load_session(folder)
        found = list((args.bench / "runs").glob(f"*/{session.session_id}"))
        if not found:
            raise SystemExit(f"{session.session_id}: not in {args.bench / 'runs'}")
        group = found[0].parent.name
        spikes = session.split("train").spikes.sum(axis=(0, 1))
        gain = per_unit(found[0] / "mtm-finetuned", session, args.split) - per_unit(
            found[0] / "mtm-scratch", session, args.split
        )
        line = [session.session_id]
        for low, high in itertools.pairwise(EDGES):
            units = np.isfinite(gain) & (spikes >= low) & (spikes < high)
            gains.setdefault((group, low), []).extend(gain[units].tolist())
            mean = f"{gain[units].mean():+.3f}" if units.any() else "-"
            line.append(f"[{low:g}, {high:g}) spikes: {units.sum()} units {mean}")
        print("  ".join(line), flush=True)
    print("| group | training spikes per unit | units | mean gain (bps) |\n|---|---|---|---|")
    for (group, low), values in sorted(gains.items()):
        high = EDGES[EDGES.index(low) + 1]
        mean = f"{np.mean(values):+.3f}" if values else "-"
        print(f"| {group} | {low:g}–{high:g} | {len(values)} | {mean} |")


if __name__ == "__main__":
    main()
