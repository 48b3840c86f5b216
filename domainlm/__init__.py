"""domainlm: adapt general language models to a scientific field.

Every CLI verb is a plain function importable from here; heavy libraries load only when one runs::

    from domainlm import prepare, adapt, bench, publish

The verbs come from the one verb table, :data:`domainlm.cli.VERBS`; the model loaders are the only other names.
"""

from __future__ import annotations

import importlib
from typing import Any

from domainlm.cli import VERBS

__version__ = "0.1.0"

_EXPORTS = {
    **{v.python_name: v.target for v in VERBS if v.python_name},
    "resolve": "domainlm.sources:resolve",
    "load_model": "domainlm.sources:load_model",
    "load_tokenizer": "domainlm.sources:load_tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, _, attr = _EXPORTS[name].partition(":")
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'domainlm' has no attribute '{name}'")
