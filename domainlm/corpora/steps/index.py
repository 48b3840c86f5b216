"""The last stage of ``corpus prepare`` (one small task): :class:`Index` sums the pack tasks' counts (never their
tokens) into manifest.json, with the drops, the decontamination and the notes."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from domainlm.corpora.steps.base import Step, load_counts

log = logging.getLogger(__name__)

# The share of kept text documents that look word-tokenised above which prepare's notes suggest --detokenize.
WORD_TOKENISED_SHARE = 0.2


class Index(Step):
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
