"""Readers for benchmark data formats; each turns one file (or folder) into :class:`Example` records.

Built-in formats (listed in :mod:`domainlm.bench.builtin`): ``conll`` (2- or 4-column BIO),
``pubtator`` (title/abstract/mention/relation lines -> BIO, offsets checked against the text),
``brat`` (standoff .txt/.ann folders -> BIO), ``sofc`` (SOFC-Exp token/entity tables -> BIO),
``pubmedqa`` (JSON keyed by PMID), ``hoc`` (Hallmarks-of-Cancer text/ + labels/ folders), ``jsonl``
and ``csv`` (single- or multi-label classification, regression), ``pairs`` (scored sentence pairs),
``fasta`` (labels in the headers, or plain sequences for lm tasks), ``text`` (blank-line separated
documents), ``pubmed-xml`` (through :mod:`domainlm.corpora` when installed) and ``pdb`` (contact
maps via Bio.PDB).

Every record carries ``where`` (``file:line``) so a bad label or offset is reported with its place
and the fix. Entity text is split into tokens by a small regex tokenizer that separates punctuation,
as the NCBI-disease and BC5CDR CoNLL releases do; span edges always become token edges.
"""

from __future__ import annotations

import bisect
import contextvars
import csv
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from domainlm.errors import DataError

if TYPE_CHECKING:
    from domainlm.bench.tasks import TaskSpec

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"\d+(?:[.,]\d+)+|\w+|[^\w\s]", re.UNICODE)
_SENT_END = {".", "?", "!"}


@dataclass
class Example:
    """One record. Token tasks fill ``tokens``/``tags``; others ``text`` (+ ``text_b``) and ``label``."""

    id: str
    where: str
    text: str | None = None
    text_b: str | None = None
    tokens: list[str] | None = None
    tags: list[str] | None = None
    label: Any = None
    # Line of each token (CoNLL) or of the mention that produced its tag (PubTator/BRAT).
    tag_where: list[str] | None = None
    group: str | None = None  # document the record came from (carving keeps documents whole)
    meta: dict[str, Any] = field(default_factory=dict)


def _fail(where: str, what: str, fix: str) -> DataError:
    return DataError(f"{where}: {what}. Fix: {fix}")


# Bad records under ``on_error: skip``: counted by reason with a few examples (corpora's SkipLog, the
# same record of drops ``corpus prepare`` keeps). ``load_data`` sets one per split around the reader
# call; readers registered by outsiders keep their (path, spec, split) signature.
_SKIPS: contextvars.ContextVar[Any] = contextvars.ContextVar("bench_skips", default=None)


def skip_or_raise(spec: TaskSpec, exc: DataError, reason: str) -> None:
    """Raise ``exc`` (``on_error: raise``, the default) or count the bad record and go on (``skip``)."""
    skips = _SKIPS.get()
    if getattr(spec, "on_error", "raise") != "skip" or skips is None:
        raise exc
    where, _, detail = str(exc).partition(": ")
    skips.skip(reason, where, detail.split(". Fix:")[0])


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise _fail(str(path), f"not UTF-8 text ({exc.reason} at byte {exc.start})",
                    "re-save the file as UTF-8") from None


def check_tag(tag: str, where: str) -> str:
    """A BIO tag must be 'O' or 'B-TYPE' / 'I-TYPE'."""
    if tag == "O" or (len(tag) > 2 and tag[:2] in ("B-", "I-")):
        return tag
    raise _fail(where, f"tag {tag!r} is not BIO", "use O, B-TYPE or I-TYPE (e.g. B-Disease)")


