"""The datatrove steps of ``domainlm corpus prepare``.

The run is a chain of datatrove stages (each stage one executor, local, Slurm or Ray; see prepare.py):

1. ``read``: :class:`ReadClean`: our readers (every bad-record policy and drop count kept), cleaning and
   the length filters; the surviving documents go to ``WORK/docs/<rank>.jsonl``. Each task reads a
   *contiguous* run of input files, so (task, position) order is the input order on any task count.
2. ``updates`` (PubMed, several XML files): :class:`ResolveKeys` keyed by PMID, on disk. Every task
   wrote (PMID, file, position, deleted?) records into hash partitions; one task per partition sorts
   them and marks every version older than the PMID's last file as ``superseded`` (or ``deleted`` when
   that file deletes it). Memory is one partition, not the corpus.
3. ``hash``: :class:`DropKeyed` applies those removals; :class:`ExactKeys` writes 64-bit text hashes
   into partitions; :class:`Signature` is datatrove's MinHash stage 1 with our shingles.
4. ``exact`` (:class:`ResolveKeys`, first occurrence wins) and datatrove's MinHash buckets (stage 2)
   and clusters (stage 3), all on disk.
5. ``tokenize``: removals applied, datatrove's MinHash filter (stage 4), optional n-gram
   decontamination (datatrove's filter with our index of the bench suites' test texts), then
   :class:`Tokenize` encodes in batches (the tokenizer is built once per task) and writes token ids.
6. ``pack`` (one task): :class:`Pack` concatenates the tasks' token ids in input order into blocks with
   per-token document ids, writes train/, validation/, documents/ and, last, manifest.json.

Steps 2-4 are skipped when their option is off. Intermediate files live in ``OUT/.work`` (with
datatrove's completion markers, so an interrupted run resumes task by task) and are removed at the end.
"""

from __future__ import annotations

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
from datatrove.pipeline.writers.disk_base import DiskWriter
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
                 pmid_parts: int | None) -> None:
        super().__init__(work)
        self.files, self.options, self.clean, self.pmid_parts = files, options, clean, pmid_parts

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from domainlm.corpora.clean import CleanOptions, clean_text, detokenize, length_problem, looks_word_tokenised
        from domainlm.corpora.readers import InputFile, ReaderOptions, SkipLog
        from domainlm.corpora.registry import Position, iter_documents

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
        with open(out_path, "w", encoding="utf-8") as out:
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
                    title = doc.metadata.get("title") if kind != "protein" else None
                    title = clean_text(title, opts.unicode_form) if title else None
                    record = {"id": doc.id, "text": text, "kind": kind, "file": pos.file_index}
                    meta = {"kind": kind, "idx": kept, "idx2": kept}
                    if title and text.startswith(title):  # kept for --reading-comprehension (title <-> abstract)
                        record["title"] = meta["title"] = title
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    self.stat_update("kept")
                    yield TroveDocument(text=text, id=doc.id, metadata=meta)
                    kept += 1
                    if kept >= int(NONE):
                        from domainlm.errors import DataError

                        raise DataError("more than 2^32 documents in one task: raise --tasks")
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
                meta = {"kind": d["kind"], "idx": idx, "idx2": idx}
                if d.get("title"):
                    meta["title"] = d["title"]
                yield TroveDocument(text=d["text"], id=d["id"], metadata=meta)


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

    def __init__(self, work: str, key_name: str, mode: str, data_tasks: int) -> None:
        super().__init__(work)
        self.key_name, self.mode, self.data_tasks = key_name, mode, data_tasks

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        folder = Path(self.work) / "keys" / self.key_name
        parts = [np.fromfile(p, dtype=KEY_DTYPE) for p in sorted(folder.glob(f"*-{rank:04d}.bin"))]
        rec = np.concatenate(parts) if parts else np.zeros(0, dtype=KEY_DTYPE)
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


class MarkExact(_Step):
    """Marks exact duplicates (they are dropped after the MinHash filter, whose positions must not shift)."""

    name = "mark exact duplicates"

    def run(self, data, rank: int = 0, world_size: int = 1):
        removed = _load_removed(self.work, "exact", rank)
        for doc in data:
            if doc.metadata["idx2"] in removed:
                doc.metadata["exact_duplicate"] = True
            yield doc


