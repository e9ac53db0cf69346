"""Batched ridge Poisson GLMs on low-dimensional features plus a per-bin offset.

Shape letters: K trials, T time bins, P continuous features, M target units.

One call fits M independent Poisson GLMs that share their features::

    log rate[k, t, m] = z[k, t] @ w[m] + c[t, m] + b[m]

with the objective of scikit-learn's ``PoissonRegressor`` for every unit:
``mean_{k,t}(rate - y log rate) + alpha / 2 * (|w[m]|^2 + |c[:, m]|^2)`` (``b`` is not
penalised; ``c`` is the weight of a one-hot time-bin feature). The solver is Newton's
method with a per-unit backtracking line search. The one-hot block makes the Hessian
cheap: its time-time block is diagonal, so one iteration costs ``O(K T M P^2)`` (a single
matrix product) instead of ``O(K T M (P + T)^2)``. The objective is strictly convex for
``alpha > 0``, so the result does not depend on the start; fits are deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from spikemask.errors import SpikemaskError

__all__ = ["PoissonGLMFit", "fit_poisson_glm", "poisson_nll_sum"]

MAX_ITER = 50
"""Newton iterations at most (convergence typically takes 6-12)."""
TOLERANCE = 1e-7
"""Stop when no unit's objective improves by more than this (nats per bin)."""
MAX_ETA = math.log(1e3)
"""Log-rates are clipped here while fitting, so a bad step cannot overflow."""
MAX_HALVINGS = 12
"""Step halvings of the line search before a unit's step is dropped."""
PSEUDO_COUNT = 0.5
"""Spikes credited to a unit that has none in the fitting data (its constant rate)."""


@dataclass(frozen=True)
class PoissonGLMFit:
    """Fitted weights of M GLMs.

    Attributes:
        weight: (P, M) weights of the continuous features.
        bin_offset: (T, M) per-bin offsets.
        intercept: (M,) intercepts.
    """

    weight: np.ndarray
    bin_offset: np.ndarray
    intercept: np.ndarray

    def log_rates(self, features: np.ndarray) -> np.ndarray:
        """(K, T, M) log-rates from (K, T, P) features."""
        if features.ndim != 3 or features.shape[1:] != (
            self.bin_offset.shape[0],
            self.weight.shape[0],
        ):
            raise SpikemaskError(
                f"GLM features must have shape (K, {self.bin_offset.shape[0]}, "
                f"{self.weight.shape[0]}), got {features.shape}"
            )
        return features @ self.weight + self.bin_offset[None] + self.intercept


