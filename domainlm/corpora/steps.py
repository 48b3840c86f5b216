"""The datatrove steps of ``domainlm corpus prepare``.

The run is a chain of datatrove stages (each stage one executor, local, Slurm or Ray; see run.py):

1. ``read``: :class:`ReadClean`: our readers (every bad-record policy and drop count kept), cleaning and
   the length filters, the reading-comprehension conversion (``--reading-comprehension``: the document
   followed by tasks mined from it, :mod:`domainlm.corpora.comprehension`), the n-gram decontamination check (``--decontaminate``: datatrove's filter with our
   index of the bench suites' test texts), and tokenisation: :class:`TokenLog` encodes the kept documents
   in batches and writes their ids to ``WORK/tokens/<rank>.arrow``, so the cleaned text is written again
   only when a later stage must re-read it (PubMed updates with deduplication: ``WORK/docs``). Each task
   reads a *contiguous* run of input files, so (task, position) order is the input order on any task count.
2. ``updates`` (PubMed, several XML files): :class:`ResolveKeys` keyed by PMID, on disk. Every task
   wrote (PMID, file, position, deleted?) records into hash partitions; one task per partition sorts
   them and marks every version older than the PMID's last file as ``superseded`` (or ``deleted`` when
   that file deletes it). Memory is one partition, not the corpus.
3. ``hash`` (in the read stage when there is no update barrier): :class:`ExactKeys` writes 64-bit text
   hashes into partitions; :class:`Signature` is datatrove's MinHash stage 1 with our shingles.
4. ``exact`` (:class:`ResolveKeys`, first occurrence wins) and datatrove's MinHash buckets (stage 2)
   and clusters (stage 3), all on disk.
5. ``pack`` (one task per read task): :class:`PackTask` reads only its own task's token ids, drops what
   stages 2-4 and the decontamination check removed, and writes that task's blocks (``train/<rank>.tokens``,
   ``validation/<rank>.tokens``: uint16 or uint32 ids), document starts and document table.
6. ``index`` (one small task): :class:`Index` reads the pack tasks' *counts* (a prefix sum gives each task's
   first global document index) and writes manifest.json. No stage reads every task's tokens.

Steps 2-4 are skipped when their option is off. Intermediate files live in ``OUT/.work`` (with
datatrove's completion markers, so an interrupted run resumes task by task) and are removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.data import Document as TroveDocument
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.decont.n_grams import NGramsDecontConfig, NGramsDecontFilter
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.utils.hashing import HashConfig
from datatrove.utils.word_tokenizers import WordTokenizer

log = logging.getLogger(__name__)

# The share of kept text documents that look word-tokenised above which prepare's notes suggest --detokenize.
WORD_TOKENISED_SHARE = 0.2

NONE = np.uint32(0xFFFFFFFF)  # "no kept document": a record that was read but dropped, or a deletion
KEY_DTYPE = np.dtype([("key", "<u8"), ("file", "<u4"), ("rank", "<u4"), ("idx", "<u4"), ("flag", "u1")])
REMOVED_DTYPE = np.dtype([("idx", "<u4"), ("reason", "u1")])
REASONS = ("superseded", "deleted", "exact_duplicate")
MAX_PMID = 2**63 - 1


def _cache_loguru_lib_dirs() -> None:
    """datatrove adds loguru handlers for every task of every stage, and each builds an ``ExceptionFormatter`` that
    recomputes the standard-library and site-packages folders from sysconfig: ~36 ms each, 0.5-0.7 CPU-s of a
    3 MB prepare (cProfile). The answer depends only on ``sys.path``: computed once per path list."""
    try:
        from loguru import _better_exceptions as be
    except ImportError:
        return
    original = be.ExceptionFormatter.__dict__.get("_get_lib_dirs")
    if not isinstance(original, staticmethod) or getattr(original.__func__, "_domainlm_cached", False):
        return
    cache: dict[tuple[str, ...], list[str]] = {}

    def lib_dirs() -> list[str]:
        key = tuple(sys.path)
        if key not in cache:
            cache[key] = original.__func__()
        return list(cache[key])

    lib_dirs._domainlm_cached = True  # type: ignore[attr-defined]
    be.ExceptionFormatter._get_lib_dirs = staticmethod(lib_dirs)


_cache_loguru_lib_dirs()  # here, so that every Slurm or Ray job (a fresh interpreter that unpickles these steps) has it


def file_range(rank: int, world_size: int, n_files: int) -> range:
    """The contiguous run of input files task ``rank`` of ``world_size`` reads (so task order is input order)."""
    return range(rank * n_files // world_size, (rank + 1) * n_files // world_size)


def save_counts(work: str, step: str, rank: int, data: dict[str, Any]) -> None:
    from domainlm.artifacts import atomic_write_json

    atomic_write_json(Path(work) / "counts" / step / f"{rank:05d}.json", data)


def load_counts(work: str, step: str) -> list[dict[str, Any]]:
    folder = Path(work) / "counts" / step
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]


class Whitespace(WordTokenizer):
    """Words split on whitespace: datatrove's English tokenizer needs spaCy, and our n-grams (near-duplicate
    shingles, decontamination) are defined over whitespace words after datatrove's text simplification."""

    def word_tokenize(self, text: str) -> list[str]:
        return text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        return [text]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        raise NotImplementedError


class _Step(PipelineStep):
    type = "domainlm"

    def __init__(self, work: str) -> None:
        super().__init__()
        self.work = work


# --------------------------------------------------------------------------------------------------
# Stage 1: read and clean
# --------------------------------------------------------------------------------------------------

