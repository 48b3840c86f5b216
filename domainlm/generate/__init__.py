"""``domainlm generate``: sample text from a causal model, printed token by token as it is produced.

``--model`` takes anything that loads as a causal model: a published folder, a run folder (a LoRA
run is merged on the fly), a packaged model (smollm2), a tiny architecture or a Hub id. ``--compare
BASE`` runs the same prompt with the same seed through a second model and prints its continuation
after the first, each under its own heading, so the two can be read side by side.
"""

from __future__ import annotations

from typing import Any

from domainlm.config import as_config
from domainlm.generate.config import GenerateConfig


def generate(config: GenerateConfig | str | None = None, **overrides: Any) -> dict[str, Any]:
    """Generate a continuation of --prompt from a causal model, printing tokens as they come.

    Example: domainlm generate --model published/my-model --prompt "The kinase" --compare smollm2
    """
    from domainlm.generate.run import run

    return run(as_config(GenerateConfig, config, overrides))


__all__ = ["GenerateConfig", "generate"]
