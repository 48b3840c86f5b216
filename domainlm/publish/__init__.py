"""``domainlm publish``: export a run as a checkpoint plain ``transformers`` loads, with a model card.

The export is verified every time: a fresh Python process that imports only torch and transformers
(plus peft for an adapter-only export) reloads the published folder and must reproduce the run's
final logits within a dtype-dependent tolerance, or the folder is never put in place.
"""

from __future__ import annotations

from typing import Any

from domainlm.config import as_config
from domainlm.publish.config import PublishConfig


def publish(config: PublishConfig | str | None = None, **overrides: Any) -> dict[str, Any]:
    """Export a finished `domainlm adapt` run as a model others load with plain transformers.

    Merges a LoRA adapter into its base (or exports the adapter alone with --no-merge), saves
    safetensors, config, tokenizer and generation config, writes a Hub model card (README.md) with the
    bench results, verifies the export in a fresh process and, with --push REPO_ID, uploads it.

    Example: domainlm publish runs/adapt --out published/my-model --bench runs/bench
    """
    from domainlm.publish.run import run  # function-local: `domainlm publish --help` skips the export code

    return run(as_config(PublishConfig, config, overrides))


__all__ = ["PublishConfig", "publish"]
