"""The quality benchmark: leave one animal out, against the linear baseline.

For every group of sessions (by default an animal, the ``subject`` of each session) held
out in turn, it trains and evaluates on each held-out session:

(a) ``MtM scratch``: the default recipe with its default MtM mixture (the paper's four
    schemes plus temporal masking), from scratch on that session;
(b) ``temporal scratch``: the same with temporal masking;
(c) ``MtM pre-trained``: MtM pre-trained on every session of the *other* groups
    (session-balanced batches), then fine-tuned on the held-out session with the same
    budget as (a) (``epochs`` over the session's training trials, 300 by default, or
    ``steps``). Given several pre-training lengths (``pretrain_steps``), it pre-trains one
    model per length, fine-tunes each on the held-out session, and keeps the one whose
    mean per-unit bits per spike over the activity tasks is highest on that session's
    *validation* split (:func:`validation_score`); each candidate is also reported, as
    ``MtM pre-trained N steps``;
(d) ``linear``: the reference linear baseline;
(e) ``oracle``, on synthetic sessions whose ground truth is given (``truth``): the true
    rates' co-smoothing bits per spike, the ceiling that the others are a share of.

Every model is evaluated on the held-out sessions' test splits (all activity tasks, per
unit and pooled, and trial choice). Settings come from the recipe's defaults and the
validation split only: nothing here looks at a test score before reporting it.

Writes into ``out``: ``results.json`` (every evaluation), ``table.md`` (per group and
overall, with win counts) and ``quality.png``. Resumable: finished runs and evaluations
(``evaluation.json`` in each run folder) are reused.

:func:`run_quality_seeds` repeats the whole benchmark (pre-trainings included) for several
seeds, each into ``out/seed-K``, and reports the mean over seeds with each group's range:
single-seed differences between models are often smaller than the spread between seeds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from spikemask.bench.quality_report import ACTIVITY, mean_over_seeds, plot_quality, quality_table
from spikemask.config import RunConfig, load_config
from spikemask.data.session import Session
from spikemask.errors import SpikemaskError
from spikemask.evaluation.engine import mean_over_sessions
from spikemask.evaluation.tasks import ACTIVITY_TASKS

__all__ = [
    "MODELS",
    "PARTS",
    "QualityConfig",
    "group_sessions",
    "run_quality_benchmark",
    "run_quality_seeds",
    "validation_score",
]

MODELS = ("MtM scratch", "temporal scratch", "MtM pre-trained", "linear", "oracle")
#: The pieces of work of one held-out group, selectable to spread a benchmark over processes.
PARTS = ("pretrain", "mtm", "temporal", "finetune", "linear")
#: The masking of the benchmark's MtM models: the default training mixture.
MTM = "mtm-temporal"
DEFAULT_TASKS = ("co-smoothing", "forward-prediction", "inter-region", "intra-region", "choice")
#: The budget of each from-scratch model and fine-tuning when neither steps nor epochs is
#: given: the recipe's ``train.max_epochs`` (BENCHMARKS.md section 7).
DEFAULT_EPOCHS = 300
#: Pre-training lengths when not given: one pre-training of each, and each held-out session
#: keeps the fine-tuning that is best on its validation split (BENCHMARKS.md section 7).
DEFAULT_PRETRAIN_STEPS = (5000, 15000)
#: Settings the benchmark makes itself (``--set`` may not change them), and the option to use.
OWN_SETTINGS = {
    "train.max_steps": "--steps / --epochs / --pretrain-steps",
    "train.max_epochs": "--steps / --epochs / --pretrain-steps",
    "train.max_minutes": "--steps / --epochs / --pretrain-steps",
    "train.seed": "--seed",
    "masking.schemes": "nothing (MtM and temporal masking are what it compares)",
    "data.session_sampling": "nothing (pre-training samples sessions evenly)",
}


@dataclass
class QualityConfig:
    """Budgets and settings of the quality benchmark.

    Attributes:
        steps: Optimiser steps of each from-scratch model and of each fine-tuning, instead
            of ``epochs`` (give one or the other).
        epochs: Passes over the held-out session's training trials of each from-scratch
            model and of each fine-tuning. A budget in passes grows with the session, as
            ``spikemask train``'s does. When neither is given: :data:`DEFAULT_EPOCHS` (300,
            the recipe's default).
        pretrain_steps: Optimiser steps of the pre-training (on the other groups), or several
            lengths (a tuple): one pre-training per length, and each held-out session keeps
            the fine-tuning that scores best on its validation split. Default (5000, 15000):
            15,000 steps helped the animals with large sessions and hurt Cori, so the
            length is chosen per session (BENCHMARKS.md section 7).
        held_out_by: Session metadata key that groups sessions (``subject`` = animal).
        held_out: Groups to hold out (default: every group, in turn).
        preset: Model / optimisation preset of every trained model.
        sets: ``section.key=value`` overrides applied to every trained model.
        finetune_mode: ``full``, ``session`` or ``staged`` (see :func:`spikemask.finetune`).
        tasks: Evaluation tasks.
        seed: Seed of every run.
        table_only: Train and evaluate nothing: collect what earlier runs into the same
            folder finished (e.g. one process per held-out group) and write the outputs.
        parts: Which of :data:`PARTS` to run (default all). ``finetune`` needs the group's
            ``pretrain`` finished (by this or an earlier process).
        sessions: Held-out session ids to run (default every session of the held-out
            groups); the pre-training is per group and ignores it.
        device: Where models are evaluated: ``auto`` (a GPU when there is one), ``cpu``,
            ``cuda``, ... Training picks its accelerator through ``train.accelerator``.
    """

    steps: int | None = None
    epochs: int | None = None
    pretrain_steps: int | tuple[int, ...] = DEFAULT_PRETRAIN_STEPS
    held_out_by: str = "subject"
    held_out: tuple[str, ...] | None = None
    preset: str = "small"
    sets: tuple[str, ...] = ()
    finetune_mode: str = "staged"
    tasks: tuple[str, ...] = DEFAULT_TASKS
    seed: int = 0
    table_only: bool = False
    parts: tuple[str, ...] = PARTS
    sessions: tuple[str, ...] | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        self.parts = tuple(self.parts)
        if self.steps is not None and self.epochs is not None:
            raise SpikemaskError(
                f"benchmark steps={self.steps} and epochs={self.epochs}; expected one budget "
                "or the other"
            )
        if self.steps is None and self.epochs is None:
            self.epochs = DEFAULT_EPOCHS
        for name in ("steps", "epochs"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise SpikemaskError(f"benchmark {name}={value}; expected a positive integer")
        self.pretrain_steps = _pretrain_lengths(self.pretrain_steps)
        unknown = [part for part in self.parts if part not in PARTS]
        if unknown or not self.parts:
            raise SpikemaskError(
                f"benchmark parts {list(self.parts)}; expected some of {list(PARTS)}"
            )
        from spikemask.devices import resolve_device

        resolve_device(self.device)  # an unknown or absent device fails before any training
        for item in self.sets:
            key = item.split("=", 1)[0].strip()
            if key in OWN_SETTINGS:
                raise SpikemaskError(
                    f"--set {item!r}: the quality benchmark sets {key} itself; "
                    f"use {OWN_SETTINGS[key]}"
                )

    @property
    def pretrain_lengths(self) -> tuple[int, ...]:
        """The pre-training lengths, in steps (one, or several to choose between)."""
        value = self.pretrain_steps
        return (value,) if isinstance(value, int) else tuple(value)

    def pretrain_name(self, steps: int) -> str:
        """Folder name of the pre-training of ``steps`` steps (``pretrain-mtm`` if only one)."""
        return "pretrain-mtm" if len(self.pretrain_lengths) == 1 else f"pretrain-mtm-{steps}"

    def finetune_name(self, steps: int) -> str:
        """Folder name of the fine-tuning from the pre-training of ``steps`` steps."""
        return "mtm-finetuned" if len(self.pretrain_lengths) == 1 else f"mtm-finetuned-{steps}"

    @property
    def partial(self) -> bool:
        """True when this process runs only a share of the benchmark."""
        return set(self.parts) != set(PARTS) or self.sessions is not None

    def budget(self) -> tuple[str, str]:
        """The budget overrides of each from-scratch model and fine-tuning."""
        if self.epochs is not None:
            return f"train.max_epochs={self.epochs}", "train.max_steps=null"
        return f"train.max_steps={self.steps}", "train.max_epochs=null"

    def run_config(
        self,
        masking: str,
        steps: int | None = None,
        sampling: str = "proportional",
    ) -> RunConfig:
        """The configuration of one trained model (``steps`` = None: the session budget)."""
        from spikemask.masking import MaskingConfig

        schemes = json.dumps(list(MaskingConfig.preset(masking).schemes))
        return load_config(
            preset=self.preset,
            sets=[
                *self.sets,
                *(
                    self.budget()
                    if steps is None
                    else (f"train.max_steps={steps}", "train.max_epochs=null")
                ),
                "train.max_minutes=null",
                f"train.seed={self.seed}",
                "train.progress_bar=false",
                f"masking.schemes={schemes}",
                f"data.session_sampling={sampling}",
            ],
        )


def _pretrain_lengths(value: int | Sequence[int]) -> int | tuple[int, ...]:
    """``pretrain_steps`` checked: one length as an int, several as a tuple."""
    lengths = (value,) if isinstance(value, int) else tuple(value)
    if (
        not lengths
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in lengths)
        or len(set(lengths)) != len(lengths)
    ):
        raise SpikemaskError(
            f"benchmark pretrain_steps={value}; expected a positive integer, or several "
            "different ones to choose between"
        )
    return lengths[0] if len(lengths) == 1 else lengths


def group_sessions(sessions: Sequence[Session], key: str) -> dict[str, list[Session]]:
    """Sessions grouped by a metadata key (e.g. ``subject``), groups in first-seen order."""
    groups: dict[str, list[Session]] = {}
    for session in sessions:
        value = session.metadata.get(key)
        if value in (None, ""):
            raise SpikemaskError(
                f"session {session.session_id!r} has no {key!r} in its metadata; the quality "
                f"benchmark holds out by {key!r} (set --held-out-by to another key)"
            )
        groups.setdefault(str(value), []).append(session)
    return groups


_FINISHED = "bench-finished.json"


def _done(run: Path) -> bool:
    """Whether the benchmark finished training ``run`` (a killed run is resumed, not used)."""
    return (run / _FINISHED).is_file() and (
        run / "checkpoints" / "best" / "model.safetensors"
    ).is_file()


def _resumable(run: Path) -> bool:
    from spikemask.training.rundir import RESUME_DIR

    return (run / RESUME_DIR / "last.ckpt").is_file()


def _finished(run: Path, result: Any) -> None:
    if getattr(result, "interrupted", False):
        raise SpikemaskError(f"training into {run} was interrupted; run the benchmark again")
    (run / _FINISHED).write_text(
        json.dumps({"steps": result.steps, "seconds": round(result.elapsed_s, 1)}) + "\n"
    )


class _Bench:
    """State of one benchmark run: output folder, config, logger and results."""

    def __init__(
        self,
        out: Path,
        config: QualityConfig,
        log: Callable[[str], None],
        linear_dir: Path | None = None,
        truth: Mapping[str, str | Path] | None = None,
    ) -> None:
        self.out, self.config, self.log = out, config, log
        self.linear_dir = linear_dir or out / "linear"
        self.truth = dict(truth or {})
        self.results: dict[str, dict[str, Any]] = {}
        self.groups_of: dict[str, str] = {}
        self.timings: dict[str, float] = {}

    def timed(self, label: str, work: Callable[[], object]) -> None:
        started = time.perf_counter()
        self.log(f"{label} ...")
        work()
        self.timings[label] = round(time.perf_counter() - started, 1)
        self.log(f"{label}: {self.timings[label]:.0f} s")

    def evaluate(self, run: Path, session: Session) -> dict[str, Any]:
        from spikemask.evaluation.evaluate import evaluate

        path = run / "evaluation.json"
        if not path.is_file():
            from spikemask.api import load_run

            model = load_run(run, device=self.config.device)
            result = evaluate(model, [session], tasks=self.config.tasks, progress=False)
            path.write_text(json.dumps(result, indent=1))
        return json.loads(path.read_text())

    def linear(self, session: Session) -> dict[str, Any]:
        from spikemask.evaluation.evaluate import evaluate_linear_baseline

        path = self.linear_dir / f"{session.session_id}.json"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            self.timed(
                f"linear baseline on {session.session_id}",
                lambda: path.write_text(
                    json.dumps(
                        evaluate_linear_baseline(
                            [session], tasks=self.config.tasks, progress=False
                        ),
                        indent=1,
                    )
                ),
            )
        return json.loads(path.read_text())

    def add_oracle(self, session: Session, group: str) -> None:
        """The true rates' co-smoothing on the test split, for a session with ground truth."""
        if session.session_id not in self.truth:
            return
        from spikemask.data.synthetic import load_true_rates
        from spikemask.evaluation.metrics import bits_per_spike, bits_per_spike_pooled

        rates = load_true_rates(self.truth[session.session_id])["test"]
        spikes = session.split("test").spikes
        if rates.shape != spikes.shape:
            raise SpikemaskError(
                f"true rates of {session.session_id!r} have shape {rates.shape}; expected the "
                f"test split's {spikes.shape} (truth/ of another session?)"
            )
        entry = {
            "bps": bits_per_spike(rates, spikes),
            "bps_pooled": bits_per_spike_pooled(rates, spikes),
            "num_units": int(spikes.shape[-1]),
        }
        result = {"sessions": {session.session_id: {"co_smoothing": entry}}, "split": "test"}
        self.add("oracle", group, {**result, "model": "true rates"})

    def add(self, name: str, group: str, result: dict[str, Any]) -> None:
        entry = self.results.setdefault(
            name, {"sessions": {}, "split": result.get("split"), "model": result.get("model")}
        )
        entry["sessions"].update(result["sessions"])
        for session_id in result["sessions"]:
            self.groups_of[session_id] = group


