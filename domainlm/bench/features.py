"""Turning examples into model inputs and hidden states: tokenisation, batching, pooling.

Shared by the probe (frozen features) and fine-tuning (same inputs, gradients on). Batches are
sorted by length so little compute goes to padding. Words of a token task are joined with single
spaces and tokenised as running text; each word takes the state of its first piece for
bidirectional models and of its last piece for causal ones (the first piece of a causal model has
not seen the rest of the word). Inputs longer than ``max_length`` are truncated; the words cut off
are predicted "O" and counted in the report.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from domainlm.bench.loading import LoadedModel
from domainlm.errors import ConfigError
from domainlm.tasks.readers.base import Example

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    input_ids: list[int]
    special: list[int]  # 1 for special tokens ([CLS], [SEP], <eos>) left out of mean pooling
    word_pos: list[int] | None = None  # token index per word (-1: cut off by max_length)


def model_max_length(loaded: LoadedModel, wanted: int) -> int:
    """The task's max_length, capped by the model's position table."""
    cfg = loaded.model.config
    cap = getattr(cfg, "max_position_embeddings", None) or wanted
    if getattr(cfg, "model_type", "") == "esm":
        cap -= 2  # ESM's table counts the padding offset
    return max(8, min(wanted, cap))


def ensure_pad(tokenizer) -> int:
    """Causal tokenizers often lack a pad token; padding is masked out, so EOS serves."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer.pad_token_id


def encode_sequences(loaded: LoadedModel, examples: list[Example], max_length: int,
                     spaced: bool = False) -> tuple[list[Encoded], int]:
    """Tokenise texts (pairs as pairs for encoders, joined by a newline for causal models).

    ``spaced`` puts a space between characters first (residues for a text tokenizer, see TaskSpec.spaced).
    """
    tok = loaded.tokenizer
    max_length = model_max_length(loaded, max_length)
    pairs = any(ex.text_b is not None for ex in examples)
    texts = [" ".join(ex.text or "") if spaced else (ex.text or "") for ex in examples]
    kwargs: dict[str, Any] = dict(truncation=True, max_length=max_length, return_special_tokens_mask=True)
    if pairs and not loaded.is_causal:
        enc = tok(texts, [ex.text_b or "" for ex in examples], **kwargs)
    else:
        if pairs:
            texts = [f"{t}\n{ex.text_b or ''}" for t, ex in zip(texts, examples, strict=False)]
        enc = tok(texts, **kwargs)
    out = [Encoded(list(ids), list(sp)) for ids, sp in zip(enc["input_ids"], enc["special_tokens_mask"], strict=False)]
    truncated = sum(len(e.input_ids) >= max_length for e in out)
    return out, truncated


def encode_words(loaded: LoadedModel, examples: list[Example], max_length: int) -> tuple[list[Encoded], int]:
    """Tokenise word lists as running text and find each word's representative piece."""
    tok = loaded.tokenizer
    if not getattr(tok, "is_fast", False):
        raise ConfigError([f"token tasks need a fast tokenizer (character offsets); {loaded.spec} has "
                           f"{type(tok).__name__}"])
    max_length = model_max_length(loaded, max_length)
    texts, starts = [], []
    for ex in examples:
        pos, s = 0, []
        for w in ex.tokens:
            s.append(pos)
            pos += len(w) + 1
        texts.append(" ".join(ex.tokens))
        starts.append(s)
    enc = tok(texts, truncation=True, max_length=max_length, return_offsets_mapping=True,
              return_special_tokens_mask=True)
    out, cut = [], 0
    for i, ex in enumerate(examples):
        n = len(ex.tokens)
        word_of_char = []
        for w, word in enumerate(ex.tokens):
            word_of_char.extend([w] * len(word) + [-1])
        pos = [-1] * n
        for t, ((a, b), sp) in enumerate(zip(enc["offset_mapping"][i], enc["special_tokens_mask"][i], strict=False)):
            if sp or b <= a:
                continue
            w = word_of_char[b - 1] if b - 1 < len(word_of_char) else -1
            if w < 0:
                continue  # a piece that is only the space between words
            if loaded.is_causal or pos[w] < 0:
                pos[w] = t
        cut += sum(p < 0 for p in pos)
        out.append(Encoded(list(enc["input_ids"][i]), list(enc["special_tokens_mask"][i]), pos))
    return out, cut


def pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)`` of ragged token rows, right-padded with ``pad_id`` to the longest row: the
    one padding of bench's batches (features here, perplexity windows, zero-shot choices)."""
    import torch

    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[r, :len(row)] = 1
    return ids, mask