class _KeyBuffer:
    """Appends key records into ``parts`` partition files of one task, flushing every ``flush`` records."""

    def __init__(self, folder: Path, rank: int, parts: int, flush: int = 1 << 16) -> None:
        self.paths = [folder / f"{rank:05d}-{p:04d}.bin" for p in range(parts)]
        folder.mkdir(parents=True, exist_ok=True)
        for p in self.paths:
            p.write_bytes(b"")  # a re-run task starts its partitions afresh
        self.rows: list[tuple] = []
        self.flush_at = flush

    def add(self, key: int, file: int, rank: int, idx: int, flag: int) -> None:
        self.rows.append((key, file, rank, idx, flag))
        if len(self.rows) >= self.flush_at:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        arr = np.array(self.rows, dtype=KEY_DTYPE)
        part = arr["key"] % np.uint64(len(self.paths))
        for p, path in enumerate(self.paths):
            chunk = arr[part == p]
            if len(chunk):
                with open(path, "ab") as fh:
                    chunk.tofile(fh)
        self.rows = []


class ReadClean(_Step):
    """Our readers over this task's files, then cleaning and the length filters; writes the survivors."""

    name = "read and clean"

    def __init__(self, work: str, files: list[dict[str, Any]], options: dict[str, Any], clean: dict[str, Any],
                 pmid_parts: int | None, *, plan: Any, validation_fraction: float, parallel: bool,
                 write_text: bool, decontaminate: tuple[str, int] | None = None,
                 comprehension: tuple[str, str] | None = None) -> None:
        super().__init__(work)
        self.files, self.options, self.clean, self.pmid_parts = files, options, clean, pmid_parts
        self.plan, self.validation_fraction, self.parallel = plan, validation_fraction, parallel
        # The cleaned text goes to disk only when a later stage reads it again (the hash stage after the PubMed
        # update barrier); otherwise it is tokenised here and never written.
        self.write_text, self.decontaminate = write_text, decontaminate
        self.comprehension = comprehension  # (model, layout) with --reading-comprehension

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from domainlm.corpora.clean import (
            CleanOptions,
            clean_text,
            detokenize,
            length_problem,
            looks_word_tokenised,
        )
        from domainlm.documents.readers import InputFile, ReaderOptions, SkipLog
        from domainlm.documents.registry import Position, iter_documents

        files = [InputFile(Path(f["path"]), f["format"], f["bytes"], f["rel"]) for f in self.files]
        mine = file_range(rank, world_size, len(files))
        skips = SkipLog()
        drops: Counter[str] = Counter()
        opts = CleanOptions(**self.clean)
        keys = _KeyBuffer(Path(self.work) / "keys" / "pubmed", rank, self.pmid_parts) if self.pmid_parts else None
        pending: list[tuple[int, int] | None] = [None]  # the PubMed record the reader reported last

        def commit(idx: int) -> None:
            if pending[0] is not None:
                keys.add(pending[0][0], pending[0][1], rank, idx, 0)
                pending[0] = None

        def on_record(fi: int, pmid: str, deleted: bool) -> None:
            # Every record and deletion counts, kept or not: a later version that is too short still
            # supersedes the earlier one, as a PubMed update intends.
            if keys is None or files[fi].format != "pubmed-xml" or not pmid.isdigit() or int(pmid) > MAX_PMID:
                return
            if deleted:
                keys.add(int(pmid), fi, rank, int(NONE), 1)
            else:
                commit(int(NONE))
                pending[0] = (int(pmid), fi)

        out_path = Path(self.work) / "docs" / f"{rank:05d}.jsonl"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        read = kept = spaced = 0
        tokens = TokenLog(self.work, rank, self.plan, self.validation_fraction, self.parallel)
        decont = Decontaminate(self.decontaminate[0], self.decontaminate[1], self.work) if self.decontaminate else None
        comprehension = None
        if self.comprehension is not None:
            from domainlm.corpora.comprehension import Comprehension

            comprehension = Comprehension(*self.comprehension)
        with open(out_path, "w", encoding="utf-8") if self.write_text else contextlib.nullcontext() as out:
            if len(mine):
                stream = iter_documents(files, ReaderOptions(**self.options), skips, start=Position(mine.start, 0),
                                        stop=mine.stop, on_record=on_record)
                for doc, kind, pos in stream:
                    read += 1
                    text = doc.text if kind == "protein" else clean_text(doc.text, opts.unicode_form)
                    if opts.detokenize and kind != "protein":
                        text = detokenize(text)
                    why = length_problem(text, kind, opts)
                    if why is not None:
                        drops[why] += 1
                        if keys is not None:
                            commit(int(NONE))
                        continue
                    if keys is not None:
                        commit(kept)
                    if kind != "protein" and not opts.detokenize and looks_word_tokenised(text):
                        spaced += 1
                    if out is not None:
                        out.write(json.dumps({"id": doc.id, "text": text, "kind": kind, "file": pos.file_index},
                                             ensure_ascii=False) + "\n")
                    self.stat_update("kept")
                    trove = TroveDocument(text=text, id=doc.id, metadata={"kind": kind, "idx": kept, "idx2": kept})
                    # Deduplication hashes the document as read (``trove``); what is checked against the test sets
                    # and tokenised is the document followed by its mined tasks (--reading-comprehension).
                    checked = trove
                    if comprehension is not None and kind != "protein" and not doc.metadata.get("loss_segments"):
                        title = doc.metadata.get("title")
                        title = clean_text(title, opts.unicode_form) if title else None
                        checked = TroveDocument(text=comprehension.convert(text, title, str(doc.id)), id=doc.id,
                                                metadata={"kind": kind})
                    elif comprehension is not None:
                        comprehension.skip()
                    task = ngram = None
                    if decont is not None and decont.filter(checked) is not True:
                        task, ngram = checked.metadata["contaminated_task"], checked.metadata["contaminated_ngram"]
                    tokens.add(str(doc.id), checked.text, doc.metadata.get("loss_segments"), task, ngram)
                    yield trove
                    kept += 1
                    if kept >= int(NONE):
                        from domainlm.errors import DataError

                        raise DataError("more than 2^32 documents in one task: raise --tasks")
        tokens.close()
        if comprehension is not None:
            comprehension.save(self.work, rank)
        if keys is not None:
            commit(int(NONE))
            keys.flush()
        save_counts(self.work, "read", rank, {"records_read": read, "drops": dict(drops), "reader": skips.snapshot(),
                                              "files": len(mine), "kept": kept, "word_tokenised": spaced})


