"""Table and figure of the quality benchmark (:mod:`spikemask.bench.quality`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from spikemask.evaluation.report import markdown_table
from spikemask.evaluation.tasks import ACTIVITY_TASKS

__all__ = [
    "group_means",
    "mean_over_seeds",
    "oracle_shares",
    "plot_quality",
    "quality_table",
    "seed_spread",
    "win_counts",
]

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


def mean_over_seeds(
    per_seed: dict[int, dict[str, dict[str, Any]]],
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Every model's per-session metrics averaged over seeds.

    Args:
        per_seed: Seed -> the ``models`` of that seed's benchmark results.

    Returns:
        The averaged ``models`` (same layout as one seed's, each metric of
        :data:`~spikemask.evaluation.engine.MEAN_METRICS` averaged over the seeds where it
        is defined, and ``num_seeds``), and one line per (model, session) left out because
        some seed has not finished it.
    """
    from spikemask.evaluation.engine import MEAN_METRICS

    seeds = list(per_seed)
    names = [n for n in per_seed[seeds[0]] if all(n in per_seed[k] for k in seeds[1:])]
    left_out = [
        f"{name}: not run for every seed, left out"
        for models in per_seed.values()
        for name in models
        if name not in names
    ]
    averaged: dict[str, dict[str, Any]] = {}
    for name in names:
        runs = [per_seed[k][name]["sessions"] for k in seeds]
        first = per_seed[seeds[0]][name]
        entry = {"sessions": {}, "split": first.get("split"), "model": first.get("model")}
        for session_id in runs[0]:
            if not all(session_id in run for run in runs):
                left_out.append(f"{name} on {session_id}: not finished for every seed, left out")
                continue
            tasks: dict[str, Any] = {}
            for task, value in runs[0][session_id].items():
                if not isinstance(value, dict) or "skipped" in value:
                    continue
                metrics: dict[str, Any] = {}
                for metric in MEAN_METRICS:
                    values = [run[session_id].get(task, {}).get(metric) for run in runs]
                    values = [v for v in values if v is not None]
                    if values:
                        metrics[metric] = float(np.mean(values))
                metrics["num_seeds"] = len(runs)
                tasks[task] = metrics
            entry["sessions"][session_id] = tasks
        averaged[name] = entry
    return averaged, list(dict.fromkeys(left_out))


def _same_runs(
    per_seed: dict[int, dict[str, dict[str, Any]]], results: dict[str, dict[str, Any]]
) -> dict[int, dict[str, dict[str, Any]]]:
    """Each seed's models cut to the models and sessions of the mean over seeds."""
    return {
        seed: {
            name: {
                "sessions": {
                    s: v for s, v in models[name]["sessions"].items() if s in result["sessions"]
                }
            }
            for name, result in results.items()
            if name in models
        }
        for seed, models in per_seed.items()
    }


def seed_spread(
    per_seed: dict[int, dict[str, dict[str, Any]]],
    groups_of: dict[str, str],
    task: str,
    metric: str,
) -> dict[str, dict[str, list[float]]]:
    """Group -> model -> the group's mean of ``metric`` of ``task``, one value per seed."""
    spread: dict[str, dict[str, list[float]]] = {}
    for models in per_seed.values():
        for group, means in group_means(models, groups_of, task, metric).items():
            for name, value in means.items():
                spread.setdefault(group, {}).setdefault(name, []).append(value)
    return spread


