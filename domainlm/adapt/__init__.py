"""``domainlm adapt``: continued pretraining of causal, masked and protein language models."""

from __future__ import annotations

from typing import Any

from domainlm.adapt.config import AdaptConfig
from domainlm.config import as_config


def adapt(config: AdaptConfig | str | None = None, **overrides: Any) -> dict[str, Any]:
    """Continue pretraining a base model on a prepared domain corpus.

    Writes a run folder with checkpoints, a metrics log, loss/perplexity curves, the final model and a
    manifest (config, corpus hash, versions, FLOPs, wall time, final metrics). See AdaptConfig for options.
    """
    from domainlm.adapt.run import run

    return run(as_config(AdaptConfig, config, overrides))


__all__ = ["AdaptConfig", "adapt"]