class ReadDocs(_Step):
    """This task's cleaned documents, in order (``idx`` is the position in the file)."""

    name = "read cleaned documents"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        path = Path(self.work) / "docs" / f"{rank:05d}.jsonl"
        with open(path, encoding="utf-8") as fh:
            for idx, line in enumerate(fh):
                d = json.loads(line)
                yield TroveDocument(text=d["text"], id=d["id"], metadata={"kind": d["kind"], "idx": idx, "idx2": idx})


def _load_removed(work: str, name: str, rank: int) -> dict[int, str]:
    out: dict[int, str] = {}
    for path in sorted((Path(work) / "removed" / name).glob(f"{rank:05d}-*.npy")):
        arr = np.load(path)
        for idx, reason in zip(arr["idx"].tolist(), arr["reason"].tolist(), strict=True):
            out[idx] = REASONS[reason]
    return out


class DropKeyed(_Step):
    """Drops the documents a keyed stage removed (PubMed revisions/deletions) and renumbers the rest (``idx2``)."""

    name = "drop superseded and deleted"

    def __init__(self, work: str, key_name: str | None, count: bool) -> None:
        super().__init__(work)
        self.key_name, self.count = key_name, count  # the first stage that applies the removals counts them

    def run(self, data, rank: int = 0, world_size: int = 1):
        removed = _load_removed(self.work, self.key_name, rank) if self.key_name else {}
        drops: Counter[str] = Counter()
        examples: dict[str, list[str]] = {}
        n = 0
        for doc in data:
            why = removed.get(doc.metadata["idx"])
            if why is not None:
                drops[why] += 1
                if len(examples.setdefault(why, [])) < 5:
                    examples[why].append(f"PMID {doc.id}")
                continue
            doc.metadata["idx2"] = n
            n += 1
            yield doc
        if self.count:
            save_counts(self.work, f"drop-{self.key_name}", rank, {"drops": dict(drops), "examples": examples})


class ExactKeys(_Step):
    """Writes the 64-bit hash of each document's cleaned text into hash partitions (for :class:`ResolveKeys`)."""

    name = "exact-duplicate keys"

    def __init__(self, work: str, parts: int) -> None:
        super().__init__(work)
        self.parts = parts

    def run(self, data, rank: int = 0, world_size: int = 1):
        from domainlm.corpora.clean import exact_key

        keys = _KeyBuffer(Path(self.work) / "keys" / "exact", rank, self.parts)
        for doc in data:
            keys.add(exact_key(doc.text), 0, rank, doc.metadata["idx2"], 0)
            yield doc
        keys.flush()


class ResolveKeys(_Step):
    """One hash partition of a keyed stage: sort its records and decide which documents go.

    ``mode='pubmed'``: per PMID, the last file that has it wins; versions in earlier files are
    ``superseded``, or ``deleted`` when that last file deletes the PMID. ``mode='exact'``: per text hash,
    the first document in input order stays and the others are ``exact_duplicate``. Writes, for every
    task of the reading stage, the positions it must drop.
    """

    name = "resolve keys"

    def __init__(self, work: str, key_name: str, mode: str, data_tasks: int, exclude: str | None = None) -> None:
        super().__init__(work)
        self.key_name, self.mode, self.data_tasks, self.exclude = key_name, mode, data_tasks, exclude

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        folder = Path(self.work) / "keys" / self.key_name
        parts = [np.fromfile(p, dtype=KEY_DTYPE) for p in sorted(folder.glob(f"*-{rank:04d}.bin"))]
        rec = np.concatenate(parts) if parts else np.zeros(0, dtype=KEY_DTYPE)
        if self.exclude and len(rec):
            # Keys written in the read stage, before the PubMed update barrier: documents that stage removes take
            # no part (a superseded version must not make its own revision, or another copy, a duplicate).
            gone = np.zeros(len(rec), dtype=bool)
            for r in range(self.data_tasks):
                removed = [np.load(p)["idx"] for p in (Path(self.work) / "removed" / self.exclude).glob(f"{r:05d}-*.npy")]
                if removed:
                    gone |= (rec["rank"] == r) & np.isin(rec["idx"], np.concatenate(removed))
            rec = rec[~gone]
        remove = np.zeros(len(rec), dtype=bool)
        reason = np.zeros(len(rec), dtype=np.uint8)
        if len(rec):
            rec = rec[np.lexsort((rec["idx"], rec["rank"], rec["file"], rec["key"]))]
            first = np.r_[True, rec["key"][1:] != rec["key"][:-1]]
            starts = np.flatnonzero(first)
            group = np.cumsum(first) - 1
            if self.mode == "pubmed":
                last_file = np.maximum.reduceat(rec["file"], starts)[group]
                deletes_last = (rec["flag"] == 1) & (rec["file"] == last_file)
                deleted = (np.add.reduceat(deletes_last.astype(np.int64), starts) > 0)[group]
                remove = (rec["flag"] == 0) & (rec["idx"] != NONE) & (rec["file"] < last_file)
                reason = np.where(deleted, REASONS.index("deleted"), REASONS.index("superseded")).astype(np.uint8)
            else:
                remove = ~first
                reason[:] = REASONS.index("exact_duplicate")
        out = Path(self.work) / "removed" / self.key_name
        out.mkdir(parents=True, exist_ok=True)
        for r in range(self.data_tasks):
            sel = remove & (rec["rank"] == r)
            arr = np.zeros(int(sel.sum()), dtype=REMOVED_DTYPE)
            arr["idx"], arr["reason"] = rec["idx"][sel], reason[sel]
            np.save(out / f"{r:05d}-{rank:04d}.npy", np.sort(arr, order="idx"))
        self.stat_update("removed", value=int(remove.sum()))
        return
        yield  # a generator step with no output


