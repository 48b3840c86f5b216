"""Scaling-law fits: L(N, D) = E + A/N^α + B/D^β and L(C) = (C_c/C)^α_C, with bootstrap intervals.

Pure numerics on arrays (numpy and scipy, imported inside functions), so the synthetic-recovery tests
exercise exactly what ``domainlm scaling fit`` runs.

* L(N, D) follows Hoffmann et al. 2022 (Chinchilla, approach 3): the fit minimises a Huber loss
  (δ = 1e-3) of ``log L̂ - log L`` so that a few outlying runs do not steer it. Their grid of
  L-BFGS starts over five parameters is replaced by variable projection: for fixed (α, β) the law is
  linear in (E, A, B), which non-negative least squares solves exactly, so the search runs over
  (α, β) alone (a coarse grid, then Nelder-Mead). A last polish refines all five parameters in
  Hoffmann's ``logsumexp(a - α log N, b - β log D, e)`` form with scipy's Huber least squares. Small
  sweeps often leave E, A and α trading off along a flat valley; variable projection walks it in
  milliseconds where a 5-parameter solver crawls, which keeps a 200-resample bootstrap affordable.
* L(C) is Kaplan et al. 2020's pure power law, fitted in log space to the compute frontier (runs that
  reach a lower loss than every cheaper run), since it describes the best loss a budget buys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from domainlm.errors import DataError

# Published values, printed next to ours so nobody mistakes a CPU sweep's exponents for them.
KAPLAN = {"alpha_N": 0.076, "alpha_D": 0.095, "alpha_C": 0.050}
CHINCHILLA = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022
# An exponent above this means the sweep cannot see that axis; bounding it keeps fits finite.
EXPONENT_MAX = 3.0


@dataclass
class NDLaw:
    """L(N, D) = E + A/N^α + B/D^β."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float

    def loss(self, n: Any, d: Any) -> Any:
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def optimal(self, compute: float, k: float = 6.0) -> tuple[float, float, float]:
        """Compute-optimal (N, D, loss) for ``compute`` FLOPs when training costs ``C = k·N·D``.

        Setting dL/dN = 0 along D = C/(kN) gives N_opt = G·(C/k)^(β/(α+β)) with
        G = (αA/(βB))^(1/(α+β)) (Hoffmann et al. 2022, eq. 4).
        """
        budget = compute / k
        if self.alpha <= 0 or self.beta <= 0 or self.A <= 0 or self.B <= 0:
            raise DataError("the fitted law has a zero exponent or coefficient, so it has no compute-optimal "
                            "allocation (more of that axis never helps within the data); widen the sweep")
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
        n = g * budget ** (self.beta / (self.alpha + self.beta))
        d = budget / n
        return n, d, float(self.loss(n, d))

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class CLaw:
    """L(C) = (C_c / C)^α_C."""

    C_c: float
    alpha_C: float

    def loss(self, c: Any) -> Any:
        return (self.C_c / c) ** self.alpha_C

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class Bootstrap:
    """Refits on runs resampled with replacement: their laws and how many resamples could not be fitted."""

    laws: list[Any] = field(default_factory=list)
    failed: int = 0

    def interval(self, fn, confidence: float = 0.95) -> tuple[float, float]:
        import numpy as np

        values = np.array([fn(law) for law in self.laws], dtype=float)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return float("nan"), float("nan")
        tail = (1 - confidence) / 2 * 100
        lo, hi = np.percentile(values, [tail, 100 - tail])
        return float(lo), float(hi)


# --------------------------------------------------------------------------------------------------
# L(N, D)
# --------------------------------------------------------------------------------------------------

def _check_nd(n, d, loss):
    import numpy as np

    n, d, loss = (np.asarray(x, dtype=float) for x in (n, d, loss))
    if not (n.shape == d.shape == loss.shape) or n.ndim != 1:
        raise DataError("N, D and loss must be equal-length lists")
    if np.any(~np.isfinite(n) | ~np.isfinite(d) | ~np.isfinite(loss)) or np.any((n <= 0) | (d <= 0) | (loss <= 0)):
        raise DataError("every N, D and loss must be a positive finite number")
    return n, d, loss


def nd_problem(n: Sequence[float], d: Sequence[float]) -> str | None:
    """Why L(N, D) cannot be fitted to runs at these (N, D), or None when it can."""
    import numpy as np

    if len(n) < 6:
        return (f"{len(n)} usable runs; L(N, D) has 5 parameters, so at least 6 runs are needed (more is better: "
                "the default sweep has 16)")
    if len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
        return "the runs need at least 2 model sizes and 2 token budgets to separate the N and D terms"
    return None


def _huber(r, delta: float):
    import numpy as np

    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta)).sum()


