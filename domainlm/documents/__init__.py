"""Document readers: streaming parsers that turn input files into :class:`~.readers.Document` objects.

Both ``corpus prepare`` (:mod:`domainlm.corpora`) and bench's unlabelled-text tasks
(:mod:`domainlm.tasks.readers.text`) read files through these, so one format has one parser and one meaning.
The package sits below both and imports nothing from either.

* :mod:`.readers` -- the :class:`~.readers.Document` record, the skip log, gzip handling and the plain-text,
  JSON-lines, CSV and arXiv readers;
* :mod:`.pubmed` -- PubMed XML and MEDLINE; :mod:`.proteins` -- FASTA and Swiss-Prot;
* :mod:`.registry` -- the table of built-in formats, :func:`~.registry.register_reader`, ``--format auto``
  detection, input resolution and the driver that runs readers over a file list.

Public API (imported lazily, so ``import domainlm.documents`` stays cheap)::

    from domainlm.documents import Document, register_reader, reader_names, get_reader
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Document": "domainlm.documents.readers:Document",
    "register_reader": "domainlm.documents.registry:register_reader",
    "reader_names": "domainlm.documents.registry:reader_names",
    "get_reader": "domainlm.documents.registry:get_reader",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, _, attr = _EXPORTS[name].partition(":")
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'domainlm.documents' has no attribute '{name}'")
