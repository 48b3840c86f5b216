"""The pack stage of ``corpus prepare`` (one task per read task): :class:`PackTask` applies every removal the
keyed, MinHash and decontamination stages decided and writes that task's blocks and document table, with the block
format of :mod:`domainlm.corpora.pack`."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np

from domainlm.corpora.steps.base import REASONS, REMOVED_DTYPE, Step, save_counts


class PackTask(Step):
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
