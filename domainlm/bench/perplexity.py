"""Held-out likelihood numerics: the one place bench (and anyone else) computes perplexity.

* Causal models: token-level negative log-likelihood with a sliding window (the Hugging Face
  "perplexity of fixed-length models" recipe): windows of ``window`` tokens advance by ``stride``;
  only the tokens new to a window are scored, the rest are context. A BOS (or EOS, as
  lm-evaluation-harness does for rolling log-likelihoods) token is put in front of every document
  so its first real token is scored too.
* Masked models: pseudo-log-likelihood (Salazar et al. 2020): every token is masked once, on its
  own, and scored from both sides; the masked copies of a chunk run as one batch. The same pass
  counts how often the top prediction is the original token (masked-token recovery).
* Normalisation: per token (exp of the mean token NLL), per character and per whitespace word
  (exp of total NLL over characters or words), so models with different tokenizers can be
  compared; bits per character too.

Perplexity is ``exp(sum of token NLLs / number of scored tokens)``, computed by
:func:`domainlm.lm_loss.perplexity` (the one definition: adapt, vocab and bench share it); tests check
it against ``exp(model(ids, labels=ids).loss)`` computed the plain way on a tiny model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class DocScore:
    """Sums for one document (nats)."""

    nll: float
    tokens: int
    chars: int
    words: int
    correct: int = 0  # masked models: positions whose top prediction is the original token

    def row(self) -> tuple[float, int, int, int]:
        return (self.nll, self.tokens, self.chars, self.words)


def summarise(scores: list[DocScore]) -> dict[str, float]:
    """Per-token, per-character and per-word perplexity and bits per character over documents.

    The exp (and its overflow and empty cases) is :func:`domainlm.lm_loss.perplexity`'s, the one
    definition adapt, vocab and bench share.
    """
    from domainlm.lm_loss import perplexity

    nll = sum(s.nll for s in scores)
    tokens, chars, words = (sum(getattr(s, k) for s in scores) for k in ("tokens", "chars", "words"))

    def ppl(n: int) -> float:
        return perplexity(nll, n)

    return {"per_token": ppl(tokens), "per_char": ppl(chars), "per_word": ppl(words),
            "bits_per_char": (nll / chars / math.log(2)) if chars else float("nan"),
            "nll": nll, "tokens": tokens, "chars": chars, "words": words}


def _prefix_token(tokenizer) -> int | None:
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return tid
    return None


def _content(tokenizer, text: str, limit: int | None) -> tuple[list[int], str]:
    """Token ids of ``text`` without specials, cut at ``limit`` tokens, and the text they cover."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        if limit is not None and len(ids) > limit:
            ids = ids[:limit]
            text = text[:enc["offset_mapping"][limit - 1][1]]
        return ids, text
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if limit is not None and len(ids) > limit:
        ids = ids[:limit]
        # Slow tokenizers give no offsets; they are the character-level protein ones here.
        text = "".join(tokenizer.convert_ids_to_tokens(ids))
    return ids, text


