"""Attention for packed documents: which implementation a model trains with, and its document mask.

Packed blocks hold several documents; attention must not cross their boundaries. The paths:

* ``sdpa`` (today's default): causal models get restarting ``position_ids`` and transformers builds a
  block-diagonal causal mask from them; masked models get an explicit ``[B, 1, L, L]`` boolean mask.
  O(L^2) mask memory per sequence, and an arbitrary mask keeps SDPA off its flash kernel on GPU.
* ``flex_attention`` (PyTorch's FlexAttention, as torchtune packs documents): the document structure is a
  ``BlockMask`` built from a ``mask_mod`` (same document, and causal for causal models), which stores only
  which 128x128 tiles are needed, so memory scales with the number of tiles touched, not L^2 floats. For
  causal models transformers builds that BlockMask itself from the restarting ``position_ids``
  (``masking_utils.find_packed_sequence_indices``); for masked models :func:`document_block_mask` replaces
  the dense boolean mask. On GPU it trains; on CPU torch 2.13 runs FlexAttention forward only ("FlexAttention
  does not support backward on CPU"), so there it serves no-grad evaluation and the equality tests, and
  ``adapt`` refuses ``attention: flex`` on a CPU rather than fail at the first backward.
* ``flash_attention_2`` (or a ``kernels`` flash implementation) on CUDA for causal models: transformers turns
  packed ``position_ids`` into ``cu_seqlens`` for the variable-length kernel, so no mask exists at all.
* ``varlen`` (issue 32): PyTorch's own variable-length flash attention, ``torch.nn.attention.varlen.varlen_attn``
  (torch >= 2.10, CUDA), registered with transformers' ``AttentionInterface`` as ``domainlm_varlen``. The packed
  batch is one flat sequence of ``B x L`` tokens cut at every document start: :func:`varlen_offsets` builds the
  cumulative offsets ``cu_seqlens`` and ``max_seqlen`` once per batch from the document ids, and they reach every
  layer as the model's forward kwargs (``cu_seq_lens_q`` ..., the names transformers' flash path uses), so no mask
  is built and nothing is recomputed per layer. Causal models attend with ``window_size=(-1, 0)``, masked ones
  with ``(-1, -1)``, and sliding-window layers with the window of their ``sliding_window``. No install needed.

``auto`` picks ``varlen`` on CUDA for the families it was checked on (:data:`VARLEN_FAMILIES`) when the kernel
exists and the model has no attention dropout, else flash when flash-attn is installed (causal models), else ``sdpa``. FlexAttention is there
when asked for (``attention: flex``) but not chosen by default, from what was measured on an H200 on 2026-12-04
(torch 2.11, experiments/SPEED_ADAPT_GPU.md): forward and backward equal SDPA's (experiments/gpu_attention_check.py),
but training a 135M Llama at 1024 tokens ran at 86k tokens/s with flex against 114k with sdpa, and at 1.1B (hidden
2048, 32/8 heads, 2048 tokens) inductor failed to lower the flex kernel ("NoValidChoicesError"), with and without
``--compile``. On CPU flex has no backward, and its forward compiles first (20-40 s per new shape measured on the
2-core build machine for a 4-layer model at 256 tokens).
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import torch

from domainlm.errors import ConfigError

log = logging.getLogger(__name__)

IMPLEMENTATIONS = ("auto", "sdpa", "flex", "flash", "varlen")
VARLEN = "domainlm_varlen"  # the name registered with transformers' AttentionInterface
_HF_NAME = {"sdpa": "sdpa", "flex": "flex_attention", "flash": "flash_attention_2", "varlen": VARLEN}
# Families whose every attention layer calls transformers' attention interface with the forward's kwargs, checked on
# CPU against SDPA with a reference kernel in place of the CUDA one (tests/test_attention_varlen.py): the ones
# ``attention: auto`` switches to varlen on CUDA. Others may take ``attention: varlen`` explicitly; a family whose
# layers never see the offsets fails at the first step, never attends across documents silently.
VARLEN_FAMILIES = {"llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3", "bert", "roberta", "modernbert"}


def _flash_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def resolve_attention(setting: str, objective: str, model_class: Any, device_type: str, *,
                      training: bool = True, config: Any = None) -> str:
    """The transformers ``attn_implementation`` for an ``attention`` setting ('auto' | 'sdpa' | 'flex' | 'flash').

    An explicit choice the model or machine cannot honour is an error, never a silent fallback.
    """
    if setting not in IMPLEMENTATIONS:
        raise ConfigError([f"'attention: {setting}' is not one of {', '.join(IMPLEMENTATIONS)}"])
    flex_ok = bool(getattr(model_class, "_supports_flex_attn", False))
    flash_ok = bool(getattr(model_class, "_supports_flash_attn", False) or
                    getattr(model_class, "_supports_flash_attn_2", False))
    name = getattr(model_class, "__name__", str(model_class))
    if setting == "flash":
        problems = []
        if device_type != "cuda":
            problems.append("'attention: flash' needs a CUDA GPU; use attention: flex or sdpa")
        elif not _flash_installed():
            problems.append("'attention: flash' needs flash-attn: pip install flash-attn (or use attention: flex)")
        if not flash_ok:
            problems.append(f"{name} has no flash-attention support in transformers; use attention: flex or sdpa")
        if objective != "causal":
            problems.append("'attention: flash' packs documents through position_ids, which only causal models "
                            "use for masking; use attention: flex for masked models")
        if problems:
            raise ConfigError(problems)
        return _HF_NAME["flash"]
    if setting == "varlen":
        problems = varlen_problems(objective, model_class, device_type, config)
        if problems:
            raise ConfigError(problems)
        register_varlen()
        return VARLEN
    if setting == "flex":
        if not flex_ok:
            raise ConfigError([f"{name} has no FlexAttention support in transformers; use attention: sdpa"])
        if training and device_type != "cuda":
            raise ConfigError([f"'attention: flex' trains only on a GPU: torch {torch.__version__.split('+')[0]} "
                               "has no FlexAttention backward on CPU; use attention: sdpa (or auto)"])
        return _HF_NAME["flex"]
    if setting == "sdpa":
        return "sdpa"
    if device_type == "cuda":
        family = getattr(config, "model_type", None)
        if family in VARLEN_FAMILIES and not varlen_problems(objective, model_class, device_type, config):
            register_varlen()
            return VARLEN
        if objective == "causal" and flash_ok and _flash_installed():
            return _HF_NAME["flash"]
    # Families without SDPA (Gemma 2's soft-capped attention, DeBERTa) attend eagerly; lm_loss.family_inputs
    # gives eager attention its additive mask.
    return "sdpa" if getattr(model_class, "_supports_sdpa", True) else "eager"


def uses_flex(model: Any) -> bool:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(inner, "config", None)
    return getattr(config, "_attn_implementation", None) == "flex_attention"


def document_block_mask(doc_ids: torch.Tensor, *, causal: bool = False):
    """A FlexAttention ``BlockMask`` letting a token see only tokens of its own document (and, when ``causal``,
    not later ones): the ``[B, 1, L, L]`` boolean mask of :func:`domainlm.lm_loss.bidirectional_doc_mask` without
    materialising it."""
    from torch.nn.attention.flex_attention import create_block_mask

    docs = doc_ids

    def same_document(b, h, q_idx, kv_idx):
        keep = docs[b, q_idx] == docs[b, kv_idx]
        return keep & (q_idx >= kv_idx) if causal else keep

    b, n = doc_ids.shape
    return create_block_mask(same_document, B=b, H=None, Q_LEN=n, KV_LEN=n, device=doc_ids.device)


def flex_inputs(model: Any, kwargs: dict[str, Any], doc_ids: torch.Tensor | None) -> dict[str, Any]:
    """Forward kwargs for a model that attends with FlexAttention: a dense 4-D document mask becomes a BlockMask.

    Causal models need nothing here (transformers builds their BlockMask from ``position_ids``); everything else
    passes through unchanged, so models on the SDPA path see exactly today's inputs.
    """
    mask = kwargs.get("attention_mask")
    if doc_ids is None or not torch.is_tensor(mask) or mask.dim() != 4 or not uses_flex(model):
        return kwargs
    out = dict(kwargs)
    out["attention_mask"] = document_block_mask(doc_ids)
    return out


# ----------------------------------------------------------------------------------------------------
# varlen: torch.nn.attention.varlen.varlen_attn behind transformers' AttentionInterface
# ----------------------------------------------------------------------------------------------------

def _varlen_kernel():
    """torch's variable-length flash attention, or None when this torch has none (the tests put a reference here)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def _attention_dropout(config: Any) -> float:
    for key in ("attention_dropout", "attention_probs_dropout_prob", "attn_pdrop"):
        value = getattr(config, key, None)
        if value:
            return float(value)
    return 0.0


