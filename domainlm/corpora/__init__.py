"""Domain corpora: read, clean, deduplicate, tokenise and pack (``domainlm corpus prepare|stats|download``).

The verbs are the typed functions here; each runs in its own module (``run.py`` for prepare,
``run_stats.py``, ``run_download.py``) with its options in ``config.py``. The rest of the public API is
imported lazily, so ``import domainlm.corpora`` stays cheap::

    from domainlm.corpora import prepare, stats, download       # the verbs (also: from domainlm import ...)
    from domainlm.corpora import load_prepared, read_corpus_manifest

The readers that turn input files into documents, and ``register_reader`` for new formats, are
:mod:`domainlm.documents`, one floor down (bench's text tasks read through them too).
"""

from __future__ import annotations

import importlib
from typing import Any

from domainlm.config import as_config
from domainlm.corpora.config import DownloadConfig, PrepareConfig, StatsConfig


def prepare(config: PrepareConfig | str | None = None, **overrides: Any) -> dict[str, Any]:
    """Read, clean, deduplicate, split, tokenise and pack a domain corpus into OUT.

    OUT gets train/ and validation/ (each task's fixed-length blocks as uint16 or uint32 token ids with its
    document starts; load with domainlm.corpora.load_prepared, which gives input_ids and per-token doc_ids),
    documents/ (which source id each document index is) and, written last, manifest.json (inputs and hashes, counts and drops by reason, tokenizer,
    config, versions). Re-running with the same settings reuses a finished folder and resumes an
    interrupted one. Returns the manifest (with ``--executor slurm``, the jobs are submitted and the
    returned dict says where the manifest will appear).
    """
    from domainlm.corpora.run import run

    return run(config, **overrides)


def stats(config: StatsConfig | str | None = None, **overrides: Any) -> dict[str, Any]:
    """Describe a corpus: documents, tokens, a length histogram (PNG), frequent domain terms and how finely a
    tokenizer fragments its words (subword pieces per word, the frequent words split worst).

    CORPUS is a prepared folder (its tokenizer is the default --model), a corpus card name, or input files.
    Writes stats.json and length_histogram.png to --out and returns the statistics.
    """
    from domainlm.corpora.run_stats import run

    return run(as_config(StatsConfig, config, overrides))


def download(config: DownloadConfig | str | None = None, **overrides: Any) -> dict[str, Any]:
    """Download PubMed baseline or update files, or UniProt Swiss-Prot, checking md5 and resuming cut transfers.

    Files go to --out (default: the folder the corpus cards read). A file already there is skipped; a
    partial one (NAME.part) is resumed. Writes download.json (the files, sizes and md5) and returns it.
    """
    from domainlm.corpora.run_download import run

    return run(as_config(DownloadConfig, config, overrides))


_EXPORTS = {
    "load_prepared": "domainlm.corpora.pack:load_prepared",
    "load_documents": "domainlm.corpora.pack:load_documents",
    "read_corpus_manifest": "domainlm.corpora.pack:read_corpus_manifest",
    "load_card": "domainlm.corpora.cards:load_card",
    "prepare_card": "domainlm.corpora.run:prepare_card",
    "list_cards": "domainlm.corpora.cards:list_cards",
    "fragmentation": "domainlm.corpora.run_stats:fragmentation",
}

__all__ = sorted([*_EXPORTS, "DownloadConfig", "PrepareConfig", "StatsConfig", "download", "prepare", "stats"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, _, attr = _EXPORTS[name].partition(":")
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'domainlm.corpora' has no attribute '{name}'")