# --------------------------------------------------------------------------------------------------
# Near-duplicates: datatrove's MinHash stages with our shingles
# --------------------------------------------------------------------------------------------------

def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) for a MinHash LSH tuned to ``threshold``: datasketch's rule (minimise the
    false-positive plus false-negative areas under the S-curve), computed here so the LSH needs no
    datasketch. datatrove's own default (14 bands x 8 rows) is tuned for ~0.72 on web 5-grams."""
    s = np.linspace(0.0, 1.0, 401)
    below, above = s <= threshold, s >= threshold
    best, best_err = (1, 1), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            p = 1.0 - (1.0 - s**r) ** b
            fp = np.trapezoid(p[below], s[below])
            fn = np.trapezoid(1.0 - p[above], s[above])
            if fp + fn < best_err:
                best, best_err = (b, r), fp + fn
    return best


def minhash_config(threshold: float, num_perm: int) -> MinhashConfig:
    bands, rows = lsh_bands(threshold, num_perm)
    # 32-bit signature values: our shingle hashes are 32-bit, and it halves the signature files.
    return MinhashConfig(n_grams=1, num_buckets=bands, hashes_per_bucket=rows, seed=1,
                         hash_config=HashConfig(precision=32))


def mod_mersenne61(x: np.ndarray) -> np.ndarray:
    """``x % (2**61 - 1)`` in place on a uint64 array, as (x & p) + (x >> 61), less p when that reaches p: integer
    division is the slowest step of the MinHash permutation, these are a few cheap passes (same values)."""
    p = np.uint64((1 << 61) - 1)
    high = x >> np.uint64(61)
    x &= p
    x += high
    np.subtract(x, p, out=high)  # wraps above x unless x >= p, so the minimum is the reduced value
    np.minimum(x, high, out=x)
    return x


class Signature(MinhashDedupSignature):
    """datatrove's MinHash stage 1, shingling as before: lower-cased word trigrams, residue 5-mers for proteins
    (datatrove's shingles are word n-grams of one language, which would make every protein one shingle)."""

    def __init__(self, output_folder: str, config: MinhashConfig) -> None:
        super().__init__(output_folder, config=config, language=Whitespace())

    # Shingles per batch: the permuted hashes of a batch are (shingles x bands*rows) uint64, ~4 MB at 128
    # permutations (measured: a batch that fits the cache is faster than a bigger one).
    BATCH_SHINGLES = 1 << 12

    def run(self, data, rank: int = 0, world_size: int = 1):
        """datatrove's stage 1 with the same bytes on disk, batched: datatrove permutes each document's shingles
        and writes one ``struct.pack`` per band and document; here the permutation and minimum run over many
        documents at once (``np.minimum.reduceat``) and each band gets one write per batch. datatrove's own
        ``run`` then sorts and verifies the band files (it skips writing when they already hold whole records)."""
        from datatrove.utils.typeshelper import StatHints

        from domainlm.corpora.clean import shingle_hashes

        cfg = self.config
        rows = cfg.hashes_per_bucket
        dtype = np.dtype([(f"field{i + 1}", f"<{cfg.hash_config.struct_format}") for i in range(rows)]
                         + [(f"field{rows + 1}", "<I")])
        a, b = self.parameters
        with self.track_time():
            buckets = [self.output_folder.open(f"bucket_{bi:03d}/{rank:05d}.minhash.sig", mode="wb")
                       for bi in range(cfg.num_buckets)]
            shingles: list[np.ndarray] = []
            indices: list[int] = []
            pending = 0

            def flush() -> None:
                starts = np.cumsum([0] + [len(s) for s in shingles[:-1]])
                # (x * a + b) % p as datatrove computes it: the product wraps at 2^64, then the Mersenne modulo.
                phv = np.concatenate(shingles).reshape(-1, 1) * a
                phv += b
                mod_mersenne61(phv)
                if cfg.hash_config.precision == 32:
                    phv &= np.uint64(cfg.hash_config.max)
                sig = np.minimum.reduceat(phv, starts, axis=0).astype(cfg.hash_config.np_dtype)
                rec = np.empty(len(indices), dtype=dtype)
                rec[f"field{rows + 1}"] = indices
                for bi, fh in enumerate(buckets):
                    for j in range(rows):
                        rec[f"field{j + 1}"] = sig[:, bi * rows + j]
                    fh.write(rec.tobytes())
                shingles.clear()
                indices.clear()

            for doc_idx, doc in enumerate(data):
                self.stat_update(StatHints.total)
                sh = shingle_hashes(doc.text, doc.metadata.get("kind", "text")).astype(np.uint64)
                if sh.size == 0:
                    continue
                shingles.append(sh)
                indices.append(doc_idx)
                pending += sh.size
                if pending >= self.BATCH_SHINGLES:
                    flush()
                    pending = 0
            if indices:
                flush()
            for fh in buckets:
                fh.close()
        self.skip_existing_sigs = True  # the files are complete: datatrove's run only sorts and verifies them
        try:
            super().run(iter(()), rank, world_size)
        finally:
            self.skip_existing_sigs = False