def _train_scratch(bench: _Bench, session: Session, group: str, part: str) -> Path:
    from spikemask.training.run import train

    run = bench.out / "runs" / group / session.session_id / f"{part}-scratch"
    if not _done(run):
        config = bench.config.run_config(MTM if part == "mtm" else part)
        bench.timed(
            f"{part} from scratch on {session.session_id}",
            lambda: _finished(run, train([session], run, config=config, resume=_resumable(run))),
        )
    return run


def _pretrain(bench: _Bench, group: str, others: list[Session], steps: int) -> Path:
    from spikemask.training.run import train

    run = bench.out / "runs" / group / bench.config.pretrain_name(steps)
    if not _done(run):
        config = bench.config.run_config(MTM, steps, "balanced")
        bench.timed(
            f"MtM pre-training without {group} ({len(others)} sessions, {steps} steps)",
            lambda: _finished(run, train(others, run, config=config, resume=_resumable(run))),
        )
    return run


def _finetune(bench: _Bench, pretrained: Path, session: Session, group: str, name: str) -> Path:
    from spikemask.training.finetune import finetune

    run = bench.out / "runs" / group / session.session_id / name
    if not _done(run):
        config = bench.config.run_config(MTM)
        bench.timed(
            f"MtM fine-tuning on {session.session_id} from {pretrained.name}",
            lambda: _finished(
                run,
                finetune(
                    pretrained,
                    [session],
                    run,
                    mode=bench.config.finetune_mode,
                    config=config,
                    resume=_resumable(run),
                ),
            ),
        )
    return run


