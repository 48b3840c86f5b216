"""Readers of token-tagging tasks (NER): ``conll`` (2- or 4-column BIO), ``pubtator`` (title/abstract/mention
lines -> BIO, offsets checked against the text), ``brat`` (standoff .txt/.ann folders -> BIO) and ``sofc``
(SOFC-Exp token/entity tables -> BIO).

Entity text is split into tokens by a small regex tokenizer that separates punctuation, as the NCBI-disease and
BC5CDR CoNLL releases do; span edges always become token edges.
"""

from __future__ import annotations

import bisect
import csv
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainlm.errors import DataError
from domainlm.tasks.readers.base import Example, check_tag, fail, read_utf8, skip_or_raise
from domainlm.tasks.spec import TaskSpec

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"\d+(?:[.,]\d+)+|\w+|[^\w\s]", re.UNICODE)
_SENT_END = {".", "?", "!"}

def read_conll(path: Path, spec: TaskSpec, split: str) -> list[Example]:
    """CoNLL/BIO: token first, tag last (2 or 4 columns), sentences separated by blank lines."""
    out: list[Example] = []
    tokens: list[str] = []
    tags: list[str] = []
    wheres: list[str] = []
    start = 0

    def flush() -> None:
        if tokens:
            out.append(Example(f"s{len(out)}", f"{path}:{start}", tokens=list(tokens), tags=list(tags),
                               tag_where=list(wheres)))
        tokens.clear(), tags.clear(), wheres.clear()

    width = None
    bad = False  # on_error: skip drops the whole sentence holding a bad line (a lost token could join entities)
    for n, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            flush() if not bad else (tokens.clear(), tags.clear(), wheres.clear())
            bad = False
            continue
        cols = line.split("\t") if "\t" in line else line.split()
        if cols[0] == "-DOCSTART-":
            flush() if not bad else (tokens.clear(), tags.clear(), wheres.clear())
            bad = False
            continue
        if bad:
            continue
        try:
            if len(cols) < 2:
                raise fail(f"{path}:{n}", f"line has one column ({line.strip()!r})",
                           "write TOKEN<TAB>TAG (2 columns) or TOKEN POS CHUNK TAG (4 columns), or set on_error: "
                           "skip to drop such sentences (counted)")
            width = width or len(cols)
            if len(cols) != width:
                raise fail(f"{path}:{n}", f"{len(cols)} columns where earlier lines have {width}",
                           "use the same number of columns on every token line")
            tag = check_tag(cols[-1].strip(), f"{path}:{n}")
        except DataError as exc:
            skip_or_raise(spec, exc, "sentence with a bad token line")  # counted once per sentence
            bad = True
            continue
        if not tokens:
            start = n
        tokens.append(cols[0])
        tags.append(tag)
        wheres.append(f"{path}:{n}")
    if not bad:
        flush()
    return out


@dataclass
class _Span:
    start: int
    end: int
    type: str
    where: str


def tokenize_spans(text: str, spans: list[_Span], doc: str, where: str,
                   breaks: Iterable[int] = ()) -> list[Example]:
    """Regex-tokenise ``text`` and tag tokens with BIO from character ``spans``; split sentences.

    Span edges are forced token edges, so "IL-2-induced" with a mention "IL-2" still yields a token
    for the mention. Overlapping spans keep the longest (BIO cannot nest); the rest are counted.
    """
    spans = sorted(spans, key=lambda s: (s.start, -(s.end - s.start)))
    kept: list[_Span] = []
    for s in spans:
        if kept and s.start < kept[-1].end:
            continue  # nested or overlapping: BIO holds one layer
        kept.append(s)
    edges = sorted({p for s in kept for p in (s.start, s.end)} | set(breaks))
    tokens: list[tuple[int, int]] = []
    for m in _TOKEN.finditer(text):
        a, b = m.span()
        cuts = [a] + [e for e in edges if a < e < b] + [b]
        tokens.extend((cuts[i], cuts[i + 1]) for i in range(len(cuts) - 1))
    tags, tag_where = [], []
    si = 0
    for a, _b in tokens:
        while si < len(kept) and kept[si].end <= a:
            si += 1
        if si < len(kept) and kept[si].start <= a < kept[si].end:
            s = kept[si]
            tags.append(("B-" if a == s.start else "I-") + s.type)
            tag_where.append(s.where)
        else:
            tags.append("O")
            tag_where.append(where)
    # Sentence boundaries: forced breaks (title/abstract, newlines) and . ? ! before an upper-case
    # or digit token, never inside an entity.
    bpos = sorted(set(breaks))
    out: list[Example] = []
    cur: list[int] = []
    for i, (a, b) in enumerate(tokens):
        if cur:
            k = bisect.bisect_right(bpos, tokens[cur[-1]][0])
            if k < len(bpos) and bpos[k] <= a and tags[i][:2] != "I-":
                out.append(_sentence(text, tokens, tags, tag_where, cur, doc, where, len(out)))
                cur = []
        cur.append(i)
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if (text[a:b] in _SENT_END and tags[i] == "O" and nxt is not None and tags[i + 1][:2] != "I-"
                and (text[nxt[0]].isupper() or text[nxt[0]].isdigit())):
            out.append(_sentence(text, tokens, tags, tag_where, cur, doc, where, len(out)))
            cur = []
    if cur:
        out.append(_sentence(text, tokens, tags, tag_where, cur, doc, where, len(out)))
    return out


