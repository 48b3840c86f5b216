"""Document readers: streaming parsers that turn input files into :class:`Document` objects (for corpora
and for bench's text tasks).

Every reader is a generator ``read(path, ctx) -> Iterator[Document]`` that holds at most one record in
memory, reads ``.gz`` transparently (by magic bytes, not by name) and reports every record it does not
yield through ``ctx.skip(reason, where)``, so ``prepare`` can count skips by reason in the manifest and
log the file and record position. The registry (built-ins, :func:`register_reader`, ``--format auto``
detection and the input driver) is :mod:`domainlm.documents.registry`.

Bad-input policy, shared by all readers (documented in corpora/README.md):

* a record that cannot be used (invalid JSON line, missing text, invalid UTF-8, wrong residue
  alphabet, ...) is skipped, counted under its reason and logged with ``file:line`` or record number;
* a file that cannot be used at all (truncated gzip, not the declared format, CSV without the text
  column) stops the run with one :class:`~domainlm.errors.DataError` naming the file and the fix;
* an empty file is skipped and counted as ``empty_file``.
"""

from __future__ import annotations

import csv
import fnmatch
import gzip
import hashlib
import io
import json
import logging
import os
import sys
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from domainlm.errors import DataError

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
# Reasons that are filters, not problems: counted in the manifest, logged per record only at DEBUG level.
QUIET_REASONS = {"not_in_categories", "superseded", "deleted", "no_abstract"}
# How many skips per reason are logged one by one (the rest are summarised at the end).
LOG_FIRST = 10
EXAMPLES_KEPT = 5


@dataclass(slots=True)
class Document:
    """One document from a reader: a stable id (PMID, arXiv id, accession, ...), its text and metadata."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReaderOptions:
    """The subset of ``PrepareConfig`` that readers look at."""

    text_field: str = "text"
    id_field: str | None = None
    categories: list[str] | None = None
    ambiguous: str = "keep"
    keep_title_only: bool = False


class SkipLog:
    """Counts skipped records by reason, keeps a few examples with their position, logs the first ones.

    ``muted`` is set while ``prepare`` fast-forwards over records an interrupted run already consumed,
    so resuming does not count them twice.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.muted = False

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        if self.muted:
            return
        self.counts[reason] += 1
        n = self.counts[reason]
        message = f"{where}: {detail}" if detail else where
        if len(self.examples.setdefault(reason, [])) < EXAMPLES_KEPT:
            self.examples[reason].append(message)
        if reason in QUIET_REASONS:
            log.debug("skipped (%s) %s", reason, message)
            return
        if n <= LOG_FIRST:
            log.warning("skipped (%s) %s", reason, message)
        elif n == LOG_FIRST + 1:
            log.warning("more records skipped as '%s'; the manifest has the count", reason)

    def snapshot(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "examples": {k: list(v) for k, v in self.examples.items()}}

    def restore(self, snap: dict[str, Any]) -> None:
        self.counts = Counter(snap.get("counts", {}))
        self.examples = {k: list(v) for k, v in snap.get("examples", {}).items()}


@dataclass
class InputFile:
    """One resolved input: the file, its format and the folder or glob it came from (for ids)."""

    path: Path
    format: str
    bytes: int
    rel: str  # name relative to the folder it was found in (stable ids for txt-folder documents)

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "bytes": self.bytes}


class ReadContext:
    """What a reader gets besides the path: options, the skip log and cross-file PubMed events."""

    def __init__(self, options: ReaderOptions, skips: SkipLog, file: InputFile, file_index: int,
                 pubmed_events: Any = None, on_record: Callable[[str, bool], None] | None = None) -> None:
        self.options = options
        self.skips = skips
        self.file = file
        self.file_index = file_index
        self.pubmed_events = pubmed_events
        # PubMed: called with (PMID, deleted) for every record and every <DeleteCitation> PMID, so that
        # ``corpus prepare`` can resolve revisions and deletions across files in its keyed stage.
        self.on_record = on_record

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        self.skips.skip(reason, where, detail)

    def check_text(self, text: str, where: str) -> bool:
        """False (and a counted skip) when decoding replaced invalid UTF-8 bytes in ``text``."""
        if "\ufffd" in text:
            self.skip("invalid_utf8", where, "invalid UTF-8 bytes (or U+FFFD replacement characters)")
            return False
        return True


Reader = Callable[[Path, ReadContext], Iterator[Document]]


# --------------------------------------------------------------------------------------------------
# Opening files
# --------------------------------------------------------------------------------------------------

def is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == GZIP_MAGIC


