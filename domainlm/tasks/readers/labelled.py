"""Readers of tasks with one label (or number) per record: ``pubmedqa`` (JSON keyed by PMID), ``hoc``
(Hallmarks-of-Cancer text/ + labels/ folders), ``jsonl`` and ``csv`` (single- or multi-label classification,
regression), ``flip`` (FLIP split CSVs), ``pairs`` (scored sentence pairs) and ``fasta`` (labels in the headers).

``jsonl``, ``csv`` and ``fasta`` also feed ``lm`` tasks (unlabelled text or sequences): those read through the
document readers (:mod:`domainlm.tasks.readers.text`).
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path
from typing import Any

from domainlm.errors import DataError
from domainlm.tasks.readers.base import Example, fail, read_utf8, skip_or_raise
from domainlm.tasks.readers.text import via_documents
from domainlm.tasks.spec import TaskSpec

log = logging.getLogger(__name__)


def _json_key_lines(raw: str) -> dict[str, int]:
    """Line of each top-level key of a pretty-printed JSON object (1 for single-line files)."""
    lines: dict[str, int] = {}
    for n, line in enumerate(raw.splitlines(), 1):
        m = re.match(r'^\s{0,8}"([^"]+)"\s*:\s*\{', line)
        if m and m.group(1) not in lines:
            lines[m.group(1)] = n
    return lines


def _load_json(path: Path) -> tuple[Any, str]:
    raw = read_utf8(path)
    try:
        return json.loads(raw), raw
    except json.JSONDecodeError as exc:
        raise fail(f"{path}:{exc.lineno}", f"not valid JSON ({exc.msg}, column {exc.colno})",
                   "repair the JSON") from None


def read_pubmedqa(path: Path, spec: TaskSpec, split: str) -> list[Example]:
    """PubMedQA JSON keyed by PMID: QUESTION, CONTEXTS (list) and final_decision (yes/no/maybe)."""
    data, raw = _load_json(path)
    if not isinstance(data, dict):
        raise fail(f"{path}:1", "expected a JSON object keyed by PMID", "use the PubMedQA ori_pqal.json layout")
    lines = _json_key_lines(raw)
    out = []
    for pmid, rec in data.items():
        where = f"{path}:{lines.get(pmid, 1)}"
        if not isinstance(rec, dict):
            raise fail(where, f"record {pmid} is not an object", "each PMID maps to {QUESTION, CONTEXTS, ...}")
        missing = [k for k in ("QUESTION", "CONTEXTS") if k not in rec]
        if missing:
            raise fail(where, f"record {pmid} lacks {', '.join(missing)}", "add the PubMedQA fields")
        contexts = rec["CONTEXTS"]
        if isinstance(contexts, str):
            contexts = [contexts]
        if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
            raise fail(where, f"record {pmid}: CONTEXTS must be a list of strings, got {json.dumps(contexts)[:80]}",
                       "give the abstract's passages as strings")
        if not isinstance(rec["QUESTION"], str):
            raise fail(where, f"record {pmid}: QUESTION must be a string", "give the question as text")
        label = rec.get("final_decision")
        if label is not None and not isinstance(label, str):
            raise fail(where, f"record {pmid}: final_decision must be one of yes/no/maybe, got {json.dumps(label)[:80]}",
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
        sentences = [s for s in read_utf8(txt).splitlines() if s.strip()]
        parts = read_utf8(lab).strip("\n").split("<")[1:]
        if len(parts) != len(sentences):
            raise fail(f"{lab}:1", f"{len(parts)} label slots for {len(sentences)} sentences in {txt.name}",
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
            raise fail(where, f"label {value!r} is not a number", "regression labels are numbers") from None
    if spec.head == "multilabel":
        if isinstance(value, str):
            if spec.label_sep:
                return sorted({v.strip() for v in value.split(spec.label_sep) if v.strip()})
            return [value] if value else []
        if not isinstance(value, list):
            raise fail(where, f"labels {value!r} are not a list", "write \"labels\": [\"a\", \"b\"] (or [])")
        return sorted({str(v) for v in value})
    if value is None or isinstance(value, (list, dict)):
        raise fail(where, f"label {value!r} is not a single value", "give one label per record")
    return str(value)


def _label_field(spec: TaskSpec) -> str:
    return spec.label_field or ("labels" if spec.head == "multilabel" else "label")


def read_jsonl(path: Path, spec: TaskSpec, split: str) -> list[Example]:
    """JSON lines: ``text_field`` (+ ``text_b_field``) and ``label_field`` per record (lm tasks: the document
    reader)."""
    if spec.head == "lm":
        return via_documents("jsonl", path, spec)
    out = []
    lf = _label_field(spec)
    for n, line in enumerate(read_utf8(path).splitlines(), 1):
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
        raise fail(where, f"not valid JSON ({exc.msg})", "write one JSON object per line") from None
    if not isinstance(rec, dict):
        raise fail(where, "the line is not a JSON object", "write one {...} object per line")
    for key in [spec.text_field] + ([spec.text_b_field] if spec.text_b_field else []) + \
            ([lf] if spec.head != "lm" else []):
        if key not in rec:
            from domainlm.config import did_you_mean

            raise fail(where, f"the record has no field {key!r}{did_you_mean(key, rec)}",
                       f"add it or set the task's field names (fields here: {', '.join(rec)})")
    ex = Example(str(rec.get(spec.id_field, f"line{n}")), where, text=str(rec[spec.text_field]),
                 text_b=str(rec[spec.text_b_field]) if spec.text_b_field else None)
    if spec.head != "lm":
        ex.label = _labels_of(rec[lf], spec, where)
    return ex


def read_csv(path: Path, spec: TaskSpec, split: str) -> list[Example]:
    """CSV (TSV when the file ends in .tsv) with a header naming ``text_field`` and ``label_field``
    (lm tasks: the document reader)."""
    if spec.head == "lm":
        return via_documents("csv", path, spec)
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

                raise fail(f"{path}:1", f"the header has no column {key!r}{did_you_mean(key, header)}",
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
            raise fail(f"{path}:{reader.line_num}", f"cannot read the CSV ({exc})", "check quoting") from None
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
            raise fail(f"{path}:1", f"the header lacks FLIP's column(s) {', '.join(missing)}",
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
    rows = list(csv.reader(read_utf8(path).splitlines(), delimiter=delimiter))
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
                raise fail(where, f"{len(row)} columns", "write sentence1<TAB>sentence2<TAB>score")
            ex = Example(f"pair{n}", where, text=row[cols[0]], text_b=row[cols[1]])
            ex.label = _labels_of(row[cols[2]], spec, where)
        except DataError as exc:
            skip_or_raise(spec, exc, "bad pair line")
            continue
        out.append(ex)
    return out



def read_fasta(path: Path, spec: TaskSpec, split: str) -> list[Example]:
    """FASTA via Bio.SeqIO; for labelled tasks the label is in the header (lm tasks: the document reader).

    By default the label is the text after the last ``|`` (ESM's DMS files:
    ``>index|mutant|score``); with ``label_field: key`` it is the value of ``key=value``.
    """
    if spec.head == "lm":  # plain sequences: the documents' protein FASTA reader (checked residues, counted skips)
        return via_documents("fasta", path, spec)
    from Bio import SeqIO

    header_lines = [n for n, line in enumerate(read_utf8(path).splitlines(), 1) if line.startswith(">")]
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
            raise fail(where, f"header has no {spec.label_field}=VALUE", f"add {spec.label_field}=... or "
                       "set label_field")
        return _labels_of(m.group(1).rstrip("|"), spec, where)
    if "|" not in desc:
        raise fail(where, f"header {desc[:60]!r} has no '|' before a label",
                   "write >ID|...|LABEL or set label_field: KEY for KEY=VALUE headers")
    return _labels_of(desc.rsplit("|", 1)[1].strip(), spec, where)
