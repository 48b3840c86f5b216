"""Instruction and chat data as replay: read, render with the chat template, mask all but the answers, pack.

``adapt``'s ``replay_corpus`` may name a chat/instruction JSONL (or the ``instructions-sample`` card). Each line
is one conversation, in either common form:

* OpenAI-style ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}``;
* Alpaca-style ``{"instruction": "...", "input": "..." (optional), "output": "..."}``.

A conversation is rendered with the model's chat template (``tokenizer.apply_chat_template``), or for a model
without one as ``Question: ... Answer: ...``. The loss counts only the assistant tokens: the prepared blocks carry
a ``loss_mask`` column (int8, 1 on the tokens of each assistant turn including the template's end-of-turn
marker) beside ``input_ids`` and ``doc_ids``, and adapt's batch building sets every other label to IGNORE.
Conversations are packed like documents (``doc_ids`` per token, no padding, the last partial block dropped).

Self-replay (``adapt --self-replay N``): the base model answers N prompts of an instruction set (greedy, capped
length) before training; :func:`self_answers` writes those conversations, which are then replayed like any
instruction set (the model is pulled back towards its own behaviour, and no outside data is needed).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from domainlm.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
FORMAT_VERSION = 1


def looks_like_instructions(path: str | Path) -> bool:
    """True for a .jsonl/.json file whose first record has ``messages`` or ``instruction``."""
    p = Path(path).expanduser()
    if not p.is_file() or not p.name.endswith((".jsonl", ".json", ".jsonl.gz")):
        return False
    import gzip

    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rt", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    rec = json.loads(line)
                    return isinstance(rec, dict) and ("messages" in rec or "instruction" in rec)
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return False


def _conversation(rec: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object with 'messages' or 'instruction'/'output'")
    if "messages" in rec:
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
        out = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise DataError(f"{where}: message {i} must be {{\"role\": one of {', '.join(ROLES)}, \"content\": "
                                f"text}}, got {json.dumps(m)[:120]}")
            out.append({"role": m["role"], "content": m["content"]})
    elif "instruction" in rec:
        ins, inp, outp = rec.get("instruction"), rec.get("input") or "", rec.get("output")
        if not isinstance(ins, str) or not isinstance(inp, str) or not isinstance(outp, str):
            raise DataError(f"{where}: 'instruction', 'input' and 'output' must be text (an Alpaca-style record "
                            "needs 'instruction' and 'output')")
        out = [{"role": "user", "content": f"{ins}\n\n{inp}" if inp.strip() else ins},
               {"role": "assistant", "content": outp}]
    else:
        raise DataError(f"{where}: a record needs 'messages' (OpenAI style) or 'instruction' and 'output' (Alpaca "
                        "style)")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in out):
        raise DataError(f"{where}: the conversation has no assistant answer, so nothing would count in the loss")
    return out


def read_conversations(path: str | Path) -> list[list[dict[str, str]]]:
    """Every conversation of an instruction JSONL, in file order; a malformed line fails naming file and line."""
    import gzip

    p = Path(path).expanduser()
    opener = gzip.open if p.suffix == ".gz" else open
    out = []
    with opener(p, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise DataError(f"{p}:{n}: not valid JSON ({exc})") from None
            out.append(_conversation(rec, f"{p}:{n}"))
    if not out:
        raise DataError(f"{p} holds no conversation")
    return out


# --------------------------------------------------------------------------------------------------
# Rendering with the assistant spans
# --------------------------------------------------------------------------------------------------

def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer: Any, messages: list[dict[str, str]], layout: str = "auto") -> tuple[str, list[tuple[int, int]]]:
    """The conversation's text and the character spans of its assistant turns (what the loss counts).

    ``chat`` (the template): each assistant span runs from the end of the prefix rendered with the generation
    prompt to the end of the prefix that includes the turn, so the template's end-of-turn marker is inside it
    (the model learns to stop). ``plain``: ``Question: ...\\nAnswer: ...`` with the answers as the spans.
    """
    if layout == "auto":
        layout = "chat" if has_chat_template(tokenizer) else "plain"
    if layout == "plain":
        text, spans = "", []
        for m in messages:
            if m["role"] == "system":
                text += m["content"].strip() + "\n\n"
            elif m["role"] == "user":
                text += f"Question: {m['content'].strip()}\nAnswer: "
            else:
                start = len(text)
                text += m["content"].strip()
                spans.append((start, len(text)))
                text += "\n\n"
        return text.rstrip(), spans
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        through = tokenizer.apply_chat_template(messages[:i + 1], tokenize=False)
        if not (full.startswith(before) and full.startswith(through) and len(through) > len(before)):
            raise ConfigError([f"the chat template of {getattr(tokenizer, 'name_or_path', 'this model')} does not "
                               "render a conversation's beginning as the beginning of the whole, so the assistant "
                               "tokens cannot be found; use reading/replay layout plain"])
        spans.append((len(before), len(through)))
    return full, spans


def encode(tokenizer: Any, messages: list[dict[str, str]], layout: str = "auto") -> tuple[list[int], list[int]]:
    """(token ids, loss mask): 1 on every token that starts inside an assistant span. The plain layout is wrapped
    as prepare wraps a document (BOS when the tokenizer adds one, EOS at the end, counted as part of the answer);
    a chat template brings its own markers."""
    text, spans = render(tokenizer, messages, layout)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    mask = [0] * len(ids)
    for k, (a, _) in enumerate(enc["offset_mapping"]):
        mask[k] = int(any(s <= a < e for s, e in spans))
    if layout == "plain" or (layout == "auto" and not has_chat_template(tokenizer)):
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        if bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]:
            ids, mask = [bos] + ids, [0] + mask
        if eos is not None:
            ids, mask = ids + [eos], mask + [int(messages[-1]["role"] == "assistant")]
    return ids, mask


# --------------------------------------------------------------------------------------------------
# Packing into a prepared folder
# --------------------------------------------------------------------------------------------------

def _fingerprint(path: Path, tokenizer: Any, block_size: int, layout: str) -> str:
    from domainlm.artifacts import sha256_file

    tok = {"name": getattr(tokenizer, "name_or_path", ""), "size": len(tokenizer),
           "template": getattr(tokenizer, "chat_template", None), "eos": tokenizer.eos_token_id,
           "vocab": hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()}
    payload = {"file": sha256_file(path), "tokenizer": tok, "block_size": block_size, "layout": layout,
               "version": FORMAT_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def prepare_instructions(path: str | Path, tokenizer: Any, block_size: int, out: str | Path,
                         layout: str = "auto") -> dict[str, Any]:
    """Pack an instruction JSONL into ``out`` with ``tokenizer``, in prepare's storage format (train/: token ids,
    document starts and the bit-packed ``loss_mask``; manifest.json with its layout); a folder already prepared
    from the same file, tokenizer and settings is reused."""
    from domainlm.artifacts import MANIFEST, peek_manifest, write_manifest
    from domainlm.corpora.pack import FORMAT_VERSION, SplitWriter, token_dtype
    from domainlm.corpora.tokenizer_plan import tokenizer_fingerprint

    path, out = Path(path).expanduser(), Path(out)
    fingerprint = _fingerprint(path, tokenizer, block_size, layout)
    man_path = out / MANIFEST
    if man_path.is_file():
        old = peek_manifest(out)
        if old.get("complete") and old.get("fingerprint") == fingerprint:
            return old
        man_path.unlink()
    conversations = read_conversations(path)
    encoded = [encode(tokenizer, conv, layout) for conv in conversations]
    total = sum(len(ids) for ids, _ in encoded)
    if total < block_size:
        raise DataError(f"{path}: its {len(conversations)} conversation(s) make {total} tokens, fewer than one "
                        f"block of {block_size}; add conversations")
    dtype = token_dtype(len(tokenizer))
    writer = SplitWriter(out / "train", 0, block_size, dtype)
    try:
        writer.add(np.concatenate([np.asarray(ids, dtype=np.int64) for ids, _ in encoded]),
                   np.asarray([len(ids) for ids, _ in encoded], dtype=np.int64), np.arange(len(encoded)),
                   np.concatenate([np.asarray(mask, dtype=np.uint8) for _, mask in encoded]))
        got = writer.close()
    except BaseException:
        writer.abort()
        raise
    n = got["blocks"]
    counted = np.concatenate([np.asarray(mask, dtype=np.int64) for _, mask in encoded])[: n * block_size]
    return write_manifest(
        out, "corpus", complete=True, fingerprint=fingerprint, content="instructions", block_size=block_size,
        inputs=[{"path": str(path.resolve()), "format": "instructions"}],
        config={"inputs": [str(path)], "format": "instructions", "block_size": block_size, "layout": layout},
        tokenizer={"name_or_path": getattr(tokenizer, "name_or_path", ""), "vocab_size": len(tokenizer),
                   "chat_template": has_chat_template(tokenizer), "fingerprint": tokenizer_fingerprint(tokenizer)},
        splits={"train": {"blocks": n, "tokens": n * block_size, "documents": len(conversations), "files": 1},
                "validation": {"blocks": 0, "tokens": 0, "documents": 0, "files": 0}},
        layout={"version": FORMAT_VERSION, "dtype": dtype.name, "bytes_per_token": dtype.itemsize, "loss_mask": True,
                "tasks": [{"rank": 0, "doc_base": 0, "documents": got["documents"],
                           "blocks": {"train": n, "validation": 0}}]},
        counts={"conversations": len(conversations), "tokens": int(total),
                "loss_tokens": int(counted.sum()), "tail_tokens_dropped": int(total - n * block_size)})


# --------------------------------------------------------------------------------------------------
# Self-replay
# --------------------------------------------------------------------------------------------------

def prompt_of(conversation: list[dict[str, str]]) -> list[dict[str, str]]:
    """The messages before the first assistant turn."""
    first = next(i for i, m in enumerate(conversation) if m["role"] == "assistant")
    return conversation[:first]


def self_answers(model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], n: int, seed: int,
                 max_new_tokens: int, layout: str = "auto", batch_size: int = 8) -> list[list[dict[str, str]]]:
    """The model's own greedy answers to ``n`` prompts chosen by ``seed`` (in that order), as conversations.

    Prompts are rendered as for training (the generation prompt of the chat template, or ``Question: ...
    Answer:``), left-padded in batches; answers stop at EOS or ``max_new_tokens``. Empty answers are left out."""
    import torch

    order = np.random.default_rng([seed, 0x5E1F]).permutation(len(conversations))[: min(n, len(conversations))]
    prompts = [prompt_of(conversations[int(i)]) for i in order]
    chat = layout == "chat" or (layout == "auto" and has_chat_template(tokenizer))

    def text_of(msgs: list[dict[str, str]]) -> str:
        if chat:
            return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return render(tokenizer, msgs + [{"role": "assistant", "content": ""}], "plain")[0].rstrip() + " "

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    side = tokenizer.padding_side
    was_training = model.training
    model.eval()
    out = []
    try:
        tokenizer.padding_side = "left"
        for b in range(0, len(prompts), batch_size):
            chunk = prompts[b:b + batch_size]
            enc = [tokenizer(text_of(p), add_special_tokens=not chat)["input_ids"] for p in chunk]
            width = max(len(e) for e in enc)
            ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc])
            att = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
            with torch.no_grad():
                gen = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=max_new_tokens,
                                     do_sample=False, pad_token_id=pad, use_cache=True)
            for p, row in zip(chunk, gen[:, width:], strict=True):
                answer = tokenizer.decode(row, skip_special_tokens=True).strip()
                if answer:
                    out.append(p + [{"role": "assistant", "content": answer}])
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def write_conversations(path: str | Path, conversations: list[list[dict[str, str]]]) -> None:
    from domainlm.artifacts import atomic_write_text

    atomic_write_text(Path(path), "".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n"
                                          for c in conversations))
