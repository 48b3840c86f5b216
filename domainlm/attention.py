"""Attention for packed documents: which implementation a model trains with, and its document mask.

Packed blocks hold several documents; attention must not cross their boundaries. Three paths:

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

``auto`` picks flash when flash-attn is installed on CUDA (causal models), else ``sdpa``. FlexAttention is there
when asked for (``attention: flex``) but not chosen by default, from what was measured on an H200 on 2026-12-04
(torch 2.11, benchmarks/SPEED_ADAPT_GPU.md): forward and backward equal SDPA's (benchmarks/gpu_attention_check.py),
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

IMPLEMENTATIONS = ("auto", "sdpa", "flex", "flash")
_HF_NAME = {"sdpa": "sdpa", "flex": "flex_attention", "flash": "flash_attention_2"}


def _flash_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def resolve_attention(setting: str, objective: str, model_class: Any, device_type: str, *,
                      training: bool = True) -> str:
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


__all__ = ["IMPLEMENTATIONS", "document_block_mask", "flex_inputs", "resolve_attention", "uses_flex"]