def _project(alpha: float, beta: float, n, d, loss):
    """For fixed (α, β) the law is linear in (E, A, B): solve them by non-negative least squares.

    Rows are divided by the observed loss, so the residual is the relative error, which is the
    log-space residual to first order. Returns ((E, A, B), predicted losses).
    """
    import numpy as np
    from scipy.optimize import nnls

    design = np.column_stack([np.ones_like(n), n**-alpha, d**-beta])
    coef, _ = nnls(design / loss[:, None], np.ones_like(loss))
    return coef, design @ coef


def _vp_fit(n, d, loss, delta: float, starts: list[tuple[float, float]]):
    """Variable projection: minimise the Huber loss of log residuals over (α, β) alone, NNLS inside."""
    import numpy as np
    from scipy.optimize import minimize

    logl = np.log(loss)

    def objective(ab):
        alpha, beta = ab
        if not (0 <= alpha <= EXPONENT_MAX and 0 <= beta <= EXPONENT_MAX):
            return 1e9
        _, pred = _project(alpha, beta, n, d, loss)
        if np.any(pred <= 0):
            return 1e9
        return float(_huber(np.log(pred) - logl, delta))

    best = None
    for start in starts:
        res = minimize(objective, np.asarray(start, dtype=float), method="Nelder-Mead",
                       options={"xatol": 1e-5, "fatol": 1e-12, "maxiter": 400})
        if best is None or res.fun < best.fun:
            best = res
    alpha, beta = (float(x) for x in best.x)
    (e, a, b), _ = _project(alpha, beta, n, d, loss)
    return NDLaw(E=float(e), A=float(a), alpha=alpha, B=float(b), beta=beta)


def _grid_starts(n, d, loss, delta: float, top: int = 3) -> list[tuple[float, float]]:
    """The best (α, β) of a coarse grid, as starting points for the local search."""
    import numpy as np

    logl = np.log(loss)
    scored = []
    for alpha in np.linspace(0.05, 1.5, 15):
        for beta in np.linspace(0.05, 1.5, 15):
            _, pred = _project(alpha, beta, n, d, loss)
            if np.all(pred > 0):
                scored.append((float(_huber(np.log(pred) - logl, delta)), float(alpha), float(beta)))
    scored.sort()
    return [(a, b) for _, a, b in scored[:top]]


def _polish(law: NDLaw, logn, logd, logl, delta: float, max_nfev: int) -> NDLaw:
    """A few steps of the exact log-space Huber fit over all five parameters, from ``law``.

    Parameterised as Hoffmann et al. 2022: log L̂ = logsumexp(a - α log N, b - β log D, e).
    """
    import numpy as np
    from scipy.optimize import least_squares

    def terms(theta):
        a, alpha, b, beta, e = theta
        return np.stack([a - alpha * logn, b - beta * logd, np.full_like(logn, e)])

    def residuals(theta):
        return _logsumexp0(terms(theta)) - logl

    def jacobian(theta):
        t = terms(theta)
        w = np.exp(t - _logsumexp0(t))  # each term's share of the predicted loss
        return np.column_stack([w[0], -w[0] * logn, w[1], -w[1] * logd, w[2]])

    floor = math.log(1e-12)
    lower = np.array([floor, 0.0, floor, 0.0, floor])
    upper = np.array([80.0, EXPONENT_MAX, 80.0, EXPONENT_MAX, float(np.min(logl))])
    x0 = np.array([math.log(law.A) if law.A > 0 else floor, law.alpha, math.log(law.B) if law.B > 0 else floor,
                   law.beta, math.log(law.E) if law.E > 0 else floor])
    x0 = np.clip(x0, lower + 1e-9, upper - 1e-9)
    before = float(_huber(residuals(x0), delta))
    res = least_squares(residuals, x0, jac=jacobian, bounds=(lower, upper), loss="huber", f_scale=delta,
                        x_scale="jac", max_nfev=max_nfev)
    if float(_huber(residuals(res.x), delta)) > before:
        return law
    a, alpha, b, beta, e = res.x
    tiny = math.exp(floor) * 10
    clean = [0.0 if v < tiny else v for v in (math.exp(e), math.exp(a), math.exp(b))]
    return NDLaw(E=clean[0], A=clean[1], alpha=float(alpha), B=clean[2], beta=float(beta))


def _logsumexp0(t):
    # scipy.special.logsumexp spends ~100 µs a call on array-API bookkeeping; the polish calls it
    # hundreds of times on 3×n arrays, so the max-shifted sum is written out.
    import numpy as np

    m = t.max(axis=0)
    return m + np.log(np.exp(t - m).sum(axis=0))