def _sentence(text, tokens, tags, tag_where, idx, doc, where, n) -> Example:
    return Example(f"{doc}.{n}", where, tokens=[text[tokens[i][0]:tokens[i][1]] for i in idx],
                   tags=[tags[i] for i in idx], tag_where=[tag_where[i] for i in idx], group=doc)


def _newline_breaks(text: str) -> list[int]:
    return [m.end() for m in re.finditer(r"\n+", text)]


def read_pubtator(path: Path, spec: TaskSpec, split: str) -> list[Example]:
    """PubTator: ``PMID|t|title``, ``PMID|a|abstract``, mention and relation lines -> BIO sentences.

    Offsets count into ``title + " " + abstract``; each mention's text must equal that slice.
    Relation lines (``PMID<TAB>CID<TAB>id<TAB>id``) are tolerated and ignored (NER only).
    """
    out: list[Example] = []
    docs: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for n, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            cur = None
            continue
        m = re.match(r"^([^|\t]+)\|([ta])\|(.*)$", line)
        if m:
            pmid, kind, body = m.groups()
            if cur is None or cur["pmid"] != pmid:
                cur = {"pmid": pmid, "title": None, "abstract": "", "mentions": [], "line": n}
                docs.append(cur)
            cur["title" if kind == "t" else "abstract"] = body
            continue
        cols = line.split("\t")
        if cur is None or cols[0] != cur["pmid"]:
            raise fail(f"{path}:{n}", f"line for document {cols[0]!r} does not follow its title/abstract lines",
                       "put each document's mention lines right after its |t| and |a| lines")
        if len(cols) >= 5 and cols[1].isdigit() and cols[2].isdigit():
            cur["mentions"].append((int(cols[1]), int(cols[2]), cols[3], cols[4], n))
        elif len(cols) >= 4 and not cols[1].isdigit():
            continue  # relation line, e.g. CID
        else:
            raise fail(f"{path}:{n}", f"cannot read the line {line[:80]!r}",
                       "mention lines are PMID<TAB>start<TAB>end<TAB>text<TAB>type[<TAB>id]")
    for d in docs:
        if d["title"] is None:
            raise fail(f"{path}:{d['line']}", f"document {d['pmid']} has no title line", "add a PMID|t|title line")
        text = d["title"] + " " + d["abstract"]
        spans = []
        for a, b, mention, etype, n in d["mentions"]:
            if not 0 <= a < b <= len(text) or text[a:b] != mention:
                found = text[a:b] if 0 <= a < b <= len(text) else "(outside the text)"
                hint = text.find(mention)
                fix = (f"the mention occurs at {hint}-{hint + len(mention)}" if hint >= 0 else
                       "the mention text does not occur in the title or abstract")
                raise fail(f"{path}:{n}", f"offsets {a}-{b} of document {d['pmid']} cover {found!r}, not the "
                           f"mention {mention!r}", f"{fix}; offsets count into title + ' ' + abstract, end "
                           "exclusive")
            spans.append(_Span(a, b, etype, f"{path}:{n}"))
        out.extend(tokenize_spans(text, spans, d["pmid"], f"{path}:{d['line']}", breaks=[len(d["title"]) + 1]))
    return out


