"""``domainlm quickstart``: the whole job end to end on a shipped sample.

``config.py`` holds the options and the schema of the per-domain YAMLs beside it (``biomed.yaml``: a shipped adapt
recipe and the keys the quickstart changes in it), ``run.py`` the stages, ``summary.py`` the closing table.
"""

from __future__ import annotations

from typing import Any

from domainlm.quickstart.config import QuickstartConfig


def quickstart(config: QuickstartConfig | None = None, **overrides: Any) -> dict[str, Any]:
    """Adapt a general model to a scientific domain, measure it against its base, and publish it.

    With no arguments: SmolLM2-135M (packaged, offline) with LoRA on the shipped PubMed sample, benched on
    the shipped biomedical suite plus held-out domain and general perplexity, published with its card.
    """
    from domainlm.quickstart.run import run

    return run(config, **overrides)


__all__ = ["QuickstartConfig", "quickstart"]
