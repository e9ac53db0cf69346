"""Mean bits per spike of sets of per-session evaluation files, overall and by animal.

Each set is ``FOLDER:PREFIX``: the files ``FOLDER/PREFIX-sNN-val.json`` written by
``spikemask evaluate RUN DATA/S --split val --out ...`` (one session each), e.g.

    python scripts/compare_val.py benchmarks/recipe:bits-e100-scratch \\
        benchmarks/recipe:bits-e300-scratch

prints, for all sessions and for each animal of the Steinmetz sessions (Cori s01-s03,
Forssmann s04-s07, Hench s08-s11), the mean over sessions of co-smoothing, forward,
inter- and intra-region bits per spike, per unit (pooled).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

TASKS = ("co_smoothing", "forward_prediction", "inter_region", "intra_region")
GROUPS = {
    "all": range(1, 12),
    "Cori": range(1, 4),
    "Forssmann": range(4, 8),
    "Hench": range(8, 12),
}


def load(spec: str) -> dict[int, dict]:
    """Session number -> that session's scores, for one ``FOLDER:PREFIX`` set."""
    folder, prefix = spec.rsplit(":", 1)
    found = {}
    for path in Path(folder).glob(f"{prefix}-s[0-9][0-9]-val.json"):
        number = int(re.search(r"-s(\d\d)-val\.json$", path.name).group(1))
        (scores,) = json.loads(path.read_text())["sessions"].values()
        found[number] = scores
    if not found:
        sys.exit(f"no files {folder}/{prefix}-sNN-val.json")
    return found


def main(specs: list[str]) -> None:
    sets = [(spec.rsplit(":", 1)[1], load(spec)) for spec in specs]
    for group, numbers in GROUPS.items():
        print(f"== {group}")
        for name, scores in sets:
            ids = [n for n in numbers if n in scores]
            if not ids:
                continue
            cells = []
            for task in TASKS:
                unit = sum(scores[n][task]["bps"] for n in ids) / len(ids)
                pooled = sum(scores[n][task]["bps_pooled"] for n in ids) / len(ids)
                cells.append(f"{unit:+.3f} ({pooled:+.3f})")
            print(f"{name:>24} n={len(ids):2d}  " + "  ".join(cells))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
