"""Tokenising and packing: documents -> fixed-length blocks of token ids with per-token document ids.

Packing rule (the contract ``adapt`` relies on):

* every document is tokenised with the base tokenizer and wrapped the way the tokenizer wraps one
  sequence (BERT ``[CLS] x [SEP]``, ESM ``<cls> x <eos>``, Llama ``<s> x`` when it adds BOS); when that
  wrapping does not end in EOS/SEP (causal tokenizers), EOS is appended, so every document ends with
  a separator;
* documents are concatenated and cut into blocks of exactly ``block_size`` tokens; a long document
  continues into the next block with the same document id;
* ``doc_ids`` holds a global document index for every token, so training can restart positions and
  block attention where it changes;
* the last partial block of each split is dropped and counted, never padded.

Blocks are written as Arrow IPC streams (the format ``datasets`` memory-maps), with the ``datasets``
feature schema attached, one file per split and shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainlm.errors import DataError, DomainLMError, SourceError

log = logging.getLogger(__name__)

SPLITS = ("train", "validation")


# --------------------------------------------------------------------------------------------------
# Tokenizer plan (main process) and encoder (worker processes)
# --------------------------------------------------------------------------------------------------

@dataclass
class TokenizerPlan:
    """How documents are tokenised: the wrapping ids and a picklable recipe for workers."""

    source: str
    name_or_path: str
    vocab_size: int
    mode: str  # "fast" (tokenizers backend), "chars" (one token per character, e.g. ESM), "slow"
    prefix: list[int]
    suffix: list[int]
    separator: str
    separator_id: int
    fingerprint: str
    payload: Any = field(repr=False, default=None)
    char_table: dict[str, int] | None = field(repr=False, default=None)
    unk_id: int | None = None

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "name_or_path": self.name_or_path, "vocab_size": self.vocab_size,
                "separator": self.separator, "separator_id": self.separator_id, "prefix_ids": self.prefix,
                "suffix_ids": self.suffix, "mode": self.mode, "fingerprint": self.fingerprint}


def _find(sub: list[int], seq: list[int]) -> int:
    for i in range(len(seq) - len(sub) + 1):
        if seq[i:i + len(sub)] == sub:
            return i
    return -1


def plan_tokenizer(model: str) -> tuple[TokenizerPlan, Any]:
    """Load the tokenizer of ``model`` (anything ``sources.resolve`` accepts) and work out its wrapping."""
    from domainlm.sources import load_tokenizer, resolve

    src = resolve(model)
    tok = load_tokenizer(src)
    protein = src.kind == "protein"
    probe = "MKTAYIAKQR" if protein else "Domain adaptation of language models"
    with_special = list(tok(probe, add_special_tokens=True)["input_ids"])
    without = list(tok(probe, add_special_tokens=False)["input_ids"])
    at = _find(without, with_special) if without else -1
    if at < 0:
        raise SourceError(f"cannot tell how the tokenizer of '{model}' wraps a document: its ids with special tokens "
                          f"{with_special} do not contain the ids without them {without}")
    prefix, suffix = with_special[:at], with_special[at + len(without):]
    ends = {i for i in (tok.eos_token_id, tok.sep_token_id) if i is not None}
    if not (suffix and suffix[-1] in ends):
        sep = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        if sep is None:
            raise SourceError(f"the tokenizer of '{model}' has neither an EOS nor a SEP token, so documents cannot be "
                              "separated in packed blocks; add one (tokenizer.add_special_tokens) and save it")
        suffix = suffix + [sep]
    separator_id = suffix[-1]
    name = getattr(tok, "name_or_path", "") or src.path
    if tok.is_fast:
        backend = tok.backend_tokenizer.to_str()
        mode, payload, table = "fast", backend, None
        fingerprint = hashlib.sha256(backend.encode("utf-8")).hexdigest()
    else:
        vocab = tok.get_vocab()
        fingerprint = hashlib.sha256((type(tok).__name__ + json.dumps(vocab, sort_keys=True)).encode()).hexdigest()
        specials = set(tok.all_special_tokens)
        singles = {t: i for t, i in vocab.items() if len(t) == 1 and t not in specials}
        plain = [t for t in vocab if t not in specials and not re.fullmatch(r"<[^>]+>", t)]
        if plain and all(len(t) == 1 for t in plain):
            mode, payload, table = "chars", tok, singles
        else:
            mode, payload, table = "slow", tok, None
    plan = TokenizerPlan(model, str(name), len(tok), mode, prefix, suffix, tok.convert_ids_to_tokens(separator_id),
                         separator_id, fingerprint, payload, table, tok.unk_token_id)
    if mode == "chars":
        # The character table must reproduce the tokenizer exactly on residue text.
        check = "MKVLAGHWYCDEFIKNPQRSTXBZUO"
        ids = Encoder(plan).encode([check])[0]
        if ids != list(tok(check, add_special_tokens=False)["input_ids"]):
            plan.mode = "slow"
    return plan, tok


class Encoder:
    """Turns texts into token ids (no special tokens) in a worker; built from a :class:`TokenizerPlan`."""

    def __init__(self, plan: TokenizerPlan) -> None:
        self.mode = plan.mode
        if plan.mode == "fast":
            from tokenizers import Tokenizer

            tk = Tokenizer.from_str(plan.payload)
            # The saved tokenizer may carry truncation/padding settings (MiniLM: 128 tokens, padded);
            # a corpus is never truncated or padded.
            tk.no_truncation()
            tk.no_padding()
            # Text that happens to contain "[SEP]" or "</s>" must not produce special-token ids.
            tk.encode_special_tokens = True
            self.tk = tk
        else:
            self.tk = plan.payload
            self.table = plan.char_table
            self.unk = plan.unk_id
            if self.table is not None:
                self.allowed = re.compile("[^" + re.escape("".join(self.table)) + "]")

    def encode(self, texts: list[str]) -> list[list[int]]:
        if self.mode == "fast":
            return [e.ids for e in self.tk.encode_batch_fast(texts, add_special_tokens=False)]
        if self.mode == "chars":
            out = []
            table = self.table
            for t in texts:
                if self.allowed.search(t) is None:
                    out.append([table[c] for c in t])
                else:
                    out.append(list(self.tk(t, add_special_tokens=False)["input_ids"]))
            return out
        return [list(x) for x in self.tk(texts, add_special_tokens=False)["input_ids"]]


# --------------------------------------------------------------------------------------------------
# Packing and writing
# --------------------------------------------------------------------------------------------------

def block_features(block_size: int, loss_mask: bool = False):
    """The ``datasets`` features of a packed split: two fixed-length int32 lists, and with ``loss_mask`` a third
    (int8, 1 where the token counts in the loss: an instruction set's assistant tokens)."""
    from datasets import Features, Value

    try:
        from datasets import List as Seq

        def seq(kind: str):
            return Seq(Value(kind), length=block_size)
    except ImportError:  # datasets < 4
        from datasets import Sequence

        def seq(kind: str):
            return Sequence(Value(kind), length=block_size)
    columns = {"input_ids": seq("int32"), "doc_ids": seq("int32")}
    if loss_mask:
        columns["loss_mask"] = seq("int8")
    return Features(columns)


class Packer:
    """Concatenates documents of one split and cuts full blocks; the remainder waits for more.

    Tokens arrive as arrays with a document index per token (``add`` takes many documents at once), so packing
    a batch is a few numpy calls instead of a Python loop over documents.
    """

    def __init__(self, block_size: int) -> None:
        import numpy as np

        self.np = np
        self.block_size = block_size
        self._ids: list[Any] = []
        self._docs: list[Any] = []
        self.pending = 0
        self.carry_ids = np.zeros(0, dtype=np.int32)
        self.carry_docs = np.zeros(0, dtype=np.int32)

    def add(self, ids, doc_ids) -> None:
        """Append token ``ids`` whose documents are ``doc_ids`` (one per token, or one int for all of them)."""
        np = self.np
        if np.isscalar(doc_ids):
            doc_ids = np.full(len(ids), doc_ids, dtype=np.int32)
        self._ids.append(np.asarray(ids, dtype=np.int32))
        self._docs.append(np.asarray(doc_ids, dtype=np.int32))
        self.pending += len(ids)

    def full_blocks(self) -> tuple[Any, Any]:
        """All complete blocks so far as two ``(n, block_size)`` int32 arrays."""
        np = self.np
        ids = np.concatenate([self.carry_ids, *self._ids]) if self._ids else self.carry_ids
        docs = np.concatenate([self.carry_docs, *self._docs]) if self._docs else self.carry_docs
        self._ids, self._docs, self.pending = [], [], 0
        n = len(ids) // self.block_size * self.block_size
        self.carry_ids, self.carry_docs = ids[n:].copy(), docs[n:].copy()
        return ids[:n].reshape(-1, self.block_size), docs[:n].reshape(-1, self.block_size)

    @property
    def buffered(self) -> int:
        return self.pending + len(self.carry_ids)


class BlockWriter:
    """Streams blocks of one split and shard into ``final`` through a temporary file."""

    def __init__(self, final: Path, block_size: int) -> None:
        import pyarrow as pa

        self.pa = pa
        self.final = final
        self.tmp = final.with_name(f".{final.name}.tmp")
        self.block_size = block_size
        self.schema = block_features(block_size).arrow_schema
        self.blocks = 0
        self._writer = None

    def write(self, ids, docs) -> None:
        if len(ids) == 0:
            return
        pa = self.pa
        if self._writer is None:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pa.ipc.new_stream(str(self.tmp), self.schema)
        arrays = [pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1), type=pa.int32()), self.block_size)
                  for a in (ids, docs)]
        self._writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self.schema))
        self.blocks += len(ids)

    def close(self) -> bool:
        """Rename into place; returns False (and writes nothing) when the shard had no block."""
        if self._writer is None:
            return False
        self._writer.close()
        self.tmp.replace(self.final)
        return True

    def abort(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # already failing; the temporary file is removed below
                pass
        self.tmp.unlink(missing_ok=True)


DOC_SCHEMA_FIELDS = (("doc_index", "int64"), ("id", "string"), ("split", "string"), ("tokens", "int32"),
                     ("chars", "int32"))


def write_documents(path: Path, rows: dict[str, list]) -> None:
    """The per-shard document table: which source id each global document index is, and its size."""
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

    return read_manifest(path, "corpus")


def load_prepared(out: str | Path, split: str = "train"):
    """A split of a prepared corpus as a memory-mapped ``datasets.Dataset``.

    Columns: ``input_ids`` and ``doc_ids``, both int32 lists of exactly ``block_size`` tokens.
    """
    from datasets import Dataset, concatenate_datasets

    if split not in SPLITS:
        from domainlm.config import did_you_mean

        raise DomainLMError(f"unknown split '{split}'{did_you_mean(split, SPLITS)}; a prepared corpus has "
                            f"{', '.join(SPLITS)}")
    manifest = read_corpus_manifest(out)
    files = sorted((Path(out) / split).glob("shard-*.arrow"))
    expected = manifest.get("splits", {}).get(split, {}).get("files")
    if expected is not None and len(files) != expected:
        raise DataError(f"{Path(out) / split} has {len(files)} shard files but its manifest lists {expected}; the "
                        "folder was modified after it was prepared. Prepare it again (--overwrite)")
    if not files:
        features = block_features(int(manifest["block_size"]))
        return Dataset.from_dict({"input_ids": [], "doc_ids": []}, features=features)
    parts = [Dataset.from_file(str(f)) for f in files]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def load_documents(out: str | Path):
    """The document table of a prepared corpus (doc_index, id, split, tokens, chars) as a Dataset."""
    from datasets import Dataset, concatenate_datasets

    read_corpus_manifest(out)
    files = sorted((Path(out) / "documents").glob("shard-*.arrow"))
    if not files:
        return Dataset.from_dict({name: [] for name, _ in DOC_SCHEMA_FIELDS})
    parts = [Dataset.from_file(str(f)) for f in files]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)
