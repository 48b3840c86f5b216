"""The document reader registry: the built-in formats (one explicit table), readers added with
:func:`register_reader`, ``--format auto`` detection, input resolution and the driver that runs the
readers over a file list.

It sits one floor above the readers (readers.py, pubmed.py, proteins.py import nothing from here), so the
registry has no import cycle: the table of built-ins below is the only place a format name is bound to a
reader (peft's explicit mapping style), and a name is registered once (duplicates are refused).
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import logging
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from domainlm.documents import proteins, pubmed, readers
from domainlm.documents.readers import (
    Document,
    InputFile,
    ReadContext,
    Reader,
    ReaderOptions,
    SkipLog,
    _stem_suffix,
    head_bytes,
    truncated_gzip_error,
)
from domainlm.errors import ConfigError, DataError, did_you_mean

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReaderSpec:
    """A registered reader. ``kind`` is 'text' or 'protein' (proteins get residue cleaning, not text)."""

    name: str
    read: Reader
    suffixes: tuple[str, ...] = ()
    sniff: Callable[[bytes, Path], bool] | None = None
    kind: Literal["text", "protein"] = "text"
    description: str = ""


# The built-in formats, in sniffing order (content sniffers first: PubMed XML before generic XML-less
# checks, arXiv before plain JSON lines).
BUILTIN_READERS: dict[str, ReaderSpec] = {s.name: s for s in (
    ReaderSpec("pubmed-xml", pubmed.read_pubmed_xml, (".xml",), pubmed._sniff_xml, "text",
               "PubMed XML (PubmedArticleSet / MedlineCitationSet), .gz read transparently"),
    ReaderSpec("medline", pubmed.read_medline, (".medline", ".nbib"), pubmed._sniff_medline, "text",
               "MEDLINE tagged text (Bio.Medline)"),
    ReaderSpec("fasta", proteins.read_fasta, (".fasta", ".fa", ".faa", ".fas"), proteins._sniff_fasta, "protein",
               "protein FASTA (Bio.SeqIO.FastaIO); alphabet policy --ambiguous"),
    ReaderSpec("swissprot", proteins.read_swissprot, (".dat", ".swiss"), proteins._sniff_swissprot, "protein",
               "UniProtKB/Swiss-Prot flat file (Bio.SeqIO 'swiss')"),
    ReaderSpec("text", readers.read_text, (), None, "text", "plain text, one document per non-empty line"),
    ReaderSpec("paragraphs", readers.read_paragraphs, (), None, "text",
               "plain text, documents separated by blank lines"),
    ReaderSpec("txt-folder", readers.read_txt_file, (), None, "text", "a folder of .txt files, one document per file"),
    ReaderSpec("jsonl", readers.read_jsonl, (".jsonl", ".json", ".ndjson"), readers._sniff_jsonl, "text",
               "JSON lines; the text in --text-field"),
    ReaderSpec("csv", readers.read_csv, (".csv", ".tsv"), None, "text", "CSV/TSV with a header; text in --text-field"),
    ReaderSpec("arxiv", readers.read_arxiv, (), readers._sniff_arxiv, "text",
               "arXiv metadata snapshot (JSON lines), filtered by --categories"),
)}

_READERS: dict[str, ReaderSpec] = dict(BUILTIN_READERS)


def register_reader(name: str, read: Reader | None = None, *, suffixes: tuple[str, ...] = (),
                    sniff: Callable[[bytes, Path], bool] | None = None, kind: Literal["text", "protein"] = "text",
                    description: str = ""):
    """Register a reader under ``name`` (usable as a decorator). Registering a name twice is an error.

    The name is then a valid ``--format`` (and ``format:`` in recipes and cards).

    Args:
        name: the ``--format`` value.
        read: ``read(path, ctx)`` yielding :class:`Document` objects and calling ``ctx.skip`` for the rest.
        suffixes: file-name endings (``.xml``; ``.gz`` is stripped first) that auto-detection maps here.
        sniff: ``sniff(head_bytes, path) -> bool`` for content-based auto-detection.
        kind: 'text' or 'protein'.
        description: one line for listings.
    """
    def deco(fn: Reader) -> Reader:
        if name in _READERS or name == "auto":
            raise ValueError(f"a corpus reader named '{name}' is already registered ({_READERS[name].read!r}); "
                             "choose another name" if name != "auto" else "'auto' is reserved for detection")
        _READERS[name] = ReaderSpec(name, fn, tuple(suffixes), sniff, kind, description or (fn.__doc__ or "").strip())
        return fn

    return deco(read) if read is not None else deco


def reader_names() -> list[str]:
    return sorted(_READERS)


def get_reader(name: str) -> ReaderSpec:
    """The reader registered as ``name``; an unknown name gets a did-you-mean and the list."""
    if name not in _READERS:
        raise ConfigError([f"unknown corpus format '{name}'{did_you_mean(name, _READERS)}; known formats: "
                           f"auto, {', '.join(sorted(_READERS))}"])
    return _READERS[name]


# --------------------------------------------------------------------------------------------------
# Input resolution and format detection
# --------------------------------------------------------------------------------------------------

_HIDDEN_OR_NOTES = ("README", "SOURCES", "LICENSE", "NOTICE")


def detect_format(path: Path, *, in_folder: bool = False) -> str | None:
    """Guess the reader for ``path`` from its content, then its suffix; None when nothing fits."""
    head = head_bytes(path)
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    for spec in _READERS.values():
        if spec.sniff is not None:
            try:
                if spec.sniff(stripped, path):
                    return spec.name
            except Exception:  # a third-party sniffer must not break detection of other formats
                log.debug("sniffer of reader %s failed on %s", spec.name, path, exc_info=True)
    suffix = _stem_suffix(path)
    if suffix == ".txt":
        return "txt-folder" if in_folder else "text"
    for spec in _READERS.values():
        if suffix and suffix in spec.suffixes:
            return spec.name
    return None


def resolve_inputs(inputs: list[str], fmt: str = "auto", *, base: Path | None = None,
                   skips: SkipLog | None = None) -> list[InputFile]:
    """Expand files, folders and globs (``.gz`` included) into an ordered, de-duplicated file list.

    Order is the order of ``inputs``; files found in one folder or glob are sorted by name, so a run is
    reproducible. Inputs that match nothing are reported together in one ConfigError.
    """
    files: list[InputFile] = []
    seen: set[Path] = set()
    missing: list[str] = []
    undetected: list[str] = []
    for raw in inputs:
        spec = os.path.expanduser(os.path.expandvars(str(raw)))
        p = Path(spec)
        if base is not None and not p.is_absolute():
            p = base / p
        found: list[tuple[Path, str, bool]] = []  # (path, rel, found inside a folder)
        if p.is_dir():
            for child in sorted(p.rglob("*")):
                if child.is_file() and not any(part.startswith(".") for part in child.relative_to(p).parts) \
                        and not child.name.upper().startswith(_HIDDEN_OR_NOTES):
                    found.append((child, str(child.relative_to(p)), True))
        elif p.is_file():
            found.append((p, p.name, False))
        elif glob.has_magic(str(p)):
            root = Path(str(p).split("*")[0].split("?")[0].split("[")[0]).parent
            for m in sorted(glob.glob(str(p), recursive=True)):
                mp = Path(m)
                if mp.is_file():
                    found.append((mp, str(mp.relative_to(root)) if mp.is_relative_to(root) else mp.name, False))
        if not found:
            missing.append(str(raw))
            continue
        for path, rel, in_folder in found:
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            if fmt == "auto":
                detected = detect_format(path, in_folder=in_folder)
                if detected is None:
                    if in_folder:
                        # A folder of papers may hold PDFs or images next to the text: skip them, counted.
                        if skips is not None:
                            skips.skip("unsupported_file", str(path), "format not recognised; not read")
                        continue
                    undetected.append(str(path))
                    continue
            elif fmt == "txt-folder":
                if in_folder and _stem_suffix(path) != ".txt":
                    if skips is not None:  # a folder of papers may hold PDFs or figures next to the text
                        skips.skip("unsupported_file", str(path), "not a .txt file; not read")
                    continue
                detected = "txt-folder"
            else:
                detected = fmt
            files.append(InputFile(path, detected, path.stat().st_size, rel))
    problems = []
    if missing:
        problems.append(f"'inputs': no file matches {', '.join(repr(m) for m in missing)} (check the path; globs "
                        "need quotes on the command line so the shell does not expand them)")
    if undetected:
        problems.append(f"'format': cannot tell the format of {', '.join(undetected)}; pass --format with one of: "
                        f"{', '.join(reader_names())}")
    if problems:
        raise ConfigError(problems)
    return files


# --------------------------------------------------------------------------------------------------
# Driving the readers
# --------------------------------------------------------------------------------------------------

@dataclass
class Position:
    """Where the document stream stands: the file index and how many documents of it were consumed."""

    file_index: int = 0
    docs_in_file: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def iter_documents(files: list[InputFile], options: ReaderOptions, skips: SkipLog, *,
                   start: Position | None = None, stop: int | None = None, pubmed_events: Any = None,
                   on_record: Callable[[int, str, bool], None] | None = None,
                   ) -> Iterator[tuple[Document, str, Position]]:
    """Yield ``(document, reader kind, position after it)`` over all files, in order.

    ``start`` fast-forwards an interrupted run: earlier files are not opened at all and the first
    ``start.docs_in_file`` documents of the current file are re-read silently (their skips were
    already counted).
    """
    start = start or Position()
    for fi, f in enumerate(files):
        if fi < start.file_index:
            continue
        if stop is not None and fi >= stop:
            break
        spec = get_reader(f.format)
        hook = None
        if on_record is not None:
            def hook(pmid: str, deleted: bool, fi: int = fi) -> None:
                on_record(fi, pmid, deleted)
        ctx = ReadContext(options, skips, f, fi, pubmed_events, hook)
        skip_n = start.docs_in_file if fi == start.file_index else 0
        skips.muted = skip_n > 0
        n = 0
        try:
            if f.bytes == 0:
                skips.skip("empty_file", str(f.path), "the file is empty")
                continue
            for doc in spec.read(f.path, ctx):
                n += 1
                if n <= skip_n:
                    if n == skip_n:
                        skips.muted = False
                    continue
                yield doc, spec.kind, Position(fi, n)
        except (EOFError, gzip.BadGzipFile, zlib.error):
            raise truncated_gzip_error(f.path, n) from None
        except OSError as exc:
            raise DataError(f"cannot read {f.path}: {exc.strerror or exc}") from None
        finally:
            skips.muted = False
        if n == 0:
            log.info("%s: no documents", f.path)


