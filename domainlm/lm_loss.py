"""Language-model loss numerics shared by adapt, bench and vocab: one tested place for them.

* Packed blocks carry a document id per token. Positions restart at each document and attention
  never crosses a boundary: causal models get restarting ``position_ids`` and no 2-D mask, which
  transformers' masking utilities turn into a block-diagonal causal mask (its packed-sequence
  support); bidirectional models get an explicit 4-D block-diagonal boolean mask, which
  ``create_bidirectional_mask`` passes through unchanged (SDPA attention).
* Causal labels are next tokens, masked (-100) where the next token starts another document.
* The output head runs only where a loss is needed: at masked positions for MLM, and for causal
  models through :class:`FusedLinearCrossEntropy`, which never materialises the full
  ``tokens x vocabulary`` logits (the cost that dominates small-model training on CPU).
* Perplexity is ``exp(sum of token losses / number of target tokens)``.

Families that do not fit the generic path get their inputs adjusted in :func:`family_inputs` (one place, each
case covered by tests/test_architectures.py): ESM embeds first (its embedding layer reads a 2-D mask),
BioGPT gets an explicit block-diagonal causal mask (it never hands ``position_ids`` to transformers' mask
builder, so packed documents would be invisible to it), ModernBERT gets one mask per layer type (a
ready 4-D mask would otherwise switch off its local-attention window), DeBERTa's embedding layer gets the
per-token mask it expects, and eager attention gets the additive form of the mask.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

IGNORE = -100

# Families whose causal-LM forward is exactly `logits = lm_head(final_hidden)` (no soft-capping or
# logit scaling), so the fused head below computes the same loss as the model's own forward. Gemma
# families qualify only without final-logit soft-capping (Gemma 2 caps at 30; Gemma 3 ships without).
FUSED_HEAD_FAMILIES = {"llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox", "olmo", "olmo2", "phi3", "biogpt",
                       "stablelm", "starcoder2", "smollm3", "gemma", "gemma2", "gemma3_text"}
# Causal families whose model never passes ``position_ids`` to transformers' mask builder, so restarting
# positions alone do not block attention across packed documents: they get an explicit 4-D mask.
EXPLICIT_CAUSAL_MASK = {"biogpt"}
# Families whose own attention code takes a boolean 4-D mask even under eager attention.
OWN_BOOLEAN_MASK = {"deberta", "deberta-v2"}


def positions_from_doc_ids(doc_ids: torch.Tensor) -> torch.Tensor:
    """Position ids that restart at 0 wherever the document id changes (and at each block start)."""
    b, n = doc_ids.shape
    idx = torch.arange(n, device=doc_ids.device).expand(b, n)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    start_idx = torch.where(starts, idx, torch.zeros_like(idx))
    start_idx = torch.cummax(start_idx, dim=1).values
    return idx - start_idx


def bidirectional_doc_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """[batch, 1, L, L] boolean mask: True where query and key belong to the same document."""
    return (doc_ids[:, :, None] == doc_ids[:, None, :]).unsqueeze(1)


def causal_doc_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """[batch, 1, L, L] boolean mask: True where the key is at or before the query in the same document."""
    n = doc_ids.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=doc_ids.device).tril()
    return bidirectional_doc_mask(doc_ids) & causal


def fused_head_refusal(config: Any) -> str | None:
    """Why the fused causal head would not reproduce this model's loss, or None when it does."""
    model_type = getattr(config, "model_type", "")
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        return (f"{model_type} soft-caps its final logits (final_logit_softcapping={cap}), which the fused head "
                "does not apply")
    if getattr(config, "logit_scale", None) not in (None, 1, 1.0):
        return f"{model_type} scales its logits (logit_scale={config.logit_scale})"
    if model_type not in FUSED_HEAD_FAMILIES:
        return f"{model_type} is not among the families whose logits are known to be lm_head(hidden)"
    return None


def causal_labels(input_ids: torch.Tensor, doc_ids: torch.Tensor | None) -> torch.Tensor:
    """Next-token labels aligned with positions (label[i] = token[i+1]); -100 across documents and at the end."""
    labels = torch.full_like(input_ids, IGNORE)
    labels[:, :-1] = input_ids[:, 1:]
    if doc_ids is not None:
        cross = doc_ids[:, 1:] != doc_ids[:, :-1]
        labels[:, :-1][cross] = IGNORE
    return labels