# --------------------------------------------------------------------------------------------------
# Token tasks
# --------------------------------------------------------------------------------------------------

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
    for n, line in enumerate(_read_text(path).splitlines(), 1):
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
                raise _fail(f"{path}:{n}", f"line has one column ({line.strip()!r})",
                            "write TOKEN<TAB>TAG (2 columns) or TOKEN POS CHUNK TAG (4 columns), or set on_error: "
                            "skip to drop such sentences (counted)")
            width = width or len(cols)
            if len(cols) != width:
                raise _fail(f"{path}:{n}", f"{len(cols)} columns where earlier lines have {width}",
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
    for n, line in enumerate(_read_text(path).splitlines(), 1):
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
            raise _fail(f"{path}:{n}", f"line for document {cols[0]!r} does not follow its title/abstract lines",
                        "put each document's mention lines right after its |t| and |a| lines")
        if len(cols) >= 5 and cols[1].isdigit() and cols[2].isdigit():
            cur["mentions"].append((int(cols[1]), int(cols[2]), cols[3], cols[4], n))
        elif len(cols) >= 4 and not cols[1].isdigit():
            continue  # relation line, e.g. CID
        else:
            raise _fail(f"{path}:{n}", f"cannot read the line {line[:80]!r}",
                        "mention lines are PMID<TAB>start<TAB>end<TAB>text<TAB>type[<TAB>id]")
    for d in docs:
        if d["title"] is None:
            raise _fail(f"{path}:{d['line']}", f"document {d['pmid']} has no title line", "add a PMID|t|title line")
        text = d["title"] + " " + d["abstract"]
        spans = []
        for a, b, mention, etype, n in d["mentions"]:
            if not 0 <= a < b <= len(text) or text[a:b] != mention:
                found = text[a:b] if 0 <= a < b <= len(text) else "(outside the text)"
                hint = text.find(mention)
                fix = (f"the mention occurs at {hint}-{hint + len(mention)}" if hint >= 0 else
                       "the mention text does not occur in the title or abstract")
                raise _fail(f"{path}:{n}", f"offsets {a}-{b} of document {d['pmid']} cover {found!r}, not the "
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
        text = _read_text(txt)
        ann = txt.with_suffix(".ann")
        spans: list[_Span] = []
        if not ann.is_file():
            log.warning("%s has no .ann file: every token is O", txt)
        else:
            for n, line in enumerate(_read_text(ann).splitlines(), 1):
                if not line.startswith("T"):
                    continue  # R relations, E events, A attributes, # notes, N normalisations
                cols = line.split("\t")
                if len(cols) < 3:
                    raise _fail(f"{ann}:{n}", "a T line needs 3 tab-separated fields",
                                "write T1<TAB>Type START END<TAB>text")
                etype, _, offs = cols[1].partition(" ")
                try:
                    frags = [tuple(int(x) for x in f.split()) for f in offs.split(";")]
                    if any(len(f) != 2 for f in frags):
                        raise ValueError
                except ValueError:
                    raise _fail(f"{ann}:{n}", f"cannot read offsets {offs!r}", "write Type START END") from None
                a, b = frags[0][0], frags[-1][1]
                expect = " ".join(text[x:y] for x, y in frags) if len(frags) > 1 else text[a:b]
                if not 0 <= a < b <= len(text) or expect != cols[2]:
                    raise _fail(f"{ann}:{n}", f"offsets {offs} cover {text[a:b] if b <= len(text) else '(past end)'!r}"
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
        text = _read_text(txt)
        starts = {}
        for line in _read_text(sents).splitlines():
            cols = line.split("\t")
            if len(cols) >= 4:
                starts[cols[0]] = int(cols[2])
        by_sent: dict[str, list[tuple[str, str, str]]] = {}
        for n, line in enumerate(_read_text(ent).splitlines(), 1):
            cols = line.split("\t")
            if len(cols) < 5:
                raise _fail(f"{ent}:{n}", "expected sent_id, tok_id, begin, end, entity tag", "check the file")
            base = starts.get(cols[0])
            if base is None:
                raise _fail(f"{ent}:{n}", f"sentence {cols[0]} is not in {sents.name}", "use the matching files")
            tok = text[base + int(cols[2]):base + int(cols[3])]
            by_sent.setdefault(cols[0], []).append((tok, check_tag(cols[4], f"{ent}:{n}"), f"{ent}:{n}"))
        for sid, rows in by_sent.items():
            out.append(Example(f"{doc}.{sid}", rows[0][2], tokens=[r[0] for r in rows], tags=[r[1] for r in rows],
                               tag_where=[r[2] for r in rows], group=doc))
    if not out:
        raise DataError(f"{path}: no SOFC-Exp documents have set == {split!r} in the metadata")
    return out


# --------------------------------------------------------------------------------------------------
# Sequence tasks
# --------------------------------------------------------------------------------------------------

def _json_key_lines(raw: str) -> dict[str, int]:
    """Line of each top-level key of a pretty-printed JSON object (1 for single-line files)."""
    lines: dict[str, int] = {}
    for n, line in enumerate(raw.splitlines(), 1):
        m = re.match(r'^\s{0,8}"([^"]+)"\s*:\s*\{', line)
        if m and m.group(1) not in lines:
            lines[m.group(1)] = n
    return lines


def _load_json(path: Path) -> tuple[Any, str]:
    raw = _read_text(path)
    try:
        return json.loads(raw), raw
    except json.JSONDecodeError as exc:
        raise _fail(f"{path}:{exc.lineno}", f"not valid JSON ({exc.msg}, column {exc.colno})",
                    "repair the JSON") from None


def read_pubmedqa(path: Path, spec: TaskSpec, split: str) -> list[Example]:
    """PubMedQA JSON keyed by PMID: QUESTION, CONTEXTS (list) and final_decision (yes/no/maybe)."""
    data, raw = _load_json(path)
    if not isinstance(data, dict):
        raise _fail(f"{path}:1", "expected a JSON object keyed by PMID", "use the PubMedQA ori_pqal.json layout")
    lines = _json_key_lines(raw)
    out = []
    for pmid, rec in data.items():
        where = f"{path}:{lines.get(pmid, 1)}"
        if not isinstance(rec, dict):
            raise _fail(where, f"record {pmid} is not an object", "each PMID maps to {QUESTION, CONTEXTS, ...}")
        missing = [k for k in ("QUESTION", "CONTEXTS") if k not in rec]
        if missing:
            raise _fail(where, f"record {pmid} lacks {', '.join(missing)}", "add the PubMedQA fields")
        contexts = rec["CONTEXTS"]
        if isinstance(contexts, str):
            contexts = [contexts]
        if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
            raise _fail(where, f"record {pmid}: CONTEXTS must be a list of strings, got {json.dumps(contexts)[:80]}",
                        "give the abstract's passages as strings")
        if not isinstance(rec["QUESTION"], str):
            raise _fail(where, f"record {pmid}: QUESTION must be a string", "give the question as text")
        label = rec.get("final_decision")
        if label is not None and not isinstance(label, str):
            raise _fail(where, f"record {pmid}: final_decision must be one of yes/no/maybe, got {json.dumps(label)[:80]}",
                        "give the decision as a string")
        context = "\n".join(contexts)  # lm-eval's pubmedqa joins the passages with newlines, as here
        out.append(Example(str(pmid), where, text=rec["QUESTION"], text_b=context, label=label,
                           meta={"question": rec["QUESTION"], "context": context}))
    return out


def _hallmark(name: str) -> str:
    return name.split("--")[0].strip().lower()


def read_hoc(path: Path, spec: TaskSpec, split: str) -> list[Example]:
    """Hallmarks of Cancer folder: ``text/<PMID>.txt`` (a sentence per line) + ``labels/<PMID>.txt``.

    A labels file is one line; the labels of sentence i follow the i-th ``<``, several joined by
    ``AND``, sub-classes after ``--``. Document labels are the top-level hallmarks of any sentence,
    lower-cased (BLURB scores HoC per abstract).
    """
    texts, labels = path / "text", path / "labels"
    if not texts.is_dir() or not labels.is_dir():
        raise DataError(f"{path}: a hoc split is a folder with text/ and labels/; point files.{split} at it")
    out = []
    for txt in sorted(texts.glob("*.txt")):
        lab = labels / txt.name
        if not lab.is_file():
            raise DataError(f"{lab}: missing labels for {txt}; add it or remove the text file")
        sentences = [s for s in _read_text(txt).splitlines() if s.strip()]
        parts = _read_text(lab).strip("\n").split("<")[1:]
        if len(parts) != len(sentences):
            raise _fail(f"{lab}:1", f"{len(parts)} label slots for {len(sentences)} sentences in {txt.name}",
                        "give one '<' per sentence")
        doc_labels = sorted({_hallmark(x) for p in parts for x in p.split("AND")
                             if x.strip() and x.strip().upper() != "NULL"})
        out.append(Example(txt.stem, f"{lab}:1", text=" ".join(sentences), label=doc_labels))
    return out


def _labels_of(value: Any, spec: TaskSpec, where: str) -> Any:
    if spec.head == "regression":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise _fail(where, f"label {value!r} is not a number", "regression labels are numbers") from None
    if spec.head == "multilabel":
        if isinstance(value, str):
            if spec.label_sep:
                return sorted({v.strip() for v in value.split(spec.label_sep) if v.strip()})
            return [value] if value else []
        if not isinstance(value, list):
            raise _fail(where, f"labels {value!r} are not a list", "write \"labels\": [\"a\", \"b\"] (or [])")
        return sorted({str(v) for v in value})
    if value is None or isinstance(value, (list, dict)):
        raise _fail(where, f"label {value!r} is not a single value", "give one label per record")
    return str(value)


def _label_field(spec: TaskSpec) -> str:
    return spec.label_field or ("labels" if spec.head == "multilabel" else "label")


def read_jsonl(path: Path, spec: TaskSpec, split: str) -> list[Example]:
    """JSON lines: ``text_field`` (+ ``text_b_field``) and ``label_field`` per record (lm tasks: corpora's reader)."""
    if spec.head == "lm":
        return _via_corpora("jsonl", path, spec)
    out = []
    lf = _label_field(spec)
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            out.append(_jsonl_record(line, where, n, spec, lf))
        except DataError as exc:
            skip_or_raise(spec, exc, "bad JSONL record")
    return out


def _jsonl_record(line: str, where: str, n: int, spec: TaskSpec, lf: str) -> Example:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _fail(where, f"not valid JSON ({exc.msg})", "write one JSON object per line") from None
    if not isinstance(rec, dict):
        raise _fail(where, "the line is not a JSON object", "write one {...} object per line")
    for key in [spec.text_field] + ([spec.text_b_field] if spec.text_b_field else []) + \
            ([lf] if spec.head != "lm" else []):
        if key not in rec:
            from domainlm.config import did_you_mean

            raise _fail(where, f"the record has no field {key!r}{did_you_mean(key, rec)}",
                        f"add it or set the task's field names (fields here: {', '.join(rec)})")
    ex = Example(str(rec.get(spec.id_field, f"line{n}")), where, text=str(rec[spec.text_field]),
                 text_b=str(rec[spec.text_b_field]) if spec.text_b_field else None)
    if spec.head != "lm":
        ex.label = _labels_of(rec[lf], spec, where)
    return ex


def read_csv(path: Path, spec: TaskSpec, split: str) -> list[Example]:
    """CSV (TSV when the file ends in .tsv) with a header naming ``text_field`` and ``label_field``
    (lm tasks: corpora's reader)."""
    if spec.head == "lm":
        return _via_corpora("csv", path, spec)
    out = []
    lf = _label_field(spec)
    delimiter = "\t" if path.suffix == ".tsv" else ","
    try:
        fh = path.open(encoding="utf-8", newline="")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    with fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        header = reader.fieldnames or []
        need = [spec.text_field] + ([spec.text_b_field] if spec.text_b_field else []) + \
            ([lf] if spec.head != "lm" else [])
        for key in need:
            if key not in header:
                from domainlm.config import did_you_mean

                raise _fail(f"{path}:1", f"the header has no column {key!r}{did_you_mean(key, header)}",
                            f"columns are: {', '.join(header)}; set text_field/label_field in the task")
        line = 1
        try:
            for row in reader:
                where = f"{path}:{line + 1}"
                line = reader.line_num
                ex = Example(str(row.get(spec.id_field) or f"row{len(out) + 1}"), where, text=row[spec.text_field],
                             text_b=row[spec.text_b_field] if spec.text_b_field else None)
                if spec.head != "lm":
                    try:
                        ex.label = _labels_of(row[lf], spec, where)
                    except DataError as exc:
                        skip_or_raise(spec, exc, "bad CSV label")
                        continue
                out.append(ex)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise _fail(f"{path}:{reader.line_num}", f"cannot read the CSV ({exc})", "check quoting") from None
    return out


FLIP_COLUMNS = ("sequence", "target", "set", "validation")


def read_flip(path: Path, spec: TaskSpec, split: str) -> list[Example]:
    """A FLIP split CSV (Dallago et al. 2021): ``sequence,target,set,validation`` for every split in one file.

    The split picks the rows as FLIP's own loaders do: train = set "train" not marked validation, dev = set
    "train" with validation True, test = set "test". The label is ``target`` (a number: fitness, Tm)."""
    out = []
    try:
        fh = path.open(encoding="utf-8", newline="")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    with fh:
        reader = csv.DictReader(fh)
        missing = [c for c in FLIP_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise _fail(f"{path}:1", f"the header lacks FLIP's column(s) {', '.join(missing)}",
                        f"a FLIP split CSV has {', '.join(FLIP_COLUMNS)}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            val = str(row["validation"]).strip().lower() == "true"
            in_split = {"train": row["set"] == "train" and not val, "dev": row["set"] == "train" and val,
                        "test": row["set"] == "test"}.get(split, False)
            if not in_split:
                continue
            ex = Example(f"row{reader.line_num}", where, text=row["sequence"])
            try:
                ex.label = _labels_of(row["target"], spec, where)
            except DataError as exc:
                skip_or_raise(spec, exc, "bad FLIP target")
                continue
            out.append(ex)
    return out


def read_pairs(path: Path, spec: TaskSpec, split: str) -> list[Example]:
    """Scored sentence pairs, BIOSSES style: ``sentence1<TAB>sentence2<TAB>score`` with an optional header.

    Columns are taken by name (``text_field``/``text_b_field``/``label_field`` or sentence1/sentence2/
    score) when a header names them, else the last three columns are sentence1, sentence2, score.
    """
    delimiter = "," if path.suffix == ".csv" else "\t"
    out = []
    rows = list(csv.reader(_read_text(path).splitlines(), delimiter=delimiter))
    if not rows:
        return out
    names = (spec.text_field if spec.text_field != "text" else "sentence1",
             spec.text_b_field or "sentence2", spec.label_field or "score")
    cols = (-3, -2, -1)
    first = 0
    head = [c.strip() for c in rows[0]]
    if all(n in head for n in names):
        cols, first = tuple(head.index(n) for n in names), 1
    else:
        try:
            float(rows[0][-1])
        except (ValueError, IndexError):
            first = 1  # an unnamed header
    for n, row in enumerate(rows[first:], first + 1):
        if not row:
            continue
        where = f"{path}:{n}"
        try:
            if len(row) < 3:
                raise _fail(where, f"{len(row)} columns", "write sentence1<TAB>sentence2<TAB>score")
            ex = Example(f"pair{n}", where, text=row[cols[0]], text_b=row[cols[1]])
            ex.label = _labels_of(row[cols[2]], spec, where)
        except DataError as exc:
            skip_or_raise(spec, exc, "bad pair line")
            continue
        out.append(ex)
    return out


# --------------------------------------------------------------------------------------------------
# Sequences and text for lm / protein tasks
# --------------------------------------------------------------------------------------------------

def read_fasta(path: Path, spec: TaskSpec, split: str) -> list[Example]:
    """FASTA via Bio.SeqIO; for labelled tasks the label is in the header (lm tasks: corpora's reader).

    By default the label is the text after the last ``|`` (ESM's DMS files:
    ``>index|mutant|score``); with ``label_field: key`` it is the value of ``key=value``.
    """
    if spec.head == "lm":  # plain sequences: corpora's protein FASTA reader (checked residues, counted skips)
        return _via_corpora("fasta", path, spec)
    from Bio import SeqIO

    header_lines = [n for n, line in enumerate(_read_text(path).splitlines(), 1) if line.startswith(">")]
    out = []
    try:
        records = list(SeqIO.parse(str(path), "fasta"))
    except ValueError as exc:
        raise DataError(f"{path}: not FASTA ({exc})") from None
    for i, rec in enumerate(records):
        where = f"{path}:{header_lines[i] if i < len(header_lines) else '?'}"
        seq = str(rec.seq).upper()
        if not seq:
            log.warning("%s: record %s has an empty sequence; skipped", where, rec.id)
            continue
        ex = Example(rec.id, where, text=seq)
        if spec.head != "lm":
            try:
                ex.label = _fasta_label(rec.description, spec, where)
            except DataError as exc:
                skip_or_raise(spec, exc, "bad FASTA header label")
                continue
        out.append(ex)
    return out


def _fasta_label(desc: str, spec: TaskSpec, where: str) -> Any:
    """The label in a FASTA header: ``KEY=VALUE`` with ``label_field: KEY``, else the text after the last '|'."""
    if spec.label_field:
        m = re.search(rf"(?:^|[\s|]){re.escape(spec.label_field)}=(\S+)", desc)
        if not m:
            raise _fail(where, f"header has no {spec.label_field}=VALUE", f"add {spec.label_field}=... or "
                        "set label_field")
        return _labels_of(m.group(1).rstrip("|"), spec, where)
    if "|" not in desc:
        raise _fail(where, f"header {desc[:60]!r} has no '|' before a label",
                    "write >ID|...|LABEL or set label_field: KEY for KEY=VALUE headers")
    return _labels_of(desc.rsplit("|", 1)[1].strip(), spec, where)


def _via_corpora(fmt: str, path: Path, spec: TaskSpec) -> list[Example]:
    """Read unlabelled text through a :mod:`domainlm.corpora` reader: one parser per format, with one
    meaning, for corpus and bench (held-out text, sequences). corpora counts bad records as skips;
    under ``on_error: raise`` the first one stops the read, under ``skip`` they are counted here too."""
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
    """Plain text, one document per non-empty line (corpora's ``text``; ``paragraphs`` splits at blank lines)."""
    return _via_corpora("text", path, spec)


def read_paragraphs(path: Path, spec: TaskSpec, split: str) -> list[Example]:
    """Plain text, documents separated by blank lines (corpora's ``paragraphs``)."""
    return _via_corpora("paragraphs", path, spec)


def read_pubmed_xml(path: Path, spec: TaskSpec, split: str) -> list[Example]:
    """PubMed XML (title + abstract per article) through domainlm.corpora's streaming parser."""
    return _via_corpora("pubmed-xml", path, spec)


def read_arxiv(path: Path, spec: TaskSpec, split: str) -> list[Example]:
    """arXiv metadata snapshot JSONL (title + abstract) through domainlm.corpora's reader."""
    return _via_corpora("arxiv", path, spec)


def read_pdb(path: Path, spec: TaskSpec, split: str) -> list[Example]:
    """A folder (or one file) of PDB structures -> sequence + contact map per chain.

    Contacts: C-beta distance under ``contact_threshold`` (C-alpha for glycine), the definition of
    CASP and of Rao et al. 2020. The first model's first protein chain is used.
    """
    import numpy as np
    from Bio.PDB import PDBParser
    from Bio.PDB.Polypeptide import is_aa, protein_letters_3to1

    files = sorted(path.glob("*.pdb")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: no .pdb files; point files.{split} at a folder of PDB files")
    parser = PDBParser(QUIET=True)
    out = []
    for f in files:
        try:
            structure = parser.get_structure(f.stem, str(f))
        except Exception as exc:  # Bio.PDB raises assorted errors on broken files
            raise DataError(f"{f}: Bio.PDB cannot read it ({exc}); check the file") from None
        chain = next((c for c in next(iter(structure)) if any(is_aa(r, standard=True) for r in c)), None)
        if chain is None:
            raise DataError(f"{f}: no protein chain with standard residues")
        seq, coords, missing_cb = [], [], 0
        for res in chain:
            if not is_aa(res, standard=True) or "CA" not in res:
                continue
            name = res.get_resname()
            seq.append(protein_letters_3to1.get(name, "X"))
            if name == "GLY":
                coords.append(res["CA"].coord)
            elif "CB" in res:
                coords.append(res["CB"].coord)
            else:
                missing_cb += 1
                coords.append(res["CA"].coord)
        if missing_cb:
            log.warning("%s: %d non-glycine residues lack C-beta; their C-alpha was used", f, missing_cb)
        xyz = np.asarray(coords, dtype=np.float32)
        dist = np.linalg.norm(xyz[:, None, :] - xyz[None, :, :], axis=-1)
        out.append(Example(f.stem, str(f), text="".join(seq), label=dist < spec.contact_threshold, group=f.stem))
    return out
