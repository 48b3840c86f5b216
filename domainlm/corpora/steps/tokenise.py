"""Tokenisation inside the read stage of ``corpus prepare``: :class:`TokenLog` encodes the kept documents in
batches and writes their ids (and loss masks) to ``WORK/tokens/<rank>.arrow`` for the pack stage."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


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

        from domainlm.corpora.pack import token_dtype
        from domainlm.corpora.tokenizer_plan import Encoder

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
