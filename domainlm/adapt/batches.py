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


def read_rows(ds: Any, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, doc_ids) of ``rows`` of a torch-formatted prepared split, in that order, with one read."""
    ids, docs, _ = read_block_rows(ds, rows)
    return ids, docs


def read_block_rows(ds: Any, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(input_ids, doc_ids, loss_mask or None) of ``rows``: one Arrow take for the whole list. ``loss_mask`` is
    present in splits prepared from instruction data (1 on the assistant tokens)."""
    if not rows:
        raise ValueError("no rows")
    batch = ds[rows]  # one Arrow take for the whole list, instead of a Python loop over ds[row]
    mask = torch.as_tensor(batch["loss_mask"]).bool() if "loss_mask" in batch else None
    return torch.as_tensor(batch["input_ids"]).long(), torch.as_tensor(batch["doc_ids"]).long(), mask


def apply_loss_mask(labels: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """IGNORE every label whose target token has mask 0 (causal: label[i] is token i+1; masked LM: token i)."""
    if mask is None:
        return labels
    labels = labels.clone()
    if causal:
        labels[:, :-1][~mask[:, 1:]] = IGNORE
    else:
        labels[~mask] = IGNORE
    return labels


class BatchBuilder:
    """Turns stream items into model inputs and labels (causal next tokens or MLM masks) on the CPU."""

    def __init__(self, train_ds: Any, replay_ds: Any, masker: Masker | None, seed: int, document_mask: bool):
        self.sources = {"domain": train_ds, "replay": replay_ds}
        self.masker, self.seed, self.document_mask = masker, seed, document_mask

    def rows(self, items: list[tuple[str, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Stack the sequences of ``items`` in order, reading each source once; the loss mask is None unless a
        source carries one (rows of sources without it count every token)."""
        ids: torch.Tensor | None = None
        docs: torch.Tensor | None = None
        mask: torch.Tensor | None = None
        for source in ("domain", "replay"):
            where = [i for i, (s, _) in enumerate(items) if s == source]
            if not where:
                continue
            part_ids, part_docs, part_mask = read_block_rows(self.sources[source], [items[i][1] for i in where])
            if ids is None:
                ids = part_ids.new_empty((len(items), part_ids.shape[1]))
                docs = part_docs.new_empty((len(items), part_docs.shape[1]))
            ids[where], docs[where] = part_ids, part_docs
            if part_mask is not None:
                if mask is None:
                    mask = torch.ones(ids.shape, dtype=torch.bool)
                mask[where] = part_mask
        assert ids is not None and docs is not None
        return ids, docs, mask

    def labelled(self, ids: torch.Tensor, docs: torch.Tensor, indices: list[int], salt: int = 0,
                 loss_mask: torch.Tensor | None = None):
        """(input_ids, labels, doc_ids); MLM masks depend only on each sequence's global index and the seed.
        Labels of tokens outside ``loss_mask`` (an instruction block's prompts) are IGNORE."""
        doc_for_mask = docs if self.document_mask else None
        if self.masker is not None:
            gens = [sequence_generator(self.seed, i, salt) for i in indices]
            ids, labels = self.masker(ids, doc_for_mask, gens)
        else:
            labels = causal_labels(ids, doc_for_mask)
        return ids, apply_loss_mask(labels, loss_mask, causal=self.masker is None), docs

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
        return StepBatch(step, micro, StreamState(**stream.state_dict()))


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
