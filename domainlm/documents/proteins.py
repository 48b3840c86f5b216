"""Protein readers: FASTA (``Bio.SeqIO.FastaIO``) and Swiss-Prot flat files (``Bio.SeqIO`` 'swiss').

Amino-acid alphabet policy (``--ambiguous``; documented in corpora/README.md):

* the 20 standard residues ``ACDEFGHIKLMNPQRSTVWY`` are always accepted;
* ``U`` (selenocysteine) and ``O`` (pyrrolysine) are real residues, ``B`` (D or N), ``Z`` (E or Q),
  ``J`` (L or I) and ``X`` (unknown) are IUPAC ambiguity codes. With ``keep`` (default) all six stay as
  written, as in UniRef and ESM-2's vocabulary (which has every one but J); ``to-x`` rewrites the six to
  ``X``, the ProtTrans convention; ``drop`` skips any sequence that has one (``ambiguous_residues``);
* lower case is upper-cased, a final ``*`` (stop) is removed; any other character (digits, ``-`` or
  ``.`` alignment gaps, punctuation) makes the record a counted skip (``invalid_alphabet``);
* a file whose first records are all made of ``ACGTUN`` is a nucleotide FASTA: the run stops.

Length filters (``--min-length``/``--max-length``, in residues) are applied with the other filters.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from domainlm.documents.readers import Document, ReadContext, open_text
from domainlm.errors import DataError

STANDARD = "ACDEFGHIKLMNPQRSTVWY"
NONSTANDARD = "UOBZJX"
_INVALID = re.compile(f"[^{STANDARD}{NONSTANDARD}]")
_NONSTANDARD = re.compile(f"[{NONSTANDARD}]")
_TO_X = str.maketrans({c: "X" for c in "UOBZJ"})
_NUCLEOTIDE = re.compile(r"^[ACGTUN]+$")
_UNIPROT = re.compile(r"^(sp|tr)\|([^|]+)\|(\S+)")
# How many leading records decide that a file is nucleotide FASTA (stop early, before wasting a run).
NUCLEOTIDE_PROBE = 5


def check_sequence(seq: str, policy: str) -> tuple[str | None, str]:
    """Apply the alphabet policy: returns ``(sequence, "")`` or ``(None, reason: detail)``."""
    seq = seq.upper()
    if seq.endswith("*"):
        seq = seq[:-1]
    if not seq:
        return None, "empty_sequence: no residues"
    bad = _INVALID.search(seq)
    if bad is not None:
        return None, (f"invalid_alphabet: character {bad.group()!r} at residue {bad.start() + 1} is not an "
                      "amino-acid letter")
    if policy == "drop":
        odd = _NONSTANDARD.search(seq)
        if odd is not None:
            return None, f"ambiguous_residues: {odd.group()!r} at residue {odd.start() + 1} (--ambiguous drop)"
    elif policy == "to-x":
        seq = seq.translate(_TO_X)
    return seq, ""


def _fasta_meta(title: str) -> tuple[str, dict]:
    first = title.split(None, 1)[0] if title.strip() else ""
    meta: dict = {"description": title}
    m = _UNIPROT.match(first)
    if m:
        meta["database"] = m.group(1)
        meta["entry_name"] = m.group(3)
        acc = m.group(2)
    else:
        acc = first
    for key, tag in (("organism", "OS"), ("gene", "GN")):
        mm = re.search(rf"\b{tag}=(.+?)(?=\s+[A-Z]{{2}}=|$)", title)
        if mm:
            meta[key] = mm.group(1).strip()
    return acc, meta


class _NucleotideGuard:
    """Stops the run when the first records of a file are all DNA/RNA (a wrong-alphabet file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen = 0
        self.nucleotide = 0

    def check(self, seq: str) -> None:
        if self.seen >= NUCLEOTIDE_PROBE:
            return
        self.seen += 1
        if len(seq) >= 20 and _NUCLEOTIDE.match(seq):
            self.nucleotide += 1
        if self.seen == NUCLEOTIDE_PROBE and self.nucleotide == self.seen:
            self.fail()

    def finish(self) -> None:
        if 0 < self.seen < NUCLEOTIDE_PROBE and self.nucleotide == self.seen:
            self.fail()

    def fail(self) -> None:
        raise DataError(f"{self.path} looks like a nucleotide FASTA (its first {self.seen} sequences use only "
                        "A, C, G, T/U and N). domainlm's protein readers expect amino-acid sequences: translate "
                        "the sequences first, or pass a protein file")


def read_fasta(path: Path, ctx: ReadContext) -> Iterator[Document]:
    """Protein FASTA. The id is the UniProt accession for ``sp|ACC|NAME`` headers, else the first word."""
    from Bio.SeqIO.FastaIO import SimpleFastaParser

    guard = _NucleotideGuard(path)
    with open_text(path) as fh:
        # SimpleFastaParser silently ignores text before the first '>', which would hide a wrong file.
        first = ""
        while not first.strip():
            first = fh.readline()
            if not first:
                return
        if not first.startswith(">"):
            raise DataError(f"{path} is not FASTA: its first line does not start with '>' ({first[:60]!r}). "
                            "Pass the right --format for this file")
        lines = _chain_first(first, fh)
        for n, (title, raw) in enumerate(SimpleFastaParser(lines), 1):  # type: ignore[arg-type]
            acc, meta = _fasta_meta(title)
            where = f"{path} record {n} ({acc or 'no id'})"
            if not acc:
                ctx.skip("missing_id", where, "empty FASTA header")
                continue
            if not ctx.check_text(title + raw, where):
                continue
            seq, why = check_sequence(raw, ctx.options.ambiguous)
            if seq is None:
                reason, _, detail = why.partition(": ")
                ctx.skip(reason, where, detail)
                continue
            guard.check(seq)
            meta["source"] = where
            yield Document(acc, seq, meta)
    guard.finish()


def _chain_first(first: str, fh) -> Iterator[str]:
    yield first
    yield from fh


def read_swissprot(path: Path, ctx: ReadContext) -> Iterator[Document]:
    """UniProtKB/Swiss-Prot flat file (``ID``/``AC``/.../``SQ``/``//``); the id is the primary accession."""
    from Bio import SeqIO

    with open_text(path) as fh:
        records = SeqIO.parse(fh, "swiss")
        n = 0
        while True:
            try:
                rec = next(records)
            except StopIteration:
                return
            except (ValueError, AssertionError, IndexError, KeyError) as exc:
                # Bio's parser cannot continue after a malformed entry: the rest of the file is skipped.
                ctx.skip("malformed_record", f"{path} record {n + 1}",
                         f"not a valid Swiss-Prot entry ({exc}); the rest of the file was skipped")
                return
            n += 1
            where = f"{path} record {n} ({rec.id})"
            seq, why = check_sequence(str(rec.seq), ctx.options.ambiguous)
            if seq is None:
                reason, _, detail = why.partition(": ")
                ctx.skip(reason, where, detail)
                continue
            meta = {"source": where, "entry_name": rec.name, "description": rec.description,
                    "organism": rec.annotations.get("organism"), "keywords": rec.annotations.get("keywords", [])}
            yield Document(rec.id, seq, meta)


def _sniff_fasta(head: bytes, path: Path) -> bool:
    return head.startswith(b">")


def _sniff_swissprot(head: bytes, path: Path) -> bool:
    return head.startswith(b"ID   ") and b"\nAC   " in head