def validation_score(result: Mapping[str, Any]) -> float:
    """How a fine-tuning is chosen among several: the mean over sessions and activity tasks
    of the bits per spike averaged over units, of an evaluation on the validation split.

    Raises:
        SpikemaskError: The evaluation has no activity task.
    """
    values = [
        entry[task]["bps"]
        for entry in result["sessions"].values()
        for task in ACTIVITY
        if isinstance(entry.get(task), dict) and entry[task].get("bps") is not None
    ]
    if not values:
        raise SpikemaskError(
            f"validation evaluation has none of the activity tasks {list(ACTIVITY)}; choosing "
            "between pre-training lengths needs at least one"
        )
    return sum(values) / len(values)


_CHOICE = "pretraining-choice.json"


def _choose(bench: _Bench, folder: Path, session: Session, evaluate: bool) -> dict[str, Any] | None:
    """Which pre-training length the held-out session keeps, from its validation split.

    Each candidate fine-tuning's validation evaluation is ``validation.json`` in its folder
    (made here when ``evaluate``); the choice is written to ``folder/pretraining-choice.json``.
    None when a candidate has not finished (or, without ``evaluate``, has no validation
    evaluation yet).
    """
    config = bench.config
    path = folder / _CHOICE
    if path.is_file():
        choice = json.loads(path.read_text())
        if [int(k) for k in choice["scores"]] == list(config.pretrain_lengths):
            return choice
    scores: dict[str, float] = {}
    for steps in config.pretrain_lengths:
        run = folder / config.finetune_name(steps)
        val = run / "validation.json"
        if not val.is_file():
            if not (evaluate and _done(run)):
                return None
            from spikemask.api import load_run
            from spikemask.evaluation.evaluate import evaluate as evaluate_model

            model = load_run(run, device=config.device)
            tasks = [t for t in config.tasks if t in ACTIVITY_TASKS] or list(ACTIVITY_TASKS)
            result = evaluate_model(model, [session], split="val", tasks=tasks, progress=False)
            val.write_text(json.dumps(result, indent=1))
        scores[str(steps)] = round(validation_score(json.loads(val.read_text())), 6)
    best = max(config.pretrain_lengths, key=lambda steps: scores[str(steps)])  # ties: first
    choice = {
        "chosen_steps": best,
        "chosen": config.finetune_name(best),
        "scores": scores,
        "criterion": "validation split: mean per-unit bits per spike over the activity tasks",
    }
    path.write_text(json.dumps(choice, indent=1) + "\n")
    bench.log(
        f"{session.session_id}: pre-training of {best} steps chosen on validation "
        f"({', '.join(f'{k}: {v:+.4f}' for k, v in scores.items())})"
    )
    return choice


