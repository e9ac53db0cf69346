"""Synthetic multi-region spiking sessions with known ground truth.

Several brain regions carry their own nonlinear latent dynamics with directed coupling
between regions (see :mod:`spikemask.data.synthetic._dynamics`); IBL-like trials (block prior,
stimulus side and contrast, reaction time) drive them; a decision region's latent is read
out as the choice, which then drives movement; wheel speed and whisker motion energy are
per-bin behaviour. Every unit's log-rate is a loading of its own region's latents plus a
baseline (per-unit mean rates log-normal around ``mean_rate_hz``); counts are Poisson.

Behaviour, per trial: ``choice`` (-1 left / +1 right, same convention as the stimulus
side), ``reward`` (1 when the choice matches the side, also on zero contrast where the side
is invisible), ``block`` (prior probability of a left stimulus: 0.5, then 0.2 / 0.8 blocks),
``contrast_left``, ``contrast_right``, ``reaction_time_s``; per bin: ``wheel-speed`` and
``whisker-motion-energy`` (non-negative, arbitrary units).

``K`` sessions ("animals") share the dynamics but record different units from different
region subsets (always including the first ``core_regions`` regions). The same seed gives
byte-identical output. On disk each session uses the IBL parquet layout plus its truth::

    <out>/<session_id>/data/{train,val,test}-00000-of-00001.parquet
    <out>/<session_id>/truth/{split}_rates.npy     (K, T, N) float32 Poisson means per bin
    <out>/<session_id>/truth/{split}_latents.npy   (K, T, R·latent_dim) float32
    <out>/<session_id>/truth/truth.json            config, seed, region graph
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spikemask.data.parquet import write_session
from spikemask.data.session import SPLITS, Session, TrialSet
from spikemask.data.synthetic import _dynamics as dyn
from spikemask.errors import SpikemaskError

__all__ = [
    "SyntheticConfig",
    "SyntheticSession",
    "generate_sessions",
    "load_true_rates",
    "synthesize",
    "write_synthetic",
]


def _is_number(value: Any, *, integer: bool) -> bool:
    allowed = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    return isinstance(value, allowed) and not isinstance(value, bool)


# field -> (lower bound, whether the bound itself is excluded)
_LOWER_BOUNDS = {
    "latent_dim": (1, False), "num_bins": (1, False), "bin_size_s": (0, True),
    "mean_rate_hz": (0, True), "rate_spread": (0, True), "modulation": (0, True),
    "coupling": (0, True), "latent_noise": (0, False), "choice_noise": (0, False),
    "recurrent_gain": (0, False),
}  # fmt: skip


def _int_range(name: str, value: tuple[int, int], minimum: int) -> None:
    if len(value) != 2 or not minimum <= value[0] <= value[1]:
        raise SpikemaskError(
            f"SyntheticConfig.{name}={value}; expected (low, high) with {minimum} <= low <= high"
        )


@dataclass
class SyntheticConfig:
    """Settings of the synthetic generator (validated on construction).

    Attributes:
        num_regions: Simulated regions R (3 to 12); names from ``LGd, VISp, MOs, CA1, PO...``.
        latent_dim: Latent dimensions per region.
        units_per_region: (low, high) units recorded per region, inclusive.
        min_regions_per_session: Fewest regions a session records.
        core_regions: The first ``core_regions`` regions are recorded in every session.
        num_trials: (low, high) trials per session, inclusive.
        num_bins: Time bins per trial (T).
        bin_size_s: Bin width in seconds.
        window_start_s: Window start relative to stimulus onset (must be < 0 < window end).
        align_event: Event name stored with the sessions.
        mean_rate_hz: Mean of the per-unit mean firing rates.
        rate_spread: Standard deviation of the log of per-unit mean rates.
        max_rate_hz: Rates are clipped to this.
        modulation: Typical standard deviation of a unit's log-rate driven by the latents.
        time_constant_s: Latent time constant (leak = bin_size_s / time_constant_s).
        latent_noise: Latent noise standard deviation (trial-to-trial variability).
        recurrent_gain: Gain of each region's own recurrent matrix (~1: slow rotations).
        coupling: Strength of the strongest directed coupling between regions.
        choice_noise: Noise added to the standardised choice evidence.
        split_fractions: Train / val / test fractions of each session's trials.
    """

    num_regions: int = 5
    latent_dim: int = 4
    units_per_region: tuple[int, int] = (20, 60)
    min_regions_per_session: int = 3
    core_regions: int = 2
    num_trials: tuple[int, int] = (150, 250)
    num_bins: int = 100
    bin_size_s: float = 0.02
    window_start_s: float = -0.5
    align_event: str = "stimOn_times"
    mean_rate_hz: float = 4.0
    rate_spread: float = 0.9
    max_rate_hz: float = 200.0
    modulation: float = 0.8
    time_constant_s: float = 0.1
    latent_noise: float = 0.15
    recurrent_gain: float = 1.1
    coupling: float = 1.5
    choice_noise: float = 0.6
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)

    def __post_init__(self) -> None:
        self._check_types()
        self.units_per_region = tuple(self.units_per_region)
        self.num_trials = tuple(self.num_trials)
        self.split_fractions = tuple(float(f) for f in self.split_fractions)
        if not 3 <= self.num_regions <= len(dyn.REGION_POOL):
            raise SpikemaskError(
                f"SyntheticConfig.num_regions={self.num_regions}; expected 3 to "
                f"{len(dyn.REGION_POOL)}"
            )
        if not 1 <= self.core_regions <= self.min_regions_per_session <= self.num_regions:
            raise SpikemaskError(
                f"SyntheticConfig: core_regions={self.core_regions}, min_regions_per_session="
                f"{self.min_regions_per_session}; expected 1 <= core_regions <= "
                f"min_regions_per_session <= num_regions ({self.num_regions})"
            )
        _int_range("units_per_region", self.units_per_region, 1)
        _int_range("num_trials", self.num_trials, 10)
        for name, (bound, strict) in _LOWER_BOUNDS.items():
            value = getattr(self, name)
            if not np.isfinite(value) or value < bound or (strict and value == bound):
                relation = ">" if strict else ">="
                raise SpikemaskError(f"SyntheticConfig.{name}={value}; expected {relation} {bound}")
        self._check_time()
        fractions = self.split_fractions
        if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
            raise SpikemaskError(
                f"SyntheticConfig.split_fractions={fractions}; expected three fractions > 0 "
                "(train, val, test) summing to 1"
            )

    def _check_types(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            kind = str(item.type)
            if kind == "str":
                ok = isinstance(value, str) and bool(value)
            elif kind.startswith("tuple"):
                ok = isinstance(value, tuple | list) and all(
                    _is_number(v, integer="int" in kind) for v in value
                )
            else:
                ok = _is_number(value, integer=kind == "int")
            if not ok:
                raise SpikemaskError(f"SyntheticConfig.{item.name}={value!r}; expected {kind}")

    def _check_time(self) -> None:
        if self.max_rate_hz <= self.mean_rate_hz:
            raise SpikemaskError(
                f"SyntheticConfig.max_rate_hz={self.max_rate_hz}; expected > mean_rate_hz "
                f"({self.mean_rate_hz})"
            )
        if not self.time_constant_s >= self.bin_size_s:
            raise SpikemaskError(
                f"SyntheticConfig.time_constant_s={self.time_constant_s}; expected >= "
                f"bin_size_s ({self.bin_size_s})"
            )
        window_end_s = self.window_start_s + self.num_bins * self.bin_size_s
        if not self.window_start_s < 0 < window_end_s:
            raise SpikemaskError(
                f"SyntheticConfig: window {self.window_start_s} to {window_end_s} s; expected "
                "a window that contains the stimulus onset (window_start_s < 0 < window end)"
            )

    @property
    def region_names(self) -> tuple[str, ...]:
        return dyn.REGION_POOL[: self.num_regions]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items()}


@dataclass(frozen=True, eq=False)
class SyntheticSession:
    """One synthetic session with its ground truth.

    Attributes:
        session: The recorded data (unit_regions set, unit ids unique across sessions).
        true_rates: split -> (K, T, N) float32 Poisson means in spikes per bin.
        latents: split -> (K, T, R·latent_dim) float32 latent state of all regions.
        truth: JSON-ready description (config, seed, region graph, recorded regions).
    """

    session: Session
    true_rates: Mapping[str, np.ndarray]
    latents: Mapping[str, np.ndarray]
    truth: Mapping[str, Any] = field(default_factory=dict)


def _check_seed(num_sessions: int, seed: int) -> None:
    if not _is_number(num_sessions, integer=True) or num_sessions < 1:
        raise SpikemaskError(f"num_sessions={num_sessions!r}; expected an integer >= 1")
    if not _is_number(seed, integer=True) or seed < 0:
        raise SpikemaskError(f"seed={seed!r}; expected an integer >= 0")


def generate_sessions(
    num_sessions: int, *, seed: int, config: SyntheticConfig | None = None
) -> list[SyntheticSession]:
    """Simulate ``num_sessions`` sessions sharing one set of dynamics.

    Session k depends only on (seed, k, config): asking for more sessions appends new ones
    and leaves the first ones unchanged.

    Args:
        num_sessions: Number of sessions (animals), >= 1.
        seed: Non-negative integer; the only source of randomness.
        config: Generator settings; the defaults when None.

    Returns:
        One :class:`SyntheticSession` per session, ids ``synth-<seed>-<k>``.
    """
    _check_seed(num_sessions, seed)
    config = config or SyntheticConfig()
    dynamics, times_s, rngs = _shared_dynamics(config, int(seed), num_sessions)
    return [
        _make_session(index, int(seed), config, dynamics, times_s, rng)
        for index, rng in enumerate(rngs)
    ]


def _shared_dynamics(
    config: SyntheticConfig, seed: int, num_sessions: int
) -> tuple[dyn.Dynamics, np.ndarray, list[np.random.Generator]]:
    """The dynamics of ``seed``, the bin times, and the random source of each session."""
    root = np.random.SeedSequence(seed)
    (dynamics_seed,) = root.spawn(1)
    times_s = dyn.bin_times_s(config.num_bins, config.bin_size_s, config.window_start_s)
    dynamics = dyn.build_dynamics(
        region_names=config.region_names,
        latent_dim=config.latent_dim,
        leak=config.bin_size_s / config.time_constant_s,
        noise_std=config.latent_noise,
        recurrent_gain=config.recurrent_gain,
        coupling=config.coupling,
        times_s=times_s,
        rng=np.random.default_rng(dynamics_seed),
    )
    return dynamics, times_s, [np.random.default_rng(c) for c in root.spawn(num_sessions)]


def _pick_units(config: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(N,) region index of every unit (core regions always included) and (R',) regions."""
    optional = np.arange(config.core_regions, config.num_regions)
    count = int(rng.integers(config.min_regions_per_session, config.num_regions + 1))
    extra = rng.choice(optional, size=count - config.core_regions, replace=False)
    regions = np.sort(np.concatenate([np.arange(config.core_regions), extra])).astype(int)
    low, high = config.units_per_region
    sizes = rng.integers(low, high + 1, size=len(regions))
    return np.repeat(regions, sizes), regions


