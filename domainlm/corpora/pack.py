"""Packing: tokenised documents -> fixed-length blocks of token ids on disk, and reading them back.

Packing rule (the contract ``adapt`` relies on):

* every document is tokenised with the base tokenizer and wrapped the way the tokenizer wraps one
  sequence (BERT ``[CLS] x [SEP]``, ESM ``<cls> x <eos>``, Llama ``<s> x`` when it adds BOS); when that
  wrapping does not end in EOS/SEP (causal tokenizers), EOS is appended, so every document ends with
  a separator (the wrapping is worked out once, in :mod:`domainlm.corpora.tokenizer_plan`);
* each prepare task concatenates its own documents, per split, in input order and cuts blocks of exactly
  ``block_size`` tokens; a long document continues into the next block with the same document id;
* blocks never span tasks: the last partial block of each task and split is dropped and counted, never
  padded (at most ``block_size - 1`` tokens per task and split; the manifest's
  ``layout.tail_tokens_from_task_boundaries`` says how many more than one stream would drop). With one task
  the blocks are exactly those of a single stream;
* ``doc_ids`` gives a global document index for every token (task offset from a prefix sum of the tasks'
  document counts + index within the task), so training can restart positions and block attention where it
  changes; the indices are the same on any task count.

On disk (format 2, ``layout`` in the manifest): per task and split, ``<rank>.tokens`` holds the ids as raw
little-endian uint16 (vocabulary <= 65,536) or uint32, ``<rank>.docs.npy`` the (token offset, document) pair
of each document start, and ``<rank>.mask`` an optional loss mask, one bit per token; ``documents/`` the
document table. Format 1 (int32 Arrow shards with a per-token doc_ids column) is still read.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from domainlm.errors import DataError, DomainLMError

log = logging.getLogger(__name__)

SPLITS = ("train", "validation")


# --------------------------------------------------------------------------------------------------
# Packing and writing (one writer per task and split: blocks never span tasks)
# --------------------------------------------------------------------------------------------------

FORMAT_VERSION = 2  # 1: int32 Arrow shards with per-token doc_ids (read, not written); 2: this layout


def token_dtype(vocab_size: int):
    """uint16 when every id fits (nanoGPT and Megatron do the same), else uint32."""
    import numpy as np

    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def split_files(folder: Path, rank: int) -> dict[str, Path]:
    """The files of one task in one split folder: token ids, document starts, and the optional loss mask."""
    return {"tokens": folder / f"{rank:05d}.tokens", "docs": folder / f"{rank:05d}.docs.npy",
            "mask": folder / f"{rank:05d}.mask"}


class SplitWriter:
    """Streams one task's documents of one split into ``<rank>.tokens`` (raw ``dtype`` ids, ``block_size`` per block).

    Documents are concatenated in order; at ``close`` the file is cut to whole blocks (the task's one partial block
    is dropped and counted) and the starts of the documents that reached a block go to ``<rank>.docs.npy``: an
    ``(n, 2)`` array of (token offset in this file, document index within the task). A per-token ``loss_mask``
    (issue 30's column) is kept as one bit per token, ``ceil(block_size / 8)`` bytes per block. Everything is
    written under temporary names and renamed at ``close``, so a killed task leaves nothing that looks finished.
    """

    def __init__(self, folder: Path, rank: int, block_size: int, dtype) -> None:
        import numpy as np

        self.np, self.block_size, self.dtype = np, block_size, np.dtype(dtype)
        self.final = split_files(folder, rank)
        self.tmp = {k: p.with_name(f".{p.name}.tmp") for k, p in self.final.items()}
        folder.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.tmp["tokens"], "wb")  # noqa: SIM115 - closed in close()/abort()
        self.mask_fh = None
        self.mask_carry = np.zeros(0, dtype=np.uint8)
        self.tokens = 0
        self.starts: list[Any] = []
        self.docs: list[Any] = []

    def add(self, flat, lengths, doc_index, mask=None) -> None:
        """Append documents: ``flat`` token ids of all of them, their ``lengths``, their task-local indices."""
        np = self.np
        if len(lengths) == 0:
            return
        if mask is not None and self.mask_fh is None:
            # Documents before the first masked one count everywhere (plain text beside chat data).
            self.mask_fh = open(self.tmp["mask"], "wb")  # noqa: SIM115
            full = self.tokens // self.block_size
            self.mask_fh.write(np.packbits(np.ones((full, self.block_size), dtype=bool), axis=1).tobytes())
            self.mask_carry = np.ones(self.tokens - full * self.block_size, dtype=np.uint8)
        starts = self.tokens + np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64)
        self.starts.append(starts)
        self.docs.append(np.asarray(doc_index, dtype=np.int64))
        self.fh.write(np.ascontiguousarray(flat, dtype=self.dtype).tobytes())
        self.tokens += int(np.sum(lengths))
        if self.mask_fh is not None:
            if mask is None:
                mask = np.ones(len(flat), dtype=np.uint8)
            m = np.concatenate([self.mask_carry, np.asarray(mask, dtype=np.uint8)])
            n = len(m) // self.block_size * self.block_size
            if n:
                self.mask_fh.write(np.packbits(m[:n].reshape(-1, self.block_size) != 0, axis=1).tobytes())
            self.mask_carry = m[n:]

    def close(self) -> dict[str, int]:
        """Cut to whole blocks, rename into place; returns blocks, tokens in blocks, tail tokens, documents."""
        np = self.np
        blocks = self.tokens // self.block_size
        kept = blocks * self.block_size
        self.fh.truncate(kept * self.dtype.itemsize)
        self.fh.close()
        starts = np.concatenate(self.starts) if self.starts else np.zeros(0, np.int64)
        docs = np.concatenate(self.docs) if self.docs else np.zeros(0, np.int64)
        inside = starts < kept
        table = np.stack([starts[inside], docs[inside]], axis=1)
        # uint32 when the task's offsets and indices fit: 8 bytes per document instead of 16.
        table = table.astype(np.uint32 if table.size == 0 or table.max() < 2**32 else np.int64)
        with open(self.tmp["docs"], "wb") as fh:
            np.save(fh, table)
        if self.mask_fh is not None:
            self.mask_fh.close()
            self.tmp["mask"].replace(self.final["mask"])
        else:
            self.final["mask"].unlink(missing_ok=True)
        self.tmp["docs"].replace(self.final["docs"])
        self.tmp["tokens"].replace(self.final["tokens"])
        return {"blocks": blocks, "tokens": kept, "tail": self.tokens - kept, "documents": len(docs),
                "mask": self.mask_fh is not None}

    def abort(self) -> None:
        for fh in (self.fh, self.mask_fh):
            if fh is not None and not fh.closed:
                fh.close()
        for p in self.tmp.values():
            p.unlink(missing_ok=True)


DOC_SCHEMA_FIELDS = (("doc_index", "int64"), ("id", "string"), ("split", "string"), ("tokens", "int32"),
                     ("chars", "int32"))


def write_documents(path: Path, rows: dict[str, list]) -> None:
    """A document table file: which source id each document index is, and its size (indices are task-local in
    format 2; :func:`load_documents` adds the task's offset)."""
    import pyarrow as pa

    table = pa.table({name: pa.array(rows[name], type=getattr(pa, typ)()) for name, typ in DOC_SCHEMA_FIELDS})
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.ipc.new_stream(str(tmp), table.schema) as w:
        w.write_table(table)
    tmp.replace(path)


# --------------------------------------------------------------------------------------------------
# Reading a prepared folder
# --------------------------------------------------------------------------------------------------

def read_corpus_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a prepared corpus folder, refusing folders that are missing, unfinished or not corpora."""
    from domainlm.artifacts import read_manifest

    manifest = read_manifest(path, "corpus")
    version = (manifest.get("layout") or {}).get("version", 1)
    if version > FORMAT_VERSION:
        raise DataError(f"{path} was prepared by a newer domainlm (corpus format {version}, this one reads up to "
                        f"{FORMAT_VERSION}); upgrade domainlm or prepare it again with this one (--overwrite)")
    return manifest


class _Part:
    """The blocks of one task (format 2) or one Arrow record batch (format 1): format 2 read with positioned reads, format 1 memory-mapped."""

    def __init__(self, tokens, *, starts=None, base: int = 0, doc_ids=None, mask=None, block_size: int) -> None:
        self.tokens, self.starts, self.base = tokens, starts, base
        self.doc_array, self.mask, self.block_size = doc_ids, mask, block_size

    def __len__(self) -> int:
        return len(self.tokens)

    def read(self, rows, columns: tuple[str, ...]) -> dict[str, Any]:
        import numpy as np

        out: dict[str, Any] = {}
        if "input_ids" in columns:
            out["input_ids"] = np.asarray(self.tokens[rows], dtype=np.int32)
        if "doc_ids" in columns:
            if self.doc_array is not None:
                out["doc_ids"] = np.asarray(self.doc_array[rows], dtype=np.int32)
            else:
                out["doc_ids"] = (self.starts.doc_ids(rows) + self.base).astype(np.int32)
        if "loss_mask" in columns and self.mask is None:  # a task of a masked corpus that had no masked document
            out["loss_mask"] = np.ones((len(rows), self.block_size), dtype=np.int8)
        elif "loss_mask" in columns:
            m = np.asarray(self.mask[rows])
            if m.dtype == np.uint8 and m.shape[1] != self.block_size:  # format 2: one bit per token
                m = np.unpackbits(m, axis=1, count=self.block_size)
            out["loss_mask"] = m.astype(np.int8)
        return out


class PreparedSplit:
    """One split of a prepared corpus: fixed-length blocks read without loading them (format 2: positioned reads of the token files).

    It offers what callers used of a ``datasets.Dataset``: ``len``, ``ds[i]`` (a row), ``ds[a:b]`` and
    ``ds[[i, j, ...]]`` (a batch, one read per task file), ``ds["input_ids"]`` (a whole column), iteration,
    ``with_format("numpy" | "torch" | "arrow" | None)``, ``remove_columns`` and ``column_names``; ``to_dataset()``
    copies it into a real ``datasets.Dataset`` for code that needs one (the transformers Trainer baseline).
    Columns: ``input_ids`` and ``doc_ids`` (int32, ``block_size`` each; doc_ids rebuilt from the document starts),
    and ``loss_mask`` (int8, 1 = the token counts in the loss) when the corpus has one.
    """

    def __init__(self, parts: list[_Part], block_size: int, columns: tuple[str, ...], fmt: str | None = None) -> None:
        import numpy as np

        self.parts, self.block_size, self.columns, self.format = parts, block_size, columns, fmt
        self.bounds = np.cumsum([0] + [len(p) for p in parts])

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    @property
    def num_rows(self) -> int:
        return len(self)

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def _copy(self, **changes: Any) -> PreparedSplit:
        return PreparedSplit(self.parts, self.block_size, changes.get("columns", self.columns),
                             changes.get("fmt", self.format))

    def with_format(self, type: str | None = None, columns: list[str] | None = None, **_: Any) -> PreparedSplit:
        if type not in (None, "python", "numpy", "np", "torch", "pt", "arrow"):
            raise ValueError(f"unsupported format '{type}' for a prepared split: numpy, torch, arrow or None")
        return self._copy(fmt=type, columns=tuple(columns) if columns else self.columns)

    def remove_columns(self, names: str | list[str]) -> PreparedSplit:
        names = [names] if isinstance(names, str) else list(names)
        missing = [n for n in names if n not in self.columns]
        if missing:
            raise ValueError(f"no column {missing} in a prepared split (columns: {', '.join(self.columns)})")
        return self._copy(columns=tuple(c for c in self.columns if c not in names))

    def _take(self, rows) -> dict[str, Any]:
        import numpy as np

        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row {int(rows.max() if rows.max() >= len(self) else rows.min())} is out of range for "
                             f"a split of {len(self)} blocks")
        which = np.searchsorted(self.bounds, rows, side="right") - 1
        out = {c: np.empty((len(rows), self.block_size), dtype=np.int8 if c == "loss_mask" else np.int32)
               for c in self.columns}
        for p in np.unique(which):
            sel = np.flatnonzero(which == p)
            got = self.parts[p].read(rows[sel] - self.bounds[p], self.columns)
            for c in self.columns:
                out[c][sel] = got[c]
        return out

    def _formatted(self, batch: dict[str, Any], single: bool):
        if self.format in ("torch", "pt"):
            import torch

            return {c: torch.from_numpy(v[0] if single else v) for c, v in batch.items()}
        if self.format == "arrow":
            import pyarrow as pa

            cols = {c: pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), self.block_size)
                    for c, v in batch.items()}
            return pa.table(cols)
        if self.format in ("numpy", "np"):
            return {c: v[0] if single else v for c, v in batch.items()}
        return {c: (v[0] if single else v).tolist() for c, v in batch.items()}

    def __getitem__(self, key):
        import numpy as np

        if isinstance(key, str):
            if key not in self.columns:
                raise KeyError(f"no column '{key}' (columns: {', '.join(self.columns)})")
            return self._copy(columns=(key,))[:][key] if self.format != "arrow" else self._copy(columns=(key,))[:]
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            return self._formatted(self._take([i]), single=self.format != "arrow")
        if isinstance(key, slice):
            return self._formatted(self._take(np.arange(*key.indices(len(self)))), single=False)
        return self._formatted(self._take(list(key)), single=False)

    def __iter__(self):
        for start in range(0, len(self), 256):
            batch = self._take(range(start, min(len(self), start + 256)))
            for i in range(len(next(iter(batch.values())))):
                yield self._formatted({c: v[i:i + 1] for c, v in batch.items()}, single=True)

    def to_dataset(self):
        """A ``datasets.Dataset`` copy of this split (in memory: for small corpora and baselines only)."""
        from datasets import Dataset

        return Dataset.from_dict(self.with_format("numpy")[:])


def _split_v1(out: Path, split: str, manifest: dict[str, Any]) -> PreparedSplit:
    """Format 1 (int32 Arrow shards with per-token doc_ids, before per-task packing): memory-mapped as is."""
    import pyarrow as pa

    block = int(manifest["block_size"])
    files = sorted((out / split).glob("shard-*.arrow"))
    expected = manifest.get("splits", {}).get(split, {}).get("files")
    if expected is not None and len(files) != expected:
        raise DataError(f"{out / split} has {len(files)} shard files but its manifest lists {expected}; the "
                        "folder was modified after it was prepared. Prepare it again (--overwrite)")
    parts, columns = [], ("input_ids", "doc_ids")
    for f in files:
        table = pa.ipc.open_stream(pa.memory_map(str(f))).read_all()
        if "loss_mask" in table.column_names:
            columns = ("input_ids", "doc_ids", "loss_mask")
        for i in range(table.num_rows and len(table.column("input_ids").chunks)):
            def col(name: str, i: int = i, table=table):
                if name not in table.column_names:
                    return None
                values = table.column(name).chunks[i].flatten()
                return values.to_numpy(zero_copy_only=values.null_count == 0).reshape(-1, block)
            parts.append(_Part(col("input_ids"), doc_ids=col("doc_ids"), mask=col("loss_mask"), block_size=block))
    return PreparedSplit(parts, block, columns)


class _FileRows:
    """Rows of a raw ``(n, width)`` array in a file, read with positioned reads (``os.pread``): nothing is mapped, so
    resident memory holds the rows read and not the file. (A memory map was the first choice, but on Linux 6.x a
    page fault maps a whole 64 KB fault-around window or large page-cache folio, whatever ``madvise(MADV_RANDOM)``
    says: 2,400 random blocks of a 205 MB token file left 207 MB of it resident, against 25 MB for a 20 MB file.)
    The page cache still keeps hot rows; reading a batch is one ``pread`` per run of consecutive rows."""

    def __init__(self, path: Path, dtype, shape: tuple[int, int], offset: int = 0) -> None:
        import numpy as np

        self.path, self.dtype, self.shape, self.offset = str(path), np.dtype(dtype), shape, offset
        self.row_bytes = shape[1] * self.dtype.itemsize
        self._fd: int | None = None
        self._pid = 0

    def __len__(self) -> int:
        return self.shape[0]

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a forked process opens its own descriptor
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def read(self, start: int, count: int):
        import numpy as np

        buf = os.pread(self._file(), count * self.row_bytes, self.offset + start * self.row_bytes)
        return np.frombuffer(buf, dtype=self.dtype).reshape(-1, self.shape[1])

    def __getitem__(self, rows):
        import numpy as np

        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), self.shape[1]), dtype=self.dtype)
        cuts = np.flatnonzero(np.diff(rows) != 1) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(rows)], strict=True):
            out[lo:hi] = self.read(int(rows[lo]), int(hi - lo))
        return out

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)


class _DocStarts:
    """Which document each token of a block belongs to, from a task's ``(start, document)`` table on disk.

    Memory: every :attr:`STEP`-th start (8 bytes per 512 documents); a block's lookup reads the one window of the
    table that can hold its documents (a block of ``block_size`` tokens starts at most ``block_size`` documents).
    """

    STEP = 512

    def __init__(self, path: Path, block_size: int) -> None:
        import numpy as np

        mm = np.load(path, mmap_mode="r")  # only for the header: dtype, shape and where the data starts
        self.table = _FileRows(path, mm.dtype, mm.shape, mm.offset)
        del mm
        self.block_size = block_size
        n, chunk = len(self.table), self.STEP * 2048
        self.sample = np.concatenate([np.zeros(0, np.int64)] + [
            self.table.read(i, min(chunk, n - i))[::self.STEP, 0].astype(np.int64) for i in range(0, n, chunk)])

    def doc_ids(self, rows):
        import numpy as np

        out = np.empty((len(rows), self.block_size), dtype=np.int64)
        pos = np.arange(self.block_size, dtype=np.int64)
        first = np.searchsorted(self.sample, rows.astype(np.int64) * self.block_size, side="right") - 1
        for i, (row, k) in enumerate(zip(rows.tolist(), first.tolist(), strict=True)):
            lo = k * self.STEP
            window = self.table.read(lo, min(len(self.table) - lo, self.STEP + self.block_size + 1)).astype(np.int64)
            seg = np.searchsorted(window[:, 0], row * self.block_size + pos, side="right") - 1
            out[i] = window[seg, 1]
        return out


def load_prepared(out: str | Path, split: str = "train") -> PreparedSplit:
    """A split of a prepared corpus, read on demand (:class:`PreparedSplit`; resident memory does not grow with the corpus).

    Columns: ``input_ids`` and ``doc_ids``, int32 lists of exactly ``block_size`` tokens, and ``loss_mask`` when
    the corpus was prepared with one. Reads the current format (2) and the previous one (1).
    """
    import numpy as np

    if split not in SPLITS:
        from domainlm.config import did_you_mean

        raise DomainLMError(f"unknown split '{split}'{did_you_mean(split, SPLITS)}; a prepared corpus has "
                            f"{', '.join(SPLITS)}")
    out = Path(out)
    manifest = read_corpus_manifest(out)
    layout = manifest.get("layout")
    if layout is None:
        return _split_v1(out, split, manifest)
    block = int(manifest["block_size"])
    dtype = np.dtype(layout["dtype"])
    parts = []
    for task in layout["tasks"]:
        n = task["blocks"][split]
        if n == 0:
            continue
        files = split_files(out / split, task["rank"])
        size = files["tokens"].stat().st_size if files["tokens"].is_file() else -1
        if size != n * block * dtype.itemsize:
            raise DataError(f"{files['tokens']} holds {max(size, 0)} bytes but the manifest lists {n} blocks of "
                            f"{block} {dtype.name} tokens; the folder was modified after it was prepared. Prepare it "
                            "again (--overwrite)")
        mask = _FileRows(files["mask"], np.uint8, (n, (block + 7) // 8)) if files["mask"].is_file() else None
        parts.append(_Part(_FileRows(files["tokens"], dtype, (n, block)), starts=_DocStarts(files["docs"], block),
                           base=task["doc_base"], mask=mask, block_size=block))
    columns = ("input_ids", "doc_ids", "loss_mask") if layout.get("loss_mask") else ("input_ids", "doc_ids")
    return PreparedSplit(parts, block, columns)


def load_documents(out: str | Path):
    """The document table of a prepared corpus (doc_index, id, split, tokens, chars) as a Dataset."""
    import pyarrow as pa
    from datasets import Dataset

    manifest = read_corpus_manifest(out)
    files = sorted((Path(out) / "documents").glob("shard-*.arrow"))
    if not files:
        return Dataset.from_dict({name: [] for name, _ in DOC_SCHEMA_FIELDS})
    bases = {t["rank"]: t["doc_base"] for t in (manifest.get("layout") or {}).get("tasks", [])}
    tables = []
    for f in files:
        table = pa.ipc.open_stream(pa.memory_map(str(f))).read_all()
        if bases:  # format 2: task-local indices, shifted by the task's offset (a prefix sum of document counts)
            base = bases[int(f.stem.split("-")[1])]
            idx = table.column("doc_index").to_numpy() + base
            table = table.set_column(0, "doc_index", pa.array(idx, pa.int64()))
        tables.append(table)
    return Dataset(pa.concat_tables(tables))
