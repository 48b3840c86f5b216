"""Domain corpora: read, clean, deduplicate, tokenise and pack (``domainlm corpus prepare|stats|download``).

Public API (imported lazily, so ``import domainlm.corpora`` stays cheap)::

    from domainlm.corpora import load_prepared, read_corpus_manifest
    from domainlm import prepare, stats, download      # the verbs

The verbs are not re-exported here: ``domainlm.corpora.prepare``, ``.stats`` and ``.download`` are the
submodules (Python binds a submodule's name on its package when it is imported, so a function of the
same name here would silently turn into the module). The readers that turn input files into documents,
and ``register_reader`` for new formats, are :mod:`domainlm.documents`, one floor down (bench's text
tasks read through them too).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PrepareConfig": "domainlm.corpora.settings:PrepareConfig",
    "load_prepared": "domainlm.corpora.pack:load_prepared",
    "load_documents": "domainlm.corpora.pack:load_documents",
    "read_corpus_manifest": "domainlm.corpora.pack:read_corpus_manifest",
    "load_card": "domainlm.corpora.cards:load_card",
    "prepare_card": "domainlm.corpora.prepare:prepare_card",
    "list_cards": "domainlm.corpora.cards:list_cards",
    "fragmentation": "domainlm.corpora.stats:fragmentation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, _, attr = _EXPORTS[name].partition(":")
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'domainlm.corpora' has no attribute '{name}'")