def open_binary(path: str | Path) -> BinaryIO:
    """Open ``path`` for reading bytes, decompressing gzip (detected by its magic bytes) on the fly."""
    path = Path(path)
    try:
        if is_gzip(path):
            return gzip.open(path, "rb")  # type: ignore[return-value]
        return open(path, "rb")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def open_text(path: str | Path, newline: str | None = None) -> io.TextIOWrapper:
    """Text view of ``path``. Invalid UTF-8 becomes U+FFFD, which readers turn into counted skips.

    Decoding with ``errors='replace'`` (instead of failing) keeps one bad byte from ending the file;
    ``utf-8-sig`` drops a leading byte-order mark.
    """
    return io.TextIOWrapper(open_binary(path), encoding="utf-8-sig", errors="replace", newline=newline)


def head_bytes(path: Path, n: int = 8192) -> bytes:
    """The first ``n`` decompressed bytes (for format sniffing); a truncated gzip yields what it can."""
    try:
        with open_binary(path) as fh:
            return fh.read(n)
    except (EOFError, OSError, zlib.error):
        return b""


def content_id(text: str) -> str:
    """A stable id for documents without a natural one: the hash of their text.

    Hashing the text (not the file name and line) keeps the train/validation split stable when files
    are renamed, re-ordered or appended to.
    """
    return "h:" + hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def _stem_suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return os.path.splitext(name)[1]


def truncated_gzip_error(path: Path, n: int) -> DataError:
    return DataError(f"{path} is a truncated or damaged gzip file (it ends before the gzip end-of-stream marker; "
                     f"{n} documents were read before the damage). The download was probably cut short: download "
                     "it again (`domainlm corpus download` resumes and checks md5), or remove it from the inputs")


# --------------------------------------------------------------------------------------------------
# Generic readers: plain text, folders of .txt files, JSONL, CSV, arXiv metadata snapshot
# --------------------------------------------------------------------------------------------------

def _collapse(text: str) -> str:
    return " ".join(text.split())


def read_text(path: Path, ctx: ReadContext) -> Iterator[Document]:
    """Plain text: one document per non-empty line (the convention of Hugging Face's ``text`` loader)."""
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            text = line.strip()
            if not text:
                continue
            where = f"{path}:{lineno}"
            if ctx.check_text(text, where):
                yield Document(content_id(text), text, {"source": where})


def read_paragraphs(path: Path, ctx: ReadContext) -> Iterator[Document]:
    """Plain text in paragraphs: documents separated by one or more blank lines (lines inside a paragraph are
    kept with their breaks). Format ``text`` is one document per line; this is the other convention."""
    def flush(lines: list[str], lineno: int) -> Iterator[Document]:
        text = "\n".join(lines)
        where = f"{path}:{lineno}"
        if text and ctx.check_text(text, where):
            yield Document(content_id(text), text, {"source": where})

    lines: list[str] = []
    first = 0
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            stripped = line.strip()
            if stripped:
                if not lines:
                    first = lineno
                lines.append(stripped)
            elif lines:
                yield from flush(lines, first)
                lines = []
    if lines:
        yield from flush(lines, first)


def read_txt_file(path: Path, ctx: ReadContext) -> Iterator[Document]:
    """A folder of paper ``.txt`` files: each file is one document, its id the path inside the folder."""
    with open_text(path) as fh:
        text = fh.read()
    if not text.strip():
        ctx.skip("empty_file", str(path), "the file holds no text")
        return
    if ctx.check_text(text, str(path)):
        yield Document(ctx.file.rel, text, {"source": str(path)})


def _json_key_hint(key: str, keys: list[str]) -> str:
    from domainlm.config import did_you_mean

    return f"{did_you_mean(key, keys)}; keys in the record: {', '.join(keys) or '(none)'}"