class DropExact(_Step):
    name = "drop exact duplicates"

    def run(self, data, rank: int = 0, world_size: int = 1):
        n = 0
        for doc in data:
            if doc.metadata.get("exact_duplicate"):
                n += 1
                continue
            yield doc
        save_counts(self.work, "drop-exact", rank, {"drops": {"exact_duplicate": n} if n else {}})


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


class ExcludedLog(DiskWriter):
    """The MinHash filter's exclusion writer: one JSON line (id, and whether it is also an exact duplicate) per
    near-duplicate it drops, so the pack stage can count them by reason and show examples. (datatrove's
    JsonlWriter would do, but needs orjson for this one small file.)"""

    default_output_filename = "${rank}.jsonl"
    name = "near-duplicate log"

    def __init__(self, output_folder: str) -> None:
        super().__init__(output_folder, output_filename="${rank}.jsonl", compression=None, mode="wt")

    def _default_adapter(self, document) -> dict:
        return {"id": str(document.id), "metadata": {"exact_duplicate": bool(document.metadata.get("exact_duplicate"))}}

    def _write(self, document: dict, file_handler, filename: str) -> None:
        file_handler.write(json.dumps(document) + "\n")


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
    """datatrove's n-gram decontamination filter; counts the dropped documents and keeps a few examples."""

    def __init__(self, index_folder: str, n: int, work: str) -> None:
        super().__init__(index_folder, config=decont_config(n), language=Whitespace())
        self.work = work
        self._dropped: Counter[str] = Counter()
        self._examples: list[dict[str, str]] = []

    def filter(self, doc):
        result = super().filter(doc)
        if result is not True:
            task = doc.metadata.get("contaminated_task", "?")
            self._dropped[task] += 1
            if len(self._examples) < 5:
                self._examples.append({"id": str(doc.id), "task": task,
                                       "ngram": doc.metadata.get("contaminated_ngram", "")})
        return result

    def run(self, data, rank: int = 0, world_size: int = 1):
        yield from super().run(data, rank, world_size)
        save_counts(self.work, "decontaminate", rank, {"by_task": dict(self._dropped), "examples": self._examples})


# --------------------------------------------------------------------------------------------------
# Tokenise and pack
# --------------------------------------------------------------------------------------------------

class Tokenize(_Step):
    """Encodes documents in batches (the tokenizer is built once per task) and writes their ids, wrapped the
    way the tokenizer wraps one sequence, with the validation flag and length, to an Arrow stream."""

    name = "tokenize"
    BATCH = 256

    def __init__(self, work: str, plan: Any, validation_fraction: float, parallel: bool) -> None:
        super().__init__(work)
        self.plan, self.validation_fraction, self.parallel = plan, validation_fraction, parallel

    def _write(self, writer, encoder, docs) -> None:
        import itertools

        import pyarrow as pa

        from domainlm.corpora.clean import validation_of

        texts = [d.text for d in docs]
        encoded = encoder.encode(texts)
        prefix, suffix = list(self.plan.prefix), list(self.plan.suffix)
        lengths = np.fromiter((len(e) + len(prefix) + len(suffix) for e in encoded), dtype=np.int64,
                              count=len(encoded))
        flat = np.fromiter(itertools.chain.from_iterable(itertools.chain(prefix, e, suffix) for e in encoded),
                           dtype=np.int32, count=int(lengths.sum()))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(flat, pa.int32()))
        writer.write_batch(pa.RecordBatch.from_arrays(
            [pa.array([str(d.id) for d in docs], pa.string()),
             pa.array([validation_of(str(d.id), self.validation_fraction) for d in docs], pa.bool_()),
             pa.array([len(t) for t in texts], pa.int32()), ids],
            names=["id", "validation", "chars", "ids"]))

    def run(self, data, rank: int = 0, world_size: int = 1):
        import pyarrow as pa

        from domainlm.corpora.pack import Encoder

        if self.parallel:
            # One tokenizer thread per task: N tasks already use N cores, a Rust pool in each would oversubscribe.
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        encoder = Encoder(self.plan)
        schema = pa.schema([("id", pa.string()), ("validation", pa.bool_()), ("chars", pa.int32()),
                            ("ids", pa.large_list(pa.int32()))])
        path = Path(self.work) / "tokens" / f"{rank:05d}.arrow"
        path.parent.mkdir(parents=True, exist_ok=True)
        with pa.ipc.new_stream(str(path), schema) as writer:
            batch = []
            for doc in data:
                batch.append(doc)
                if len(batch) == self.BATCH:
                    self._write(writer, encoder, batch)
                    batch = []
            if batch:
                self._write(writer, encoder, batch)
        return
        yield