def batches(encoded: list[Encoded], batch_size: int, pad_id: int, device: str) -> Iterator[tuple[list[int], Any]]:
    """Yield (example indices, {input_ids, attention_mask, special}) sorted by length."""
    import torch

    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = pad_right([encoded[i].input_ids for i in idx], pad_id)
        special = torch.ones(ids.shape, dtype=torch.bool)
        for r, i in enumerate(idx):
            special[r, :len(encoded[i].input_ids)] = torch.tensor(encoded[i].special, dtype=torch.bool)
        yield idx, {"input_ids": ids.to(device), "attention_mask": mask.to(device), "special": special.to(device)}


def body(model):
    """The transformer without its LM head (hidden states only: the head would cost a vocab matmul)."""
    return getattr(model, "base_model", model)


def autocast(device: str, bf16: bool):
    import torch

    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)


def hidden(model, batch: dict[str, Any], layers: list[int] | None = None):
    """Hidden states [batch, tokens, dim]: the last layer, or the mean of ``layers`` (index into the
    embeddings + every block's output, negative from the top)."""
    if not layers or list(layers) == [-1]:
        return body(model)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    out = body(model)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    states = out.hidden_states
    n = len(states)
    picked = sorted({i % n for i in layers if -n <= i < n})
    if not picked:
        from domainlm.errors import ConfigError

        raise ConfigError([f"'layers' {list(layers)} names no layer of a model with {n - 1} layers"])
    return states[picked[0]] if len(picked) == 1 else sum(states[i] for i in picked) / len(picked)


def pool(h, batch: dict[str, Any], how: str):
    """Mean over non-special tokens, the first token ([CLS]) or the last real token (causal)."""
    import torch

    mask = batch["attention_mask"].bool()
    if how == "cls":
        return h[:, 0]
    if how == "last":
        last = mask.long().sum(dim=1) - 1
        return h[torch.arange(h.shape[0], device=h.device), last]
    keep = mask & ~batch["special"]
    keep = torch.where(keep.any(dim=1, keepdim=True), keep, mask)  # an input of only specials
    w = keep.unsqueeze(-1).to(h.dtype)
    return (h * w).sum(dim=1) / w.sum(dim=1).clamp(min=1)


def use_spacing(spec, loaded: LoadedModel) -> bool:
    """TaskSpec.spaced, or its default: FASTA text for a model that is not a protein model."""
    return spec.spaced if spec.spaced is not None else (spec.format in ("fasta", "flip") and loaded.kind != "protein")


def sequence_features(loaded: LoadedModel, examples: list[Example], *, max_length: int, batch_size: int,
                      pooling: str, device: str, bf16: bool, layers: list[int] | None = None,
                      spaced: bool = False) -> tuple[Any, int]:
    """One float32 vector per example (numpy [n, dim]) and the number of truncated inputs."""
    import numpy as np
    import torch

    encoded, truncated = encode_sequences(loaded, examples, max_length, spaced)
    pad = ensure_pad(loaded.tokenizer)
    feats: list[Any] = [None] * len(examples)
    with torch.inference_mode(), autocast(device, bf16):
        for idx, batch in batches(encoded, batch_size, pad, device):
            vec = pool(hidden(loaded.model, batch, layers), batch, pooling).float().cpu().numpy()
            for r, i in enumerate(idx):
                feats[i] = vec[r]
    return np.stack(feats).astype(np.float32), truncated


def word_features(loaded: LoadedModel, examples: list[Example], *, max_length: int, batch_size: int, device: str,
                  bf16: bool, layers: list[int] | None = None) -> tuple[list[Any], list[Any], int]:
    """Per example: word vectors [n_words, dim] and a mask of words that got a vector; words cut."""
    import numpy as np
    import torch

    encoded, cut = encode_words(loaded, examples, max_length)
    pad = ensure_pad(loaded.tokenizer)
    feats: list[Any] = [None] * len(examples)
    masks: list[Any] = [None] * len(examples)
    with torch.inference_mode(), autocast(device, bf16):
        for idx, batch in batches(encoded, batch_size, pad, device):
            h = hidden(loaded.model, batch, layers).float().cpu().numpy()
            for r, i in enumerate(idx):
                pos = np.asarray(encoded[i].word_pos)
                ok = pos >= 0
                vec = np.zeros((len(pos), h.shape[-1]), dtype=np.float32)
                vec[ok] = h[r, pos[ok]]
                feats[i], masks[i] = vec, ok
    return feats, masks, cut
