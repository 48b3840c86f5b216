"""Memory and speed features applied to the plain model before the engine wraps it for several processes.

Contract between the engine and this module (issue 15): ``apply_features`` is called once, after the model is
built and moved to its device and before DDP/FSDP wrapping, and applies each feature with one small function in
torchtitan's fixed order: frozen weights stored in bf16, activation checkpointing, torch.compile. The training
loop never branches on which were applied.

* Frozen base in bf16 (LoRA/QLoRA with bf16 on): frozen floating weights are stored in bf16, halving the
  base's memory; trainable weights (adapters, modules_to_save) keep their fp32 master copies. Under autocast the
  matmuls run in bf16 either way, so only the storage changes. The input embedding's output is upcast to fp32
  so the residual stream stays fp32, as with an fp32 base.
* Activation checkpointing: transformers' own (non-reentrant ``torch.utils.checkpoint`` per decoder layer).
* torch.compile per transformer block (torchtitan's granularity: one compiled graph reused by every layer,
  short compile). The fused chunked head (``lm_loss.FusedLinearCrossEntropy``, a Python loop over chunks in a
  custom autograd function) and the embedding stay eager, which is the "compile the body, keep the head eager"
  fallback of the issue; the engine calls the body directly for the fused loss, so compiling the model's
  top-level forward would not reach the training path at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from domainlm.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Applied:
    """What ``apply_features`` did, for the run's manifest (``model._domainlm_features`` holds one)."""

    frozen_bf16: bool = False
    frozen_bf16_params: int = 0
    gradient_checkpointing: bool = False
    compiled_blocks: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"frozen_bf16": self.frozen_bf16, "frozen_bf16_params": self.frozen_bf16_params,
                "gradient_checkpointing": self.gradient_checkpointing, "compiled_blocks": self.compiled_blocks,
                "notes": list(self.notes)}


def _inner(model: Any) -> Any:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _upcast_output(module: torch.nn.Module, args: Any, output: Any) -> Any:
    return output.float() if torch.is_tensor(output) and output.dtype == torch.bfloat16 else output


def store_frozen_bf16(model: Any, keep_embeddings: bool = False) -> int:
    """Cast every frozen floating parameter to bf16 in place; returns how many elements were cast.

    Trainable parameters are untouched (fp32 master weights for AdamW). Buffers (rotary frequencies) stay as they
    are. A forward hook upcasts the input embedding's output so the residual stream is not held in bf16.
    ``keep_embeddings`` keeps the input and output embedding layers in fp32: when the adapter file stores them
    whole (an added vocabulary, ``train_embeddings``), a bf16 copy would round the base's own rows on their way to
    the published model, and the rounding of a lookup is not something autocast would have done anyway.
    """
    keep: set[int] = set()
    if keep_embeddings:
        inner = _inner(model)
        for layer in (inner.get_input_embeddings(), inner.get_output_embeddings()):
            if layer is not None:
                keep.update(id(p) for p in layer.parameters())
    n = 0
    for p in model.parameters():
        if not p.requires_grad and p.dtype == torch.float32 and id(p) not in keep:
            p.data = p.data.to(torch.bfloat16)
            n += p.numel()
    emb = _inner(model).get_input_embeddings()
    if emb is not None and not getattr(emb, "_domainlm_upcast", False):
        emb.register_forward_hook(_upcast_output)
        emb._domainlm_upcast = True
    return n


def restore_fp32(model: Any) -> int:
    """Undo :func:`store_frozen_bf16` (exactly: bf16 values are representable in fp32); returns elements cast.

    For code that runs the model outside autocast after training (the final logits probe, an export).
    """
    n = 0
    for p in model.parameters():
        if not p.requires_grad and p.dtype == torch.bfloat16:
            p.data = p.data.float()
            n += p.numel()
    return n