def _unit_rates(
    latents: np.ndarray,
    unit_regions: np.ndarray,
    config: SyntheticConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """(K, T, N) Poisson means per bin: a loading of each unit's own region latents."""
    d, n = config.latent_dim, len(unit_regions)
    loadings = np.zeros((latents.shape[2], n))  # (Z, N), each unit reads its region only
    rows = unit_regions[:, None] * d + np.arange(d)[None, :]  # (N, d)
    loadings[rows, np.arange(n)[:, None]] = rng.standard_normal((n, d))
    drive = latents @ loadings  # (K, T, N)
    drive -= drive.mean((0, 1))
    drive /= np.sqrt(np.square(drive).mean((0, 1))) + 1e-9  # unit variance per unit
    gain = config.modulation * rng.lognormal(0.0, 0.3, n)
    log_mod = gain * drive
    log_mod -= np.log(np.exp(log_mod).mean((0, 1)))  # unit mean of exp(log_mod) is exactly 1
    mu = np.log(config.mean_rate_hz) - 0.5 * config.rate_spread**2
    mean_rate_hz = rng.lognormal(mu, config.rate_spread, n)
    rates_hz = np.minimum(mean_rate_hz * np.exp(log_mod), config.max_rate_hz)
    return (rates_hz * config.bin_size_s).astype(np.float32)


def _split_rows(num_trials: int, fractions: tuple, rng: np.random.Generator) -> dict:
    order = rng.permutation(num_trials)
    num_val = max(1, round(fractions[1] * num_trials))
    num_test = max(1, round(fractions[2] * num_trials))
    bounds = np.cumsum([num_trials - num_val - num_test, num_val])
    return {s: np.sort(part) for s, part in zip(SPLITS, np.split(order, bounds), strict=True)}


@dataclass(frozen=True)
class _SessionDraw:
    """Everything one session's random source draws, before it becomes a Session."""

    num_trials: int
    design: dyn.TrialDesign
    sim: dyn.Simulation
    unit_regions: np.ndarray
    recorded: np.ndarray
    rates: np.ndarray
    counts: np.ndarray
    trial_behavior: dict[str, np.ndarray]
    bin_behavior: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]