def fit_nd(n: Sequence[float], d: Sequence[float], loss: Sequence[float], *, delta: float = HUBER_DELTA,
           bootstrap: int = 0, seed: int = 0) -> tuple[NDLaw, Bootstrap]:
    """Fit L(N, D) = E + A/N^α + B/D^β; with ``bootstrap > 0`` also refit on resampled runs."""
    import numpy as np

    n, d, loss = _check_nd(n, d, loss)
    why = nd_problem(n, d)
    if why:
        raise DataError(f"cannot fit L(N, D): {why}")
    logn, logd, logl = np.log(n), np.log(d), np.log(loss)
    law = _vp_fit(n, d, loss, delta, _grid_starts(n, d, loss, delta))
    law = _polish(law, logn, logd, logl, delta, max_nfev=300)
    boot = Bootstrap()
    rng = np.random.default_rng(seed)
    for _ in range(bootstrap):
        idx = rng.integers(0, len(n), len(n))
        if nd_problem(n[idx], d[idx]) or len(np.unique(idx)) < 6:
            boot.failed += 1
            continue
        try:
            # Resamples start from the full fit's exponents and skip the polish: a grid and a 5-parameter
            # polish per resample would cost 3x more for a change far inside the interval's width.
            fitted = _vp_fit(n[idx], d[idx], loss[idx], delta, [(law.alpha, law.beta)])
        except (ValueError, np.linalg.LinAlgError, RuntimeError):
            boot.failed += 1
            continue
        boot.laws.append(fitted)
    return law, boot


# --------------------------------------------------------------------------------------------------
# L(C)
# --------------------------------------------------------------------------------------------------

def frontier(compute: Sequence[float], loss: Sequence[float]) -> list[int]:
    """Indices of runs whose loss is lower than that of every run with less compute, by compute."""
    order = sorted(range(len(compute)), key=lambda i: (compute[i], loss[i]))
    out, best = [], math.inf
    for i in order:
        if loss[i] < best:
            out.append(i)
            best = loss[i]
    return out


def _fit_c_once(logc, logl) -> CLaw:
    import numpy as np
    from scipy.optimize import curve_fit

    # log L = α_C·log C_c - α_C·log C: a straight line in log space.
    def line(x, alpha_c, log_cc):
        return alpha_c * (log_cc - x)

    slope = np.polyfit(logc, logl, 1)[0] if len(logc) > 1 else -0.05
    alpha0 = max(-slope, 1e-3)
    p0 = [alpha0, float(np.mean(logc + logl / alpha0))]
    import warnings

    from scipy.optimize import OptimizeWarning

    with warnings.catch_warnings():
        # Two frontier points determine the line exactly; curve_fit then warns that it has no
        # covariance, which we never use (intervals come from the bootstrap).
        warnings.simplefilter("ignore", OptimizeWarning)
        (alpha_c, log_cc), _ = curve_fit(line, logc, logl, p0=p0, maxfev=10000)
    return CLaw(C_c=math.exp(log_cc), alpha_C=float(alpha_c))


def fit_c(compute: Sequence[float], loss: Sequence[float], *, on_frontier: bool = True, bootstrap: int = 0,
          seed: int = 0) -> tuple[CLaw, Bootstrap, list[int]]:
    """Fit L(C) = (C_c/C)^α_C to the compute frontier (or to every run); returns the law, bootstrap, points used."""
    import numpy as np

    c, loss = np.asarray(compute, dtype=float), np.asarray(loss, dtype=float)
    if np.any(~np.isfinite(c) | (c <= 0)) or np.any(~np.isfinite(loss) | (loss <= 0)):
        raise DataError("every compute and loss value must be a positive finite number")
    used = frontier(list(c), list(loss)) if on_frontier else list(range(len(c)))
    if len(used) < 2 or len(np.unique(c[used])) < 2:
        raise DataError(f"cannot fit L(C): only {len(used)} run(s) on the compute frontier; it needs at least 2 at "
                        "different compute (add token budgets or sizes to the sweep)")
    law = _fit_c_once(np.log(c[used]), np.log(loss[used]))
    boot = Bootstrap()
    rng = np.random.default_rng(seed)
    for _ in range(bootstrap):
        idx = rng.integers(0, len(c), len(c))
        sub = frontier(list(c[idx]), list(loss[idx])) if on_frontier else list(range(len(idx)))
        picked = idx[sub]
        if len(np.unique(c[picked])) < 2:
            boot.failed += 1
            continue
        try:
            boot.laws.append(_fit_c_once(np.log(c[picked]), np.log(loss[picked])))
        except (RuntimeError, ValueError):
            boot.failed += 1
    return law, boot, used


# --------------------------------------------------------------------------------------------------
# Honesty about the range
# --------------------------------------------------------------------------------------------------

def extrapolation(value: float, lo: float, hi: float) -> float:
    """How many times outside [lo, hi] ``value`` is (1 inside the range)."""
    if value <= 0:
        return math.inf
    return max(value / hi, lo / value, 1.0)


def synthetic_runs(law: NDLaw, sizes: Sequence[float], tokens: Sequence[float], *, noise: float = 0.01,
                   seed: int = 0) -> tuple[list[float], list[float], list[float]]:
    """A grid of (N, D, loss) drawn from ``law`` with multiplicative log-normal noise (tests, docs)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n, d, loss = [], [], []
    for size in sizes:
        for tok in tokens:
            n.append(float(size))
            d.append(float(tok))
            loss.append(float(law.loss(size, tok) * math.exp(rng.normal(0, noise))))
    return n, d, loss
