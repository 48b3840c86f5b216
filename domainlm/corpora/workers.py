"""Worker side of ``corpus prepare``: clean, filter, hash, MinHash and tokenise batches of documents.

Runs in worker processes (or in-process when ``num_proc`` is 1); results come back in input order, so
the output does not depend on the number of workers.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_W: dict[str, Any] = {}


def _init_worker(plan, clean_opts, near_dup: bool, num_perm: int, single_process: bool) -> None:
    # TOKENIZERS_PARALLELISM is set deliberately: one tokenizer thread per worker process, since N
    # processes already use N cores and a Rust thread pool in each would oversubscribe them. An
    # in-process run (num_proc=1) leaves the variable as the user set it: unset, the Rust pool uses
    # every core for batch encoding; it is not set here because the caller's later forks (DataLoader
    # workers) would then inherit a used thread pool.
    if not single_process:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from domainlm.corpora.clean import MinHasher
    from domainlm.corpora.pack import Encoder

    _W.clear()
    _W.update(encoder=Encoder(plan), prefix=list(plan.prefix), suffix=list(plan.suffix), opts=clean_opts,
              minhasher=MinHasher(num_perm) if near_dup else None)


@dataclass
class _Result:
    reasons: list[str | None]  # per input document: drop reason or None (kept)
    ids: Any  # concatenated token ids (with wrapping) of kept documents
    lengths: Any
    keys: Any
    sigs: Any
    validation: Any
    chars: list[int]


def _work(docs: list[tuple[str, str, str]]) -> _Result:
    """Clean, filter, hash and tokenise one batch of ``(id, text, kind)``; runs in a worker."""
    import itertools

    import numpy as np

    from domainlm.corpora.clean import clean_text, exact_key, length_problem, shingle_hashes, validation_of

    opts = _W["opts"]
    reasons: list[str | None] = []
    texts, kinds, ids_ = [], [], []
    for doc_id, text, kind in docs:
        if kind != "protein":
            text = clean_text(text, opts.unicode_form)
        why = length_problem(text, kind, opts)
        reasons.append(why)
        if why is None:
            texts.append(text)
            kinds.append(kind)
            ids_.append(doc_id)
    encoded = _W["encoder"].encode(texts) if texts else []
    prefix, suffix = _W["prefix"], _W["suffix"]
    extra = len(prefix) + len(suffix)
    lengths = np.fromiter((len(e) + extra for e in encoded), dtype=np.int64, count=len(encoded))
    flat = np.fromiter(itertools.chain.from_iterable(itertools.chain(prefix, e, suffix) for e in encoded),
                       dtype=np.int32, count=int(lengths.sum()))
    keys = np.fromiter((exact_key(t) for t in texts), dtype=np.uint64, count=len(texts))
    mh = _W["minhasher"]
    sigs = None
    if mh is not None and texts:
        sigs = np.stack([mh.signature(shingle_hashes(t, k)) for t, k in zip(texts, kinds, strict=True)])
    validation = np.fromiter((validation_of(i, opts.validation_fraction) for i in ids_), dtype=bool, count=len(ids_))
    return _Result(reasons, flat, lengths, keys, sigs, validation, [len(t) for t in texts])


class Ordered:
    """Runs ``_work`` on batches in worker processes, results in input order, a bounded number in flight.

    ``multiprocessing.Pool.imap`` would read the whole input ahead of the workers (its feeder thread has
    no back-pressure); here at most ``2 * num_proc`` batches are pending, so memory stays flat.
    """

    def __init__(self, num_proc: int, initargs: tuple) -> None:
        self.num_proc = num_proc
        self.pool = None
        if num_proc > 1:
            import multiprocessing as mp

            # fork where the platform has it: spawn and forkserver re-import the caller's __main__, which
            # breaks `python -` scripts and scripts without an `if __name__ == "__main__"` guard. The
            # parent has used its tokenizer only for single encodes, so no Rust thread pool is running.
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            self.pool = mp.get_context(method).Pool(num_proc, _init_worker, initargs + (False,))
        else:
            _init_worker(*initargs, True)

    def map(self, items: Iterator[Any]) -> Iterator[tuple[Any, _Result]]:
        if self.pool is None:
            for item in items:
                yield item, _work(item.payload)
            return
        pending: deque = deque()
        for item in items:
            pending.append((item, self.pool.apply_async(_work, (item.payload,))))
            if len(pending) >= 2 * self.num_proc:
                head, res = pending.popleft()
                yield head, res.get()
        while pending:
            head, res = pending.popleft()
            yield head, res.get()

    def close(self, ok: bool) -> None:
        if self.pool is not None:
            if ok:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()