def _draw_session(
    config: SyntheticConfig, dynamics: dyn.Dynamics, times_s: np.ndarray, rng: np.random.Generator
) -> _SessionDraw:
    """Trials, latents, units, rates, counts, behaviour and splits, in a fixed order of draws
    (the order is part of the output: the same seed gives byte-identical sessions)."""
    num_trials = int(rng.integers(config.num_trials[0], config.num_trials[1] + 1))
    design = dyn.design_trials(num_trials, times_s, rng)
    sim = dyn.simulate(dynamics, design, rng, choice_noise=config.choice_noise)
    unit_regions, recorded = _pick_units(config, rng)
    rates = _unit_rates(sim.latents, unit_regions, config, rng)
    counts = dyn.sample_poisson(rates, rng)
    trial_behavior, bin_behavior = dyn.behaviour(sim, design, dynamics, rng)
    rows = _split_rows(num_trials, config.split_fractions, rng)
    return _SessionDraw(
        num_trials, design, sim, unit_regions, recorded, rates, counts,
        trial_behavior, bin_behavior, rows,
    )  # fmt: skip


def _make_session(
    index: int,
    seed: int,
    config: SyntheticConfig,
    dynamics: dyn.Dynamics,
    times_s: np.ndarray,
    rng: np.random.Generator,
) -> SyntheticSession:
    session_id = f"synth-{seed}-{index:02d}"
    draw = _draw_session(config, dynamics, times_s, rng)
    num_trials, sim, rows = draw.num_trials, draw.sim, draw.rows
    unit_regions, rates, counts = draw.unit_regions, draw.rates, draw.counts
    trial_behavior, bin_behavior = draw.trial_behavior, draw.bin_behavior
    recorded = draw.recorded
    depth_centre = 500.0 + 700.0 * unit_regions
    depths = np.round(depth_centre + rng.uniform(-300.0, 300.0, len(unit_regions)), 1)
    full = TrialSet(counts, np.arange(num_trials), trial_behavior, bin_behavior)
    names = np.array(dynamics.region_names)
    session = Session(
        session_id=session_id,
        bin_size_s=config.bin_size_s,
        window_start_s=config.window_start_s,
        align_event=config.align_event,
        unit_ids=tuple(f"{session_id}-u{i:04d}" for i in range(len(unit_regions))),
        unit_regions=tuple(names[unit_regions]),
        splits={s: full.select(r) for s, r in rows.items()},
        unit_depths=depths,
        metadata={"subject": f"synth-{index:02d}", "lab": "synthetic", "source": "synthetic",
                  "seed": seed},
    )  # fmt: skip
    latents = sim.latents.astype(np.float32)
    return SyntheticSession(
        session=session,
        true_rates={s: np.ascontiguousarray(rates[r]) for s, r in rows.items()},
        latents={s: np.ascontiguousarray(latents[r]) for s, r in rows.items()},
        truth=_truth(index, seed, config, dynamics, recorded),
    )


