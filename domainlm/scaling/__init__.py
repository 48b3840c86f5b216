"""Scaling laws: ``domainlm scaling sweep`` trains a grid of tiny models, ``domainlm scaling fit`` fits laws.

The laws themselves (fits, bootstrap, compute-optimal allocation) live in :mod:`domainlm.scaling.laws`;
FLOPs accounting is :mod:`domainlm.flops`, shared with adapt and compute.
"""

from domainlm.scaling.run_fit import FitConfig, fit
from domainlm.scaling.run_sweep import SweepConfig, sweep

__all__ = ["FitConfig", "SweepConfig", "fit", "sweep"]
