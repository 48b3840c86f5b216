"""domainlm: adapt general language models to a scientific field.

Every CLI verb is a plain function importable from here; heavy libraries load only when one runs::

    from domainlm import prepare, adapt, bench, publish
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "models": "domainlm.models.run:models",
    "validate": "domainlm.validate.run:validate",
    "prepare": "domainlm.corpora.run:prepare",
    "stats": "domainlm.corpora.run_stats:stats",
    "download": "domainlm.corpora.run_download:download",
    "adapt": "domainlm.adapt:adapt",
    "bench": "domainlm.bench:bench",
    "publish": "domainlm.publish:publish",
    "merge": "domainlm.merge:merge",
    "generate": "domainlm.generate.run:generate",
    "extend_vocab": "domainlm.vocab:extend",
    "compute": "domainlm.compute.run:compute",
    "sweep": "domainlm.scaling:sweep",
    "fit": "domainlm.scaling:fit",
    "quickstart": "domainlm.quickstart:quickstart",
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
