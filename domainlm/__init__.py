"""domainlm: adapt general language models to a scientific field.

Every CLI verb is a plain function importable from here; heavy libraries load only when one runs::

    from domainlm import prepare, adapt, bench, publish
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "models": "domainlm.sources_cli:models",
    "validate": "domainlm.validate:validate",
    "prepare": "domainlm.corpora.prepare:prepare",
    "stats": "domainlm.corpora.stats:stats",
    "download": "domainlm.corpora.download:download",
    "adapt": "domainlm.adapt:adapt",
    "bench": "domainlm.bench:bench",
    "publish": "domainlm.publish:publish",
    "merge": "domainlm.merge:merge",
    "generate": "domainlm.generate:generate",
    "extend_vocab": "domainlm.vocab:extend",
    "compute": "domainlm.compute:compute",
    "sweep": "domainlm.scaling:sweep",
    "fit": "domainlm.scaling:fit",
    "quickstart": "domainlm.quickstart:quickstart",
    "resolve": "domainlm.sources.resolution:resolve",
    "load_model": "domainlm.sources.load:load_model",
    "load_tokenizer": "domainlm.sources.load:load_tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, _, attr = _EXPORTS[name].partition(":")
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'domainlm' has no attribute '{name}'")
