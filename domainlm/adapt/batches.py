"""Training and evaluation batches: assembled with one Arrow read per source, built ahead of the step.

The stream (``adapt/data.py``) maps each global sequence index to a (source, row); a step's batch for this
process is a pure function of the stream position, so building it early in a background thread changes nothing
but the waiting. Each batch carries the stream state *after* its step: the loop checkpoints that state, never
the producer's, which may be a few steps ahead.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any

import torch

from domainlm.adapt.data import Masker, SequenceStream, StreamState, sequence_generator
from domainlm.lm_loss import IGNORE, causal_labels


@dataclass
class StepBatch:
    step: int  # the 0-based optimizer step these micro-batches are for
    micro: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (input_ids, labels, doc_ids) per micro-batch
    state_after: StreamState


def read_columns(ds: Any, rows: list[int]) -> dict[str, torch.Tensor]:
    """Every column of ``rows`` of a torch-formatted prepared split (``input_ids``, ``doc_ids`` and, in a
    chat-formatted corpus, ``loss_mask``), in that order, with one read."""
    if not rows:
        raise ValueError("no rows")
    batch = ds[rows]  # one Arrow take for the whole list, instead of a Python loop over ds[row]
    return {name: torch.as_tensor(batch[name]).long() for name in ds.column_names}


def read_rows(ds: Any, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, doc_ids) of ``rows`` of a torch-formatted prepared split, in that order, with one read."""
    cols = read_columns(ds, rows)
    return cols["input_ids"], cols["doc_ids"]


class BatchBuilder:
    """Turns stream items into model inputs and labels (causal next tokens or MLM masks) on the CPU."""

    def __init__(self, sources: dict[str, Any], masker: Masker | None, seed: int, document_mask: bool):
        self.sources = sources  # stream source name -> its training split
        self.masker, self.seed, self.document_mask = masker, seed, document_mask
        self.masked = any("loss_mask" in ds.column_names for ds in sources.values() if ds is not None)

    def rows(self, items: list[tuple[str, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Stack the sequences of ``items`` in order, reading each source once: (input_ids, doc_ids, loss_mask).
        Every column of a row is kept as read; a source without ``loss_mask`` counts all its tokens (1s)."""
        out: dict[str, torch.Tensor] = {}
        for source in self.sources:
            where = [i for i, (s, _) in enumerate(items) if s == source]
            if not where:
                continue
            part = read_columns(self.sources[source], [items[i][1] for i in where])
            if self.masked and "loss_mask" not in part:
                part["loss_mask"] = torch.ones_like(part["input_ids"])
            for name, t in part.items():
                if name not in out:
                    out[name] = t.new_empty((len(items), t.shape[1]))
                out[name][where] = t
        return out["input_ids"], out["doc_ids"], out.get("loss_mask")

    def labelled(self, ids: torch.Tensor, docs: torch.Tensor, indices: list[int], salt: int = 0,
                 loss_mask: torch.Tensor | None = None):
        """(input_ids, labels, doc_ids); MLM masks depend only on each sequence's global index and the seed.
        Where ``loss_mask`` is 0 (a chat corpus's prompt tokens) the token is no target."""
        doc_for_mask = docs if self.document_mask else None
        if self.masker is not None:
            gens = [sequence_generator(self.seed, i, salt) for i in indices]
            ids, labels = self.masker(ids, doc_for_mask, gens)
            if loss_mask is not None:
                labels = labels.masked_fill(loss_mask == 0, IGNORE)
        else:
            labels = causal_labels(ids, doc_for_mask)
            if loss_mask is not None:  # label[i] is token i+1: it counts when token i+1 does
                labels[:, :-1] = labels[:, :-1].masked_fill(loss_mask[:, 1:] == 0, IGNORE)
        return ids, labels, docs

    def step(self, stream: SequenceStream, step: int, *, rank: int, world: int, batch_size: int,
             grad_accum: int) -> StepBatch:
        """This process's micro-batches of one optimizer step; advances ``stream`` by the global batch."""
        first = stream.state.next_index
        items = stream.take(batch_size * world * grad_accum)
        micro = []
        for k in range(grad_accum):
            off = (k * world + rank) * batch_size
            ids, docs, mask = self.rows(items[off:off + batch_size])
            micro.append(self.labelled(ids, docs, list(range(first + off, first + off + batch_size)), loss_mask=mask))
        return StepBatch(step, micro, stream.state.copy())


class Batches:
    """Iterate the StepBatches of steps [start, stop), built ``ahead`` steps early by a background thread.

    ``ahead=0`` builds each batch in the loop. A thread rather than DataLoader worker processes: assembly is a
    few Arrow reads and tensor ops that release the GIL, and a thread shares the memory-mapped corpus and the
    stream without copying or re-opening them. On CUDA the tensors are pinned so the copy to the GPU is async.
    """

    def __init__(self, builder: BatchBuilder, stream: SequenceStream, start: int, stop: int, *, ahead: int,
                 pin: bool, **layout: int):
        self.builder, self.stream, self.start, self.stop = builder, stream, start, stop
        self.ahead, self.pin, self.layout = ahead, pin, layout
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, ahead))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _build(self, step: int) -> StepBatch:
        batch = self.builder.step(self.stream, step, **self.layout)
        if self.pin:
            batch.micro = [tuple(t.pin_memory() for t in m) for m in batch.micro]
        return batch

    def _produce(self) -> None:
        try:
            for step in range(self.start, self.stop):
                item = self._build(step)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as exc:  # handed to the loop, which raises it where the batch was wanted
            self._queue.put(exc)

    def __iter__(self):
        if self.ahead == 0:
            for step in range(self.start, self.stop):
                yield self._build(step)
            return
        self._thread = threading.Thread(target=self._produce, name="domainlm-batches", daemon=True)
        self._thread.start()
        try:
            for _ in range(self.start, self.stop):
                item = self._queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
