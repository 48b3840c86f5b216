"""How ``corpus prepare`` turns documents into token ids: the tokenizer plan (worked out once in the main process:
the ids that wrap a document, a fingerprint of the tokenizer, a picklable recipe for the workers) and the encoder
each worker builds from it. Packing the ids into blocks is :mod:`domainlm.corpora.pack`."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from domainlm.errors import SourceError


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


def tokenizer_fingerprint(tok: Any) -> str:
    """sha256 of what decides the ids: a fast tokenizer's whole serialisation, else its class and vocabulary.

    Recorded in a prepared corpus' manifest; adapt compares it with the model's tokenizer, because a tokenizer
    with the same vocabulary size but other ids (two tokens swapped) would train on ids that mean other text.
    """
    if tok.is_fast:
        return hashlib.sha256(tok.backend_tokenizer.to_str().encode("utf-8")).hexdigest()
    return hashlib.sha256((type(tok).__name__ + json.dumps(tok.get_vocab(), sort_keys=True)).encode()).hexdigest()


def plan_tokenizer(model: str) -> tuple[TokenizerPlan, Any]:
    """Load the tokenizer of ``model`` (anything ``sources.resolution.resolve`` accepts) and work out its wrapping."""
    from domainlm.sources.load import load_tokenizer
    from domainlm.sources.resolution import resolve

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
    fingerprint = tokenizer_fingerprint(tok)
    if tok.is_fast:
        mode, payload, table = "fast", tok.backend_tokenizer.to_str(), None
    else:
        vocab = tok.get_vocab()
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
