"""Cleaning and the per-document hashes: Unicode normalisation, whitespace repair, length filters, the
exact-duplicate key, MinHash shingles and the hashed train/validation split.

These are pure functions run inside the datatrove tasks of ``corpus prepare`` (steps.py); the
cross-document decisions (exact and near-duplicates, PubMed revisions) are datatrove stages on disk.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from dataclasses import dataclass

# C0/C1 control characters other than tab/newline (str.split() already treats \x0b, \x0c, \x1c-\x1f and
# \x85 as whitespace), and invisible characters that break words for tokenizers: zero-width space/
# joiners, BOM, soft hyphen.
_CONTROL = re.compile("[\x00-\x08\x0e-\x1b\x7f\x80-\x84\x86-\x9f]")
_INVISIBLE = re.compile("[\u00ad\u200b-\u200d\u2060\ufeff]")
_MANY_NEWLINES = re.compile(r"\n{3,}")

# Shingle lengths for near-duplicate detection. Word trigrams rather than the 5-grams used for web
# pages (Gopher, RefinedWeb): abstracts are ~200 words, and with 5-grams a handful of edited words
# already pushes a true near-duplicate pair below a 0.8 Jaccard threshold. Proteins use residue
# 5-mers: two unrelated 300-residue sequences share almost none of the 20^5 possible 5-mers.
TEXT_SHINGLE = 3
PROTEIN_SHINGLE = 5


@dataclass(frozen=True)
class CleanOptions:
    """The cleaning settings of a prepare run (a picklable subset of PrepareConfig)."""

    unicode_form: str = "NFC"
    min_chars: int = 20
    max_chars: int | None = None
    min_length: int = 20
    max_length: int | None = None
    detokenize: bool = False


# Word tokenisation as the NER corpora (BIO/CoNLL files) have it: a space on both sides of every punctuation
# mark, hyphen and slash. Hand-written: sacremoses' Moses detokenizer re-attaches brackets and punctuation but
# leaves split hyphens and slashes ("anti - nucleolin", "ng / ml") apart, which are most of what differs from
# the raw text of abstracts.
_DETOK = [(re.compile(r"\s+([,.;:%)\]!?])"), r"\1"), (re.compile(r"([(\[])\s+"), r"\1"),
          (re.compile(r"(?<=\S) ([-/]) (?=\S)"), r"\1"), (re.compile(r"(?<=\w) ' (?=s\b)"), "'"),
          (re.compile(r"(?<=\w) '(?=-)"), "'")]


def detokenize(text: str) -> str:
    """Undo the word tokenisation of NER corpora: "( BrdU kit ; Boehringer ) , 2 % anti - nucleolin" ->
    "(BrdU kit; Boehringer), 2% anti-nucleolin". Raw text passes unchanged. Training on the spaced form
    taught SmolLM2 the spacing: real PubMed abstracts' perplexity rose, and fell with this undone
    (experiments/DAPT_BIOMED.md)."""
    for pat, rep in _DETOK:
        text = pat.sub(rep, text)
    return text


# Marks a word-tokenised text puts a space before (and raw text almost never does): a comma, semicolon, colon or
# closing bracket, or a sentence-final full stop.
_SPACED_MARK = re.compile(r" (?:[,;:)\]]|\.(?=\s|$))")
_TIGHT_MARK = re.compile(r"\S(?:[,;:)\]]|\.(?=\s|$))")


def looks_word_tokenised(text: str) -> bool:
    """Whether a text is written the way NER corpora write it ("( BrdU kit ; Boehringer ) , 2 %"): more of its
    commas, semicolons, colons, closing brackets and full stops have a space before them than not. `corpus
    prepare` counts these documents and, when they are many and --detokenize is off, says so in its notes."""
    spaced = len(_SPACED_MARK.findall(text))
    return spaced > 0 and spaced > len(_TIGHT_MARK.findall(text))


def clean_text(text: str, form: str = "NFC") -> str:
    """Normalise Unicode and repair whitespace, keeping line and paragraph breaks.

    Spaces and tabs collapse to one space, every line is stripped, carriage returns become newlines and
    runs of blank lines become one blank line. NFC (not NFKC) is the default form because NFKC rewrites
    meaningful scientific notation: "x²" becomes "x2" and "µ" becomes "μ".
    """
    if not text.isascii():
        if form != "none":
            text = unicodedata.normalize(form, text)
        text = _INVISIBLE.sub("", text)
        if _CONTROL.search(text):
            text = _CONTROL.sub(" ", text)
    elif _CONTROL.search(text):
        text = _CONTROL.sub(" ", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\n" not in text:
        return " ".join(text.split())
    lines = [" ".join(line.split()) for line in text.split("\n")]
    text = "\n".join(lines).strip()
    if "\n\n\n" in text:
        text = _MANY_NEWLINES.sub("\n\n", text)
    return text


def length_problem(text: str, kind: str, opts: CleanOptions) -> str | None:
    """The drop reason when ``text`` is outside the length filters, else None."""
    n = len(text)
    if kind == "protein":
        if n < opts.min_length:
            return "too_short"
        if opts.max_length is not None and n > opts.max_length:
            return "too_long"
        return None
    if n < opts.min_chars:
        return "too_short"
    if opts.max_chars is not None and n > opts.max_chars:
        return "too_long"
    return None


def exact_key(text: str) -> int:
    """A 64-bit content hash for exact deduplication (collision odds at 36M documents: ~1e-5)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def validation_of(doc_id: str, fraction: float) -> bool:
    """True when ``doc_id`` belongs to the validation split.

    The split depends only on a hash of the id, so adding files never moves an old document from one
    split to the other, and the same PMID lands in the same split in every corpus that contains it.
    """
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8, person=b"dlm-split").digest(),
                       "little")
    return h / 2**64 < fraction


