"""Leads over the linear baseline of the rows of several ``trial_count_curve.py`` outputs.

Each argument is a folder of rows written by ``scripts/trial_count_curve.py`` (its ``rows/``
or the folder itself, as in ``benchmarks/trial-count/``). Every model of every folder
(``mtm``, ``finetuned``) becomes a line named ``FOLDER/model``; the linear baseline rows,
from whichever folder has them, are the reference. For each training-trial count it prints,
over the sessions that every line has at that count, how many sessions each line beats the
baseline on and its mean lead, per unit / pooled, for the four activity tasks::

    python scripts/compare_trial_counts.py benchmarks/trial-count/default \\
        benchmarks/trial-count/ft-session [--counts 80 120] [--skip s01]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spikemask.evaluation.tasks import ACTIVITY_TASKS

TASKS = tuple(key for key, _, _ in ACTIVITY_TASKS.values())  # as trial_count_curve.py


def load_rows(folder: Path) -> list[dict]:
    rows_dir = folder / "rows" if (folder / "rows").is_dir() else folder
    rows = [json.loads(p.read_text()) for p in sorted(rows_dir.glob("*.json"))]
    if not rows:
        raise SystemExit(f"compare_trial_counts.py: error: no row files (*.json) in {rows_dir}")
    return rows


def collect(folders: list[Path], skip: list[str]) -> tuple[dict, dict]:
    """``(lines, linear)``: line name -> (session, count) -> scores, and the baseline's."""
    lines: dict[str, dict[tuple[str, int], dict]] = {}
    linear: dict[tuple[str, int], dict] = {}
    for folder in folders:
        for row in load_rows(folder):
            if any(part in row["session"] for part in skip):
                continue
            key = (row["session"], row["count"])
            if "linear" in row:
                linear[key] = row["linear"]
            for model in ("mtm", "finetuned"):
                if model in row:
                    lines.setdefault(f"{folder.name}/{model}", {})[key] = row[model]
    return lines, linear


def cell(line: dict, linear: dict, keys: list[tuple[str, int]], task: str) -> str:
    """``ahead/n, mean lead`` per unit and pooled."""
    parts = []
    for k in (0, 1):  # per unit, pooled
        leads = [line[key][task][k] - linear[key][task][k] for key in keys]
        parts.append(
            f"{sum(lead > 0 for lead in leads)}/{len(leads)}, {sum(leads) / len(leads):+.3f}"
        )
    return " / ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--counts", type=int, nargs="+", help="training-trial counts (0 = all)")
    parser.add_argument("--skip", nargs="+", default=[], help="leave out sessions naming these")
    args = parser.parse_args()
    lines, linear = collect(args.folders, args.skip)
    print("| trials | model | sessions | " + " | ".join(t.replace("_", "-") for t in TASKS) + " |")
    print("|---|---|---|" + "---|" * len(TASKS))
    for count in args.counts or sorted({count for _, count in linear}):
        present = {name: ls for name, ls in lines.items() if any(c == count for _, c in ls)}
        keys = sorted(
            key for key in linear if key[1] == count and all(key in ls for ls in present.values())
        )
        for name, line in present.items() if keys else ():
            cells = " | ".join(cell(line, linear, keys, task) for task in TASKS)
            print(f"| {count or 'all'} | {name} | {len(keys)} | {cells} |")


if __name__ == "__main__":
    main()
