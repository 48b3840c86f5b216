"""Corpus readers: a registry of streaming parsers that turn input files into :class:`Document` objects.

Every reader is a generator ``read(path, ctx) -> Iterator[Document]`` that holds at most one record in
memory, reads ``.gz`` transparently (by magic bytes, not by name) and reports every record it does not
yield through ``ctx.skip(reason, where)``, so ``prepare`` can count skips by reason in the manifest and
log the file and record position. Outsiders add formats with :func:`register_reader`; ``--format auto``
then finds them by file suffix or by their ``sniff`` function.

Bad-input policy, shared by all readers (documented in corpora/README.md):

* a record that cannot be used (invalid JSON line, missing text, invalid UTF-8, wrong residue
  alphabet, ...) is skipped, counted under its reason and logged with ``file:line`` or record number;
* a file that cannot be used at all (truncated gzip, not the declared format, CSV without the text
  column) stops the run with one :class:`~domainlm.errors.DataError` naming the file and the fix;
* an empty file is skipped and counted as ``empty_file``.
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import glob
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
from typing import Any, BinaryIO, Literal

from domainlm.errors import ConfigError, DataError

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
                 pubmed_events: Any = None) -> None:
        self.options = options
        self.skips = skips
        self.file = file
        self.file_index = file_index
        self.pubmed_events = pubmed_events

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        self.skips.skip(reason, where, detail)

    def check_text(self, text: str, where: str) -> bool:
        """False (and a counted skip) when decoding replaced invalid UTF-8 bytes in ``text``."""
        if "\ufffd" in text:
            self.skip("invalid_utf8", where, "invalid UTF-8 bytes (or U+FFFD replacement characters)")
            return False
        return True


Reader = Callable[[Path, ReadContext], Iterator[Document]]


@dataclass(frozen=True)
class ReaderSpec:
    """A registered reader. ``kind`` is 'text' or 'protein' (proteins get residue cleaning, not text)."""

    name: str
    read: Reader
    suffixes: tuple[str, ...] = ()
    sniff: Callable[[bytes, Path], bool] | None = None
    kind: Literal["text", "protein"] = "text"
    description: str = ""


_READERS: dict[str, ReaderSpec] = {}


def register_reader(name: str, read: Reader | None = None, *, suffixes: tuple[str, ...] = (),
                    sniff: Callable[[bytes, Path], bool] | None = None, kind: Literal["text", "protein"] = "text",
                    description: str = ""):
    """Register a reader under ``name`` (usable as a decorator). Registering a name twice is an error.

    Args:
        name: the ``--format`` value.
        read: ``read(path, ctx)`` yielding :class:`Document` objects and calling ``ctx.skip`` for the rest.
        suffixes: file-name endings (``.xml``; ``.gz`` is stripped first) that auto-detection maps here.
        sniff: ``sniff(head_bytes, path) -> bool`` for content-based auto-detection.
        kind: 'text' or 'protein'.
        description: one line for listings.
    """
    def deco(fn: Reader) -> Reader:
        if name in _READERS:
            raise ValueError(f"a corpus reader named '{name}' is already registered ({_READERS[name].read!r}); "
                             "choose another name")
        _READERS[name] = ReaderSpec(name, fn, tuple(suffixes), sniff, kind, description or (fn.__doc__ or "").strip())
        return fn

    return deco(read) if read is not None else deco


def _ensure_builtin() -> None:
    # The PubMed and protein readers register themselves on import.
    from domainlm.corpora import proteins, pubmed  # noqa: F401


def reader_names() -> list[str]:
    _ensure_builtin()
    return sorted(_READERS)


def get_reader(name: str) -> ReaderSpec:
    """The reader registered as ``name``; an unknown name gets a did-you-mean and the list."""
    _ensure_builtin()
    if name not in _READERS:
        from domainlm.config import did_you_mean

        raise ConfigError([f"unknown corpus format '{name}'{did_you_mean(name, _READERS)}; known formats: "
                           f"{', '.join(sorted(_READERS))}"])
    return _READERS[name]


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


# --------------------------------------------------------------------------------------------------
# Input resolution and format detection
# --------------------------------------------------------------------------------------------------

_HIDDEN_OR_NOTES = ("README", "SOURCES", "LICENSE", "NOTICE")


def _stem_suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return os.path.splitext(name)[1]


def detect_format(path: Path, *, in_folder: bool = False) -> str | None:
    """Guess the reader for ``path`` from its content, then its suffix; None when nothing fits."""
    _ensure_builtin()
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


def truncated_gzip_error(path: Path, n: int) -> DataError:
    return DataError(f"{path} is a truncated or damaged gzip file (it ends before the gzip end-of-stream marker; "
                     f"{n} documents were read before the damage). The download was probably cut short: download "
                     "it again (`domainlm corpus download` resumes and checks md5), or remove it from the inputs")


def iter_documents(files: list[InputFile], options: ReaderOptions, skips: SkipLog, *,
                   start: Position | None = None, pubmed_events: Any = None
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
        spec = get_reader(f.format)
        ctx = ReadContext(options, skips, f, fi, pubmed_events)
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
        text = obj.get(field_name)
        if text is None:
            if first:
                # The first record lacking the field means the wrong column was named, not a bad record.
                raise DataError(f"{where}: the record has no '{field_name}' field"
                                f"{_json_key_hint(field_name, list(obj))}. Pass --text-field with the key "
                                "that holds the text")
            ctx.skip("missing_field", where, f"no '{field_name}' field")
            continue
        first = False
        if not isinstance(text, str):
            ctx.skip("missing_field", where, f"'{field_name}' is a {type(text).__name__}, not text")
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


register_reader("text", read_text, description="plain text, one document per non-empty line")
register_reader("txt-folder", read_txt_file, description="a folder of .txt files, one document per file")
register_reader("jsonl", read_jsonl, suffixes=(".jsonl", ".json", ".ndjson"), sniff=_sniff_jsonl,
                description="JSON lines; the text in --text-field")
register_reader("csv", read_csv, suffixes=(".csv", ".tsv"), description="CSV/TSV with a header; text in --text-field")
register_reader("arxiv", read_arxiv, sniff=_sniff_arxiv,
                description="arXiv metadata snapshot (JSON lines), filtered by --categories")