def read_brat(path: Path, spec: TaskSpec, split: str) -> list[Example]:
    """BRAT standoff folder: ``NAME.txt`` + ``NAME.ann``; T lines become BIO, other lines are ignored."""
    if not path.is_dir():
        raise DataError(f"{path}: a brat split is a folder of .txt/.ann pairs; point files.{split} at the folder")
    out: list[Example] = []
    for txt in sorted(path.glob("*.txt")):
        text = read_utf8(txt)
        ann = txt.with_suffix(".ann")
        spans: list[_Span] = []
        if not ann.is_file():
            log.warning("%s has no .ann file: every token is O", txt)
        else:
            for n, line in enumerate(read_utf8(ann).splitlines(), 1):
                if not line.startswith("T"):
                    continue  # R relations, E events, A attributes, # notes, N normalisations
                cols = line.split("\t")
                if len(cols) < 3:
                    raise fail(f"{ann}:{n}", "a T line needs 3 tab-separated fields",
                               "write T1<TAB>Type START END<TAB>text")
                etype, _, offs = cols[1].partition(" ")
                try:
                    frags = [tuple(int(x) for x in f.split()) for f in offs.split(";")]
                    if any(len(f) != 2 for f in frags):
                        raise ValueError
                except ValueError:
                    raise fail(f"{ann}:{n}", f"cannot read offsets {offs!r}", "write Type START END") from None
                a, b = frags[0][0], frags[-1][1]
                expect = " ".join(text[x:y] for x, y in frags) if len(frags) > 1 else text[a:b]
                if not 0 <= a < b <= len(text) or expect != cols[2]:
                    raise fail(f"{ann}:{n}", f"offsets {offs} cover {text[a:b] if b <= len(text) else '(past end)'!r}"
                               f" in {txt.name}, not {cols[2]!r}", "recompute the offsets (end exclusive, "
                               "counted in characters of the .txt)")
                spans.append(_Span(a, b, etype, f"{ann}:{n}"))
        out.extend(tokenize_spans(text, spans, txt.stem, str(txt), breaks=_newline_breaks(text)))
    if not any(path.glob("*.txt")):
        raise DataError(f"{path}: no .txt files in this brat folder; check files.{split}")
    return out


def read_sofc(path: Path, spec: TaskSpec, split: str) -> list[Example]:
    """SOFC-Exp corpus folder (texts/, annotations/, SOFC-Exp-Metadata.csv): entity BIO per sentence.

    Documents are chosen by the metadata's ``set`` column matching the split (dev = "dev").
    """
    meta = path / "SOFC-Exp-Metadata.csv"
    if not meta.is_file():
        raise DataError(f"{path}: no SOFC-Exp-Metadata.csv; point files.{split} at the SOFC-Exp corpus folder")
    with meta.open(encoding="utf-8", newline="") as fh:
        wanted = {row["name"] for row in csv.DictReader(fh, delimiter="\t") if row.get("set") == split}
    out: list[Example] = []
    for txt in sorted((path / "texts").glob("*.txt")):
        doc = txt.stem.split("_", 1)[-1]
        ent = path / "annotations" / "entity_types_and_slots" / f"{doc}.csv"
        sents = path / "annotations" / "sentences" / f"{doc}.csv"
        if doc not in wanted or not ent.is_file() or not sents.is_file():
            continue
        text = read_utf8(txt)
        starts = {}
        for line in read_utf8(sents).splitlines():
            cols = line.split("\t")
            if len(cols) >= 4:
                starts[cols[0]] = int(cols[2])
        by_sent: dict[str, list[tuple[str, str, str]]] = {}
        for n, line in enumerate(read_utf8(ent).splitlines(), 1):
            cols = line.split("\t")
            if len(cols) < 5:
                raise fail(f"{ent}:{n}", "expected sent_id, tok_id, begin, end, entity tag", "check the file")
            base = starts.get(cols[0])
            if base is None:
                raise fail(f"{ent}:{n}", f"sentence {cols[0]} is not in {sents.name}", "use the matching files")
            tok = text[base + int(cols[2]):base + int(cols[3])]
            by_sent.setdefault(cols[0], []).append((tok, check_tag(cols[4], f"{ent}:{n}"), f"{ent}:{n}"))
        for sid, rows in by_sent.items():
            out.append(Example(f"{doc}.{sid}", rows[0][2], tokens=[r[0] for r in rows], tags=[r[1] for r in rows],
                               tag_where=[r[2] for r in rows], group=doc))
    if not out:
        raise DataError(f"{path}: no SOFC-Exp documents have set == {split!r} in the metadata")
    return out
