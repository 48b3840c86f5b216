"""PubMed readers: PubMed XML (baseline and update files, and the older MEDLINE XML) and MEDLINE text.

XML is parsed incrementally with ``xml.etree.ElementTree.iterparse``: each top-level record is turned
into a :class:`~domainlm.documents.readers.Document` and then freed, so memory does not grow with the
file (a baseline file is ~30k records, the whole baseline ~36M). Expat, which ElementTree uses, never
fetches external DTDs or entities, so the ``<!DOCTYPE ... "https://dtd.nlm.nih.gov/...">`` line of
every PubMed file is not a network access.

Update files revise records (a PMID appears again) and delete them (``<DeleteCitation>``). The readers
report every PMID they see and every deletion through ``ctx.on_record``; ``corpus prepare`` resolves
them in a datatrove stage keyed by PMID (domainlm.corpora.steps: the last file that has a PMID wins, a
deletion there removes it), so the state is partitioned on disk, not held in one process.
:func:`scan_pubmed_events` is the single-process form for small streams (``vocab``): an index of the
PMIDs that later files contain or delete, 13 bytes per PMID.
"""

from __future__ import annotations

import gzip
import logging
import re
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from domainlm.documents.readers import (
    Document,
    InputFile,
    ReadContext,
    open_binary,
    open_text,
    truncated_gzip_error,
)
from domainlm.errors import DataError

log = logging.getLogger(__name__)

ROOTS = ("PubmedArticleSet", "MedlineCitationSet", "PubmedBookArticleSet")
RECORDS = ("PubmedArticle", "MedlineCitation", "PubmedBookArticle")
DELETES = ("DeleteCitation", "DeleteDocument")


def _text(elem: ET.Element | None) -> str:
    """All text inside ``elem`` with inline markup (<i>, <sub>, <sup>, <b>, MathML) flattened."""
    if elem is None:
        return ""
    return " ".join("".join(elem.itertext()).split())


def _year(*candidates: ET.Element | None) -> int | None:
    for date in candidates:
        if date is None:
            continue
        year = date.findtext("Year")
        if year and year.strip()[:4].isdigit():
            return int(year.strip()[:4])
        m = re.search(r"\b(1[89]\d\d|20\d\d)\b", date.findtext("MedlineDate") or "")
        if m:
            return int(m.group(1))
    return None


def _abstract(abstract: ET.Element | None) -> tuple[str, list[dict[str, str]]]:
    """Abstract text with structured-abstract labels kept ("METHODS: ..."), and the section list."""
    if abstract is None:
        return "", []
    parts, sections = [], []
    for at in abstract.findall("AbstractText"):
        body = _text(at)
        if not body:
            continue
        label = (at.get("Label") or "").strip()
        category = (at.get("NlmCategory") or "").strip()
        if label or category:
            sections.append({"label": label, "category": category})
        parts.append(f"{label}: {body}" if label else body)
    return "\n".join(parts), sections


