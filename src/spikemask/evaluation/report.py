"""Evaluation reports: a markdown comparison table and figures (PNG).

``results`` maps a model name to the dict :func:`spikemask.evaluation.evaluate.evaluate`
returns. :func:`markdown_table` compares models (rows) over tasks (columns), per session
and averaged; :func:`write_report` writes ``report.md`` with the table and figures from
:mod:`spikemask.evaluation.figures`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spikemask.atomic import write_text_atomic
from spikemask.evaluation.engine import SessionPredictions
from spikemask.evaluation.tasks import ACTIVITY_TASKS

__all__ = ["markdown_table", "write_report"]

_ACTIVITY = {key: name for name, (key, _, _) in ACTIVITY_TASKS.items()}
_LABELS = {
    "choice": "choice accuracy / balanced_accuracy / chance",
    "reward": "reward accuracy / balanced_accuracy / chance",
}
LABEL_LEGEND = (
    "Trial labels: decoder accuracy / balanced_accuracy (mean per-class recall) / chance "
    "(the evaluated split's majority-class rate)."
)


def _columns(results: Mapping[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(task key, header) of every task some model has, in a fixed order."""
    keys: list[str] = []
    for result in results.values():
        for entry in [*result.get("sessions", {}).values(), result.get("mean", {})]:
            keys += [k for k in entry if k not in keys]
    ordered = [k for k in _ACTIVITY if k in keys] + [k for k in _LABELS if k in keys]
    ordered += [k for k in keys if k not in ordered]
    headers = {**{k: f"{v} bps (pooled) / D² (pooled)" for k, v in _ACTIVITY.items()}, **_LABELS}
    return [(k, headers.get(k, f"{k} R²")) for k in ordered]


def _number(value: Any) -> str:
    return "NaN" if value is None else f"{value:.3f}"


def _cell(entry: dict[str, Any] | None, key: str) -> str:
    if entry is None:
        return "–"
    if "skipped" in entry:
        return "skipped"
    if key in _ACTIVITY:
        bps = f"{_number(entry.get('bps'))} ({_number(entry.get('bps_pooled'))})"
        if "poisson_d2" not in entry:  # results written before D² joined them
            return bps
        return f"{bps} / {_number(entry['poisson_d2'])} ({_number(entry.get('poisson_d2_pooled'))})"
    if "accuracy" in entry:
        parts = [entry["accuracy"], entry.get("balanced_accuracy"), entry.get("chance")]
        return " / ".join(_number(v) for v in parts)
    return _number(entry.get("r2"))


def markdown_table(results: Mapping[str, dict[str, Any]]) -> str:
    """Markdown table: one row per (session, model), then the mean over sessions.

    Activity cells are ``mean-over-units bps (pooled bps) / mean-over-units Poisson D²
    (pooled D²)``; label cells are
    ``accuracy / balanced_accuracy / chance`` (see :data:`LABEL_LEGEND`); per-bin behaviour
    cells are R².
    """
    columns = _columns(results)
    header = ["session", "model", *(title for _, title in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    session_ids: list[str] = []
    for result in results.values():
        session_ids += [s for s in result.get("sessions", {}) if s not in session_ids]
    rows = [
        (sid, name, results[name].get("sessions", {}).get(sid))
        for sid in session_ids
        for name in results
    ]
    if len(session_ids) > 1 or not session_ids:
        rows += [("mean", name, results[name].get("mean", {})) for name in results]
    for sid, name, entries in rows:
        cells = [_cell(None if entries is None else entries.get(key), key) for key, _ in columns]
        lines.append("| " + " | ".join([sid, name, *cells]) + " |")
    return "\n".join(lines)


def _notes(results: Mapping[str, dict[str, Any]]) -> list[str]:
    lines = []
    for name, result in results.items():
        model = result.get("model", {})
        facts = [
            f"{k}: {model[k]}"
            for k in ("run", "architecture", "schemes", "features")
            if model.get(k) is not None
        ]
        lines.append(f"- **{name}** — " + ("; ".join(facts) or "baseline"))
    return lines


def write_report(
    results: Mapping[str, dict[str, Any]],
    out_dir: str | Path,
    *,
    predictions: Mapping[str, Mapping[str, SessionPredictions]] | None = None,
) -> Path:
    """Write ``report.md`` and ``figures/*.png`` comparing models.

    Args:
        results: Model name -> evaluation results (same split for all).
        out_dir: Folder to write into (created).
        predictions: Model name -> session id -> :class:`SessionPredictions` (from
            :func:`~spikemask.evaluation.evaluate.run_evaluation`); enables the PSTH and
            behaviour figures. Per-region bars need only ``results``.

    Returns:
        Path of ``report.md``.
    """
    from spikemask.evaluation import figures

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    split = next(iter(results.values())).get("split", "test") if results else "test"
    lines = [
        "# spikemask evaluation",
        "",
        f"Split: `{split}`. Activity tasks: bits per spike, mean over units (NLB pooled in "
        "parentheses), then Poisson D² (deviance explained; BrainWideBench's), mean over units "
        f"(pooled in parentheses). {LABEL_LEGEND} Per-bin behaviour: R² over trials × bins.",
        "",
        *_notes(results),
        "",
        markdown_table(results),
        "",
    ]
    for sid, paths in figures.plot_all(results, out_dir / "figures", predictions).items():
        lines += [f"## {sid}", ""]
        lines += [f"![{p.stem}](figures/{p.name})" for p in paths] + [""]
    report = out_dir / "report.md"
    text = "\n".join(lines)
    write_text_atomic(report, text)
    return report