def poisson_nll_sum(log_rates: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(M,) Poisson NLL of each unit summed over trials and bins, without ``log(y!)``."""
    return (np.exp(log_rates) - counts * log_rates).sum(axis=(0, 1))


class _Problem:
    """Tensors of one fit. z: (K, T, P), y: (K, T, M), all float64."""

    def __init__(self, z: torch.Tensor, y: torch.Tensor, alpha: float) -> None:
        self.z, self.y, self.alpha = z, y, alpha
        k, t, p = z.shape
        self.num_rows = k * t
        self.num_bins, self.num_features = t, p
        flat = z.reshape(-1, p)
        # outer products of the features, (K*T, P*P): the Hessian's feature block is then
        # one matrix product with the rates. float32 is enough for a Newton direction (the
        # gradient stays float64, so the optimum is unchanged) and twice as fast.
        self.outer = (flat[:, :, None] * flat[:, None, :]).reshape(-1, p * p).float()

    def eta(self, w: torch.Tensor, c: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(K, T, M) linear predictor."""
        return torch.einsum("ktp,pm->ktm", self.z, w) + c[None] + b

    def objective(self, eta, w, c) -> torch.Tensor:
        """(M,) penalised mean NLL."""
        eta = eta.clamp(max=MAX_ETA)
        data = (eta.exp() - self.y * eta).sum(dim=(0, 1)) / self.num_rows
        return data + 0.5 * self.alpha * (w.square().sum(0) + c.square().sum(0))

    def newton_direction(self, eta, w, c, b) -> tuple[torch.Tensor, ...]:
        """Newton step (dw (P, M), dc (T, M), db (M,)) for every unit."""
        p, t, n = self.num_features, self.num_bins, self.num_rows
        mu = eta.clamp(max=MAX_ETA).exp()  # (K, T, M)
        resid = mu - self.y
        grad = torch.cat(
            [
                torch.einsum("ktp,ktm->mp", self.z, resid) / n + self.alpha * w.T,
                resid.sum(0).T / n + self.alpha * c.T,
                resid.sum((0, 1))[:, None] / n,
            ],
            dim=1,
        )  # (M, P + T + 1)
        m = mu.shape[2]
        hess = torch.zeros(m, p + t + 1, p + t + 1, dtype=mu.dtype)
        hess[:, :p, :p] = (mu.reshape(-1, m).T.float() @ self.outer).reshape(m, p, p)
        zmu = torch.einsum("ktp,ktm->mtp", self.z, mu)  # (M, T, P)
        hess[:, p : p + t, :p] = zmu
        hess[:, :p, p : p + t] = zmu.transpose(1, 2)
        per_bin = mu.sum(0).T  # (M, T)
        hess[:, p : p + t, p : p + t] = torch.diag_embed(per_bin)
        zsum = zmu.sum(1)  # (M, P)
        hess[:, -1, :p] = zsum
        hess[:, :p, -1] = zsum
        hess[:, -1, p : p + t] = per_bin
        hess[:, p : p + t, -1] = per_bin
        hess[:, -1, -1] = per_bin.sum(1)
        hess /= n
        diagonal = torch.full((p + t + 1,), self.alpha, dtype=mu.dtype)
        diagonal[-1] = 0.0
        hess += torch.diag(diagonal)
        step = -torch.linalg.solve(hess, grad[..., None])[..., 0]  # (M, P + T + 1)
        return step[:, :p].T, step[:, p : p + t].T, step[:, -1]


def _start(y: torch.Tensor, num_features: int) -> tuple[torch.Tensor, ...]:
    m = y.shape[2]
    mean = y.mean(dim=(0, 1)).clamp_min(1e-6)
    zeros_w = torch.zeros(num_features, m, dtype=y.dtype)
    zeros_c = torch.zeros(y.shape[1], m, dtype=y.dtype)
    return zeros_w, zeros_c, mean.log()


def fit_poisson_glm(
    features: np.ndarray,
    counts: np.ndarray,
    alpha: float,
    *,
    start: PoissonGLMFit | None = None,
) -> PoissonGLMFit:
    """Fit one ridge Poisson GLM per target unit (see the module docstring).

    Args:
        features: (K, T, P) continuous features (e.g. whitened principal components).
        counts: (K, T, M) observed counts of the target units.
        alpha: L2 penalty (> 0) on the feature weights and the per-bin offsets.
        start: A previous fit to start from (e.g. at a neighbouring ``alpha``).

    Returns:
        :class:`PoissonGLMFit`. A unit with no spike in ``counts`` gets the constant rate
        of :data:`PSEUDO_COUNT` spikes spread over all entries.
    """
    if not alpha > 0:
        raise SpikemaskError(f"GLM penalty alpha must be > 0, got {alpha}")
    if features.ndim != 3 or counts.ndim != 3 or features.shape[:2] != counts.shape[:2]:
        raise SpikemaskError(
            f"GLM features (K, T, P) and counts (K, T, M) must share K and T, got "
            f"{features.shape} and {counts.shape}"
        )
    active = counts.sum(axis=(0, 1)) > 0
    num_units, num_bins, num_features = counts.shape[2], counts.shape[1], features.shape[2]
    weight = np.zeros((num_features, num_units))
    bin_offset = np.zeros((num_bins, num_units))
    intercept = np.full(num_units, math.log(PSEUDO_COUNT / (counts.shape[0] * num_bins)))
    if active.any():
        if start is not None:
            start = PoissonGLMFit(
                start.weight[:, active], start.bin_offset[:, active], start.intercept[active]
            )
        w, c, b = _newton(features, counts[:, :, active], float(alpha), start)
        weight[:, active], bin_offset[:, active], intercept[active] = w, c, b
    return PoissonGLMFit(weight, bin_offset, intercept)


def _newton(
    features: np.ndarray, counts: np.ndarray, alpha: float, start: PoissonGLMFit | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float64))
    y = torch.from_numpy(np.ascontiguousarray(counts, dtype=np.float64))
    problem = _Problem(z, y, alpha)
    if start is None:
        w, c, b = _start(y, z.shape[2])
    else:
        w, c, b = (
            torch.from_numpy(np.array(a, dtype=np.float64))
            for a in (start.weight, start.bin_offset, start.intercept)
        )
    eta = problem.eta(w, c, b)
    loss = problem.objective(eta, w, c)
    for _ in range(MAX_ITER):
        dw, dc, db = problem.newton_direction(eta, w, c, b)
        d_eta = problem.eta(dw, dc, db)
        step, new_loss = _backtrack(problem, loss, eta, d_eta, w, dw, c, dc)
        w, c, b = w + step * dw, c + step * dc, b + step * db
        eta = eta + step * d_eta
        gain = float((loss - new_loss).max())
        loss = new_loss
        if gain < TOLERANCE:
            break
    return w.numpy(), c.numpy(), b.numpy()


def _backtrack(problem, loss, eta, d_eta, w, dw, c, dc) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-unit step sizes (1, 1/2, 1/4, ...) that do not increase the objective."""
    step = torch.ones_like(loss)
    accepted = torch.zeros_like(loss, dtype=torch.bool)
    new_loss = loss.clone()
    slack = 1e-12 * loss.abs() + 1e-15  # a converged unit's zero step is accepted
    for _ in range(MAX_HALVINGS):
        trial = problem.objective(eta + step * d_eta, w + step * dw, c + step * dc)
        better = (trial <= loss + slack) & ~accepted
        new_loss = torch.where(better, trial, new_loss)
        accepted |= better
        if bool(accepted.all()):
            break
        step = torch.where(accepted, step, step / 2)
    return torch.where(accepted, step, torch.zeros_like(step)), new_loss
