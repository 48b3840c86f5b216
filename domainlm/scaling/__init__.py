"""Scaling laws: ``domainlm scaling sweep`` trains a grid of tiny models, ``domainlm scaling fit`` fits laws.

Each verb runs in its own module (``run_sweep.py``, ``run_fit.py``) with its options in ``config.py``. The laws
themselves (fits, bootstrap, compute-optimal allocation) live in :mod:`domainlm.scaling.laws`; FLOPs
accounting is :mod:`domainlm.flops`, shared with adapt and compute.
"""

from __future__ import annotations

from typing import Any

from domainlm.config import as_config
from domainlm.scaling.config import FitConfig, SweepConfig


def sweep(config: SweepConfig | str | None = None, **overrides: Any) -> dict[str, Any]:
    """Train a grid of tiny models (sizes x token budgets) and record each run's final held-out loss.

    Runs go cheapest first; a run predicted to finish after --time-budget-s is skipped and marked in the
    table. Writes OUT/sweep.csv (one row per run) and OUT/manifest.json; fit it with
    `domainlm scaling fit OUT/sweep.csv`.
    """
    from domainlm.scaling.run_sweep import run

    return run(as_config(SweepConfig, config, overrides))


def fit(config: FitConfig | str | None = None, **overrides: Any) -> dict[str, Any]:
    """Fit L(N, D) = E + A/N^α + B/D^β and L(C) = (C_c/C)^α_C to a sweep table.

    Prints the fitted parameters with bootstrap intervals, their range of validity, the predicted
    loss at --n/--d and the compute-optimal N and D for --budget, warning when either lies more than
    10x outside the data. Writes fit.json and a log-log plot beside the table (or into --out).
    """
    from domainlm.scaling.run_fit import run

    if isinstance(config, str) and not config.endswith((".yaml", ".yml")):
        config = {"table": config}  # `fit("runs/scaling/sweep.csv")` from Python
    return run(as_config(FitConfig, config, overrides))


__all__ = ["FitConfig", "SweepConfig", "fit", "sweep"]
