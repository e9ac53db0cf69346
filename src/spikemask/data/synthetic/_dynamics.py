"""Shared latent dynamics, trial design and behaviour of the synthetic generator.

One :class:`Dynamics` is drawn per seed and shared by every synthetic session ("animal").
All regions are always simulated; a session records units from a subset of them. The
whole latent state (K trials, R regions × ``latent_dim`` each, flattened to Z = R·d) obeys

    x_{t+1} = (1 - a) x_t + a · tanh(W x_t + B u_t + b) + sqrt(a) · σ · ε_t

where W holds each region's own recurrent block (a scaled random orthogonal matrix, so the
dynamics are rotational and nonlinear) and the directed coupling blocks C_{r←r'} between
regions, and u_t are the trial inputs (:data:`INPUT_CHANNELS`). At the reaction time the
choice is read out of the decision region's latent change since stimulus onset, averaged
over time (a calibrated Fisher-discriminant direction, plus noise and a block-prior bias);
it then drives the movement inputs, and its correctness the feedback input.

Roles by region index: 0 sensory thalamus (gets the stimulus), 1 visual cortex, 2 decision /
motor region (choice readout, wheel), 3+ associative regions (go cue, movement, feedback).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spikemask.data.session import counts_dtype

__all__ = [
    "CONTRASTS",
    "INPUT_CHANNELS",
    "REGION_POOL",
    "Dynamics",
    "Simulation",
    "TrialDesign",
    "behaviour",
    "build_dynamics",
    "design_trials",
    "sample_poisson",
    "simulate",
]

REGION_POOL: tuple[str, ...] = (
    "LGd", "VISp", "MOs", "CA1", "PO", "VISl", "SCm", "CP", "MOp", "DG", "APN", "ZI",
)  # fmt: skip
SENSORY, VISUAL, DECISION = 0, 1, 2
INPUT_CHANNELS: tuple[str, ...] = (
    "contrast_left", "contrast_right", "go_cue", "block_prior",
    "choice_movement", "movement", "feedback",
)  # fmt: skip
CONTRASTS: tuple[float, ...] = (0.0, 0.0625, 0.125, 0.25, 1.0)
_CONTRAST_WEIGHTS = np.array([0.5, 1.0, 1.0, 1.0, 1.0])
# Input gain of each channel (order of INPUT_CHANNELS) per region role.
_INPUT_GAINS = {
    SENSORY: (2.5, 2.5, 0.3, 0.0, 0.0, 0.2, 0.0),
    VISUAL: (0.8, 0.8, 0.3, 0.0, 0.0, 0.3, 0.2),
    DECISION: (1.2, 1.2, 0.5, 0.2, 2.0, 1.0, 0.4),
    "other": (0.0, 0.0, 0.4, 0.0, 0.3, 0.6, 1.0),
}
_STIM_TAU_S, _GO_TAU_S, _MOVE_TAU_S, _FEEDBACK_TAU_S = 0.08, 0.05, 0.1, 0.1
_FEEDBACK_DELAY_S = 0.25


@dataclass(frozen=True)
class Dynamics:
    """The shared generative model (identical for every session of one seed).

    Attributes:
        region_names: (R,) Allen acronyms of the simulated regions.
        latent_dim: Latent dimensions per region (d); Z = R·d.
        leak: Update fraction a = bin_size_s / time_constant_s.
        noise_std: Per-step latent noise σ.
        weights: (Z, Z) recurrent + coupling matrix W.
        input_weights: (Z, C) input matrix B, C = len(INPUT_CHANNELS).
        bias: (Z,) bias b.
        edges: directed coupling (source region, target region, strength).
        choice_readout: (d,) direction in the decision region's latent; with
            ``choice_offset`` / ``choice_scale`` it maps a state to a standardised evidence.
        choice_offset: Evidence offset (mean readout without a stimulus).
        choice_scale: Evidence scale (half the full-contrast right − left readout).
        wheel_readout: (d,) decision-region direction modulating wheel speed.
        whisker_readout: (Z,) direction of the whole latent driving whisker motion energy.
    """

    region_names: tuple[str, ...]
    latent_dim: int
    leak: float
    noise_std: float
    weights: np.ndarray
    input_weights: np.ndarray
    bias: np.ndarray
    edges: tuple[tuple[int, int, float], ...]
    choice_readout: np.ndarray
    choice_offset: float
    choice_scale: float
    wheel_readout: np.ndarray
    whisker_readout: np.ndarray

    def region_slice(self, region: int) -> slice:
        """The columns of region ``region`` in the flattened (Z,) latent."""
        return slice(region * self.latent_dim, (region + 1) * self.latent_dim)


@dataclass(frozen=True)
class TrialDesign:
    """Per-trial task variables and the choice-independent inputs.

    Attributes:
        side: (K,) stimulus side, -1 left / +1 right (also on zero-contrast trials).
        contrast: (K,) stimulus contrast on that side.
        block: (K,) block prior, probability of a left stimulus (0.2 / 0.5 / 0.8).
        reaction_time_s: (K,) first movement after stimulus onset, seconds.
        vigour: (K,) movement amplitude.
        inputs: (K, T, C) inputs; the choice/feedback channels hold unsigned envelopes.
        decision_bin: (K,) bin at which the choice is read out.
        onset_bin: First bin after stimulus onset; evidence is integrated from here.
    """

    side: np.ndarray
    contrast: np.ndarray
    block: np.ndarray
    reaction_time_s: np.ndarray
    vigour: np.ndarray
    inputs: np.ndarray
    decision_bin: np.ndarray
    onset_bin: int


@dataclass(frozen=True)
class Simulation:
    """Simulated latents and the choice. latents: (K, T, Z); choice: (K,) ±1."""

    latents: np.ndarray
    choice: np.ndarray


def _alpha(t_s: np.ndarray, tau_s: float) -> np.ndarray:
    """Alpha-function bump peaking at 1 when t = tau, zero before t = 0."""
    x = np.clip(t_s / tau_s, 0.0, None)
    return x * np.exp(1.0 - x)


def bin_times_s(num_bins: int, bin_size_s: float, window_start_s: float) -> np.ndarray:
    """(T,) centre time of every bin relative to stimulus onset."""
    return window_start_s + (np.arange(num_bins) + 0.5) * bin_size_s


def _blocks(num_trials: int, rng: np.random.Generator) -> np.ndarray:
    """IBL-like block prior: 90 unbiased trials, then alternating 0.2 / 0.8 blocks."""
    block = np.full(num_trials, 0.5)
    start, prior = 90, (0.2 if rng.random() < 0.5 else 0.8)
    while start < num_trials:
        length = int(np.clip(rng.exponential(60.0), 20, 100))
        block[start : start + length] = prior
        start, prior = start + length, 1.0 - prior
    return block


def design_trials(
    num_trials: int, times_s: np.ndarray, rng: np.random.Generator, *, calibration: bool = False
) -> TrialDesign:
    """Draw the task variables of ``num_trials`` trials and their (K, T, C) inputs.

    With ``calibration`` the block is unbiased and odd trials have full contrast, even
    trials zero contrast.
    """
    block = np.full(num_trials, 0.5) if calibration else _blocks(num_trials, rng)
    side = np.where(rng.random(num_trials) < block, -1.0, 1.0)
    weights = _CONTRAST_WEIGHTS / _CONTRAST_WEIGHTS.sum()
    contrast = rng.choice(CONTRASTS, size=num_trials, p=weights)
    if calibration:
        contrast = (np.arange(num_trials) % 2).astype(float)
    strength = np.sqrt(contrast)
    rt_s = 0.1 + rng.lognormal(np.log(0.15), 0.5, num_trials) * (1.5 - 0.5 * strength)
    rt_s = np.minimum(rt_s, 1.5)
    vigour = rng.lognormal(0.0, 0.3, num_trials)
    feedback_s = rt_s + _FEEDBACK_DELAY_S
    t = times_s[None, :]  # (1, T)
    stim = np.where((t >= 0) & (t < feedback_s[:, None] + 0.2), 0.5 + _alpha(t, _STIM_TAU_S), 0.0)
    inputs = np.zeros((num_trials, len(times_s), len(INPUT_CHANNELS)))
    inputs[..., 0] = stim * (strength * (side < 0))[:, None]
    inputs[..., 1] = stim * (strength * (side > 0))[:, None]
    inputs[..., 2] = _alpha(t, _GO_TAU_S)
    inputs[..., 3] = 2.0 * (block[:, None] - 0.5)
    inputs[..., 5] = vigour[:, None] * _alpha(t - rt_s[:, None], _MOVE_TAU_S)
    inputs[..., 4] = inputs[..., 5]  # signed by the choice during simulation
    inputs[..., 6] = _alpha(t - feedback_s[:, None], _FEEDBACK_TAU_S)  # signed by reward
    # the choice is read out at the first bin whose centre follows the movement onset
    decision_bin = np.minimum(np.searchsorted(times_s, rt_s), len(times_s) - 1)
    return TrialDesign(
        side=side,
        contrast=contrast,
        block=block,
        reaction_time_s=rt_s,
        vigour=vigour,
        inputs=inputs,
        decision_bin=decision_bin,
        onset_bin=min(int(np.searchsorted(times_s, 0.0)), len(times_s) - 1),
    )


def _edges(num_regions: int, coupling: float, rng: np.random.Generator) -> list:
    """Directed coupling graph: LGd -> VISp -> MOs (+ weak MOs -> VISp), extras attached."""
    edges = {
        (SENSORY, VISUAL): coupling,
        (VISUAL, DECISION): coupling,
        (DECISION, VISUAL): 0.2 * coupling,
    }
    for region in range(3, num_regions):
        edges[(int(rng.integers(0, region)), region)] = 0.6 * coupling
        if rng.random() < 0.5:
            target = int(rng.choice([r for r in range(num_regions) if r != region]))
            edges.setdefault((region, target), 0.3 * coupling)
    return [(s, t, round(float(w), 4)) for (s, t), w in edges.items()]


def _weights(
    num_regions: int, latent_dim: int, gain: float, edges: list, rng: np.random.Generator
) -> np.ndarray:
    d = latent_dim
    weights = np.zeros((num_regions * d, num_regions * d))
    for r in range(num_regions):
        q, upper = np.linalg.qr(rng.standard_normal((d, d)))
        weights[r * d : (r + 1) * d, r * d : (r + 1) * d] = gain * q * np.sign(np.diag(upper))
    for source, target, strength in edges:
        block = strength * rng.standard_normal((d, d)) / np.sqrt(d)
        weights[target * d : (target + 1) * d, source * d : (source + 1) * d] += block
    return weights


def _input_weights(num_regions: int, latent_dim: int, rng: np.random.Generator) -> np.ndarray:
    rows = []
    for r in range(num_regions):
        gains = np.array(_INPUT_GAINS.get(r, _INPUT_GAINS["other"]))
        weights = gains * rng.standard_normal((latent_dim, len(INPUT_CHANNELS)))
        if r == DECISION:  # side-selective: left and right stimuli push in opposite directions
            weights[:, 0] = -weights[:, 1]
        rows.append(weights)
    return np.concatenate(rows) / np.sqrt(2.0)


def build_dynamics(
    *, region_names: tuple[str, ...], latent_dim: int, leak: float, noise_std: float,
    recurrent_gain: float, coupling: float, times_s: np.ndarray, rng: np.random.Generator,
) -> Dynamics:  # fmt: skip
    """Draw the shared dynamics and calibrate the choice readout on simulated trials."""
    num_regions, d = len(region_names), latent_dim
    edges = _edges(num_regions, coupling, rng)
    dynamics = Dynamics(
        region_names=tuple(region_names),
        latent_dim=d,
        leak=leak,
        noise_std=noise_std,
        weights=_weights(num_regions, d, recurrent_gain, edges, rng),
        input_weights=_input_weights(num_regions, d, rng),
        bias=0.2 * rng.standard_normal(num_regions * d),
        edges=tuple(edges),
        choice_readout=np.zeros(d),
        choice_offset=0.0,
        choice_scale=1.0,
        wheel_readout=rng.standard_normal(d) / np.sqrt(d),
        whisker_readout=rng.standard_normal(num_regions * d) / np.sqrt(num_regions * d),
    )
    return _calibrate_choice(dynamics, times_s, rng)


def _calibrate_choice(
    dynamics: Dynamics, times_s: np.ndarray, rng: np.random.Generator, num_trials: int = 256
) -> Dynamics:
    """Set the readout to the direction separating full-contrast left from right trials."""
    design = design_trials(num_trials, times_s, rng, calibration=True)
    latents = simulate(dynamics, design, rng, choice_noise=0.0).latents
    region = dynamics.region_slice(DECISION)
    after = latents[:, design.onset_bin :, region]  # (K, T', d)
    cumulative = np.cumsum(after - after[:, :1], axis=1)  # change since onset, integrated
    steps = np.maximum(design.decision_bin - design.onset_bin, 0)
    states = cumulative[np.arange(num_trials), steps] / (steps + 1)[:, None]  # (K, d)
    full = design.contrast > 0
    right, left = states[full & (design.side > 0)], states[full & (design.side < 0)]
    zero = states[~full]
    # Fisher discriminant of right vs left; the side-independent "stimulus present" shift
    # is penalised like noise so that contrast alone does not bias the choice
    common = 0.5 * (right.mean(0) + left.mean(0)) - zero.mean(0)
    spread = sum(np.cov(group, rowvar=False) for group in (right, left, zero)) / 3.0
    spread += np.outer(common, common) + 1e-3 * np.eye(len(common))
    direction = np.linalg.solve(spread, right.mean(0) - left.mean(0))
    direction /= np.linalg.norm(direction) + 1e-12
    # evidence 0 without a stimulus and, on average, ±1 for full-contrast right / left
    offset = (states[~full] @ direction).mean()
    scale = 0.5 * ((right - left.mean(0)) @ direction).mean() + 1e-6
    return Dynamics(
        **{
            **dynamics.__dict__,
            "choice_readout": direction,
            "choice_offset": float(offset),
            "choice_scale": float(scale),
        }
    )


def simulate(
    dynamics: Dynamics,
    design: TrialDesign,
    rng: np.random.Generator,
    *,
    choice_noise: float,
    prior_weight: float = 0.5,
) -> Simulation:
    """Run the latent dynamics for every trial at once (loop over time bins only).

    The decision region's change of state since stimulus onset is averaged over time
    (evidence integration, insensitive to the trial's starting state);
    trial k's choice is read out at ``design.decision_bin[k]`` as
    sign(evidence − prior_weight·(2·block − 1) + choice_noise·ε), where evidence is that
    average projected on the calibrated readout. From then on the choice signs the
    choice-movement input, and whether it matches ``side`` signs the feedback input.

    Returns:
        :class:`Simulation` with latents (K, T, Z) and choice (K,) in {-1, +1}.
    """
    num_trials, num_bins, _ = design.inputs.shape
    region = dynamics.region_slice(DECISION)
    state = 0.3 * rng.standard_normal((num_trials, dynamics.weights.shape[0]))
    for _ in range(int(np.ceil(20.0 / dynamics.leak))):  # burn-in to the pre-stimulus regime
        state = _step(dynamics, state, design.inputs[:, 0], rng)
    latents = np.empty((num_trials, num_bins, state.shape[1]))
    choice = np.zeros(num_trials)
    lapse = choice_noise * rng.standard_normal(num_trials)
    integrated = np.zeros((num_trials, dynamics.latent_dim))  # summed change since onset
    for t in range(num_bins):
        latents[:, t] = state
        if t >= design.onset_bin:
            integrated += state[:, region] - latents[:, design.onset_bin, region]
        deciding = design.decision_bin == t
        if deciding.any():
            mean_state = integrated[deciding] / max(t - design.onset_bin + 1, 1)
            evidence = mean_state @ dynamics.choice_readout - dynamics.choice_offset
            evidence = evidence / dynamics.choice_scale - prior_weight * (
                2.0 * design.block[deciding] - 1.0
            )
            choice[deciding] = np.where(evidence + lapse[deciding] > 0, 1.0, -1.0)
        inputs = design.inputs[:, t].copy()
        inputs[:, 4] *= choice
        inputs[:, 6] *= np.where(choice == design.side, 1.0, -1.0) * (choice != 0)
        state = _step(dynamics, state, inputs, rng)
    return Simulation(latents=latents, choice=choice)


def _step(
    dynamics: Dynamics, state: np.ndarray, inputs: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One update of the (K, Z) state under (K, C) inputs."""
    a = dynamics.leak
    drive = state @ dynamics.weights.T + inputs @ dynamics.input_weights.T + dynamics.bias
    noise = np.sqrt(a) * dynamics.noise_std * rng.standard_normal(state.shape)
    return (1.0 - a) * state + a * np.tanh(drive) + noise


def behaviour(
    sim: Simulation, design: TrialDesign, dynamics: Dynamics, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-trial and per-bin behaviour derived from the task, the choice and the latents."""
    latents, movement = sim.latents, design.inputs[..., 5]  # (K, T, Z), (K, T)
    motor = latents[..., dynamics.region_slice(DECISION)] @ dynamics.wheel_readout
    wheel = 4.0 * movement * (1.0 + 0.4 * np.tanh(motor))
    wheel = np.abs(wheel + 0.05 * rng.standard_normal(wheel.shape))
    arousal = latents @ dynamics.whisker_readout
    arousal = (arousal - arousal.mean()) / (arousal.std() + 1e-9)
    noise = np.zeros_like(arousal)
    eps = rng.standard_normal(arousal.shape)
    for t in range(1, arousal.shape[1]):  # AR(1) camera / motion noise
        noise[:, t] = 0.8 * noise[:, t - 1] + 0.3 * eps[:, t]
    whisker = np.logaddexp(0.0, arousal + 1.5 * movement + noise)  # softplus
    correct = sim.choice == design.side
    trial = {
        "choice": sim.choice,
        "reward": correct.astype(float),
        "block": design.block,
        "contrast_left": np.where(design.side < 0, design.contrast, 0.0),
        "contrast_right": np.where(design.side > 0, design.contrast, 0.0),
        "reaction_time_s": design.reaction_time_s,
    }
    per_bin = {
        "wheel-speed": _smooth(wheel).astype(np.float32),
        "whisker-motion-energy": _smooth(whisker).astype(np.float32),
    }
    return trial, per_bin


def _smooth(values: np.ndarray, width: int = 3) -> np.ndarray:
    """Moving average along time (axis 1), same length."""
    padded = np.pad(values, ((0, 0), (width // 2, width - 1 - width // 2)), mode="edge")
    cumulative = np.cumsum(np.pad(padded, ((0, 0), (1, 0))), axis=1)
    return (cumulative[:, width:] - cumulative[:, :-width]) / width


def sample_poisson(rates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts by inverse-CDF search: exact, and fast for the small per-bin rates."""
    lam = rates.astype(np.float64).ravel()
    uniform = rng.random(lam.size)
    counts = np.zeros(lam.size, dtype=np.int64)
    term = np.exp(-lam)  # P(count = k) for the current k of every entry
    cdf = term.copy()
    active = np.flatnonzero(uniform > cdf)
    while active.size:
        counts[active] += 1
        term[active] *= lam[active] / counts[active]
        cdf[active] += term[active]
        # an entry stops once its CDF passes its uniform (or the tail underflows)
        active = active[(uniform[active] > cdf[active]) & (term[active] > 0)]
    return counts.reshape(rates.shape).astype(counts_dtype(int(counts.max(initial=0))))