def _truth(
    index: int, seed: int, config: SyntheticConfig, dynamics: dyn.Dynamics, recorded: np.ndarray
) -> dict[str, Any]:
    """The JSON-ready ground-truth description of one session."""
    names = [str(name) for name in dynamics.region_names]
    d = config.latent_dim
    return {
        "seed": seed,
        "session_index": index,
        "config": config.to_dict(),
        "regions": names,
        "recorded_regions": [names[r] for r in recorded],
        "edges": [
            {"source": names[s], "target": names[t], "strength": w} for s, t, w in dynamics.edges
        ],
        "roles": {"stimulus": names[dyn.SENSORY], "decision": names[dyn.DECISION]},
        "input_channels": list(dyn.INPUT_CHANNELS),
        "latent_columns": {name: [i * d, (i + 1) * d] for i, name in enumerate(names)},
        "rates_unit": "spikes per bin (Poisson mean)",
    }


# ---------------------------------------------------------------------------- disk
def write_synthetic(sessions: list[SyntheticSession], out_dir: str | Path) -> list[Path]:
    """Write sessions as ``<out_dir>/<session_id>/{data,truth}``; returns the session folders.

    Raises:
        SpikemaskError: A session folder already exists and is not empty.
    """
    root = Path(out_dir).expanduser()
    for item in sessions:
        folder = root / item.session.session_id
        if folder.exists() and any(folder.iterdir()):
            raise SpikemaskError(
                f"{str(folder)!r} already exists and is not empty; expected a new folder"
            )
    written = []
    for item in sessions:
        folder = write_session(item.session, root / item.session.session_id)
        truth_dir = folder / "truth"
        truth_dir.mkdir(parents=True, exist_ok=True)
        for split in item.true_rates:
            np.save(truth_dir / f"{split}_rates.npy", item.true_rates[split], allow_pickle=False)
            np.save(truth_dir / f"{split}_latents.npy", item.latents[split], allow_pickle=False)
        text = json.dumps(dict(item.truth), indent=2, sort_keys=True)
        (truth_dir / "truth.json").write_text(text + "\n")
        written.append(folder)
    return written