# --------------------------------------------------------------------------------------------------
# Decontamination
# --------------------------------------------------------------------------------------------------

def decont_config(n: int) -> NGramsDecontConfig:
    # sha1, not datatrove's default xxhash: the filter hashes str n-grams, and xxhash >= 3.6 accepts only bytes.
    return NGramsDecontConfig(n_grams=n, find_query_ngrams=True, find_overlap_ngrams=False,
                              hash_config=HashConfig(precision=64, hash_fc="sha1"))


def build_decont_index(folder: Path, sources: dict[str, list[str]], n: int) -> dict[str, int]:
    """Write datatrove's decontamination index (``<task>.index.hashes``) for each named list of test texts;
    returns the number of distinct n-grams per task. Texts shorter than n words cannot match and add none."""
    from datatrove.utils.text import ngrams, simplify_text

    cfg = decont_config(n)
    probe = NGramsDecontFilter(str(folder), config=cfg, language=Whitespace())
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for task, texts in sources.items():
        hashes = set()
        for text in texts:
            words = probe.tokenizer.word_tokenize(simplify_text(text, cfg.norm_config))
            hashes.update(probe.hash_func(" ".join(g)) for g in ngrams(words, n))
        arr = np.array(sorted(hashes), dtype=cfg.hash_config.np_descr)
        with open(folder / f"{task.replace(' ', '_').replace('/', '_')}.index.hashes", "wb") as fh:
            arr.tofile(fh)
        sizes[task] = len(arr)
    return sizes


class Decontaminate(NGramsDecontFilter):
    """datatrove's n-gram decontamination filter, asked per document by the read stage (``filter``); the documents
    it flags are dropped and counted by task at packing."""

    def __init__(self, index_folder: str, n: int, work: str) -> None:
        super().__init__(index_folder, config=decont_config(n), language=Whitespace())
        self.work = work


# --------------------------------------------------------------------------------------------------
# Tokenise (inside the read stage) and pack (per task)
# --------------------------------------------------------------------------------------------------

class TokenLog:
    """The read stage's token ids, one row per kept document in read order, in ``WORK/tokens/<rank>.arrow``.

    Documents are encoded in batches of :attr:`BATCH` (one ``encode_batch`` call) and wrapped the way the tokenizer
    wraps one sequence. A document whose metadata has ``loss_segments`` (a list of ``(text, counts)`` pairs whose
    texts make up the document, e.g. a prompt and its answer) also gets a per-token ``loss_mask``: 1 on the tokens
    of the segments that count, and on the closing separator when the last segment counts; 0 on the prefix.
    Rows also carry the test task and n-gram that ``--decontaminate`` found in the text (dropped at packing, after
    deduplication, so a duplicate is counted as a duplicate as before).
    """

    BATCH = 256

    def __init__(self, work: str, rank: int, plan: Any, validation_fraction: float, parallel: bool) -> None:
        import pyarrow as pa

        from domainlm.corpora.pack import Encoder, token_dtype

        if parallel:
            # One tokenizer thread per task: N tasks already use N cores, a Rust pool in each would oversubscribe.
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        self.pa, self.plan, self.validation_fraction = pa, plan, validation_fraction
        self.encoder = Encoder(plan)
        self.dtype = token_dtype(plan.vocab_size)
        self.type = pa.uint16() if self.dtype.itemsize == 2 else pa.uint32()
        self.schema = pa.schema([("id", pa.string()), ("validation", pa.bool_()), ("chars", pa.int32()),
                                 ("ids", pa.large_list(self.type)), ("loss_mask", pa.large_list(pa.uint8())),
                                 ("task", pa.string()), ("ngram", pa.string())])
        path = Path(work) / "tokens" / f"{rank:05d}.arrow"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = pa.ipc.new_stream(str(path), self.schema)
        self.rows: list[tuple] = []

    def add(self, doc_id: str, text: str, segments: Any = None, task: str | None = None,
            ngram: str | None = None) -> None:
        self.rows.append((doc_id, text, segments, task, ngram))
        if len(self.rows) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        import itertools

        from domainlm.corpora.clean import validation_of

        if not self.rows:
            return
        pa, rows = self.pa, self.rows
        self.rows = []
        prefix, suffix = list(self.plan.prefix), list(self.plan.suffix)
        plain = [r[1] for r in rows if r[2] is None]
        seg_texts = [t for r in rows if r[2] is not None for t, _ in r[2]]
        encoded = iter(self.encoder.encode(plain + seg_texts)) if plain or seg_texts else iter(())
        plain_ids = [next(encoded) for _ in plain]
        docs, masks, any_mask = [], [], False
        plain_iter = iter(plain_ids)
        for r in rows:
            if r[2] is None:
                docs.append(next(plain_iter))
                masks.append(None)
                continue
            any_mask = True
            ids: list[int] = []
            mask: list[int] = [0] * len(prefix)
            counts = False
            for _, counts in r[2]:
                seg = next(encoded)
                ids.extend(seg)
                mask.extend([1 if counts else 0] * len(seg))
            docs.append(ids)
            masks.append(mask + [1 if counts else 0] * len(suffix))
        lengths = np.fromiter((len(e) + len(prefix) + len(suffix) for e in docs), dtype=np.int64, count=len(docs))
        flat = np.fromiter(itertools.chain.from_iterable(itertools.chain(prefix, e, suffix) for e in docs),
                           dtype=self.dtype, count=int(lengths.sum()))
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), pa.int64())
        ids_col = pa.LargeListArray.from_arrays(offsets, pa.array(flat, self.type))
        if any_mask:
            # Documents without segments count everywhere (plain text next to chat data).
            full = [m if m is not None else [1] * int(n) for m, n in zip(masks, lengths, strict=True)]
            mask_col = pa.LargeListArray.from_arrays(offsets, pa.array(np.fromiter(
                itertools.chain.from_iterable(full), dtype=np.uint8, count=int(lengths.sum())), pa.uint8()))
        else:
            mask_col = pa.nulls(len(rows), pa.large_list(pa.uint8()))
        self.writer.write_batch(pa.RecordBatch.from_arrays(
            [pa.array([r[0] for r in rows], pa.string()),
             pa.array([validation_of(r[0], self.validation_fraction) for r in rows], pa.bool_()),
             pa.array([len(r[1]) for r in rows], pa.int32()), ids_col, mask_col,
             pa.array([r[3] for r in rows], pa.string()), pa.array([r[4] for r in rows], pa.string())],
            schema=self.schema))

    def close(self) -> None:
        self.flush()
        self.writer.close()