_POSITION = None


def _mix(h):
    """SplitMix64 finaliser on a uint64 array (spreads combined shingle hashes over all bits)."""
    import numpy as np

    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


# Per-process cache of word hashes: words are Zipf-distributed, so most lookups hit and hashing stops
# being the main cost of MinHash. Cleared when it grows past this many entries to keep memory flat.
_WORD_HASHES: dict[str, int] = {}
_WORD_CACHE_MAX = 1 << 20


def _word_hashes(words: list[str]) -> list[int]:
    cache = _WORD_HASHES
    hashes = [cache.get(w) for w in words]
    if None in hashes:
        if len(cache) >= _WORD_CACHE_MAX:
            cache.clear()
        for i, h in enumerate(hashes):
            if h is None:
                w = words[i]
                hashes[i] = cache[w] = zlib.crc32(w.encode("utf-8"))
    return hashes  # type: ignore[return-value]


def shingle_hashes(text: str, kind: str):
    """32-bit hashes of the document's shingles: lower-cased word trigrams, or residue 5-mers.

    Words are hashed once (crc32, deterministic across processes, unlike ``hash()``) and combined into
    n-gram hashes with numpy, which is several times faster than hashing every n-gram string.
    """
    import numpy as np

    global _POSITION
    if _POSITION is None:
        _POSITION = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5,
                              0xFF51AFD7ED558CCD], dtype=np.uint64)
    if kind == "protein":
        units = [text[i:i + PROTEIN_SHINGLE] for i in range(0, max(1, len(text) - PROTEIN_SHINGLE + 1))]
        h = np.fromiter((zlib.crc32(u.encode("ascii", "replace")) for u in units), dtype=np.uint64, count=len(units))
        n = 1
    else:
        h = np.array(_word_hashes(text.lower().split()), dtype=np.uint64)
        n = TEXT_SHINGLE
    if not len(h):
        return h
    # uint64 arithmetic on arrays wraps around silently, which is what a hash wants. Each position of the
    # n-gram gets its own odd multiplier, so "a b c" and "c b a" differ; one mixing pass spreads the bits.
    if len(h) > n > 1:
        m = len(h) - n + 1
        combined = h[:m] * _POSITION[0]
        for k in range(1, n):
            combined += h[k:m + k] * _POSITION[k]
        h = combined
    return _mix(h) >> np.uint64(32)