class Pack(_Step):
    """One task: the tokenised documents of every task in input order -> blocks, documents/, manifest.json."""

    name = "pack"

    def __init__(self, work: str, out: str, data_tasks: int, block_size: int, shard_size: int,
                 meta: dict[str, Any]) -> None:
        super().__init__(work)
        self.out, self.data_tasks, self.block_size, self.shard_size, self.meta = \
            out, data_tasks, block_size, shard_size, meta

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        import shutil

        import pyarrow as pa

        from domainlm.corpora.pack import BlockWriter, Packer, write_documents

        out = Path(self.out)
        for name in ("train", "validation", "documents"):
            shutil.rmtree(out / name, ignore_errors=True)
        packers = {s: Packer(self.block_size) for s in ("train", "validation")}
        splits = {s: {"blocks": 0, "tokens": 0, "documents": 0, "files": 0} for s in packers}
        rows: dict[str, list] = {k: [] for k in ("doc_index", "id", "split", "tokens", "chars")}
        state = {"shard": 0, "writers": {}}
        next_doc = tokens_total = 0

        def writers() -> dict[str, BlockWriter]:
            if not state["writers"]:
                state["writers"] = {s: BlockWriter(out / s / f"shard-{state['shard']:05d}.arrow", self.block_size)
                                    for s in packers}
            return state["writers"]

        def close_shard() -> None:
            w = writers()
            for s, p in packers.items():
                w[s].write(*p.full_blocks())
                splits[s]["blocks"] += w[s].blocks
                splits[s]["tokens"] += w[s].blocks * self.block_size
                splits[s]["files"] += int(w[s].close())
            if rows["doc_index"]:
                write_documents(out / "documents" / f"shard-{state['shard']:05d}.arrow", rows)
            for v in rows.values():
                v.clear()
            # The test hook lives in prepare.py; looked up, not imported (prepare imports this module), and only
            # present in the process that called prepare (a Slurm job never has it).
            prepare_mod = sys.modules.get("domainlm.corpora.prepare")
            if prepare_mod is not None:
                prepare_mod._after_shard(state["shard"])
            state["shard"] += 1
            state["writers"] = {}

        def add(ids_col, doc_ids: list, val, chars, start: int) -> None:
            """Documents ``start...`` of one batch slice: vectorised packing by split, then the document rows."""
            offsets = ids_col.offsets.to_numpy()
            flat = ids_col.values.to_numpy()[offsets[0]:offsets[-1]]
            lengths = np.diff(offsets)
            index = np.arange(start, start + len(lengths), dtype=np.int32)
            on_tokens = np.repeat(val, lengths)
            per_token = np.repeat(index, lengths)
            for split, mask in (("train", ~on_tokens), ("validation", on_tokens)):
                if mask.any():
                    packers[split].add(flat[mask], per_token[mask])
            names = np.where(val, "validation", "train")
            for split in packers:
                splits[split]["documents"] += int((names == split).sum())
            rows["doc_index"].extend(index.tolist())
            rows["id"].extend(doc_ids)
            rows["split"].extend(names.tolist())
            rows["tokens"].extend(lengths.tolist())
            rows["chars"].extend(chars)

        try:
            for r in range(self.data_tasks):
                path = Path(self.work) / "tokens" / f"{r:05d}.arrow"
                if not path.is_file():
                    continue
                with pa.ipc.open_stream(str(path)) as reader:
                    for batch in reader:
                        n, a = batch.num_rows, 0
                        while a < n:  # cut the batch where an output shard ends
                            b = min(n, a + self.shard_size - len(rows["doc_index"]))
                            part = batch.slice(a, b - a)
                            add(part.column("ids"), part.column("id").to_pylist(),
                                part.column("validation").to_numpy(zero_copy_only=False),
                                part.column("chars").to_pylist(), next_doc)
                            tokens_total += int(part.column("ids").value_lengths().to_numpy().sum())
                            next_doc += b - a
                            a = b
                            if next_doc >= 2**31 - 1:
                                from domainlm.errors import DataError

                                raise DataError("more than 2^31 documents: split the inputs into several "
                                                "prepared corpora")
                            if len(rows["doc_index"]) >= self.shard_size:
                                close_shard()
                        w = writers()
                        for s, p in packers.items():
                            if p.pending >= 1 << 20:
                                w[s].write(*p.full_blocks())
            if rows["doc_index"] or state["shard"] == 0:
                close_shard()
        except BaseException:
            for w in state["writers"].values():
                w.abort()
            raise
        tail = {s: len(p.carry_ids) for s, p in packers.items()}
        self._manifest(splits, tokens_total, tail)
        return
        yield

    def _manifest(self, splits, tokens_total: int, tail: dict[str, int]) -> None:
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
        folder = Path(self.work) / "counts"
        for step in sorted(p.name for p in folder.iterdir() if p.name.startswith("drop-")):
            for c in load_counts(self.work, step):
                drops.update(c["drops"])
                for reason, ex in c.get("examples", {}).items():
                    slot = examples.setdefault(reason, [])
                    slot.extend(ex[: max(0, 5 - len(slot))])
        # records_read counts what the readers passed on, as before: PubMed versions that a later file revises
        # or deletes were reader-level skips then, and are dropped by the PMID-keyed stage now.
        records -= drops["superseded"] + drops["deleted"]
        near_examples: list[str] = []
        for path in sorted((Path(self.work) / "neardups").glob("*.jsonl*")):
            import gzip

            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", encoding="utf-8") as fh:
                for line in fh:
                    d = json.loads(line)
                    if (d.get("metadata") or {}).get("exact_duplicate"):
                        drops["exact_duplicate"] += 1
                    else:
                        drops["near_duplicate"] += 1
                        if len(near_examples) < 5:
                            near_examples.append(str(d.get("id")))
        if near_examples:
            examples["near_duplicate"] = near_examples
        extra: dict[str, Any] = {}
        if m.get("decontamination") is not None:
            by_task: Counter[str] = Counter()
            dex: list[dict[str, str]] = []
            for c in load_counts(self.work, "decontaminate"):
                by_task.update(c["by_task"])
                dex.extend(c["examples"][: max(0, 10 - len(dex))])
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
                         "the spacing undone: benchmarks/DAPT_BIOMED.md); prepare again with --detokenize")
            log.warning(notes[-1])
        counts = {"documents": documents, "tokens": tokens_total, "records_read": records,
                  "word_tokenised_documents": spaced,
                  "tokens_in_blocks": splits["train"]["tokens"] + splits["validation"]["tokens"],
                  "tail_tokens_dropped": tail, "drops": dict(sorted(drops.items())), "drop_examples": examples}
        write_manifest(Path(self.out), "corpus", complete=True, config=m["config"], inputs=m["inputs"], counts=counts,
                       tokenizer=m["tokenizer"], block_size=self.block_size, splits=splits, content=m["content"],
                       fingerprint=m["fingerprint"], near_dup=m["near_dup"], executor=m["executor"],
                       stage_seconds=m.get("stage_seconds"),
                       wall_time_s=round(time.time() - m["started"], 3), notes=notes, **extra)
        log.info("prepared %s: %d documents, %d tokens, %d train / %d validation blocks; drops: %s", self.out,
                 documents, tokens_total, splits["train"]["blocks"], splits["validation"]["blocks"], _fmt(drops))


def _fmt(drops: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none"
