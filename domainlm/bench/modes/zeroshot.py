"""Zero-shot multiple choice by log-likelihood, the way lm-evaluation-harness scores it.

For each example the prompt template is filled in, every answer choice is appended after a space
(lm-eval's ``target_delimiter``) and the summed log-probability of the choice's tokens is computed;
the highest-scoring choice is the prediction. Tokenisation follows lm-eval's ``HFLM`` exactly, so
the two agree item by item (measured on PubMedQA in benchmarks/biomed/README.md): the text is
encoded with the tokenizer's own special tokens (a BOS only where the tokenizer adds one), the
continuation's tokens are those of ``encode(prompt + " " + choice)`` beyond ``len(encode(prompt))``,
and long inputs lose tokens from the left.

Besides the prediction, every choice's log-likelihood is kept per item, so the report can show the
answer prior: the predicted-label distribution, macro-F1, lm-eval's ``acc_norm`` (log-likelihood per
character of the choice) and a batch-calibrated accuracy (:func:`domainlm.tasks.priors.answer_priors`).
"""

from __future__ import annotations

from typing import Any

from domainlm.bench.features import autocast, ensure_pad, pad_right
from domainlm.bench.loading import LoadedModel
from domainlm.bench.modes.result import ModeResult, RunContext, finish
from domainlm.errors import ConfigError
from domainlm.tasks.data import TaskData
from domainlm.tasks.spec import TaskSpec


def fill_prompt(template: str, ex) -> str:
    values = {"question": ex.meta.get("question", ex.text or ""), "context": ex.meta.get("context", ex.text_b or ""),
              "text": ex.text or "", "text_b": ex.text_b or ""}
    try:
        return template.format(**values)
    except (KeyError, IndexError) as exc:
        raise ConfigError([f"prompt template uses {exc}, which is not one of {{question}}, {{context}}, {{text}}, "
                           "{text_b}"]) from None


def choice_requests(tokenizer, prompt: str, choices: list[str], max_length: int) -> list[tuple[list[int], int]]:
    """(input ids, number of continuation tokens at the end) for each choice, as lm-eval's HFLM builds them."""
    # lm-eval moves trailing spaces of the context into the continuation (_encode_pair)
    stripped = prompt.rstrip()
    delim = prompt[len(stripped):] + " "
    ctx = list(tokenizer(stripped)["input_ids"])
    out = []
    for choice in choices:
        whole = list(tokenizer(stripped + delim + choice)["input_ids"])
        cut = len(ctx)
        if cut >= len(whole):  # the boundary merged the whole choice into the context's last token
            cut = len(whole) - 1
        cont = whole[cut:]
        ids = whole[-(max_length + 1):]
        out.append((ids, min(len(cont), len(ids) - 1)))
    return out


def loglikelihoods(loaded: LoadedModel, requests: list[tuple[list[int], int]], *, batch_size: int, device: str,
                   bf16: bool) -> list[float]:
    """Summed log-probability of the last ``n`` tokens of each request.

    Requests that differ only in a one-token continuation (yes / no / maybe after the same prompt) share
    one forward pass of their common context: the choices of an example cost one pass, not one each.
    lm-evaluation-harness runs a pass per choice; the numbers are the same (the tests check it).
    """
    import torch

    pad = ensure_pad(loaded.tokenizer)
    out = [0.0] * len(requests)
    # Each forward item: (sequence to run, [(request index, first scored position, target ids)]).
    items: dict[tuple[int, ...], list[tuple[int, int, list[int]]]] = {}
    for i, (seq, n) in enumerate(requests):
        run = tuple(seq[:-1]) if n == 1 else tuple(seq)
        items.setdefault(run, []).append((i, len(seq) - n - 1, list(seq[len(seq) - n:])))
    runs = sorted(items, key=len)
    with torch.inference_mode(), autocast(device, bf16):
        for start in range(0, len(runs), batch_size):
            batch = runs[start:start + batch_size]
            ids, mask = pad_right(batch, pad)
            logits = loaded.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for r, seq in enumerate(batch):
                for i, first, target in items[seq]:
                    # log-softmax only over the positions that are scored, not the whole (batch, width, vocab)
                    logp = torch.log_softmax(logits[r, first:first + len(target)].float(), dim=-1)
                    out[i] = float(logp.gather(1, torch.tensor(target, device=logp.device)[:, None]).sum())
    return out


def run_zeroshot(loaded: LoadedModel, spec: TaskSpec, data: TaskData, ctx: RunContext) -> ModeResult:
    result = ModeResult(mode="zeroshot")
    choices = list(spec.choices or data.labels or [])
    requests: list[tuple[list[int], int]] = []
    # A request is at most max_length + 1 tokens; models with a position table (GPT-2, BioGPT) cannot go past it.
    positions = getattr(getattr(loaded.model, "config", None), "max_position_embeddings", None)
    max_length = min(spec.max_length, positions - 1) if isinstance(positions, int) else spec.max_length
    if max_length < spec.max_length:
        result.notes.append(f"inputs cut to the model's {positions} positions (task max_length {spec.max_length})")
    for ex in data.test:
        requests.extend(choice_requests(loaded.tokenizer, fill_prompt(spec.prompt or "", ex), choices, max_length))
    scores = loglikelihoods(loaded, requests, batch_size=spec.batch_size, device=ctx.device, bf16=ctx.bf16)
    pred: list[Any] = []
    k = len(choices)
    for e in range(len(data.test)):
        row = scores[e * k:(e + 1) * k]
        result.choice_scores.append(row)
        pred.append(choices[max(range(k), key=row.__getitem__)])
    result.choices = choices
    result.n_examples = len(data.test)
    result.notes.append(f"zero-shot over choices {choices}")
    return finish(spec, data, [ex.label for ex in data.test], [pred], result)
