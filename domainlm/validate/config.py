"""The options of ``domainlm validate``."""

from __future__ import annotations

from dataclasses import dataclass

from domainlm.config import opt


@dataclass
class ValidateConfig:
    path: str = opt(help="the recipe or task YAML to check (a path or a shipped recipe name)")
    schema: str | None = opt(None, "adapt, prepare or task; guessed from the file when omitted")