def varlen_problems(objective: str, model_class: Any, device_type: str, config: Any = None) -> list[str]:
    """Why ``attention: varlen`` cannot train this model here (one line each), or [] when it can."""
    problems = []
    if device_type != "cuda":
        problems.append("'attention: varlen' needs a CUDA GPU (torch's varlen_attn is a flash kernel); use "
                        "attention: sdpa (or auto)")
    elif _varlen_kernel() is None:
        problems.append(f"'attention: varlen' needs torch.nn.attention.varlen (torch >= 2.10), this is torch "
                        f"{torch.__version__.split('+')[0]}; use attention: sdpa")
    if not getattr(model_class, "_supports_attention_backend", False):
        name = getattr(model_class, "__name__", str(model_class))
        problems.append(f"{name} does not route its attention through transformers' AttentionInterface; use "
                        "attention: sdpa")
    if config is not None and _attention_dropout(config) > 0:
        problems.append(f"'attention: varlen' has no attention dropout and {config.model_type} uses "
                        f"{_attention_dropout(config)}; use attention: sdpa (or set the dropout to 0)")
    return problems


def varlen_offsets(doc_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(cu_seqlens, max_seqlen)`` of a packed batch seen as one flat sequence of ``B x L`` tokens.

    A segment starts at every row start and wherever the document id changes, so the segments are exactly the
    diagonal blocks of :func:`domainlm.lm_loss.bidirectional_doc_mask`. ``cu_seqlens`` is int32 ``[0, ..., B*L]``;
    ``max_seqlen`` is a Python int (the kernel sizes its grid with it), read once per batch.
    """
    b, n = doc_ids.shape
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    idx = torch.nonzero(starts.reshape(-1), as_tuple=False).reshape(-1)
    end = torch.full((1,), b * n, dtype=idx.dtype, device=idx.device)
    cu = torch.cat([idx, end]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def uses_varlen(model: Any) -> bool:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(inner, "config", None), "_attn_implementation", None) == VARLEN


def varlen_inputs(model: Any, kwargs: dict[str, Any], doc_ids: torch.Tensor | None) -> dict[str, Any]:
    """Forward kwargs for a model on the varlen path: the offsets of the batch's documents, computed once here and
    read by every layer; the dense document mask (masked models) is dropped, no layer reads it."""
    if not uses_varlen(model):
        return kwargs
    if doc_ids is None:
        doc_ids = torch.zeros(kwargs["input_ids"].shape, dtype=torch.long, device=kwargs["input_ids"].device)
    cu, longest = varlen_offsets(doc_ids)
    out = {k: v for k, v in kwargs.items() if k != "attention_mask"}
    out.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
    return out


def varlen_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: Any, scaling: float | None = None, dropout: float = 0.0,
                     sliding_window: int | None = None, is_causal: bool | None = None, **kwargs: Any):
    """transformers' attention-function contract (``[B, H, L, D]`` in, ``([B, L, H, D], None)`` out) on
    ``varlen_attn`` over the flattened batch, documents apart through ``cu_seq_lens_q``."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None and not torch.is_grad_enabled():
        # An unpacked no-grad forward (the final logits probe, generation): no documents to keep apart, and it may
        # run in fp32 outside autocast, which the flash kernel does not take; SDPA computes the same attention.
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=0.0,
                                      is_causal=is_causal, **kwargs)
    if cu is None:
        raise ConfigError([f"'attention: varlen': {type(module).__name__} was called without the documents' offsets "
                           "(this family does not pass forward kwargs to its attention); use attention: sdpa"])
    if dropout and module.training:
        raise ConfigError([f"'attention: varlen' has no attention dropout ({dropout}); use attention: sdpa"])
    b, hq, n, d = query.shape
    hk = key.shape[1]
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    window = (-1, 0) if causal else (-1, -1)
    if sliding_window:
        # transformers' convention (its flash path): a query sees keys less than `sliding_window` positions away,
        # on its left (causal: Mistral, Gemma 3) or on both sides (ModernBERT passes half its local window + 1)
        window = (sliding_window - 1, 0) if causal else (sliding_window - 1, sliding_window - 1)
    half = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
    dtype = value.dtype if value.dtype in (torch.float16, torch.bfloat16) else (half or value.dtype)
    # [B, H, L, D] -> [B*L, H, D]; rotary leaves q/k in fp32 under autocast while v is bf16: one dtype for all
    q, k, v = (t.transpose(1, 2).reshape(b * n, t.shape[1], d).to(dtype) for t in (query, key, value))
    out = _varlen_kernel()(q, k, v, cu, kwargs["cu_seq_lens_k"], kwargs["max_length_q"], kwargs["max_length_k"],
                           scale=scaling, window_size=window, enable_gqa=hq != hk)
    return out.reshape(b, n, hq, out.shape[-1]), None


def register_varlen() -> None:
    """Register :func:`varlen_attention` as ``domainlm_varlen`` (idempotent). No mask function is registered, so
    transformers builds no attention mask for it."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_attention)


__all__ = ["IMPLEMENTATIONS", "VARLEN", "VARLEN_FAMILIES", "document_block_mask", "flex_inputs", "register_varlen",
           "resolve_attention", "uses_flex", "uses_varlen", "varlen_attention", "varlen_inputs", "varlen_offsets",
           "varlen_problems"]
