"""Perplexity tasks: held-out likelihood (causal sliding window or masked pseudo-likelihood) and
masked-token recovery, through the numerics in :mod:`domainlm.bench.perplexity`.

Both metrics come from one scoring pass, cached per model and file, so a suite that asks for the
perplexity and the recovery of the same protein file scores it once.
"""

from __future__ import annotations

from domainlm.bench.loading import LoadedModel
from domainlm.bench.modes.result import ModeResult, RunContext, finish
from domainlm.bench.perplexity import score_texts, summarise
from domainlm.tasks.data import TaskData
from domainlm.tasks.spec import TaskSpec


def run_lm(loaded: LoadedModel, spec: TaskSpec, data: TaskData, ctx: RunContext) -> ModeResult:
    result = ModeResult(mode="perplexity")
    texts = [ex.text or "" for ex in data.test]
    budget = spec.max_tokens if loaded.is_causal or spec.masked_max_tokens is None else spec.masked_max_tokens
    window = spec.window if loaded.is_causal or spec.masked_window is None else spec.masked_window
    key = ("lm", loaded.spec, data.files.get("test", data.files.get("dev")), len(texts), window, spec.stride, budget)
    scores = ctx.cache.get(key)
    if scores is None:
        scores = score_texts(loaded.model, loaded.tokenizer, texts, causal=loaded.is_causal, window=window,
                             stride=spec.stride, max_tokens=budget, batch_size=spec.batch_size,
                             device=ctx.device, bf16=ctx.bf16)
        ctx.cache[key] = scores
    else:
        result.notes.append("scored in the pass of an earlier task on the same file (its wall time holds the cost)")
    result.perplexity = summarise(scores)
    result.perplexity["method"] = "causal sliding window" if loaded.is_causal else "masked pseudo-perplexity"
    if not loaded.is_causal:
        tokens = sum(s.tokens for s in scores)
        result.perplexity["recovery_accuracy"] = sum(s.correct for s in scores) / tokens if tokens else 0.0
    fresh_head = [p for p in loaded.fresh_parameters if p.split(".")[0] in ("cls", "lm_head")]
    if fresh_head:
        result.notes.append("the language-model head has no pretrained weights (initialised fresh), so this "
                            "likelihood is not meaningful for the base model")
        result.perplexity["lm_head_fresh"] = True
    if budget is not None:
        result.notes.append(f"scored the first {result.perplexity['tokens']} tokens (budget {budget})")
    result.n_examples = sum(1 for s in scores if s.tokens)
    if spec.metric == "recovery_accuracy":
        rows = [(s.correct, s.tokens) for s in scores]
    else:
        rows = [s.row() for s in scores]
    return finish(spec, data, [None] * len(scores), [rows], result)
