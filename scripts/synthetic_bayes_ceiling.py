"""The best co-smoothing any model of the counts can expect on a synthetic session.

Issue #10 asks for co-smoothing at >= 85 % of the oracle's bits per spike on ``spikemask
synth`` data. The oracle scores the *true* rates, which depend on each trial's latent noise;
a model sees only the spikes. This script measures how much of the oracle is left once that
noise must be inferred, by giving an estimator everything else: the generator's own
dynamics, its true per-trial inputs (stimulus, go cue, movement, choice, feedback), and
every unit's true loading and baseline. For each unit n (leave-one-unit-out, as
``spikemask evaluate``'s co-smoothing), it infers each test trial's latent path from the
other units' counts:

* MAP: the most probable path under the latent dynamics and the Poisson likelihood
  (L-BFGS on the whole path, float64), with unit n's rate read out at that path;
* Laplace: the same, plus the posterior variance of unit n's log-rate from the
  Gauss-Newton Hessian (block-tridiagonal in time, diagonal blocks of its inverse by a
  forward-backward recursion): rate = exp(mean + variance / 2).

Neither is exactly Bayes-optimal, so the result is an estimate of the ceiling, not a bound;
a learned model, which must also estimate the parameters from ~150 training trials, should
score below it. The session is regenerated from the seed (checked against the files)::

    spikemask synth --out synth-data --sessions 2 --seed 0
    python scripts/synthetic_bayes_ceiling.py synth-data/synth-0-00 synth-data/synth-0-01 \\
        --out OUT

It writes ``OUT/results.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from spikemask.data.loading import load_session
from spikemask.data.synthetic import SyntheticConfig, _draw_session, _shared_dynamics
from spikemask.errors import SpikemaskError
from spikemask.evaluation.metrics import bits_per_spike, bits_per_spike_pooled

DTYPE = torch.float64


def regenerate(folder: Path) -> dict:
    """The generator's parameters, test inputs and rates of a written synthetic session."""
    path = folder / "truth" / "truth.json"
    if not path.is_file():
        raise SystemExit(
            f"{folder}: no truth/truth.json; expected a session written by `spikemask synth`"
        )
    truth = json.loads(path.read_text())
    config = SyntheticConfig(**truth["config"])
    seed, index = int(truth["seed"]), int(truth["session_index"])
    dynamics, times_s, rngs = _shared_dynamics(config, seed, index + 1)
    draw = _draw_session(config, dynamics, times_s, rngs[index])
    design, sim, rows = draw.design, draw.sim, draw.rows
    unit_regions, rates, counts = draw.unit_regions, draw.rates, draw.counts
    saved = np.load(folder / "truth" / "test_rates.npy")
    if not np.array_equal(saved, rates[rows["test"]]):
        raise SystemExit(f"{folder}: regenerated rates differ from truth/test_rates.npy")
    inputs = design.inputs.copy()  # signed as in dyn.simulate
    inputs[..., 4] *= sim.choice[:, None]
    inputs[..., 6] *= np.where(sim.choice == design.side, 1.0, -1.0)[:, None]
    # every unit's log-rate is exactly affine in its region's latents (below the rate cap)
    d = config.latent_dim
    log_rates = np.log(rates.reshape(-1, rates.shape[2]).astype(np.float64))
    latents = sim.latents.reshape(-1, sim.latents.shape[2])
    loadings = np.zeros((latents.shape[1], len(unit_regions)))
    offsets = np.zeros(len(unit_regions))
    cap = np.float32(config.max_rate_hz * config.bin_size_s)
    worst = 0.0
    for n, region in enumerate(unit_regions):
        cols = slice(region * d, (region + 1) * d)
        keep = rates.reshape(-1, rates.shape[2])[:, n] < cap
        design_matrix = np.column_stack([np.ones(keep.sum()), latents[keep, cols]])
        coef, *_ = np.linalg.lstsq(design_matrix, log_rates[keep, n], rcond=None)
        offsets[n], loadings[cols, n] = coef[0], coef[1:]
        worst = max(worst, float(np.abs(design_matrix @ coef - log_rates[keep, n]).max()))
    start = sim.latents[rows["train"], 0]  # the pre-stimulus state, across training trials
    return {
        "dynamics": dynamics,
        "inputs": inputs[rows["test"]],
        "spikes": counts[rows["test"]].astype(np.float64),
        "rates": rates[rows["test"]],
        "train_latents": sim.latents[rows["train"]].astype(np.float64),
        "train_spikes": counts[rows["train"]].astype(np.float64),
        "unit_regions": unit_regions,
        "latent_dim": d,
        "loadings": loadings,
        "offsets": offsets,
        "max_log_rate": float(np.log(cap)),
        "fit_error": worst,
        "prior_mean": start.mean(0),
        "prior_cov": np.cov(start, rowvar=False) + 1e-6 * np.eye(start.shape[1]),
    }


