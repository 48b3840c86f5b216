"""Stage 1 of ``corpus prepare``: read and clean (:class:`ReadClean`), and the re-read of the cleaned text after
the PubMed update barrier (:class:`ReadDocs`)."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from datatrove.data import Document as TroveDocument

from domainlm.corpora.steps.base import NONE, Step, file_range, save_counts
from domainlm.corpora.steps.decontaminate import Decontaminate
from domainlm.corpora.steps.keys import KeyBuffer
from domainlm.corpora.steps.tokenise import TokenLog

MAX_PMID = 2**63 - 1


class ReadClean(Step):
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
        keys = KeyBuffer(Path(self.work) / "keys" / "pubmed", rank, self.pmid_parts) if self.pmid_parts else None
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


class ReadDocs(Step):
    """This task's cleaned documents, in order (``idx`` is the position in the file)."""

    name = "read cleaned documents"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        path = Path(self.work) / "docs" / f"{rank:05d}.jsonl"
        with open(path, encoding="utf-8") as fh:
            for idx, line in enumerate(fh):
                d = json.loads(line)
                yield TroveDocument(text=d["text"], id=d["id"], metadata={"kind": d["kind"], "idx": idx, "idx2": idx})
