"""Readers of unlabelled text for ``lm`` tasks, through the document readers (:mod:`domainlm.documents`):
``text`` (one document per line), ``paragraphs`` (blank-line separated), ``pubmed-xml`` and ``arxiv``.

One parser per format, with one meaning, for ``corpus prepare`` and bench (held-out text, sequences).
"""

from __future__ import annotations

from pathlib import Path

from domainlm.errors import DataError
from domainlm.tasks.readers.base import Example, skip_or_raise
from domainlm.tasks.spec import TaskSpec


def via_documents(fmt: str, path: Path, spec: TaskSpec) -> list[Example]:
    """Read unlabelled text through a :mod:`domainlm.documents` reader: one parser per format, with one
    meaning, for corpus and bench (held-out text, sequences). The document readers count bad records as
    skips; under ``on_error: raise`` the first one stops the read, under ``skip`` they are counted here too."""
    from domainlm.documents.readers import InputFile, ReadContext, ReaderOptions, SkipLog
    from domainlm.documents.registry import get_reader

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    local = SkipLog()
    options = ReaderOptions(text_field=spec.text_field)
    ctx = ReadContext(options, local, InputFile(path, fmt, path.stat().st_size, path.name), 0)
    out = []
    for d in get_reader(fmt).read(path, ctx):
        if d.text:
            where = (d.metadata or {}).get("source") or f"{path} record {d.id}"
            out.append(Example(str(d.id), str(where), text=d.text))
    for reason, examples in local.examples.items():
        n = local.counts[reason]
        exc = DataError(f"{examples[0].split(': ', 1)[0]}: {reason} ({n} record(s) in {path.name}): "
                        f"{examples[0].partition(': ')[2]}. Fix: repair the records, or set on_error: skip")
        for _ in range(n):
            skip_or_raise(spec, exc, reason)
    return out


def read_text(path: Path, spec: TaskSpec, split: str) -> list[Example]:
    """Plain text, one document per non-empty line (the document reader ``text``; ``paragraphs`` splits at
    blank lines)."""
    return via_documents("text", path, spec)


def read_paragraphs(path: Path, spec: TaskSpec, split: str) -> list[Example]:
    """Plain text, documents separated by blank lines (the document reader ``paragraphs``)."""
    return via_documents("paragraphs", path, spec)


def read_pubmed_xml(path: Path, spec: TaskSpec, split: str) -> list[Example]:
    """PubMed XML (title + abstract per article) through the document readers' streaming parser."""
    return via_documents("pubmed-xml", path, spec)


def read_arxiv(path: Path, spec: TaskSpec, split: str) -> list[Example]:
    """arXiv metadata snapshot JSONL (title + abstract) through the document readers."""
    return via_documents("arxiv", path, spec)