class PackTask(_Step):
    """One task's tokenised documents -> its own blocks in OUT/train and OUT/validation, and its document table.

    Applies every removal the keyed and MinHash stages decided (PubMed revisions and deletions by read position,
    then near-duplicates and exact duplicates by position after those, then test-set overlap), in the order the
    text stages applied them before, and counts them. Reads only this task's token file: there is no stage that
    reads every task's tokens. Blocks never span tasks, so each task drops its own last partial block per split.
    """

    name = "pack"

    def __init__(self, work: str, out: str, block_size: int, shard_size: int, *, pubmed: bool, exact: bool,
                 clusters: str | None, exact_in_read_order: bool = False, comprehension: bool = False) -> None:
        super().__init__(work)
        self.comprehension = comprehension  # --reading-comprehension: count the mined tasks of the kept documents
        self.out, self.block_size, self.shard_size = out, block_size, shard_size
        self.pubmed, self.exact, self.clusters = pubmed, exact, clusters
        # True when the exact keys were written in the read stage: their positions count every document read,
        # not the ones left after the PubMed removals.
        self.exact_in_read_order = exact_in_read_order

    @staticmethod
    def _removed(work: str, name: str, rank: int) -> tuple[np.ndarray, np.ndarray]:
        arrs = [np.load(p) for p in sorted((Path(work) / "removed" / name).glob(f"{rank:05d}-*.npy"))]
        arr = np.concatenate(arrs) if arrs else np.zeros(0, dtype=REMOVED_DTYPE)
        arr = np.sort(arr, order="idx")
        return arr["idx"].astype(np.int64), arr["reason"]

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        import pyarrow as pa

        from domainlm.corpora.pack import SPLITS, SplitWriter, token_dtype, write_documents

        out = Path(self.out)
        empty = np.zeros(0, np.int64)
        pub_idx, pub_reason = self._removed(self.work, "pubmed", rank) if self.pubmed else (empty, empty)
        exact_idx = self._removed(self.work, "exact", rank)[0] if self.exact else empty
        near_idx = empty
        if self.clusters:
            path = Path(self.clusters) / f"{rank:06d}.remove"
            if path.is_file():
                near_idx = np.fromfile(path, dtype="<u4").astype(np.int64)
        src = Path(self.work) / "tokens" / f"{rank:05d}.arrow"
        from domainlm.corpora.comprehension import rows_path

        mined = np.load(rows_path(self.work, rank)) if self.comprehension else None
        mined_kept = []  # --reading-comprehension: the mined-task rows of the documents kept
        for old in (out / "documents").glob(f"shard-{rank:05d}-*.arrow"):
            old.unlink()  # a re-run task writes its document files afresh
        drops: Counter[str] = Counter()
        examples: dict[str, list[str]] = {}
        decont: Counter[str] = Counter()
        decont_examples: list[dict[str, str]] = []
        rows: dict[str, list] = {k: [] for k in ("doc_index", "id", "split", "tokens", "chars")}
        shard = kept = seen = seen2 = tokens = 0
        writers: dict[str, SplitWriter] = {}
        split_docs = dict.fromkeys(SPLITS, 0)
        prepare_mod = sys.modules.get("domainlm.corpora.run")  # the test hook (see run._after_shard)

        def flush_rows() -> None:
            nonlocal shard
            write_documents(out / "documents" / f"shard-{rank:05d}-{shard:04d}.arrow", rows)
            for v in rows.values():
                v.clear()
            if prepare_mod is not None:
                prepare_mod._after_shard(shard)
            shard += 1

        try:
            reader = pa.ipc.open_stream(pa.memory_map(str(src))) if src.is_file() else None
            for batch in (reader or ()):
                n = batch.num_rows
                if not writers:
                    dtype = token_dtype(1 << 16 if batch.schema.field("ids").type.value_type == pa.uint16()
                                        else 1 << 32)
                    writers = {s: SplitWriter(out / s, rank, self.block_size, dtype) for s in SPLITS}
                idx = np.arange(seen, seen + n)
                seen += n
                pub = np.isin(idx, pub_idx)
                idx2 = seen2 + np.cumsum(~pub) - 1
                seen2 += int((~pub).sum())
                near = ~pub & np.isin(idx2, near_idx)
                exact = ~pub & np.isin(idx if self.exact_in_read_order else idx2, exact_idx)
                task_col = batch.column("task")
                contaminated = ~pub & ~near & ~exact & ~np.asarray(task_col.is_null().to_numpy(zero_copy_only=False))
                keep = ~(pub | near | exact | contaminated)
                if mined is not None:
                    mined_kept.append(mined[idx[keep]])
                ids = batch.column("id").to_pylist()
                for i in np.flatnonzero(pub):
                    why = REASONS[int(pub_reason[np.searchsorted(pub_idx, idx[i])])]
                    drops[why] += 1
                    if len(examples.setdefault(why, [])) < 5:
                        examples[why].append(f"PMID {ids[i]}")
                drops["exact_duplicate"] += int(exact.sum())
                drops["near_duplicate"] += int((near & ~exact).sum())
                for i in np.flatnonzero(near & ~exact)[:max(0, 5 - len(examples.get("near_duplicate", [])))]:
                    examples.setdefault("near_duplicate", []).append(ids[i])
                if contaminated.any():
                    tasks_, ngrams = task_col.to_pylist(), batch.column("ngram").to_pylist()
                    for i in np.flatnonzero(contaminated):
                        decont[tasks_[i]] += 1
                        if len(decont_examples) < 10:
                            decont_examples.append({"id": ids[i], "task": tasks_[i], "ngram": ngrams[i]})
                col = batch.column("ids")
                offsets = col.offsets.to_numpy()
                flat = col.values.to_numpy()[offsets[0]:offsets[-1]]
                lengths = np.diff(offsets)
                mask_col = batch.column("loss_mask")
                mask = None if mask_col.null_count == n else mask_col.values.to_numpy()[offsets[0]:offsets[-1]]
                val = batch.column("validation").to_numpy(zero_copy_only=False)
                local = np.full(n, -1, dtype=np.int64)
                local[keep] = kept + np.arange(int(keep.sum()))
                kept += int(keep.sum())
                tokens += int(lengths[keep].sum())
                chars = batch.column("chars").to_numpy()
                for split, in_split in (("train", keep & ~val), ("validation", keep & val)):
                    if not in_split.any():
                        continue
                    split_docs[split] += int(in_split.sum())
                    on_tokens = np.repeat(in_split, lengths)
                    writers[split].add(flat[on_tokens], lengths[in_split], local[in_split],
                                       None if mask is None else mask[on_tokens])
                for i in np.flatnonzero(keep):
                    rows["doc_index"].append(int(local[i]))
                    rows["id"].append(ids[i])
                    rows["split"].append("validation" if val[i] else "train")
                    rows["tokens"].append(int(lengths[i]))
                    rows["chars"].append(int(chars[i]))
                    if len(rows["doc_index"]) >= self.shard_size:
                        flush_rows()
            if rows["doc_index"]:
                flush_rows()
            splits = {s: w.close() for s, w in writers.items()}
        except BaseException:
            for w in writers.values():
                w.abort()
            raise
        if mined is not None:
            from domainlm.corpora.comprehension import kept_counts

            save_counts(self.work, "comprehension", rank, kept_counts(
                np.concatenate(mined_kept) if mined_kept else mined[:0]))
        save_counts(self.work, "pack", rank, {
            "documents": kept, "tokens": tokens, "splits": splits, "split_documents": split_docs, "drops": {k: v for k, v in drops.items() if v},
            "examples": examples, "decontaminated": dict(decont), "decontamination_examples": decont_examples})
        return
        yield