def load_true_rates(dataset_dir: str | Path) -> dict[str, np.ndarray]:
    """The ground-truth rates of a written synthetic session: split -> (K, T, N) float32.

    Args:
        dataset_dir: The session folder (holding ``data/`` and ``truth/``) or its ``data/``.
    """
    folder = Path(dataset_dir).expanduser()
    if folder.name == "data" and not (folder / "truth").is_dir():
        folder = folder.parent
    truth_dir = folder / "truth"
    if not truth_dir.is_dir():
        raise SpikemaskError(
            f"{str(folder)!r} has no truth/ folder; expected a dataset written by "
            "spikemask's synthetic generator (truth/<split>_rates.npy)"
        )
    rates = {}
    for split in SPLITS:
        path = truth_dir / f"{split}_rates.npy"
        if not path.is_file():
            raise SpikemaskError(f"{str(path)!r} is missing; expected the {split} true rates")
        rates[split] = np.load(path, allow_pickle=False)
    return rates


def synthesize(
    out_dir: str | Path, *, num_sessions: int, seed: int, config: SyntheticConfig | None = None
) -> list[Path]:
    """Generate ``num_sessions`` sessions and write them under ``out_dir``.

    Raises:
        SpikemaskError: ``out_dir`` exists and is not an empty folder.
    """
    root = Path(out_dir).expanduser()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise SpikemaskError(
            f"{str(root)!r} is not an empty folder; expected a new or empty output folder "
            "(synthesize never overwrites)"
        )
    sessions = generate_sessions(num_sessions, seed=seed, config=config)
    return write_synthetic(sessions, root)
