"""Memory and speed features applied to the plain model before the engine wraps it for several processes.

Contract between the engine and this module (issue 15): ``apply_features`` is called once, after the model is
built and moved to its device and before DDP/FSDP wrapping, and applies each feature with one small function in
torchtitan's fixed order: frozen weights stored in bf16, activation checkpointing, torch.compile.
"""

from __future__ import annotations

from typing import Any

from domainlm.errors import ConfigError


def apply_features(model: Any, cfg: Any, *, bf16: bool, device: Any) -> Any:
    """Apply the configured memory/speed features to ``model`` and return it (possibly a compiled wrapper)."""
    missing = [flag for flag, on in (("--gradient-checkpointing", cfg.gradient_checkpointing),
                                     ("--compile", cfg.compile)) if on]
    if missing:  # placeholder until the features land: refuse rather than drop the setting
        raise ConfigError([f"{flag} is not available yet" for flag in missing])
    return model
