"""``domainlm models``: which base models resolve on this machine, without loading any weights."""

from __future__ import annotations

from typing import Any

from domainlm.config import as_config
from domainlm.models.config import ModelsConfig


def models(config: ModelsConfig | None = None, **overrides: Any) -> list[dict[str, Any]]:
    """List every model source that resolves here: kind, parameters, origin.

    Also accepted as a base model anywhere: a local folder, a .gguf file, or a Hub id (needs the network or
    the local Hugging Face cache; HF_HUB_OFFLINE=1 is respected).
    """
    from domainlm.models.run import run

    return run(as_config(ModelsConfig, config, overrides))


__all__ = ["ModelsConfig", "models"]
