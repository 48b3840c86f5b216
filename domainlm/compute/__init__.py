"""``domainlm compute``: what a training budget costs, here and on a named accelerator.

Given a model and one of a token budget, a FLOPs budget or a number of hours, it prints the FLOPs
(from :mod:`domainlm.flops`), the wall time on this machine from a short measured training probe,
the wall time on a named accelerator at an assumed utilisation, the Chinchilla-optimal token count
for the model, and where the budget sits on a log scale below the 10^23 FLOPs mark.
"""

from __future__ import annotations

from typing import Any

from domainlm.compute.config import ComputeConfig
from domainlm.config import as_config


def compute(config: ComputeConfig | str | None = None, **overrides: Any) -> dict[str, Any]:
    """FLOPs, wall time here and on an accelerator, and Chinchilla-optimal tokens for a training budget.

    Give the model and exactly one budget: --tokens D, --flops C or --hours H (hours on this machine).
    The wall time here comes from a few seconds of real training steps of the model at --seq-len.
    Returns the numbers as a dict (and writes them as JSON with --out).
    """
    from domainlm.compute.run import run

    return run(as_config(ComputeConfig, config, overrides))


__all__ = ["ComputeConfig", "compute"]
