"""The options of ``domainlm models``."""

from __future__ import annotations

from dataclasses import dataclass

from domainlm.config import opt


@dataclass
class ModelsConfig:
    json: bool = opt(False, "print JSON instead of a table")