def _add_pretrained(
    bench: _Bench, folder: Path, session: Session, group: str, evaluate: bool
) -> list[str]:
    """Add the pre-trained model's test evaluation (the chosen length's, when there are
    several, and each candidate's as ``MtM pre-trained N steps``); the names of what is
    not finished."""
    config = bench.config
    lengths = config.pretrain_lengths
    if len(lengths) == 1:
        path = folder / config.finetune_name(lengths[0]) / "evaluation.json"
        if not path.is_file():
            return ["MtM pre-trained"]
        bench.add("MtM pre-trained", group, json.loads(path.read_text()))
        return []
    missing = []
    for steps in lengths:
        path = folder / config.finetune_name(steps) / "evaluation.json"
        if path.is_file():
            bench.add(f"MtM pre-trained {steps} steps", group, json.loads(path.read_text()))
        else:
            missing.append(f"MtM pre-trained {steps} steps")
    choice = _choose(bench, folder, session, evaluate)
    chosen = folder / choice["chosen"] / "evaluation.json" if choice else None
    if chosen is None or not chosen.is_file():
        return [*missing, "MtM pre-trained"]
    result = json.loads(chosen.read_text())
    bench.add(
        "MtM pre-trained",
        group,
        {**result, "model": f"{result.get('model')} (chosen on validation)"},
    )
    return missing