def _seed_rows(per_seed, groups_of, results) -> list[str]:
    """Range over seeds of each group mean, and the seeds where each comparison holds."""
    groups = list(dict.fromkeys(groups_of.values()))
    seeds = len(per_seed)
    per_seed = _same_runs(per_seed, results)
    header = ["held out", "model", *(TITLES[t] for t in ACTIVITY)]
    lines = [
        f"Lowest – highest over the {seeds} seeds of each group's mean, per unit (pooled):",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    spreads = {
        (t, m): seed_spread(per_seed, groups_of, t, m)
        for t in ACTIVITY
        for m in ("bps", "bps_pooled")
    }

    def span(values: list[float] | None) -> str:
        return "—" if not values else f"{_fmt(min(values))} – {_fmt(max(values))}"

    for group in groups:
        for name in results:
            cells = [
                f"{span(spreads[t, 'bps'].get(group, {}).get(name))} "
                f"({span(spreads[t, 'bps_pooled'].get(group, {}).get(name))})"
                for t in ACTIVITY
            ]
            lines.append("| " + " | ".join([group, name, *cells]) + " |")
    lines += [
        "",
        "Seeds in which the first model scores higher, per held-out group, per unit (pooled):",
        "",
        "| comparison | task | " + " | ".join(groups) + " |",
        "|---|---|" + "---|" * len(groups),
    ]
    for first, second in COMPARISONS:
        if first not in results or second not in results:
            continue
        for task in ACTIVITY:
            cells = []
            for group in groups:
                counts = []
                for metric in ("bps", "bps_pooled"):
                    by_model = spreads[task, metric].get(group, {})
                    a, b = by_model.get(first, []), by_model.get(second, [])
                    wins = sum(x > y for x, y in zip(a, b, strict=False))
                    counts.append(f"{wins} / {min(len(a), len(b))}")
                cells.append(f"{counts[0]} ({counts[1]})")
            lines.append(f"| {first} > {second} | {TITLES[task]} | " + " | ".join(cells) + " |")
    return lines


def oracle_shares(
    results: dict[str, dict[str, Any]], groups_of: dict[str, str]
) -> dict[str, dict[str, tuple[float, float]]]:
    """Group -> model -> its co-smoothing bits per spike as a share of the ``oracle``'s
    (true rates), per unit and pooled, each over the group's sessions that have both."""
    shares: dict[str, dict[str, tuple[float, float]]] = {}
    if "oracle" not in results:
        return shares
    truth = results["oracle"]["sessions"]
    for name, result in results.items():
        if name == "oracle":
            continue
        both = {s: e for s, e in result["sessions"].items() if s in truth and "co_smoothing" in e}
        for group in dict.fromkeys(groups_of[s] for s in both):
            ids = [s for s in both if groups_of[s] == group]
            ratio = []
            for metric in ("bps", "bps_pooled"):
                model = np.mean([both[s]["co_smoothing"][metric] for s in ids])
                oracle = np.mean([truth[s]["co_smoothing"][metric] for s in ids])
                ratio.append(float(model / oracle))
            shares.setdefault(group, {})[name] = (ratio[0], ratio[1])
    return shares


def _oracle_rows(results, groups_of) -> list[str]:
    shares = oracle_shares(results, groups_of)
    names = [n for n in results if n != "oracle"]
    lines = [
        "Co-smoothing as a share of the oracle's (true rates), per unit (pooled):",
        "",
        "| held out | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for group, by_model in shares.items():
        cells = [
            f"{by_model[n][0]:.0%} ({by_model[n][1]:.0%})" if n in by_model else "—" for n in names
        ]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return lines


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


def quality_table(
    results: dict[str, dict[str, Any]],
    groups_of: dict[str, str],
    per_seed: dict[int, dict[str, dict[str, Any]]] | None = None,
) -> str:
    """Markdown: per held-out group means, win counts, then every session.

    With ``per_seed`` (seed -> that seed's ``models``; ``results`` is then their mean, see
    :func:`mean_over_seeds`), also the range over seeds and the seeds where each comparison
    holds.
    """
    over = ""
    if per_seed:
        over = f", then over {len(per_seed)} seeds ({', '.join(map(str, per_seed))})"
    lines = [
        "Mean over each held-out group's sessions: bits per spike averaged over units "
        f"(pooled over units){over}.",
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
    if "oracle" in results:
        lines += ["", *_oracle_rows(results, groups_of)]
    if per_seed:
        lines += ["", *_seed_rows(per_seed, groups_of, results)]
    every = "Every session (mean over seeds):" if per_seed else "Every session:"
    lines += ["", every, "", markdown_table(results)]
    return "\n".join(lines)


def plot_quality(
    results: dict[str, dict[str, Any]],
    groups_of: dict[str, str],
    path: Path,
    per_seed: dict[int, dict[str, dict[str, Any]]] | None = None,
) -> None:
    """Bars per held-out group and model, one panel per task; per unit (top), pooled.

    With ``per_seed`` the bars are the mean over seeds and the whiskers span the lowest to
    the highest seed.
    """
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
            spread = (
                seed_spread(_same_runs(per_seed, results), groups_of, task, metric)
                if per_seed
                else {}
            )
            for index, name in enumerate(names):
                values = np.array([means.get(g, {}).get(name, np.nan) for g in groups])
                positions = np.arange(len(groups)) + (index - (len(names) - 1) / 2) * width
                yerr = None
                if spread:
                    ranges = [spread.get(g, {}).get(name) or [np.nan] for g in groups]
                    low = np.array([min(r) for r in ranges])
                    high = np.array([max(r) for r in ranges])
                    # the mean of equal values can fall one rounding step outside them
                    spans = np.stack([values - low, high - values])
                    yerr = np.clip(np.nan_to_num(spans), 0.0, None)
                ax.bar(positions, values, width, label=name, yerr=yerr, capsize=2)
            ax.axhline(0.0, color="black", lw=0.6)
            ax.set_xticks(np.arange(len(groups)), groups)
            ax.set_title(f"{TITLES[task]} — {'per unit' if metric == 'bps' else 'pooled'}")
            if column == 0:
                ax.set_ylabel("bits per spike")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(names))
    title = "Held-out animals (test splits): mean over each animal's sessions"
    if per_seed:
        title += f" and {len(per_seed)} seeds (whiskers: lowest to highest seed)"
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