def parse_article(record: ET.Element) -> dict[str, Any]:
    """Fields of one ``PubmedArticle``, ``MedlineCitation`` or ``PubmedBookArticle`` element."""
    if record.tag == "PubmedBookArticle":
        doc = record.find("BookDocument")
        doc = doc if doc is not None else record
        title = _text(doc.find("ArticleTitle")) or _text(doc.find("Book/BookTitle"))
        abstract, sections = _abstract(doc.find("Abstract"))
        return {"pmid": (doc.findtext("PMID") or "").strip(), "title": title, "abstract": abstract,
                "sections": sections, "year": _year(doc.find("Book/PubDate")), "journal": None,
                "language": doc.findtext("Language"), "doi": None, "mesh": []}
    citation = record if record.tag == "MedlineCitation" else record.find("MedlineCitation")
    if citation is None:
        return {"pmid": ""}
    article = citation.find("Article")
    if article is None:
        return {"pmid": (citation.findtext("PMID") or "").strip(), "title": "", "abstract": ""}
    abstract, sections = _abstract(article.find("Abstract"))
    doi = None
    for loc in article.findall("ELocationID"):
        if loc.get("EIdType") == "doi" and loc.text:
            doi = loc.text.strip()
            break
    if doi is None:
        for aid in record.findall("PubmedData/ArticleIdList/ArticleId"):
            if aid.get("IdType") == "doi" and aid.text:
                doi = aid.text.strip()
                break
    journal = article.find("Journal")
    return {
        "pmid": (citation.findtext("PMID") or "").strip(),
        "title": _text(article.find("ArticleTitle")) or _text(article.find("VernacularTitle")),
        "abstract": abstract,
        "sections": sections,
        "year": _year(article.find("Journal/JournalIssue/PubDate"), article.find("ArticleDate")),
        "journal": (journal.findtext("Title") or journal.findtext("ISOAbbreviation")) if journal is not None else None,
        "language": article.findtext("Language"),
        "doi": doi,
        "mesh": [d.text.strip() for d in citation.findall("MeshHeadingList/MeshHeading/DescriptorName") if d.text],
    }


def _document(fields: dict[str, Any], ctx: ReadContext, where: str) -> Document | None:
    pmid = fields.get("pmid") or ""
    if not pmid:
        ctx.skip("missing_id", where, "record without a PMID")
        return None
    if ctx.on_record is not None:
        ctx.on_record(pmid, False)
    events = ctx.pubmed_events
    if events is not None and pmid.isdigit():
        reason = events.fate(int(pmid), ctx.file_index)
        if reason is not None:
            ctx.skip(reason, where, f"PMID {pmid}")
            return None
    title, abstract = fields.get("title", ""), fields.get("abstract", "")
    if not abstract and not ctx.options.keep_title_only:
        ctx.skip("no_abstract", where, f"PMID {pmid} has no abstract")
        return None
    text = f"{title}\n{abstract}" if title and abstract else (title or abstract)
    if not text:
        ctx.skip("no_abstract", where, f"PMID {pmid} has neither title nor abstract")
        return None
    if not ctx.check_text(text, f"{where} (PMID {pmid})"):
        return None
    meta = {k: fields.get(k) for k in ("year", "journal", "language", "doi", "mesh", "sections")}
    meta["source"] = where
    if title and abstract:
        meta["title"] = title  # the text starts with it (--reading-comprehension mines title <-> abstract)
    return Document(pmid, text, meta)


# expat's errors that only the end of the input can raise: no element found, unclosed token, partial character.
_EXPAT_ENDED_EARLY = {3, 5, 6}