def run_quality_benchmark(
    sessions: Sequence[Session],
    out: str | Path,
    config: QualityConfig | None = None,
    *,
    log: Callable[[str], None] = print,
    linear_dir: str | Path | None = None,
    truth: Mapping[str, str | Path] | None = None,
) -> dict[str, Any]:
    """Run the leave-one-group-out benchmark (see the module docstring).

    Args:
        sessions: Every session; at least two groups.
        out: Output folder (created; reused to resume).
        config: Budgets and settings.
        log: Where progress lines go.
        linear_dir: Folder of the linear baseline's evaluations (default ``out/linear``).
            The baseline does not depend on the seed, so runs with other seeds can share it.
        truth: Session id -> folder of a synthetic session written with its ground truth
            (``truth/``, see :func:`spikemask.data.synthetic.load_true_rates`); those
            sessions get an ``oracle`` row (co-smoothing of the true rates).

    Returns:
        ``{"models": {name: evaluation results}, "groups": {session id: group},
        "config": {...}}`` (also written to ``out/results.json``).
    """
    config = config or QualityConfig()
    groups = group_sessions(sessions, config.held_out_by)
    held = _check_selection(groups, config)
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    linear = Path(linear_dir).expanduser() if linear_dir else None
    bench = _Bench(out, config, log, linear, truth)
    if config.table_only:
        for group in held:
            _collect(bench, group, groups[group])
        return write_outputs(bench.results, bench.groups_of, out, config, bench.timings)
    for group in held:
        others = [s for g, members in groups.items() if g != group for s in members]
        pretrained = {
            steps: bench.out / "runs" / group / config.pretrain_name(steps)
            for steps in config.pretrain_lengths
        }
        if "pretrain" in config.parts:
            pretrained = {steps: _pretrain(bench, group, others, steps) for steps in pretrained}
        for session in groups[group]:
            if config.sessions is None or session.session_id in config.sessions:
                _run_session(bench, session, group, pretrained)
    if config.partial:  # other processes write into the same folder: --table-only joins
        bench.log("part done; join the parts with --table-only")
        return {"models": bench.results, "groups": bench.groups_of, "timings_s": bench.timings}
    return write_outputs(bench.results, bench.groups_of, out, config, bench.timings)


