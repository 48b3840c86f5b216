"""What a resolved base model is (:class:`ModelSource`), and domainlm's own cache folder."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Kind = Literal["causal", "masked", "protein"]


@dataclass
class ModelSource:
    """A resolved base model. ``path`` is a local folder (or a Hub id when ``origin == 'hub'``)."""

    name: str
    kind: Kind
    origin: str
    path: str
    gguf_file: str | None = None
    hub_id: str | None = None
    license: str | None = None
    description: str = ""
    aliases: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def load_kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def cache_dir() -> Path:
    """domainlm's own cache (converted GGUF copies, built tiny models). ``DOMAINLM_CACHE`` overrides."""
    root = os.environ.get("DOMAINLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "domainlm")
    return Path(root)