def read_pubmed_xml(path: Path, ctx: ReadContext) -> Iterator[Document]:
    """PubMed XML: ``PubmedArticleSet`` (baseline, update and efetch files) or ``MedlineCitationSet``.

    Title and abstract (structured labels kept, inline markup flattened) become the text; PMID is the
    id; year, journal, language, DOI and MeSH headings go to the metadata. Records without an
    abstract are counted as ``no_abstract``. Malformed XML skips the rest of the file, counted as
    ``malformed_xml`` with its line and column (expat cannot resynchronise after an error). A file that ends
    before its root element closes is a cut download and an error, as a truncated ``.xml.gz`` is.
    """
    n_records = 0
    depth = 0
    root: ET.Element | None = None
    with open_text(path) as fh:
        events = ET.iterparse(fh, events=("start", "end"))
        try:
            for event, elem in events:
                if event == "start":
                    depth += 1
                    if root is None:
                        root = elem
                        if elem.tag not in ROOTS:
                            raise DataError(f"{path} is XML but not PubMed XML: its root element is <{elem.tag}>, "
                                            f"expected one of {', '.join('<' + r + '>' for r in ROOTS)}. Pass the "
                                            "right --format for this file")
                    continue
                depth -= 1
                if depth != 1:
                    continue
                if elem.tag in RECORDS:
                    n_records += 1
                    doc = _document(parse_article(elem), ctx, f"{path} record {n_records}")
                    if doc is not None:
                        yield doc
                elif elem.tag in DELETES:
                    # corpus prepare resolves deletions in its PMID-keyed stage (ctx.on_record); scan_pubmed_events
                    # users saw every later file first.
                    if ctx.on_record is not None:
                        for pm in elem.iter("PMID"):
                            if pm.text and pm.text.strip():
                                ctx.on_record(pm.text.strip(), True)
                root.clear()  # free the finished record (and earlier ones) so memory stays flat
        except ET.ParseError as exc:
            line, col = exc.position
            if root is None and line <= 1 and col == 0:
                ctx.skip("empty_file", str(path), "no XML content")
                return
            if root is None:
                raise DataError(f"{path} is not XML ({exc}); pass the right --format for this file") from None
            if exc.code in _EXPAT_ENDED_EARLY:  # a cut download, like a truncated .xml.gz: refused the same way
                raise DataError(f"{path} is a truncated XML file (it ends at line {line} before </{root.tag}>; "
                                f"{n_records} records were read before the cut). The download was probably cut "
                                "short: download it again (`domainlm corpus download` resumes and checks md5), or "
                                "remove it from the inputs") from None
            ctx.skip("malformed_xml", f"{path}:{line}:{col}",
                     f"{str(exc).split(':')[0]}; the rest of the file was skipped after {n_records} records. "
                     "Re-download or repair the file")


def read_medline(path: Path, ctx: ReadContext) -> Iterator[Document]:
    """MEDLINE/PubMed tagged text (``PMID- ``, ``TI  - ``, ``AB  - ``), parsed by ``Bio.Medline``."""
    from Bio import Medline

    with open_text(path) as fh:
        records = Medline.parse(fh)
        n = 0
        while True:
            n += 1
            where = f"{path} record {n}"
            try:
                rec = next(records)
            except StopIteration:
                break
            except (KeyError, ValueError, IndexError) as exc:
                # Bio.Medline raises KeyError('') on a continuation line (6 spaces) before any tag, and
                # stops there: the rest of the file cannot be re-synchronised, so refuse the file.
                raise DataError(f"{where}: not MEDLINE tagged text ({type(exc).__name__}: {exc!r} from Bio.Medline; "
                                "a record must start with a 'TAG - ' line, not a continuation line). Fix or remove "
                                "that record") from None
            aids = rec.get("AID") or []
            doi = next((a.split(" ")[0] for a in aids if a.endswith("[doi]")), None)
            year = None
            m = re.match(r"\s*(\d{4})", rec.get("DP", ""))
            if m:
                year = int(m.group(1))
            fields = {"pmid": (rec.get("PMID") or "").strip(), "title": " ".join(rec.get("TI", "").split()),
                      "abstract": " ".join(rec.get("AB", "").split()), "year": year,
                      "journal": rec.get("JT") or rec.get("TA"), "language": (rec.get("LA") or [None])[0],
                      "doi": doi, "mesh": [h.lstrip("*").split("/")[0] for h in rec.get("MH", [])], "sections": []}
            doc = _document(fields, ctx, where)
            if doc is not None:
                yield doc


def _sniff_xml(head: bytes, path: Path) -> bool:
    return head.startswith(b"<") and any(f"<{r}".encode() in head for r in ROOTS)


def _sniff_medline(head: bytes, path: Path) -> bool:
    return head.startswith(b"PMID-")




# --------------------------------------------------------------------------------------------------
# Updates: revisions and DeleteCitation across files
# --------------------------------------------------------------------------------------------------

