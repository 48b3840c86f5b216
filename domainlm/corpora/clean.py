"""Cleaning and deduplication: Unicode normalisation, whitespace repair, length filters, exact and
near-duplicate removal (MinHash LSH from ``datasketch``), and the hashed train/validation split.

The per-document functions here are pure and run in worker processes; :class:`Deduper` holds the
cross-document state and runs in the main process, in input order, so results do not depend on the
number of workers.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from dataclasses import dataclass
from typing import Any

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
    near_dup: bool = True
    num_perm: int = 128
    validation_fraction: float = 0.05


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


class MinHasher:
    """MinHash signatures with ``datasketch``; one MinHash object is reused (its constructor draws or parses
    the permutations, which costs more than hashing an abstract)."""

    def __init__(self, num_perm: int) -> None:
        from datasketch import MinHash

        self.num_perm = num_perm
        # The shingle hashes are already 32-bit integers, so the identity is the hash function.
        self._m = MinHash(num_perm=num_perm, hashfunc=int, scheme="affine32")

    def signature(self, hashes) -> Any:
        import numpy as np

        m = self._m
        m.clear()
        m.update_batch(hashes.tolist())
        return m.hashvalues.astype(np.uint32)


class HashSet:
    """A set of 64-bit hashes in ~8 bytes each: a sorted numpy array plus a small Python set of recent ones.

    A Python ``set`` of ints costs ~70 bytes per entry, which for tens of millions of documents is the
    largest thing in memory; no maintained library offers a compact integer set, so this is written here.
    """

    def __init__(self, buffer: int = 1 << 16) -> None:
        import numpy as np

        self.np = np
        self.sorted = np.zeros(0, dtype=np.uint64)
        self.recent: set[int] = set()
        self.buffer = buffer

    def __contains__(self, h: int) -> bool:
        if h in self.recent:
            return True
        arr = self.sorted
        i = int(self.np.searchsorted(arr, self.np.uint64(h)))
        return i < len(arr) and int(arr[i]) == h

    def add(self, h: int) -> None:
        self.recent.add(h)
        if len(self.recent) >= self.buffer:
            self._merge()

    def update(self, hashes) -> None:
        for h in hashes:
            self.add(int(h))

    def _merge(self) -> None:
        np = self.np
        self.sorted = np.union1d(self.sorted, np.fromiter(self.recent, dtype=np.uint64, count=len(self.recent)))
        self.recent.clear()

    def __len__(self) -> int:
        return len(self.sorted) + len(self.recent)


class Deduper:
    """Exact (64-bit content hash) and near-duplicate (MinHash LSH) state, in input order.

    LSH candidates are confirmed with the MinHash estimate of their Jaccard similarity, as datasketch
    recommends; without that check, pairs well below the threshold (0.65-0.7, e.g. point-mutated
    protein variants) would be dropped by chance. Memory grows with the number of kept documents:
    8 bytes each for exact deduplication, and for near-duplicates datasketch's in-memory LSH index plus
    the signature (num_perm * 4 bytes), a few KB per document (measured in benchmarks/SPEED_PREPARE.md).
    For tens of millions of documents, turn ``near_dup`` off (the pubmed card does).
    """

    _CHUNK = 1 << 14  # signatures stored in blocks of this many documents

    def __init__(self, exact: bool, near_dup: bool, threshold: float, num_perm: int) -> None:
        self.use_exact = exact
        self.exact = HashSet()
        self.lsh = None
        self.num_perm = num_perm
        self.threshold = threshold
        self._sigs: list[Any] = []
        if near_dup:
            from datasketch import MinHash, MinHashLSH

            self._probe = MinHash(num_perm=num_perm, scheme="affine32")
            # Band keys shortened to 8 bytes: the default keeps r*8 raw bytes per band and document.
            self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm,
                                  hashfunc=lambda b: hashlib.blake2b(b, digest_size=8).digest())

    def _minhash(self, sig):
        import numpy as np

        # One MinHash reused for every query and insert (the LSH keeps only band hashes, not the object);
        # constructing one per document would cost more than the lookup.
        self._probe.hashvalues = sig.astype(np.uint64)
        return self._probe

    def _store(self, doc_index: int, sig) -> None:
        import numpy as np

        block, row = divmod(doc_index, self._CHUNK)
        while len(self._sigs) <= block:
            self._sigs.append(np.zeros((self._CHUNK, self.num_perm), dtype=np.uint32))
        self._sigs[block][row] = sig

    def _similar(self, sig, candidates) -> bool:
        for idx in candidates:
            block, row = divmod(int(idx), self._CHUNK)
            if float((self._sigs[block][row] == sig).mean()) >= self.threshold:
                return True
        return False

    def check(self, key: int, sig, doc_index: int) -> str | None:
        """None when the document is new (and record it), else 'exact_duplicate' / 'near_duplicate'."""
        if self.use_exact and key in self.exact:
            return "exact_duplicate"
        if self.lsh is not None and sig is not None:
            m = self._minhash(sig)
            candidates = self.lsh.query(m)
            if candidates and self._similar(sig, candidates):
                return "near_duplicate"
            self.lsh.insert(doc_index, m, check_duplication=False)
            self._store(doc_index, sig)
        if self.use_exact:
            self.exact.add(key)
        return None

    def restore(self, keys, sigs, doc_indices) -> None:
        """Re-insert documents kept by finished shards of an interrupted run."""
        if self.use_exact:
            self.exact.update(keys)
        if self.lsh is not None and sigs is not None:
            with self.lsh.insertion_session() as session:
                for sig, idx in zip(sigs, doc_indices, strict=True):
                    session.insert(int(idx), self._minhash(sig), check_duplication=False)
                    self._store(int(idx), sig)
