"""The keyed stages of ``corpus prepare``: PubMed updates (per PMID, the last file wins) and exact duplicates (per
text hash, the first document wins). Tasks write key records into hash partitions on disk (:class:`KeyBuffer`); one
task per partition resolves them (:class:`ResolveKeys`); a later stage drops what was removed (:class:`DropKeyed`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from domainlm.corpora.steps.base import NONE, REASONS, REMOVED_DTYPE, Step, save_counts

KEY_DTYPE = np.dtype([("key", "<u8"), ("file", "<u4"), ("rank", "<u4"), ("idx", "<u4"), ("flag", "u1")])


class KeyBuffer:
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


def _load_removed(work: str, name: str, rank: int) -> dict[int, str]:
    out: dict[int, str] = {}
    for path in sorted((Path(work) / "removed" / name).glob(f"{rank:05d}-*.npy")):
        arr = np.load(path)
        for idx, reason in zip(arr["idx"].tolist(), arr["reason"].tolist(), strict=True):
            out[idx] = REASONS[reason]
    return out


class DropKeyed(Step):
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


class ExactKeys(Step):
    """Writes the 64-bit hash of each document's cleaned text into hash partitions (for :class:`ResolveKeys`)."""

    name = "exact-duplicate keys"

    def __init__(self, work: str, parts: int) -> None:
        super().__init__(work)
        self.parts = parts

    def run(self, data, rank: int = 0, world_size: int = 1):
        from domainlm.corpora.clean import exact_key

        keys = KeyBuffer(Path(self.work) / "keys" / "exact", rank, self.parts)
        for doc in data:
            keys.add(exact_key(doc.text), 0, rank, doc.metadata["idx2"], 0)
            yield doc
        keys.flush()


class ResolveKeys(Step):
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