# The PMID of a record is the first child of <MedlineCitation> (PubMed DTD); PMIDs inside
# <DeleteCitation> are deletions. Other <PMID> elements (CommentsCorrections) are ignored. A regular
# expression over the raw bytes is used instead of a second XML parse because it runs at disk speed,
# and only ids are needed here; the full parse later still validates every record.
_EVENT = re.compile(rb"<MedlineCitation\b[^>]*>\s*<PMID\b[^>]*>\s*(\d+)\s*</PMID>"
                    rb"|<(/?)(?:DeleteCitation|DeleteDocument)\b[^>]*>"
                    rb"|<PMID\b[^>]*>\s*(\d+)\s*</PMID>")


# Real PMIDs have at most 9 digits; anything beyond int64 cannot be indexed and cannot match a record
# that the events could revise, so the scan ignores it (the record itself is still read and checked).
MAX_PMID = 2**63 - 1


class PubmedEvents:
    """For each PMID seen in a later file: the last file that has it, and whether that file deletes it."""

    def __init__(self, pmids, files, deleted) -> None:
        import numpy as np

        self._np = np
        if len(pmids):
            order = np.lexsort((files, pmids))
            pmids, files, deleted = pmids[order], files[order], deleted[order]
            last = np.r_[pmids[1:] != pmids[:-1], True]
            pmids, files, deleted = pmids[last], files[last], deleted[last]
        self.pmids, self.files, self.deleted = pmids, files, deleted

    def __len__(self) -> int:
        return len(self.pmids)

    def fate(self, pmid: int, file_index: int) -> str | None:
        """'deleted' or 'superseded' when a file after ``file_index`` deletes or revises ``pmid``."""
        if not 0 <= pmid <= MAX_PMID:
            return None
        i = int(self._np.searchsorted(self.pmids, pmid))
        if i < len(self.pmids) and self.pmids[i] == pmid and self.files[i] > file_index:
            return "deleted" if self.deleted[i] else "superseded"
        return None


def scan_pubmed_events(files: list[InputFile]) -> PubmedEvents | None:
    """Index the PMIDs that PubMed XML files after the first one contain or delete (None if only one)."""
    import numpy as np

    xml_files = [(i, f) for i, f in enumerate(files) if f.format == "pubmed-xml"]
    if len(xml_files) < 2:
        return None
    all_pmids, all_files, all_deleted = [], [], []
    for i, f in xml_files[1:]:
        pmids: list[int] = []
        deleted: list[bool] = []
        in_delete = False
        tail = b""
        try:
            with open_binary(f.path) as fh:
                while True:
                    chunk = fh.read(1 << 22)
                    buf = tail + chunk
                    end = 0
                    for m in _EVENT.finditer(buf):
                        if m.group(2) is not None:  # <DeleteCitation> opens ("") or closes ("/")
                            in_delete = m.group(2) == b""
                        else:
                            is_delete = m.group(1) is None  # a bare <PMID> counts only inside DeleteCitation
                            pmid = int(m.group(1) or m.group(3))
                            if (in_delete or not is_delete) and pmid <= MAX_PMID:
                                pmids.append(pmid)
                                deleted.append(is_delete)
                        end = m.end()
                    if not chunk:
                        break
                    # Keep an unmatched tail: a tag may straddle the chunk boundary.
                    tail = buf[max(end, len(buf) - 1024):]
        except (EOFError, gzip.BadGzipFile, zlib.error):
            raise truncated_gzip_error(f.path, 0) from None
        except OSError as exc:
            raise DataError(f"cannot read {f.path}: {exc.strerror or exc}") from None
        all_pmids.append(np.asarray(pmids, dtype=np.int64))
        all_files.append(np.full(len(pmids), i, dtype=np.int32))
        all_deleted.append(np.asarray(deleted, dtype=bool))
    events = PubmedEvents(np.concatenate(all_pmids), np.concatenate(all_files), np.concatenate(all_deleted))
    log.info("PubMed updates: %d PMIDs are revised or deleted by later files", len(events))
    return events
