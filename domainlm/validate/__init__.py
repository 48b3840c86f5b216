"""``domainlm validate``: check a recipe or task file without loading weights or data."""

from __future__ import annotations

from typing import Any

from domainlm.config import as_config
from domainlm.validate.config import ValidateConfig


def validate(config: ValidateConfig | None = None, **overrides: Any) -> str:
    """Check a recipe (adapt / corpus prepare) or a task file, reporting every problem at once.

    Unknown keys get a "did you mean", wrong types name the expected type, and impossible combinations
    name the keys involved. Prints "OK" and the resolved settings when the file is valid.
    """
    from domainlm.validate.run import run

    return run(as_config(ValidateConfig, config, overrides))


__all__ = ["ValidateConfig", "validate"]