def enable_checkpointing(model: Any) -> None:
    """transformers' activation checkpointing, non-reentrant (works with frozen inputs, LoRA and kwargs masks)."""
    inner = _inner(model)
    if not getattr(inner, "supports_gradient_checkpointing", False):
        raise ConfigError([f"gradient_checkpointing: {type(inner).__name__} does not support activation "
                           "checkpointing in transformers; drop --gradient-checkpointing"])
    kwargs = {"use_reentrant": False}
    if hasattr(inner, "activation_checkpointing_enable"):  # transformers >= 5.x name
        inner.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def transformer_blocks(model: Any) -> list[torch.nn.Module]:
    """The repeated decoder/encoder layers (the classes transformers lists in ``_no_split_modules``)."""
    inner = _inner(model)
    names = set(getattr(inner, "_no_split_modules", None) or [])
    return [m for m in inner.modules() if type(m).__name__ in names]


def compile_blocks(model: Any, backend: str = "inductor", fullgraph: bool | None = None) -> int:
    """``torch.compile`` each transformer block in place (``nn.Module.compile``: the parameters and the state
    dict keep their names); returns how many blocks were compiled. ``backend`` is for tests ('aot_eager'
    checks graph capture and AOT autograd without Inductor's C++ build).

    ``fullgraph`` (default: on for a model on the varlen attention path, whose blocks were captured whole for every
    family in ``attention.VARLEN_FAMILIES``, tests/test_attention_varlen.py) makes a graph break an error instead of
    a silent split of the block into several graphs. The varlen offsets' ``max_length`` is a Python int that
    changes per batch: dynamo recompiles once and then treats it as dynamic (automatic dynamic shapes).
    """
    if fullgraph is None:
        from domainlm.attention import uses_varlen

        fullgraph = uses_varlen(model)
    blocks = transformer_blocks(model)
    if not blocks:
        raise ConfigError([f"--compile: found no transformer blocks in {type(_inner(model)).__name__} "
                           "(_no_split_modules is empty); drop --compile"])
    for block in blocks:
        block.compile(backend=backend, fullgraph=fullgraph)
    return len(blocks)


def compile_seconds() -> float:
    """Seconds spent compiling in this process so far (TorchDynamo's own timer, which includes Inductor).

    The engine logs it after the first steps, so compile time is reported apart from steady-state tokens/s.
    """
    try:
        from torch._dynamo.utils import compilation_time_metrics
    except ImportError:  # pragma: no cover - very old torch
        return 0.0
    return float(sum(compilation_time_metrics.get("_compile.compile_inner", [])))


def apply_features(model: Any, cfg: Any, *, bf16: bool, device: Any, saves_embeddings: bool = False) -> Any:
    """Apply the configured memory/speed features to ``model`` and return it.

    Order (torchtitan): frozen weights in bf16, activation checkpointing, compile. The model object returned is
    the one passed in (the features change it in place), with ``model._domainlm_features`` describing them.
    ``saves_embeddings``: the run's adapter stores the embedding layers whole, so they stay fp32 (see
    :func:`store_frozen_bf16`).
    """
    applied = Applied()
    method = getattr(cfg, "method", "full")
    if bf16 and method in ("lora", "qlora"):
        applied.frozen_bf16_params = store_frozen_bf16(model, keep_embeddings=saves_embeddings)
        applied.frozen_bf16 = True
        log.info("frozen base stored in bf16 (%d elements); trainable weights stay fp32", applied.frozen_bf16_params)
    if getattr(cfg, "gradient_checkpointing", False):
        enable_checkpointing(model)
        applied.gradient_checkpointing = True
    if getattr(cfg, "compile", False):
        applied.compiled_blocks = compile_blocks(model)
        applied.notes.append("torch.compile per transformer block; embeddings and the fused loss head's loop run "
                             "eager (on CUDA without Liger each chunk of the fused head is compiled on its own)")
        log.info("torch.compile: %d transformer blocks (compiled on the first step)", applied.compiled_blocks)
    model._domainlm_features = applied
    return model


__all__ = ["Applied", "apply_features", "compile_blocks", "compile_seconds", "enable_checkpointing", "restore_fp32",
           "store_frozen_bf16", "transformer_blocks"]