def special_wrap(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts before and after a single text ([CLS] / [SEP], <cls> / <eos>).

    Found by encoding a probe with and without specials, because transformers 5's fast tokenizers
    no longer expose ``build_inputs_with_special_tokens``.
    """
    probe = "a"
    bare = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe)["input_ids"])
    for k in range(len(full) - len(bare) + 1):
        if full[k:k + len(bare)] == bare:
            return full[:k], full[k + len(bare):]
    return [], []


def budgeted(tokenizer, texts: list[str], max_tokens: int | None) -> list[tuple[list[int], str]]:
    """Token ids (no specials) and the text they cover, per document, under one shared token budget.

    Documents past the budget become empty (no ids, no text), so their rows stay aligned across
    models; the document that crosses it is cut.
    """
    out = []
    budget = max_tokens
    for text in texts:
        if budget is not None and budget <= 0:
            out.append(([], ""))
            continue
        ids, covered = _content(tokenizer, text, budget)
        if budget is not None:
            budget -= len(ids)
        out.append((ids, covered))
    return out


def _doc_score(text: str, nll: float, tokens: int, correct: int = 0) -> DocScore:
    return DocScore(nll, tokens, len(text), len(text.split()), correct)


def causal_windows(ids: list[int], window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, n_new) windows: tokens ``end - n_new .. end`` are scored in window ``begin..end``."""
    out, prev_end, n = [], 0, len(ids)
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        new = end - prev_end
        if new > 0:
            out.append((begin, end, new))
        prev_end = end
        if end == n:
            break
    return out


def causal_scores(model, tokenizer, texts: list[str], *, window: int = 256, stride: int | None = None,
                  max_tokens: int | None = None, batch_size: int = 8, device: str = "cpu",
                  bf16: bool = False) -> list[DocScore]:
    """Sliding-window token NLL of each text under a causal LM (see the module docstring)."""
    import torch
    import torch.nn.functional as F

    from domainlm.bench.features import autocast, pad_right

    stride = stride or max(1, window // 2)
    prefix = _prefix_token(tokenizer)
    docs, jobs = [], []  # jobs: (doc index, input ids, number of scored targets at the end)
    for d, (ids, covered) in enumerate(budgeted(tokenizer, texts, max_tokens)):
        docs.append(covered)
        if not ids:
            continue
        full = ([prefix] if prefix is not None else []) + ids
        for begin, end, new in causal_windows(full, window, stride):
            jobs.append((d, full[begin:end], min(new, end - begin - 1)))
    nll = [0.0] * len(docs)
    count = [0] * len(docs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(jobs)), key=lambda j: len(jobs[j][1]))
    with torch.inference_mode(), autocast(device, bf16):
        for start in range(0, len(order), batch_size):
            chunk = [jobs[j] for j in order[start:start + batch_size]]
            ids, mask = pad_right([seq for _, seq, _ in chunk], pad)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            for r, (d, seq, new) in enumerate(chunk):
                n = len(seq)
                if new <= 0:
                    continue
                # Position t predicts token t+1; score the last `new` tokens of the window.
                pred = logits[r, n - 1 - new:n - 1]
                target = torch.tensor(seq[n - new:], device=pred.device)
                nll[d] += float(F.cross_entropy(pred, target, reduction="sum"))
                count[d] += new
    return [_doc_score(docs[d], nll[d], count[d]) for d in range(len(docs))]


def masked_scores(model, tokenizer, texts: list[str], *, window: int = 128, max_tokens: int | None = None,
                  batch_size: int = 32, device: str = "cpu", bf16: bool = False) -> list[DocScore]:
    """Pseudo-log-likelihood of each text under a masked LM: each token masked once, batched.

    Long texts are cut into chunks of ``window - 2`` tokens (room for [CLS]/[SEP] or <cls>/<eos>);
    a token is scored with its own chunk as context.
    """
    import torch
    import torch.nn.functional as F

    from domainlm.bench.features import autocast, pad_right

    if tokenizer.mask_token_id is None:
        from domainlm.errors import ConfigError

        name = getattr(tokenizer, "name_or_path", "?")
        raise ConfigError([f"pseudo-perplexity masks tokens, but the tokenizer of {name} has no mask token; use a "
                           "causal model or a masked LM"])
    prefix, suffix = special_wrap(tokenizer)
    size = max(1, window - len(prefix) - len(suffix))
    docs, rows = [], []  # rows: (doc index, input ids with specials, position masked)
    for d, (ids, covered) in enumerate(budgeted(tokenizer, texts, max_tokens)):
        docs.append(covered)
        for c in range(0, len(ids), size):
            piece = ids[c:c + size]
            seq = prefix + piece + suffix
            rows.extend((d, seq, len(prefix) + k) for k in range(len(piece)))
    nll = [0.0] * len(docs)
    count = [0] * len(docs)
    correct = [0] * len(docs)
    mask_id = tokenizer.mask_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.inference_mode(), autocast(device, bf16):
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            ids, att = pad_right([seq for _, seq, _ in chunk], pad)
            for r, (_, _, pos) in enumerate(chunk):
                ids[r, pos] = mask_id
            logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits
            positions = torch.tensor([r[2] for r in chunk], device=logits.device)
            picked = logits[torch.arange(len(chunk), device=logits.device), positions].float()
            target = torch.tensor([r[1][r[2]] for r in chunk], device=logits.device)
            losses = F.cross_entropy(picked, target, reduction="none")
            hits = picked.argmax(dim=-1) == target
            for r, (d, _, _) in enumerate(chunk):
                nll[d] += float(losses[r])
                count[d] += 1
                correct[d] += int(hits[r])
    return [_doc_score(docs[d], nll[d], count[d], correct[d]) for d in range(len(docs))]


def score_texts(model, tokenizer, texts: list[str], *, causal: bool, window: int, stride: int | None = None,
                max_tokens: int | None = None, batch_size: int = 8, device: str = "cpu",
                bf16: bool = False) -> list[DocScore]:
    """Causal sliding-window NLL or masked pseudo-NLL, whichever the model is."""
    if causal:
        return causal_scores(model, tokenizer, texts, window=window, stride=stride, max_tokens=max_tokens,
                             batch_size=batch_size, device=device, bf16=bf16)
    return masked_scores(model, tokenizer, texts, window=window, max_tokens=max_tokens,
                         batch_size=max(batch_size, 32), device=device, bf16=bf16)


def plain_perplexity(model, input_ids: Any) -> float:
    """exp of the model's own mean loss on one sequence: the reference the tests compare against."""
    import torch

    with torch.inference_mode():
        return math.exp(float(model(input_ids=input_ids, labels=input_ids).loss))
