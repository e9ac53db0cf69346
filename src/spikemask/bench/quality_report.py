"""Table and figure of the quality benchmark (:mod:`spikemask.bench.quality`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from spikemask.evaluation.report import markdown_table

__all__ = ["plot_quality", "quality_table", "win_counts"]

ACTIVITY = ("co_smoothing", "forward_prediction", "inter_region", "intra_region")
TITLES = {
    "co_smoothing": "co-smoothing",
    "forward_prediction": "forward prediction",
    "inter_region": "inter-region",
    "intra_region": "intra-region",
}
#: (first model, second model): the comparisons the benchmark exists to answer
COMPARISONS = (
    ("MtM scratch", "linear"),
    ("MtM scratch", "temporal scratch"),
    ("MtM pre-trained", "MtM scratch"),
    ("MtM pre-trained", "linear"),
)


def _group_means(
    results: dict[str, dict[str, Any]], groups_of: dict[str, str], task: str, metric: str
) -> dict[str, dict[str, float]]:
    from spikemask.bench.quality import group_means

    return group_means(results, groups_of, task, metric)


def _fmt(value: float | None) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{value:.3f}"


def _group_rows(results, groups_of) -> list[str]:
    groups = list(dict.fromkeys(groups_of.values()))
    header = ["held out", "model", *(TITLES[t] for t in ACTIVITY), "choice acc"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    per_unit = {t: _group_means(results, groups_of, t, "bps") for t in ACTIVITY}
    pooled = {t: _group_means(results, groups_of, t, "bps_pooled") for t in ACTIVITY}
    choice = _group_means(results, groups_of, "choice", "accuracy")
    for group in groups:
        for name in results:
            cells = [
                f"{_fmt(per_unit[t].get(group, {}).get(name))} "
                f"({_fmt(pooled[t].get(group, {}).get(name))})"
                for t in ACTIVITY
            ]
            cells.append(_fmt(choice.get(group, {}).get(name)))
            lines.append("| " + " | ".join([group, name, *cells]) + " |")
    return lines


def win_counts(
    results: dict[str, dict[str, Any]], groups_of: dict[str, str]
) -> list[tuple[str, str, str, str, int, int]]:
    """(first, second, task, metric, groups where first > second, groups) per comparison."""
    rows = []
    for first, second in COMPARISONS:
        if first not in results or second not in results:
            continue
        for task in ACTIVITY:
            for metric in ("bps", "bps_pooled"):
                means = _group_means(results, groups_of, task, metric)
                pairs = [
                    (m[first], m[second]) for m in means.values() if first in m and second in m
                ]
                wins = sum(a > b for a, b in pairs)
                rows.append((first, second, task, metric, wins, len(pairs)))
    return rows


def quality_table(results: dict[str, dict[str, Any]], groups_of: dict[str, str]) -> str:
    """Markdown: per held-out group means, win counts, then every session."""
    lines = [
        "Mean over each held-out group's sessions: bits per spike averaged over units "
        "(pooled over units).",
        "",
        *_group_rows(results, groups_of),
        "",
        "Held-out groups where the first model scores higher:",
        "",
        "| comparison | task | per unit | pooled |",
        "|---|---|---|---|",
    ]
    counts = win_counts(results, groups_of)
    for first, second in COMPARISONS:
        for task in ACTIVITY:
            cells = [
                f"{wins} / {total}"
                for a, b, t, _metric, wins, total in counts
                if (a, b, t) == (first, second, task)
            ]
            if cells:
                lines.append(f"| {first} > {second} | {TITLES[task]} | " + " | ".join(cells) + " |")
    lines += ["", "Every session:", "", markdown_table(results)]
    return "\n".join(lines)


def plot_quality(results: dict[str, dict[str, Any]], groups_of: dict[str, str], path: Path) -> None:
    """Bars per held-out group and model, one panel per task; per unit (top), pooled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(groups_of.values()))
    names = list(results)
    fig, axes = plt.subplots(2, len(ACTIVITY), figsize=(16, 6.5), layout="constrained")
    width = 0.8 / max(len(names), 1)
    for column, task in enumerate(ACTIVITY):
        for row, metric in enumerate(("bps", "bps_pooled")):
            ax = axes[row, column]
            means = _group_means(results, groups_of, task, metric)
            for index, name in enumerate(names):
                values = [means.get(g, {}).get(name, np.nan) for g in groups]
                positions = np.arange(len(groups)) + (index - (len(names) - 1) / 2) * width
                ax.bar(positions, values, width, label=name)
            ax.axhline(0.0, color="black", lw=0.6)
            ax.set_xticks(np.arange(len(groups)), groups)
            ax.set_title(f"{TITLES[task]} — {'per unit' if metric == 'bps' else 'pooled'}")
            if column == 0:
                ax.set_ylabel("bits per spike")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(names))
    fig.suptitle("Held-out animals (test splits): mean over each animal's sessions")
    fig.savefig(path, dpi=110)
    plt.close(fig)