class PathModel:
    """Negative log posterior of the latent paths of K trials (K, T, Z) and its pieces."""

    def __init__(self, problem: dict) -> None:
        dynamics = problem["dynamics"]
        self.leak = dynamics.leak
        self.noise_var = dynamics.leak * dynamics.noise_std**2
        as_tensor = lambda x: torch.as_tensor(np.asarray(x), dtype=DTYPE)  # noqa: E731
        self.weights = as_tensor(dynamics.weights)
        self.drive = as_tensor(problem["inputs"] @ dynamics.input_weights.T + dynamics.bias)
        self.spikes = as_tensor(problem["spikes"])
        self.loadings = as_tensor(problem["loadings"])
        self.offsets = as_tensor(problem["offsets"])
        self.max_log_rate = problem["max_log_rate"]
        self.prior_mean = as_tensor(problem["prior_mean"])
        self.prior_precision = torch.linalg.inv(as_tensor(problem["prior_cov"]))

    def log_rates(self, paths: torch.Tensor) -> torch.Tensor:
        return (paths @ self.loadings + self.offsets).clamp(max=self.max_log_rate)

    def _next(self, paths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = torch.tanh(paths[:, :-1] @ self.weights.T + self.drive[:, :-1])
        return (1 - self.leak) * paths[:, :-1] + self.leak * pre, pre

    def loss(self, paths: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Summed over trials; ``weight`` (N,) is 1 for the units the paths are read from."""
        eta = self.log_rates(paths)
        likelihood = ((self.spikes * eta - eta.exp()) * weight).sum()
        step = paths[:, 1:] - self._next(paths)[0]
        dynamics = 0.5 * step.square().sum() / self.noise_var
        start = paths[:, 0] - self.prior_mean
        prior = 0.5 * torch.einsum("ki,ij,kj->", start, self.prior_precision, start)
        return dynamics + prior - likelihood

    def map_paths(self, start: torch.Tensor, weight: torch.Tensor, iters: int) -> torch.Tensor:
        paths = start.clone().requires_grad_(True)
        optimiser = torch.optim.LBFGS(
            [paths], lr=1.0, max_iter=iters, history_size=20, line_search_fn="strong_wolfe",
            tolerance_grad=1e-7, tolerance_change=1e-12,
        )  # fmt: skip

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            value = self.loss(paths, weight)
            value.backward()
            return value

        optimiser.step(closure)
        return paths.detach()

    def marginal_covariances(self, paths: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """(K, T, Z, Z) diagonal blocks of the inverse Gauss-Newton Hessian at ``paths``."""
        _, num_bins, z = paths.shape
        eye = torch.eye(z, dtype=DTYPE)
        rates = self.log_rates(paths).exp() * weight  # (K, T, N)
        diag = torch.einsum("zn,ktn,yn->ktzy", self.loadings, rates, self.loadings)
        _, pre = self._next(paths)
        # Jacobian of the mean of x_{t+1} with respect to x_t: (1 - a) I + a diag(1 - tanh^2) W
        jac = (1 - self.leak) * eye + self.leak * (1 - pre.square())[..., None] * self.weights
        q = 1.0 / self.noise_var
        diag = diag.clone()
        diag[:, 1:] += q * eye
        diag[:, :-1] += q * jac.transpose(-1, -2) @ jac
        diag[:, 0] += self.prior_precision
        upper = -q * jac.transpose(-1, -2)  # block (t, t+1)
        # forward Schur complements, then the backward recursion for the diagonal blocks
        schur = [diag[:, 0]]
        for t in range(1, num_bins):
            b = upper[:, t - 1]
            schur.append(diag[:, t] - b.transpose(-1, -2) @ torch.linalg.solve(schur[-1], b))
        cov = [None] * num_bins
        cov[-1] = torch.linalg.inv(schur[-1])
        for t in range(num_bins - 2, -1, -1):
            inv = torch.linalg.inv(schur[t])
            gain = inv @ upper[:, t]
            cov[t] = inv + gain @ cov[t + 1] @ gain.transpose(-1, -2)
        return torch.stack(cov, dim=1)


def learn_loadings(problem: dict) -> dict:
    """The problem with every unit's loading and baseline fitted to the training counts.

    Each unit's Poisson regression (scikit-learn, a negligible ridge) on its region's *true*
    latents of the training trials: the read-out as well as ~150 trials of counts can tell
    it when the latents are known, which separates learning the read-out from learning the
    dynamics.
    """
    from sklearn.linear_model import PoissonRegressor

    spikes = problem["train_spikes"]
    regions, d = problem["unit_regions"], problem["latent_dim"]
    flat = problem["train_latents"].reshape(-1, problem["train_latents"].shape[2])
    counts = spikes.reshape(-1, spikes.shape[2])
    loadings = np.zeros_like(problem["loadings"])
    offsets = np.zeros(len(regions))
    for n, region in enumerate(regions):
        cols = slice(region * d, (region + 1) * d)
        fit = PoissonRegressor(alpha=1e-8, max_iter=1000, tol=1e-8)
        fit.fit(flat[:, cols], counts[:, n])
        offsets[n], loadings[cols, n] = fit.intercept_, fit.coef_
    return {**problem, "loadings": loadings, "offsets": offsets}


def ceiling(problem: dict, iters: int, log) -> dict:
    model = PathModel(problem)
    num_units = problem["spikes"].shape[2]
    everyone = torch.ones(num_units, dtype=DTYPE)
    # start from the all-units MAP, itself started from the prior mean
    start = model.prior_mean.expand(*problem["spikes"].shape[:2], -1).clone()
    full = model.map_paths(start, everyone, iters=5 * iters)
    map_rates = np.zeros(problem["spikes"].shape)
    laplace_rates = np.zeros(problem["spikes"].shape)
    started = time.perf_counter()
    for n in range(num_units):
        weight = everyone.clone()
        weight[n] = 0.0
        paths = model.map_paths(full, weight, iters=iters)
        cov = model.marginal_covariances(paths, weight)
        loading = model.loadings[:, n]
        eta = model.log_rates(paths)[..., n]
        variance = torch.einsum("z,ktzy,y->kt", loading, cov, loading)
        map_rates[..., n] = eta.exp().numpy()
        laplace_rates[..., n] = (eta + 0.5 * variance).clamp(max=model.max_log_rate).exp().numpy()
        if (n + 1) % 25 == 0:
            log(f"  {n + 1}/{num_units} units, {time.perf_counter() - started:.0f} s")
    spikes, rates = problem["spikes"], problem["rates"]

    def score(pred: np.ndarray) -> list[float]:
        return [bits_per_spike(pred, spikes), bits_per_spike_pooled(pred, spikes)]

    return {
        "units": num_units,
        "test_trials": spikes.shape[0],
        "oracle": score(rates),
        "map": score(map_rates),
        "laplace": score(laplace_rates),
        "loading_fit_max_error": problem["fit_error"],
        "seconds": round(time.perf_counter() - started, 1),
    }


def table(results: dict) -> str:
    lines = [
        "| session | units | oracle | MAP path | share | Laplace | share |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        o, m, la = r["oracle"], r["map"], r["laplace"]
        lines.append(
            f"| {name} | {r['units']} | {o[0]:.3f} ({o[1]:.3f}) | {m[0]:.3f} ({m[1]:.3f}) "
            f"| {m[0] / o[0]:.0%} ({m[1] / o[1]:.0%}) | {la[0]:.3f} ({la[1]:.3f}) "
            f"| {la[0] / o[0]:.0%} ({la[1] / o[1]:.0%}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sessions", type=Path, nargs="+", help="written synthetic sessions")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iters", type=int, default=100, help="L-BFGS iterations per unit")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--fit-loadings",
        action="store_true",
        help="fit every unit's loading and baseline to the training split's counts (on the "
        "true latents) instead of taking the true ones",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for folder in args.sessions:
        try:
            session = load_session(folder)
        except SpikemaskError as err:
            raise SystemExit(f"synthetic_bayes_ceiling: {err}") from None
        name = session.session_id
        if name in results:
            continue
        problem = regenerate(folder)
        if not np.array_equal(problem["spikes"], session.split("test").spikes):
            raise SystemExit(f"{folder}: regenerated counts differ from the test split")
        print(f"{name}: regenerating and inferring", flush=True)
        if args.fit_loadings:
            problem = learn_loadings(problem)
        results[name] = ceiling(problem, args.iters, lambda s: print(s, flush=True))
        path.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