@dataclass
class HeadSplit:
    """A model seen as body (hidden states) + position-wise head, so the head runs only where needed."""

    body: torch.nn.Module
    head: torch.nn.Module
    fused_weight: torch.nn.Parameter | None  # causal: the output matrix for the fused loss
    fused_bias: torch.nn.Parameter | None


def split_head(model: Any, objective: str) -> HeadSplit | None:
    """Find body and head of a HF ``*ForCausalLM``/``*ForMaskedLM`` (unwrapping peft), or None if unknown."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    prefix = getattr(inner, "base_model_prefix", None)
    body = getattr(inner, prefix, None) if prefix else None
    if body is None or body is inner:
        return None
    model_type = getattr(inner.config, "model_type", "")
    if objective == "causal":
        head = inner.get_output_embeddings()
        why = fused_head_refusal(inner.config)
        if why is None and not isinstance(head, torch.nn.Linear):
            why = f"{model_type}'s output layer is a {type(head).__name__}, not a Linear"
        if why is not None:
            log.info("fused output head off, the model's own logits are used: %s", why)
            return None
        return HeadSplit(body, head, head.weight, head.bias)
    for name in ("cls", "lm_head", "lm_predictions"):
        head = getattr(inner, name, None)
        if isinstance(head, torch.nn.Module):
            return HeadSplit(body, head, None, None)
    if isinstance(getattr(inner, "head", None), torch.nn.Module) and isinstance(inner.get_output_embeddings(),
                                                                               torch.nn.Linear):
        # ModernBERT: logits = decoder(head(hidden)), with the transform and the vocabulary projection apart.
        return HeadSplit(body, torch.nn.Sequential(inner.head, inner.get_output_embeddings()), None, None)
    log.info("masked-only output head off for %s: its head module is not recognised", model_type)
    return None


def _chunk_loss_and_grads(h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, lab: torch.Tensor,
                          scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk of the fused head: (sum of CE, d/d logits as ``g``, the rows' logits' gradient in compute dtype).

    ``h`` and ``w`` are in the compute dtype; logits, softmax and the loss in fp32. This is the body that
    ``torch.compile`` fuses on CUDA (one kernel for the logsumexp, the softmax and the one-hot subtraction).
    """
    logits = (h @ w.t()).float()
    if bias is not None:
        logits = logits + bias.float()
    valid = lab != IGNORE
    safe = torch.where(valid, lab, torch.zeros_like(lab))
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(1, safe[:, None]).squeeze(1)
    loss = ((lse - picked) * valid).sum()
    # d(loss)/d(logits) = softmax - onehot, for valid rows only, times the scale.
    g = torch.exp(logits - lse[:, None])
    g[torch.arange(g.shape[0], device=g.device), safe] -= 1.0
    g *= (valid.float() * scale)[:, None]
    return loss, g, g.to(h.dtype)


_COMPILED_CHUNK: dict[str, Any] = {}


def _compiled_chunk(backend: str = "inductor"):
    """:func:`_chunk_loss_and_grads` under ``torch.compile`` (fullgraph: the chunk has no Python control flow that
    depends on data), built once per backend. The loop over chunks stays eager, so the graph is one chunk's."""
    if backend not in _COMPILED_CHUNK:
        _COMPILED_CHUNK[backend] = torch.compile(_chunk_loss_and_grads, backend=backend, fullgraph=True,
                                                 dynamic=False)
    return _COMPILED_CHUNK[backend]