def run_quality_seeds(
    sessions: Sequence[Session],
    out: str | Path,
    config: QualityConfig | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    *,
    log: Callable[[str], None] = print,
    truth: Mapping[str, str | Path] | None = None,
) -> dict[str, Any]:
    """Run the benchmark once per seed, into ``out/seed-K``, then average over the seeds.

    Every seed repeats everything that has randomness (pre-trainings, from-scratch models,
    fine-tunings); ``config.seed`` is replaced by each seed in turn. The linear baseline has
    no seed: it is fitted once, into ``out/linear``. ``parts``, ``sessions`` and
    ``table_only`` apply to every seed, so one process per seed (or per part) and a final
    ``table_only`` call work as for one seed.

    Returns:
        ``{"models": the mean over seeds, "per_seed": {seed: models}, "groups", "seeds",
        "config"}`` (also in ``out/results.json``, with ``table.md`` and ``quality.png``);
        for a partial run, the per-seed results only.
    """
    config = config or QualityConfig()
    seeds = tuple(int(seed) for seed in seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise SpikemaskError(f"seeds {list(seeds)}; expected one or more different seeds")
    out = Path(out).expanduser()
    per_seed: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        log(f"seed {seed} -> {out / f'seed-{seed}'}")
        per_seed[seed] = run_quality_benchmark(
            sessions,
            out / f"seed-{seed}",
            replace(config, seed=seed),
            log=log,
            linear_dir=out / "linear",
            truth=truth,
        )
    models = {seed: summary["models"] for seed, summary in per_seed.items()}
    if config.partial and not config.table_only:
        return {"per_seed": models, "seeds": list(seeds)}
    groups_of: dict[str, str] = {}
    for summary in per_seed.values():
        groups_of.update(summary["groups"])
    averaged, left_out = mean_over_seeds(models)
    for line in left_out:
        log(line)
    for result in averaged.values():
        result["mean"] = mean_over_sessions(result["sessions"])
    settings = {
        k: v
        for k, v in vars(config).items()
        if k not in ("table_only", "parts", "sessions", "device", "seed")
    }
    summary = {
        "models": averaged,
        "per_seed": {
            seed: {name: {"mean": result["mean"]} for name, result in m.items()}
            for seed, m in models.items()
        },
        "groups": groups_of,
        "seeds": list(seeds),
        "config": {**settings, "seeds": list(seeds)},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=list))
    (out / "table.md").write_text(quality_table(averaged, groups_of, models) + "\n")
    if averaged:
        plot_quality(averaged, groups_of, out / "quality.png", models)
    return summary


