"""``domainlm corpus prepare``: read, clean, deduplicate, split, tokenise and pack a domain corpus.

The run streams: readers yield one document at a time, documents travel in small batches to worker
processes (cleaning, hashing, MinHash, tokenising) and come back in input order to the main process,
which deduplicates, assigns global document indices and packs blocks. Output is written shard by shard
(``shard_size`` input documents each); every finished shard leaves a record in ``OUT/.progress``, so
an interrupted run picks up after the last finished shard. ``OUT/manifest.json`` is written last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from domainlm.config import as_config, build, opt, to_dict
from domainlm.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Format = Literal["auto", "pubmed-xml", "medline", "arxiv", "text", "jsonl", "csv", "txt-folder", "fasta", "swissprot"]

# Config fields that do not change the prepared data (so changing them does not invalidate a folder).
_VOLATILE = {"num_proc", "overwrite", "out", "card", "inputs"}
PROGRESS = ".progress"
BATCH_DOCS = 256


@dataclass
class PrepareConfig:
    """Options of ``domainlm corpus prepare`` (a recipe YAML may set any of them)."""

    inputs: list[str] = opt(factory=list, help="files, folders or globs to read, in order (.gz read transparently; "
                                               "PubMed update files go after the baseline)")
    format: Format = opt("auto", "input format; 'auto' decides per file from its content and name")
    text_field: str = opt("text", "JSONL key / CSV column holding the text")
    id_field: str | None = opt(None, "JSONL key / CSV column holding a document id (default: 'id' when present, "
                                     "else a hash of the text)")
    categories: list[str] | None = opt(None, "arXiv categories to keep (globs allowed), e.g. cond-mat.mtrl-sci")
    model: str = opt("", "base model whose tokenizer packs the corpus (a folder, Hub id, minilm, smollm2, tiny-*)")
    block_size: int = opt(256, "tokens per packed block (training sequence length)")
    out: str = opt("", "output folder")
    validation_fraction: float = opt(0.05, "share of documents held out for validation, chosen by a hash of the "
                                           "document id (stable when files are added)")
    unicode_form: Literal["NFC", "NFKC", "none"] = opt("NFC", "Unicode normalisation; NFKC would turn x² into x2")
    min_chars: int = opt(20, "drop text documents shorter than this many characters (after cleaning)")
    max_chars: int | None = opt(None, "drop text documents longer than this many characters")
    keep_title_only: bool = opt(False, "keep PubMed records that have a title but no abstract (counted as "
                                       "no_abstract and dropped by default, as BioGPT and PubMedBERT did)")
    dedup: bool = opt(True, "drop exact duplicates (64-bit hash of the cleaned text)")
    near_dup: bool = opt(True, "drop near-duplicates (datasketch MinHash LSH over word trigrams / residue 5-mers)")
    near_dup_threshold: float = opt(0.8, "estimated Jaccard similarity above which a document is a near-duplicate")
    near_dup_num_perm: int = opt(128, "MinHash permutations (datasketch's default; more is slower and sharper)")
    min_length: int = opt(20, "proteins: drop sequences with fewer residues")
    max_length: int | None = opt(None, "proteins: drop sequences with more residues (long ones are otherwise "
                                       "continued across blocks)")
    ambiguous: Literal["keep", "to-x", "drop"] = opt("keep", "proteins: U/O/B/Z/J/X residues: keep them, rewrite "
                                                               "them to X (ProtTrans), or drop the sequence")
    shard_size: int = opt(20000, "input documents per output shard; an interrupted run resumes after the last "
                                 "finished shard")
    num_proc: int | None = opt(None, "worker processes for cleaning and tokenising (default: one per CPU, up to "
                                     "8; 1 for inputs under 4 MB)")
    overwrite: bool = opt(False, "replace an existing prepared folder made with different settings")
    card: str | None = opt(None, "a corpus card (corpora/<name>.yaml) whose prepare: settings fill in every option "
                                 "left at its default")

    def problems(self) -> list[str]:
        out = []
        if not self.inputs and not self.card:
            out.append("'inputs' is empty: name files, folders or globs to read (or a corpus card with 'card')")
        if self.block_size < 8:
            out.append(f"'block_size' must be at least 8, got {self.block_size}")
        if not 0 <= self.validation_fraction < 1:
            out.append(f"'validation_fraction' must be in [0, 1), got {self.validation_fraction}")
        if self.min_chars < 0 or self.min_length < 0:
            out.append("'min_chars' and 'min_length' cannot be negative")
        if self.max_chars is not None and self.max_chars <= self.min_chars:
            out.append(f"'max_chars' ({self.max_chars}) must be larger than 'min_chars' ({self.min_chars})")
        if self.max_length is not None and self.max_length <= self.min_length:
            out.append(f"'max_length' ({self.max_length}) must be larger than 'min_length' ({self.min_length})")
        if not 0 < self.near_dup_threshold < 1:
            out.append(f"'near_dup_threshold' must be between 0 and 1, got {self.near_dup_threshold}")
        if self.near_dup_num_perm < 16:
            out.append(f"'near_dup_num_perm' must be at least 16, got {self.near_dup_num_perm}")
        if self.shard_size < 1:
            out.append(f"'shard_size' must be positive, got {self.shard_size}")
        if self.num_proc is not None and self.num_proc < 1:
            out.append(f"'num_proc' must be at least 1, got {self.num_proc}")
        if self.categories and self.format not in ("auto", "arxiv"):
            out.append(f"'categories' filters arXiv metadata, but 'format' is '{self.format}'")
        if not self.text_field:
            out.append("'text_field' cannot be empty")
        return out


def prepare(config: PrepareConfig | str | None = None, **overrides: Any) -> dict[str, Any]:
    """Read, clean, deduplicate, split, tokenise and pack a domain corpus into OUT.

    OUT gets train/ and validation/ (Arrow shards of fixed-length blocks with input_ids and per-token
    doc_ids; load with domainlm.corpora.load_prepared), documents/ (which source id each document
    index is) and, written last, manifest.json (inputs and hashes, counts and drops by reason, tokenizer,
    config, versions). Re-running with the same settings reuses a finished folder and resumes an
    interrupted one. Returns the manifest.
    """
    card_values = None
    if isinstance(config, PrepareConfig) and config.card and not overrides:
        config = _apply_card(config)
    else:
        card_name = overrides.get("card") or (config.get("card") if isinstance(config, dict) else None)
        if card_name and not isinstance(config, PrepareConfig):
            from domainlm.corpora.cards import card_prepare_values

            # Python API: the card's settings are the base and every keyword given wins.
            card_values = card_prepare_values(card_name)
            base = dict(config) if isinstance(config, dict) else {}
            config = build(PrepareConfig, {**card_values, **base, **overrides})
        else:
            config = as_config(PrepareConfig, config, overrides)
            if config.card:
                config = _apply_card(config)
    return _Run(config).run()


def _apply_card(config: PrepareConfig) -> PrepareConfig:
    """Fill every option left at its default from the card (command line: flags given explicitly win,
    except a flag set to exactly its default value, which cannot be told from an unset one)."""
    from domainlm.corpora.cards import card_prepare_values

    values = card_prepare_values(config.card)
    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING
                         else f.default_factory())  # type: ignore[misc]
                for f in dataclasses.fields(PrepareConfig)}
    merged = to_dict(config)
    for key, value in values.items():
        if merged.get(key) == defaults.get(key):
            merged[key] = value
    return build(PrepareConfig, merged)


@dataclass
class _Batch:
    shard: int
    payload: list[tuple[str, str, str]]
    sources: list[str]
    end: dict[str, Any] | None = None  # set on the last batch of a shard: position and reader-skip snapshot


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------

def _after_shard(shard: int) -> None:
    """Called after each finished shard (tests replace it to simulate an interruption)."""


class _Run:
    def __init__(self, config: PrepareConfig) -> None:
        self.config = config
        self.out = Path(config.out).expanduser()
        self.progress = self.out / PROGRESS

    # ---- set-up -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from domainlm.artifacts import MANIFEST
        from domainlm.corpora.readers import SkipLog, resolve_inputs

        t0 = time.perf_counter()
        c = self.config
        # model and out are checked here, not in problems(), so a recipe may leave them to the command line.
        missing = [m for m, ok in ((
            "'model' is required: the base model whose tokenizer packs the corpus (e.g. minilm, tiny-llama, a "
            "folder or a Hub id)", c.model), ("'out' is required: the folder to write the prepared corpus to",
                                              c.out)) if not ok]
        if missing:
            raise ConfigError(missing)
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError([f"'out': {self.out} is a file; name a folder"])
        self.setup_skips = SkipLog()
        self.files = resolve_inputs(c.inputs, c.format, skips=self.setup_skips)
        if not self.files:
            raise DataError(f"no readable input files in {', '.join(c.inputs)}")
        from domainlm.corpora.pack import plan_tokenizer

        self.plan, _ = plan_tokenizer(c.model)
        self.inputs = self._hash_inputs()
        self.fingerprint = self._fingerprint()
        existing = self._existing_manifest()
        if existing is not None:
            return existing
        state = self._load_progress()
        manifest_path = self.out / MANIFEST
        if manifest_path.exists():  # an overwritten folder: its old manifest must go first
            manifest_path.unlink()
        return self._pipeline(state, t0)

    def _hash_inputs(self) -> list[dict[str, Any]]:
        from domainlm.artifacts import sha256_file

        cache: dict[tuple[str, int, int], str] = {}
        for src in (self.out / "manifest.json", self.progress / "config.json"):
            try:
                data = json.loads(src.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            for item in data.get("inputs", []):
                if {"path", "bytes", "mtime_ns", "sha256"} <= set(item):
                    cache[(item["path"], item["bytes"], item["mtime_ns"])] = item["sha256"]
        out = []
        for f in self.files:
            st = f.path.stat()
            key = (str(f.path.resolve()), st.st_size, st.st_mtime_ns)
            sha = cache.get(key) or sha256_file(f.path)
            out.append({"path": key[0], "format": f.format, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
                        "sha256": sha})
        return out

    def _fingerprint(self) -> str:
        settings = {k: v for k, v in to_dict(self.config).items() if k not in _VOLATILE}
        payload = {"settings": settings, "tokenizer": self.plan.fingerprint,
                   "inputs": [(i["path"], i["format"], i["sha256"]) for i in self.inputs]}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def _existing_manifest(self) -> dict[str, Any] | None:
        """A finished folder with the same fingerprint is reused; a different one needs --overwrite."""
        from domainlm.artifacts import MANIFEST

        path = self.out / MANIFEST
        if not path.is_file():
            if self.out.is_dir() and any(self.out.iterdir()) and not (self.progress / "config.json").is_file():
                raise ConfigError([f"'out': {self.out} exists and is not a domainlm corpus folder; choose a new or "
                                   "empty folder (domainlm never deletes folders it did not write)"])
            return None
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = {}
        if manifest.get("kind") not in (None, "corpus"):
            raise ConfigError([f"'out': {self.out} holds a '{manifest.get('kind')}' folder, not a corpus; choose "
                               "another folder"])
        if manifest.get("complete") and manifest.get("fingerprint") == self.fingerprint and not self.config.overwrite:
            log.info("%s is already prepared with these settings, tokenizer and inputs: reusing it", self.out)
            shutil.rmtree(self.progress, ignore_errors=True)
            return manifest
        if not self.config.overwrite:
            diff = _config_diff(manifest.get("config", {}), to_dict(self.config))
            why = f" (differs in: {', '.join(diff)})" if diff else " (different tokenizer or input files)"
            raise ConfigError([f"'out': {self.out} already holds a corpus prepared differently{why}; pass --overwrite "
                               "to replace it, or choose another --out"])
        log.info("overwriting %s", self.out)
        (self.out / MANIFEST).unlink()
        self._clear()
        return None

    def _clear(self) -> None:
        for name in ("train", "validation", "documents", PROGRESS, "stats"):
            shutil.rmtree(self.out / name, ignore_errors=True)

    def _load_progress(self) -> dict[str, Any] | None:
        """The cumulative state after the last finished shard of an interrupted run, or None."""
        from domainlm.artifacts import atomic_write_json

        cfg_path = self.progress / "config.json"
        if cfg_path.is_file():
            try:
                saved = json.loads(cfg_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                saved = {}
            if saved.get("fingerprint") != self.fingerprint:
                if not self.config.overwrite:
                    diff = _config_diff(saved.get("config", {}), to_dict(self.config))
                    why = f" (differs in: {', '.join(diff)})" if diff else " (different tokenizer or input files)"
                    raise ConfigError([f"'out': {self.out} holds an unfinished prepare with other settings{why}; "
                                       "pass --overwrite to start over, or choose another --out"])
                self._clear()
        if not cfg_path.is_file():
            self._clear()
            atomic_write_json(cfg_path, {"fingerprint": self.fingerprint, "config": to_dict(self.config),
                                         "inputs": self.inputs})
            return None
        state = None
        k = 0
        while (self.progress / f"shard-{k:05d}.json").is_file():
            state = json.loads((self.progress / f"shard-{k:05d}.json").read_text(encoding="utf-8"))
            k += 1
        # Anything written for shard k or later belongs to the interrupted shard: remove it.
        for folder in ("train", "validation", "documents", PROGRESS):
            for p in (self.out / folder).glob("*"):
                stem = p.name.lstrip(".").split(".")[0]
                if stem.startswith("shard-") and stem[6:11].isdigit() and int(stem[6:11]) >= k:
                    p.unlink()
                elif p.name.endswith(".tmp"):
                    p.unlink()
        if state is not None:
            log.info("resuming %s after %d finished shard(s) (%d documents read)", self.out, k, state["docs_read"])
        return state

    # ---- the streaming pipeline -----------------------------------------------------------------

    def _batches(self, stream, shard: int, start_docs: int, skips, start_pos) -> Iterator[_Batch]:
        size = self.config.shard_size
        it = iter(stream)
        last_pos = start_pos
        docs_read = start_docs
        while True:
            payload: list[tuple[str, str, str]] = []
            sources: list[str] = []
            count = 0
            ended = False
            while count < size:
                try:
                    doc, kind, pos = next(it)
                except StopIteration:
                    ended = True
                    break
                payload.append((doc.id, doc.text, kind))
                sources.append(str(doc.metadata.get("source", "")))
                count += 1
                last_pos = pos
                if len(payload) == BATCH_DOCS and count < size:
                    yield _Batch(shard, payload, sources)
                    payload, sources = [], []
            docs_read += count
            end = {"position": last_pos.as_dict(), "reader": skips.snapshot(), "end_of_input": ended,
                   "docs_read": docs_read}
            yield _Batch(shard, payload, sources, end)
            if ended:
                return
            shard += 1

    def _pipeline(self, state: dict[str, Any] | None, t0: float) -> dict[str, Any]:
        import numpy as np

        from domainlm.corpora.clean import CleanOptions, Deduper
        from domainlm.corpora.pack import BlockWriter, Packer, write_documents
        from domainlm.corpora.pubmed import scan_pubmed_events
        from domainlm.corpora.readers import Position, ReaderOptions, SkipLog, iter_documents

        c = self.config
        packers = {s: Packer(c.block_size) for s in ("train", "validation")}
        deduper = Deduper(c.dedup, c.near_dup, c.near_dup_threshold, c.near_dup_num_perm) \
            if (c.dedup or c.near_dup) else None
        skips = SkipLog()
        counters: Counter[str] = Counter()
        split_counts = {s: {"blocks": 0, "tokens": 0, "documents": 0, "files": 0} for s in packers}
        shard, next_doc, tokens_total, docs_read = 0, 0, 0, 0
        start = Position()
        if state is not None:
            shard = state["shard"] + 1
            next_doc, tokens_total, docs_read = state["next_doc"], state["tokens"], state["docs_read"]
            counters.update(state["drops"])
            skips.restore(state["reader"])
            split_counts = state["splits"]
            for s, p in packers.items():
                p.restore(state["carry"][s])
            start = Position(**state["position"])
            if deduper is not None:
                for k in range(shard):
                    saved = np.load(self.progress / f"dedup-{k:05d}.npz")
                    sigs = saved["sigs"] if "sigs" in saved.files else None
                    deduper.restore(saved["keys"], sigs, saved["doc_index"])
            if state.get("end_of_input"):
                return self._finish(state, t0)
        for reason, n in self.setup_skips.counts.items():  # files in folders that no reader understands
            if state is None:
                skips.counts[reason] += n
        events = scan_pubmed_events(self.files)
        options = ReaderOptions(text_field=c.text_field, id_field=c.id_field, categories=c.categories,
                                ambiguous=c.ambiguous, keep_title_only=c.keep_title_only)
        stream = iter_documents(self.files, options, skips, start=start, pubmed_events=events)
        clean_opts = CleanOptions(c.unicode_form, c.min_chars, c.max_chars, c.min_length, c.max_length, c.near_dup,
                                  c.near_dup_num_perm, c.validation_fraction)
        num_proc = self._num_proc()
        log.info("preparing %d input file(s) -> %s with %s (%d process%s)", len(self.files), self.out, c.model,
                 num_proc, "es" if num_proc > 1 else "")
        from domainlm.corpora.workers import Ordered

        runner = Ordered(num_proc, (self.plan, clean_opts, c.near_dup, c.near_dup_num_perm))
        writers: dict[str, BlockWriter] = {}
        ok = False
        try:
            doc_rows: dict[str, list] = {k: [] for k in ("doc_index", "id", "split", "tokens", "chars")}
            dedup_rows: dict[str, list] = {"keys": [], "sigs": [], "doc_index": []}
            last_state = state
            t_shard = time.perf_counter()
            for batch, res in runner.map(self._batches(stream, shard, docs_read, skips, start)):
                if not writers:
                    writers = {s: BlockWriter(self.out / s / f"shard-{batch.shard:05d}.arrow", c.block_size)
                               for s in packers}
                offsets = np.concatenate([[0], np.cumsum(res.lengths)])
                j = 0
                for (doc_id, _, _), why in zip(batch.payload, res.reasons, strict=True):
                    if why is not None:
                        counters[why] += 1
                        continue
                    sig = res.sigs[j] if res.sigs is not None else None
                    verdict = deduper.check(int(res.keys[j]), sig, next_doc) if deduper is not None else None
                    if verdict is not None:
                        counters[verdict] += 1
                        j += 1
                        continue
                    split = "validation" if res.validation[j] else "train"
                    ids = res.ids[offsets[j]:offsets[j + 1]]
                    packers[split].add(ids, next_doc)
                    split_counts[split]["documents"] += 1
                    tokens_total += len(ids)
                    for key, value in (("doc_index", next_doc), ("id", doc_id), ("split", split),
                                       ("tokens", len(ids)), ("chars", res.chars[j])):
                        doc_rows[key].append(value)
                    if deduper is not None:
                        dedup_rows["keys"].append(int(res.keys[j]))
                        dedup_rows["doc_index"].append(next_doc)
                        if sig is not None:
                            dedup_rows["sigs"].append(sig)
                    next_doc += 1
                    j += 1
                    if next_doc >= 2**31 - 1:
                        raise DataError("more than 2^31 documents: split the inputs into several prepared corpora")
                for s, p in packers.items():
                    if p.pending >= 1 << 20:
                        writers[s].write(*p.full_blocks())
                if batch.end is None:
                    continue
                # ---- the shard is complete: write its files, then its progress record ----
                for s, p in packers.items():
                    blocks, docs = p.full_blocks()
                    writers[s].write(blocks, docs)
                    split_counts[s]["blocks"] += writers[s].blocks
                    split_counts[s]["tokens"] += writers[s].blocks * c.block_size
                    split_counts[s]["files"] += int(writers[s].close())
                writers = {}
                if doc_rows["doc_index"]:
                    write_documents(self.out / "documents" / f"shard-{batch.shard:05d}.arrow", doc_rows)
                self._save_dedup(batch.shard, dedup_rows)
                last_state = {"shard": batch.shard, "next_doc": next_doc, "tokens": tokens_total,
                              "docs_read": batch.end["docs_read"], "position": batch.end["position"],
                              "reader": batch.end["reader"], "end_of_input": batch.end["end_of_input"],
                              "drops": dict(counters), "splits": split_counts,
                              "carry": {s: p.state() for s, p in packers.items()}}
                from domainlm.artifacts import atomic_write_json

                atomic_write_json(self.progress / f"shard-{batch.shard:05d}.json", last_state)
                dt = time.perf_counter() - t_shard
                log.info("shard %d done: %d documents read, %d kept, %d tokens so far (%.1f s)", batch.shard,
                         batch.end["docs_read"], next_doc, tokens_total, dt)
                t_shard = time.perf_counter()
                doc_rows = {k: [] for k in doc_rows}
                dedup_rows = {k: [] for k in dedup_rows}
                _after_shard(batch.shard)
            ok = True
        finally:
            for w in writers.values():
                w.abort()
            runner.close(ok)
        assert last_state is not None and last_state["end_of_input"]
        return self._finish(last_state, t0)

    def _save_dedup(self, shard: int, rows: dict[str, list]) -> None:
        import numpy as np

        if not self.config.dedup and not self.config.near_dup:
            return
        arrays = {"keys": np.asarray(rows["keys"], dtype=np.uint64),
                  "doc_index": np.asarray(rows["doc_index"], dtype=np.int64)}
        if rows["sigs"]:
            arrays["sigs"] = np.stack(rows["sigs"]).astype(np.uint32)
        final = self.progress / f"dedup-{shard:05d}.npz"
        tmp = self.progress / f".dedup-{shard:05d}.tmp.npz"
        np.savez(tmp, **arrays)
        tmp.replace(final)

    def _num_proc(self) -> int:
        if self.config.num_proc is not None:
            return self.config.num_proc
        total = sum(f.bytes for f in self.files)
        if total < 4 * 2**20:
            return 1  # starting workers costs more than it saves on a small corpus
        try:
            cpus = len(os.sched_getaffinity(0))  # the cores this process may use (taskset, containers)
        except AttributeError:  # not on Linux
            cpus = os.cpu_count() or 1
        return max(1, min(cpus, 8))

    # ---- finishing ----------------------------------------------------------------------------

    def _finish(self, state: dict[str, Any], t0: float) -> dict[str, Any]:
        from domainlm.artifacts import write_manifest

        c = self.config
        drops = dict(state["drops"])
        reader = state["reader"]
        for reason, n in reader.get("counts", {}).items():
            drops[reason] = drops.get(reason, 0) + n
        splits = state["splits"]
        tail = {s: len(state["carry"][s]["ids"]) for s in splits}
        documents = splits["train"]["documents"] + splits["validation"]["documents"]
        if documents == 0:
            raise DataError(f"no document of {len(self.files)} input file(s) survived reading and filtering "
                            f"(drops: {_fmt_drops(drops)}); check --format, --text-field, --categories and the "
                            "length filters")
        if splits["train"]["blocks"] == 0:
            raise DataError(f"the training split has no complete block of {c.block_size} tokens ({state['tokens']} "
                            "tokens in all): lower --block-size or add documents")
        notes = []
        if splits["validation"]["blocks"] == 0 and c.validation_fraction > 0:
            notes.append(f"the validation split has no complete block of {c.block_size} tokens; raise "
                         "--validation-fraction or add documents")
            log.warning(notes[-1])
        read = state["docs_read"]
        counts = {"documents": documents, "tokens": state["tokens"], "records_read": read,
                  "tokens_in_blocks": splits["train"]["tokens"] + splits["validation"]["tokens"],
                  "tail_tokens_dropped": tail, "drops": dict(sorted(drops.items())),
                  "drop_examples": reader.get("examples", {})}
        kinds = sorted({"protein" if f.format in ("fasta", "swissprot") else "text" for f in self.files})
        manifest = write_manifest(
            self.out, "corpus", complete=True, config=to_dict(c),
            inputs=[{k: i[k] for k in ("path", "format", "sha256", "bytes", "mtime_ns")} for i in self.inputs],
            counts=counts, tokenizer=self.plan.describe(), block_size=c.block_size, splits=splits,
            content=kinds[0] if len(kinds) == 1 else "mixed", fingerprint=self.fingerprint,
            wall_time_s=round(time.perf_counter() - t0, 3), notes=notes)
        shutil.rmtree(self.progress, ignore_errors=True)
        log.info("prepared %s: %d documents, %d tokens, %d train / %d validation blocks; drops: %s", self.out,
                 documents, state["tokens"], splits["train"]["blocks"], splits["validation"]["blocks"],
                 _fmt_drops(drops))
        return manifest


def _fmt_drops(drops: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none"


def _config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if k not in _VOLATILE and old.get(k) != new.get(k))