class Index(_Step):
    """One small task: the prefix sums of the pack tasks' counts (never their tokens) -> manifest.json.

    Document indices are global: task ``r``'s documents start at the number of documents the tasks before it kept,
    so the indices are the same on any task count; the manifest's ``layout`` lists each task's offset and blocks.
    """

    name = "index"

    def __init__(self, work: str, out: str, data_tasks: int, block_size: int, meta: dict[str, Any]) -> None:
        super().__init__(work)
        self.out, self.data_tasks, self.block_size, self.meta = out, data_tasks, block_size, meta

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from domainlm.corpora.pack import FORMAT_VERSION, SPLITS, token_dtype
        from domainlm.errors import DataError

        folder = Path(self.work) / "counts" / "pack"
        packed = []
        for r in range(self.data_tasks):
            path = folder / f"{r:05d}.json"
            if not path.is_file():
                raise DataError(f"pack task {r} left no counts ({path}); run prepare again to finish it")
            packed.append(json.loads(path.read_text(encoding="utf-8")))
        splits = {s: {"blocks": 0, "tokens": 0, "documents": 0, "files": 0} for s in SPLITS}
        tail = dict.fromkeys(SPLITS, 0)
        tasks, base = [], 0
        for r, c in enumerate(packed):
            blocks = {}
            for s in SPLITS:
                got = c["splits"].get(s) or {"blocks": 0, "tokens": 0, "tail": 0, "documents": 0}
                blocks[s] = got["blocks"]
                splits[s]["blocks"] += got["blocks"]
                splits[s]["tokens"] += got["tokens"]
                splits[s]["files"] += int(got["blocks"] > 0)
                tail[s] += got["tail"]
            tasks.append({"rank": r, "doc_base": base, "documents": c["documents"], "blocks": blocks})
            base += c["documents"]
        for s in SPLITS:
            splits[s]["documents"] = sum(c["split_documents"][s] for c in packed)
        mask = any((c["splits"].get(s) or {}).get("mask") for c in packed for s in SPLITS)
        dtype = token_dtype(self.meta["tokenizer"]["vocab_size"])
        layout = {"version": FORMAT_VERSION, "dtype": dtype.name, "bytes_per_token": dtype.itemsize,
                  "loss_mask": mask, "tasks": tasks}
        self._manifest(splits, sum(c["tokens"] for c in packed), tail, packed, layout)
        return
        yield

    def _manifest(self, splits, tokens_total: int, tail: dict[str, int], packed: list[dict[str, Any]],
                  layout: dict[str, Any]) -> None:
        from domainlm.artifacts import write_manifest
        from domainlm.errors import DataError

        m = self.meta
        read = load_counts(self.work, "read")
        drops: Counter[str] = Counter()
        examples: dict[str, list[str]] = {}
        records = 0
        for c in read:
            records += c["records_read"]
            drops.update(c["drops"])
            drops.update(c["reader"].get("counts", {}))
            for reason, ex in c["reader"].get("examples", {}).items():
                slot = examples.setdefault(reason, [])
                slot.extend(ex[: max(0, 5 - len(slot))])
        drops.update(m.get("setup_skips", {}))
        by_task: Counter[str] = Counter()
        dex: list[dict[str, str]] = []
        for c in packed:
            drops.update(c["drops"])
            for reason, ex in c.get("examples", {}).items():
                slot = examples.setdefault(reason, [])
                slot.extend(ex[: max(0, 5 - len(slot))])
            by_task.update(c["decontaminated"])
            dex.extend(c["decontamination_examples"][: max(0, 10 - len(dex))])
        # records_read counts what the readers passed on, as before: PubMed versions that a later file revises
        # or deletes were reader-level skips then, and are dropped by the PMID-keyed stage now.
        records -= drops["superseded"] + drops["deleted"]
        extra: dict[str, Any] = {}
        if m.get("decontamination") is not None:
            if sum(by_task.values()):
                drops["test_set_overlap"] += sum(by_task.values())
            extra["decontamination"] = {**m["decontamination"], "dropped": sum(by_task.values()),
                                        "dropped_by_task": dict(sorted(by_task.items())), "examples": dex}
        if m.get("reading_comprehension") is not None:
            from domainlm.corpora.comprehension import summarise_counts

            extra["reading_comprehension"] = summarise_counts(load_counts(self.work, "comprehension"),
                                                              m["reading_comprehension"])
        drops = Counter({k: v for k, v in drops.items() if v})
        documents = splits["train"]["documents"] + splits["validation"]["documents"]
        if documents == 0:
            raise DataError(f"no document of {len(m['inputs'])} input file(s) survived reading and filtering "
                            f"(drops: {_fmt(drops)}); check --format, --text-field, --categories and the "
                            "length filters")
        if splits["train"]["blocks"] == 0:
            raise DataError(f"the training split has no complete block of {self.block_size} tokens ({tokens_total} "
                            "tokens in all): lower --block-size or add documents")
        notes = []
        if splits["validation"]["blocks"] == 0 and m["config"]["validation_fraction"] > 0:
            notes.append(f"the validation split has no complete block of {self.block_size} tokens; raise "
                         "--validation-fraction or add documents")
            log.warning(notes[-1])
        kept = sum(c.get("kept", 0) for c in read)
        spaced = sum(c.get("word_tokenised", 0) for c in read)
        if kept and spaced / kept >= WORD_TOKENISED_SHARE:
            notes.append(f"{spaced:,} of {kept:,} documents look word-tokenised, as NER/CoNLL corpora write text "
                         "(\"IL - 2 ( 10 ng / ml )\"); a model adapted on them learns that spacing (SmolLM2's perplexity "
                         "on real PubMed abstracts rose 144.8 -> 164.8 after 200k such tokens, and fell to 115.0 with "
                         "the spacing undone: experiments/DAPT_BIOMED.md); prepare again with --detokenize")
            log.warning(notes[-1])
        counts = {"documents": documents, "tokens": tokens_total, "records_read": records,
                  "word_tokenised_documents": spaced,
                  "tokens_in_blocks": splits["train"]["tokens"] + splits["validation"]["tokens"],
                  "tail_tokens_dropped": tail, "drops": dict(sorted(drops.items())), "drop_examples": examples}
        # Blocks never span tasks: each task drops its own partial block per split, at most
        # (block_size - 1) x tasks x 2 tokens; this is what that costs over packing all tasks as one stream.
        one_stream = sum((splits[s]["tokens"] + tail[s]) % self.block_size for s in tail)
        layout["tail_tokens_from_task_boundaries"] = sum(tail.values()) - one_stream
        write_manifest(Path(self.out), "corpus", complete=True, config=m["config"], inputs=m["inputs"], counts=counts,
                       tokenizer=m["tokenizer"], block_size=self.block_size, splits=splits, content=m["content"],
                       fingerprint=m["fingerprint"], near_dup=m["near_dup"], executor=m["executor"], layout=layout,
                       stage_seconds=m.get("stage_seconds"),
                       wall_time_s=round(time.time() - m["started"], 3), notes=notes, **extra)
        log.info("prepared %s: %d documents, %d tokens, %d train / %d validation blocks; drops: %s", self.out,
                 documents, tokens_total, splits["train"]["blocks"], splits["validation"]["blocks"], _fmt(drops))


def _fmt(drops: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none"
