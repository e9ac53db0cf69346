"""Table and figure of the quality benchmark (:mod:`spikemask.bench.quality`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from spikemask.evaluation.report import markdown_table
from spikemask.evaluation.tasks import ACTIVITY_TASKS

__all__ = ["group_means", "plot_quality", "quality_table", "win_counts"]

#: JSON key -> title of every activity task, in the evaluation's order
TITLES = {key: name for name, (key, _scheme, _causal) in ACTIVITY_TASKS.items()}
ACTIVITY = tuple(TITLES)
#: (first model, second model): the comparisons the benchmark exists to answer
COMPARISONS = (
    ("MtM scratch", "linear"),
    ("MtM scratch", "temporal scratch"),
    ("MtM pre-trained", "MtM scratch"),
    ("MtM pre-trained", "linear"),
)


def group_means(
    results: dict[str, dict[str, Any]], groups_of: dict[str, str], task: str, metric: str
) -> dict[str, dict[str, float]]:
    """Group -> model -> mean of ``metric`` of ``task`` over the group's sessions."""
    values: dict[str, dict[str, list[float]]] = {}
    for name, result in results.items():
        for session_id, entry in result["sessions"].items():
            value = entry.get(task, {}).get(metric)
            if value is not None:
                values.setdefault(groups_of[session_id], {}).setdefault(name, []).append(value)
    return {
        group: {name: float(np.mean(v)) for name, v in models.items()}
        for group, models in values.items()
    }


def _fmt(value: float | None) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{value:.3f}"


def _group_rows(results, groups_of) -> list[str]:
    groups = list(dict.fromkeys(groups_of.values()))
    header = ["held out", "model", *(TITLES[t] for t in ACTIVITY), "choice acc"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    per_unit = {t: group_means(results, groups_of, t, "bps") for t in ACTIVITY}
    pooled = {t: group_means(results, groups_of, t, "bps_pooled") for t in ACTIVITY}
    choice = group_means(results, groups_of, "choice", "accuracy")
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
                means = group_means(results, groups_of, task, metric)
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
            means = group_means(results, groups_of, task, metric)
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