def _json_objects(path: Path, ctx: ReadContext) -> Iterator[tuple[str, dict]]:
    """(``path:line``, object) for each JSON-object line; blank lines pass, bad lines are counted skips."""
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                ctx.skip("invalid_json", where, f"not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(obj, dict):
                ctx.skip("invalid_json", where, f"a JSON {type(obj).__name__}, expected an object")
                continue
            yield where, obj


def read_jsonl(path: Path, ctx: ReadContext) -> Iterator[Document]:
    """JSON lines: the text is in ``--text-field``; the id in ``--id-field`` (default ``id`` if present)."""
    field_name = ctx.options.text_field
    first = True
    for where, obj in _json_objects(path, ctx):
        if field_name not in obj:
            if first:
                # The first record lacking the field means the wrong column was named, not a bad record.
                raise DataError(f"{where}: the record has no '{field_name}' field"
                                f"{_json_key_hint(field_name, list(obj))}. Pass --text-field with the key "
                                "that holds the text")
            ctx.skip("missing_field", where, f"no '{field_name}' field")
            continue
        first = False
        text = obj[field_name]
        if not isinstance(text, str):  # "text": null is a record without text, not a record without the field
            what = "null" if text is None else f"a {type(text).__name__}"
            ctx.skip("missing_field", where, f"'{field_name}' is {what}, not text")
            continue
        if not ctx.check_text(text, where):
            continue
        id_key = ctx.options.id_field or ("id" if "id" in obj else None)
        doc_id = obj.get(id_key) if id_key else None
        meta = {"source": where}
        yield Document(str(doc_id) if doc_id not in (None, "") else content_id(text), text, meta)


def read_csv(path: Path, ctx: ReadContext) -> Iterator[Document]:
    """CSV (``.tsv``: tab-separated) with a header row; the text is in the column ``--text-field``."""
    field_name = ctx.options.text_field
    delimiter = "\t" if _stem_suffix(path) == ".tsv" else ","
    # Abstracts and papers exceed csv's default 128 KiB field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open_text(path, newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise DataError(f"{path}:1: not a readable CSV header ({exc})") from None
        if header is None:
            ctx.skip("empty_file", str(path), "no header row")
            return
        if field_name not in header:
            from domainlm.config import did_you_mean

            raise DataError(f"{path}: no column '{field_name}'{did_you_mean(field_name, header)}; columns: "
                            f"{', '.join(header)}. Pass --text-field with the column that holds the text")
        col = header.index(field_name)
        id_name = ctx.options.id_field or ("id" if "id" in header else None)
        if id_name is not None and id_name not in header:
            raise DataError(f"{path}: no id column '{id_name}'; columns: {', '.join(header)}. Fix --id-field")
        id_col = header.index(id_name) if id_name else None
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise DataError(f"{path}:{reader.line_num}: unreadable CSV ({exc}); fix the quoting there") from None
            where = f"{path}:{reader.line_num}"
            if not row:
                continue
            if len(row) <= col:
                ctx.skip("missing_field", where, f"the row has {len(row)} columns, '{field_name}' is column {col + 1}")
                continue
            text = row[col]
            if not ctx.check_text(text, where):
                continue
            doc_id = row[id_col] if id_col is not None and id_col < len(row) and row[id_col] else content_id(text)
            yield Document(doc_id, text, {"source": where})


def _category_match(cats: list[str], wanted: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(c, w) for c in cats for w in wanted)


def read_arxiv(path: Path, ctx: ReadContext) -> Iterator[Document]:
    """The arXiv metadata snapshot (Kaggle ``arxiv-metadata-oai-snapshot.json``): one JSON object a line.

    The text is the title, a blank line and the abstract, each with arXiv's hard line wrapping undone.
    ``--categories`` keeps papers with any matching category (``cond-mat.mtrl-sci``, or a glob like
    ``cond-mat.*``); the rest are counted as ``not_in_categories``.
    """
    wanted = ctx.options.categories
    for where, obj in _json_objects(path, ctx):
        if "id" not in obj:
            ctx.skip("invalid_json", where, "not an arXiv metadata record (no 'id')")
            continue
        cats = str(obj.get("categories") or "").split()
        if wanted and not _category_match(cats, wanted):
            ctx.skip("not_in_categories", where, f"arXiv {obj['id']} ({' '.join(cats)})")
            continue
        abstract = _collapse(str(obj.get("abstract") or ""))
        title = _collapse(str(obj.get("title") or ""))
        if not abstract:
            ctx.skip("no_abstract", where, f"arXiv {obj['id']} has no abstract")
            continue
        text = f"{title}\n\n{abstract}" if title else abstract
        if not ctx.check_text(text, where):
            continue
        versions = obj.get("versions")
        versions = versions if isinstance(versions, list) else []  # metadata only: a wrong type is ignored
        meta = {"source": where, "categories": cats, "doi": obj.get("doi"), "title": title,
                "update_date": obj.get("update_date"), "license": obj.get("license"),
                "created": versions[0].get("created") if versions and isinstance(versions[0], dict) else None}
        yield Document(str(obj["id"]), text, meta)


def _sniff_arxiv(head: bytes, path: Path) -> bool:
    if not head.startswith(b"{"):
        return False
    first = head.split(b"\n", 1)[0]
    return b'"categories"' in first and b'"abstract"' in first and b'"id"' in first


def _sniff_jsonl(head: bytes, path: Path) -> bool:
    return head.startswith(b"{") and not _sniff_arxiv(head, path)

