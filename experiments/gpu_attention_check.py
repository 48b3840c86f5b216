"""On a CUDA GPU: FlexAttention with the document BlockMask trains like today's SDPA path (issue 15, item 5).

The CPU tests compare the two paths forward only (torch has no FlexAttention backward on CPU). This script
runs what only a GPU can: forward *and* backward through adapt's own loss (``lm_loss.loss_sum``, fused head,
three packed documents per row) with ``flex_attention`` against ``sdpa``, in fp32, for a causal and a masked
model, plus the invariance check (a token's loss does not change when an unrelated document is packed in
front). Prints one JSON line per model and exits non-zero if a check fails.

    python experiments/gpu_attention_check.py            # needs CUDA
"""

from __future__ import annotations

import json
import sys

import torch

TOL = 1e-5


def _batch(vocab: int, rows: int = 2, n: int = 384, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (rows, n), generator=g)
    docs = torch.zeros(rows, n, dtype=torch.long)
    docs[:, n // 3:] = 1
    docs[:, 2 * n // 3:] = 2
    return ids, docs


def _labels(objective: str, ids, docs):
    from domainlm.lm_loss import causal_labels

    if objective == "causal":
        return causal_labels(ids, docs)
    return ids.clone()  # masked: score every position (no masking noise, so both paths see the same input)


def _token_losses(model, objective, ids, docs):
    from domainlm.attention import flex_inputs
    from domainlm.lm_loss import family_inputs, model_inputs

    kwargs = flex_inputs(model, family_inputs(model, model_inputs(ids, docs, objective), docs), docs)
    logits = model(**kwargs).logits.float()
    labels = _labels(objective, ids, docs)
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")


def _loss_and_grads(model, objective, ids, docs):
    from domainlm.lm_loss import loss_sum, split_head

    labels = _labels(objective, ids, docs)
    split = split_head(model, "causal" if objective == "causal" else "masked")
    loss = loss_sum(model, objective, ids, labels, docs, split=split, scale=1.0, compute_dtype=torch.float32)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), grads


def check(name: str, objective: str) -> dict:
    from domainlm.sources import load_model, resolve

    src = resolve(name)
    sdpa, _ = load_model(src, objective)
    flex, _ = load_model(src, objective)
    flex.set_attn_implementation("flex_attention")
    sdpa, flex = sdpa.cuda(), flex.cuda()
    ids, docs = (t.cuda() for t in _batch(sdpa.config.vocab_size))
    out: dict = {"model": name, "objective": objective, "attention": flex.config._attn_implementation}
    loss_a, grads_a = _loss_and_grads(sdpa, objective, ids, docs)
    loss_b, grads_b = _loss_and_grads(flex, objective, ids, docs)
    out["loss_sdpa"], out["loss_flex"] = loss_a, loss_b
    out["loss_rel_diff"] = abs(loss_b - loss_a) / abs(loss_a)
    out["grad_max_abs_diff"] = max(float((grads_b[k] - grads_a[k]).abs().max()) for k in grads_a)
    out["grad_max_abs"] = max(float(g.abs().max()) for g in grads_a.values())
    with torch.no_grad():
        a = _token_losses(sdpa.eval(), objective, ids, docs)
        b = _token_losses(flex.eval(), objective, ids, docs)
        out["token_loss_max_abs_diff"] = float((a - b).abs().max())
        last = (docs[0] == 2)
        alone_ids = ids[:1, last]
        alone_docs = torch.zeros_like(alone_ids)
        other = torch.randint(5, sdpa.config.vocab_size, (1, 17), device="cuda",
                              generator=torch.Generator(device="cuda").manual_seed(1))
        packed_ids = torch.cat([other, alone_ids], 1)
        packed_docs = torch.cat([torch.zeros_like(other), torch.ones_like(alone_docs)], 1)
        la = _token_losses(flex, objective, alone_ids, alone_docs)
        lb = _token_losses(flex, objective, packed_ids, packed_docs)[:, 17:]
        out["invariance_max_abs_diff"] = float((la - lb).abs().max())
    out["ok"] = (out["loss_rel_diff"] <= TOL and out["token_loss_max_abs_diff"] <= TOL
                 and out["invariance_max_abs_diff"] <= TOL
                 and out["grad_max_abs_diff"] <= 1e-4 * max(out["grad_max_abs"], 1e-6) + 1e-6)
    return out


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_attention_check: needs a CUDA GPU (FlexAttention has no backward on CPU)", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    failed = 0
    for name, objective in (("tiny-llama", "causal"), ("tiny-bert", "masked")):
        try:
            res = check(name, objective)
        except Exception as exc:  # report and go on to the next model: this is a one-shot GPU session
            res = {"model": name, "objective": objective, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
        failed += not res["ok"]
        print(json.dumps(res), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