def _check_selection(groups: dict[str, list[Session]], config: QualityConfig) -> list[str]:
    """The held-out groups, after checking the groups and sessions asked for exist."""
    held = list(config.held_out) if config.held_out else list(groups)
    if len(groups) < 2:
        raise SpikemaskError(
            f"all sessions belong to one {config.held_out_by!r} group {sorted(groups)}; holding "
            "one out needs sessions of at least two groups to pre-train on"
        )
    unknown = [g for g in held if g not in groups]
    if unknown:
        raise SpikemaskError(
            f"held-out group(s) {unknown} are not among the sessions' "
            f"{config.held_out_by!r} values {sorted(groups)}"
        )
    if config.sessions is not None:
        known = {s.session_id for group in held for s in groups[group]}
        missing = sorted(set(config.sessions) - known)
        if missing:
            raise SpikemaskError(
                f"session(s) {missing} are not among the held-out groups' sessions {sorted(known)}"
            )
    return held


def _run_session(bench: _Bench, session: Session, group: str, pretrained: dict[int, Path]) -> None:
    """This process's parts of the benchmark on one held-out session (``pretrained``: the
    group's pre-training of each length)."""
    parts = bench.config.parts
    for part, name in (("mtm", "MtM scratch"), ("temporal", "temporal scratch")):
        if part in parts:
            run = _train_scratch(bench, session, group, part)
            bench.add(name, group, bench.evaluate(run, session))
    if "finetune" in parts:
        unfinished = [str(run) for run in pretrained.values() if not _done(run)]
        if unfinished:
            raise SpikemaskError(
                f"the pre-training without {group} ({', '.join(unfinished)}) has not "
                "finished; run the benchmark with --parts pretrain first"
            )
        folder = bench.out / "runs" / group / session.session_id
        for steps, run in pretrained.items():
            bench.evaluate(
                _finetune(bench, run, session, group, bench.config.finetune_name(steps)), session
            )
        _add_pretrained(bench, folder, session, group, evaluate=True)
    if "linear" in parts:
        bench.add("linear", group, bench.linear(session))
    bench.add_oracle(session, group)
    if not bench.config.partial:
        write_outputs(bench.results, bench.groups_of, bench.out, bench.config, bench.timings)


def _collect(bench: _Bench, group: str, sessions: list[Session]) -> None:
    """Add the finished evaluations of one group's sessions (nothing is trained); a model
    that has not finished on a session is left out of that session's rows and named."""
    for session in sessions:
        folder = bench.out / "runs" / group / session.session_id
        paths = {
            "MtM scratch": folder / "mtm-scratch" / "evaluation.json",
            "temporal scratch": folder / "temporal-scratch" / "evaluation.json",
            "MtM pre-trained": None,  # the one length's, or the one chosen on validation
            "linear": bench.linear_dir / f"{session.session_id}.json",
        }
        missing: list[str] = []
        for name, path in paths.items():
            if path is None:
                missing += _add_pretrained(bench, folder, session, group, evaluate=False)
            elif path.is_file():
                bench.add(name, group, json.loads(path.read_text()))
            else:
                missing.append(name)
        if missing:
            bench.log(
                f"{session.session_id} ({group}): not finished, left out: {', '.join(missing)}"
            )
        several = len(bench.config.pretrain_lengths) > 1
        if several and "MtM pre-trained" in missing and (folder / "mtm-finetuned").is_dir():
            bench.log(
                f"  {folder} holds a fine-tuning from one pre-training length (mtm-finetuned); "
                "collect it with that --pretrain-steps N"
            )
        bench.add_oracle(session, group)


def write_outputs(
    results: dict[str, dict[str, Any]],
    groups_of: dict[str, str],
    out: Path,
    config: QualityConfig,
    timings: dict[str, float],
) -> dict[str, Any]:
    """Write ``results.json``, ``table.md`` and ``quality.png``; return the summary."""
    for result in results.values():
        result["mean"] = mean_over_sessions(result["sessions"])
    summary = {
        "models": results,
        "groups": groups_of,
        "config": {
            k: v
            for k, v in vars(config).items()
            if k not in ("table_only", "parts", "sessions", "device")
        },
        "timings_s": timings,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=list))
    (out / "table.md").write_text(quality_table(results, groups_of) + "\n")
    if results:
        plot_quality(results, groups_of, out / "quality.png")
    return summary