class FusedLinearCrossEntropy(torch.autograd.Function):
    """Sum of cross-entropy of ``hidden @ weight.T + bias`` against ``labels``, times ``scale``.

    Computes logits chunk by chunk and produces the gradients during the forward pass (as Liger's
    fused linear cross-entropy does on GPU), so neither the full logits nor their softmax are kept.
    Liger needs Triton; on CPU this is the implementation, on CUDA without Liger it runs with the chunk's
    arithmetic compiled (:func:`_compiled_chunk`).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, scale, chunk_rows, compute_dtype, chunk_fn=None):  # noqa: D401
        step = chunk_fn or _chunk_loss_and_grads
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            n = hidden.shape[0]
            w = weight.detach().to(compute_dtype)
            b = bias.detach() if bias is not None else None
            need_w = weight.requires_grad
            need_b = bias is not None and bias.requires_grad
            need_h = hidden.requires_grad
            grad_h = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
            grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, n, chunk_rows):
                stop = min(start + chunk_rows, n)
                h = hidden[start:stop].detach().to(compute_dtype)
                loss, g, gc = step(h, w, b, labels[start:stop], scale)
                total += loss
                if need_h:
                    grad_h[start:stop] = (gc @ w).float()
                if need_w:
                    grad_w += (gc.t() @ h).float()
                if need_b:
                    grad_b += g.sum(0)
        ctx.save_for_backward(*(t if t is not None else torch.empty(0) for t in (grad_h, grad_w, grad_b)))
        ctx.flags = (need_h, need_w, need_b, hidden.dtype, weight.dtype)
        return total * scale

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        need_h, need_w, need_b, h_dtype, w_dtype = ctx.flags
        return ((grad_h * grad_out).to(h_dtype) if need_h else None,
                (grad_w * grad_out).to(w_dtype) if need_w else None,
                (grad_b * grad_out) if need_b else None,
                None, None, None, None, None)


def _liger_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


def fused_backend(device_type: str) -> str:
    """Which fused head runs on ``device_type``: 'liger' (Liger Kernel's Triton fused linear cross-entropy, CUDA,
    when ``liger-kernel`` is installed), 'compiled' (the chunked head with each chunk under torch.compile, CUDA
    otherwise) or 'chunked' (the eager chunked head: CPU and other devices)."""
    if device_type != "cuda":
        return "chunked"
    return "liger" if _liger_installed() else "compiled"


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                               labels: torch.Tensor, scale: float, *, compute_dtype: torch.dtype = torch.float32,
                               max_logit_elements: int = 1 << 24, backend: str | None = None) -> torch.Tensor:
    """``scale * sum(CE)`` over rows of ``hidden`` (flattened to [N, d]) without materialising all logits.

    ``backend`` defaults to :func:`fused_backend` of the tensors' device; 'compiled:BACKEND' picks a torch.compile
    backend for the chunk (tests use 'compiled:aot_eager', which needs no C++ or Triton build).
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    backend = backend or fused_backend(hidden.device.type)
    if backend == "liger":
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        # Liger multiplies input and weight in their (common) dtype and accumulates the loss in fp32.
        out = liger_fused_linear_cross_entropy(hidden.to(compute_dtype), weight.to(compute_dtype), labels,
                                               bias=None if bias is None else bias.to(compute_dtype),
                                               ignore_index=IGNORE, reduction="sum")
        return out.float() * scale
    chunk = max(1, max_logit_elements // weight.shape[0])
    chunk_fn = _compiled_chunk(backend.partition(":")[2] or "inductor") if backend.startswith("compiled") else None
    return FusedLinearCrossEntropy.apply(hidden, weight, bias, labels, float(scale), chunk, compute_dtype, chunk_fn)


def model_inputs(input_ids: torch.Tensor, doc_ids: torch.Tensor | None, objective: str,
                 document_mask: bool = True) -> dict[str, torch.Tensor]:
    """Forward kwargs for a packed batch: restarting positions and the document mask."""
    if doc_ids is None or not document_mask:
        return {"input_ids": input_ids, "use_cache": False} if objective == "causal" else {"input_ids": input_ids}
    kwargs = {"input_ids": input_ids, "position_ids": positions_from_doc_ids(doc_ids)}
    if objective == "causal":
        # With a KV cache transformers skips packed-sequence detection: training never needs one.
        kwargs["use_cache"] = False
    else:
        kwargs["attention_mask"] = bidirectional_doc_mask(doc_ids)
    return kwargs


def _deberta_embedding_mask(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """DeBERTa's embedding layer multiplies by the mask it gets and only understands a per-token one."""
    mask = kwargs.get("mask")
    if mask is not None and mask.dim() == 4 and mask.shape[-1] == mask.shape[-2]:
        kwargs = {**kwargs, "mask": mask.diagonal(dim1=-2, dim2=-1)[:, 0]}  # a token sees itself unless padding
        return args, kwargs
    return None


def family_inputs(module: Any, kwargs: dict[str, Any], doc_ids: torch.Tensor | None) -> dict[str, Any]:
    """Adjust :func:`model_inputs`' kwargs to the family of ``module`` (see the module docstring)."""
    inner = module.get_base_model() if hasattr(module, "get_base_model") else module
    config = getattr(inner, "config", None)
    model_type = getattr(config, "model_type", "")
    mask = kwargs.get("attention_mask")
    out = dict(kwargs)
    if "position_ids" in out:
        # RoBERTa-style learned positions (a position table with a padding row: RoBERTa, ESM-1b) start after
        # the padding row, at padding_idx + 1, as the model's own positions do; restarting ones must too.
        table = next((m.position_embeddings for m in inner.modules()
                      if isinstance(getattr(m, "position_embeddings", None), torch.nn.Embedding)), None)
        if table is not None and table.padding_idx is not None:
            out["position_ids"] = out["position_ids"] + table.padding_idx + 1
    if doc_ids is not None and mask is None and "position_ids" in kwargs and model_type in EXPLICIT_CAUSAL_MASK:
        mask = out["attention_mask"] = causal_doc_mask(doc_ids)
    if not torch.is_tensor(mask) or mask.dim() != 4:  # none, or already a FlexAttention BlockMask
        return out
    if model_type == "esm":
        # ESM's embedding layer multiplies by a 2-D padding mask; with a 4-D document mask we embed first.
        emb = getattr(inner, "embeddings", None) or inner.esm.embeddings
        out["inputs_embeds"] = emb(input_ids=out.pop("input_ids"), position_ids=out.get("position_ids"))
    elif model_type == "modernbert":
        half = config.local_attention // 2  # transformers' bidirectional window: |q - k| <= local_attention / 2
        idx = torch.arange(mask.shape[-1], device=mask.device)
        out["attention_mask"] = {"full_attention": mask,
                                 "sliding_attention": mask & ((idx[:, None] - idx[None, :]).abs() <= half)}
        return out
    elif model_type in OWN_BOOLEAN_MASK:
        for sub in inner.modules():
            if type(sub).__name__.endswith("Embeddings") and not getattr(sub, "_domainlm_mask_hook", False):
                sub.register_forward_pre_hook(_deberta_embedding_mask, with_kwargs=True)
                sub._domainlm_mask_hook = True
        return out
    if getattr(config, "_attn_implementation", "sdpa") == "eager" and mask.dtype == torch.bool:
        # Eager attention adds the mask to the scores (SDPA also takes booleans).
        dtype = next(inner.parameters()).dtype
        out["attention_mask"] = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(dtype).min)
    return out


def loss_sum(model: Any, objective: str, input_ids: torch.Tensor, labels: torch.Tensor,
             doc_ids: torch.Tensor | None = None, *, document_mask: bool = True, scale: float = 1.0,
             split: HeadSplit | None = None, fused: bool = True,
             compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``scale * sum`` of token cross-entropies where ``labels != -100``.

    ``labels`` are position-aligned targets: next tokens for causal models (see :func:`causal_labels`),
    original tokens at masked positions for MLM. With ``split`` the head runs only on target rows.
    """
    kwargs = model_inputs(input_ids, doc_ids, objective, document_mask)
    # --- attention hook (issues 15, 32, domainlm/attention.py): a model switched to FlexAttention gets its dense 4-D
    # document mask as a BlockMask, one on the varlen path the documents' offsets (once per batch, read by every
    # layer); models on SDPA get exactly family_inputs' kwargs. ---
    from domainlm.attention import flex_inputs, varlen_inputs

    def inputs(module: Any) -> dict[str, Any]:
        return varlen_inputs(module, flex_inputs(module, family_inputs(module, kwargs, doc_ids), doc_ids), doc_ids)
    # --- end attention hook ---
    if split is not None and fused:
        hidden = split.body(**inputs(split.body)).last_hidden_state
        if objective == "causal":
            return fused_linear_cross_entropy(hidden, split.fused_weight, split.fused_bias, labels, scale,
                                              compute_dtype=compute_dtype)
        rows = labels != IGNORE
        logits = split.head(hidden[rows]).float()
        return torch.nn.functional.cross_entropy(logits, labels[rows], reduction="sum") * scale
    logits = model(**inputs(model)).logits.float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                             ignore_index=IGNORE, reduction="sum") * scale


def perplexity(total_loss: float, count: int) -> float:
    """exp of the mean token loss; inf when there is nothing to average or it overflows."""
    if count <= 0:
        return math.inf
    mean = total_loss / count
    return math.exp(mean) if mean < 700 else math.inf
