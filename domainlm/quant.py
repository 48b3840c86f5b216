"""4-bit NF4 bases for QLoRA (bitsandbytes), and the base weights a LoRA/QLoRA run trained against.

QLoRA (Dettmers et al. 2023) keeps the frozen base in 4-bit NormalFloat with double quantisation and
computes in a higher precision; the adapters stay fp32. Everything here goes through transformers'
``BitsAndBytesConfig`` and peft; bitsandbytes is an optional extra imported inside the functions.

A run records how its frozen base was stored (:func:`base_storage`) in ``final/base_model.json``;
:func:`dequantized_base` rebuilds exactly those weights in fp32 at publish time, so adapters merged into
it reproduce the trained model's logits (an fp32 reload of the original checkpoint would not: the run
trained against the NF4- or bf16-rounded values).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from domainlm.errors import ConfigError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'domainlm[qlora]'"


def require_bitsandbytes() -> None:
    """Fail at once, naming the install command, when bitsandbytes is missing."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError([f"method: qlora needs bitsandbytes, which is not installed: {INSTALL_HINT}"]) from None


def qlora_compute_dtype(bf16: str, device_type: str) -> tuple[str, str]:
    """The 4-bit layers' compute dtype ('bfloat16' | 'float32') and why: bf16 exactly where ``device.use_bf16``
    runs bf16 autocast (the one bf16 decision), fp32 elsewhere.

    QLoRA computes in bf16 on GPUs. On a CPU without bf16 units bitsandbytes' bf16 path is emulated: on
    this project's AVX2-only AMD EPYC a LoRA step over a 4-layer, 512-wide NF4 Llama at 256 tokens took
    ~28 s in bf16 against ~2-5 s in fp32, so there fp32 is used unless bf16 is forced on.
    """
    from domainlm.device import use_bf16

    on = use_bf16(bf16, device_type)
    if bf16 == "off":
        return "float32", "bf16: off"
    if device_type == "cuda":
        return ("bfloat16", "GPU with bf16 support") if on else ("float32", "this GPU has no bf16 support")
    if bf16 == "on":
        return "bfloat16", "bf16: on"
    if on:
        return "bfloat16", "bf16 matmuls are fast on this CPU"
    return "float32", ("bf16 matmuls are emulated (slow) on this CPU, so the 4-bit layers compute in fp32 "
                       "(set bf16: on to force bf16)")


def qlora_settings(compute_dtype: str = "bfloat16") -> dict[str, Any]:
    """The quantisation a QLoRA run uses, as JSON-able ``BitsAndBytesConfig`` arguments (recorded in the run)."""
    return {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
            "bnb_4bit_compute_dtype": compute_dtype}


def bnb_config(settings: dict[str, Any]):
    """A transformers ``BitsAndBytesConfig`` from recorded settings."""
    require_bitsandbytes()
    import torch
    from transformers import BitsAndBytesConfig

    kwargs = dict(settings)
    kwargs["bnb_4bit_compute_dtype"] = getattr(torch, str(kwargs.get("bnb_4bit_compute_dtype", "float32")))
    return BitsAndBytesConfig(**kwargs)


def load_4bit(src: Any, objective: str, settings: dict[str, Any], **load_kwargs: Any):
    """Load ``src`` with its linear layers in 4 bit; returns ``(model, LoadReport)`` like ``sources.load.load_model``.

    Weights are quantised on the CPU while loading (``device_map='cpu'``); the engine then moves the model to
    its device as for any other method.
    """
    from domainlm.sources.load import load_model

    model, report = load_model(src, objective, quantization_config=bnb_config(settings), device_map="cpu",
                               **load_kwargs)
    release_checkpoint_mapping(model)
    keep_training_kernel(model)
    return model, report


def keep_training_kernel(model: Any) -> int:
    """Make every 4-bit layer compute in eval mode as it does in training; returns how many layers it set.

    On a CPU with AVX512-BF16, bitsandbytes' ``Linear4bit`` repacks its weight on the first forward in eval mode
    without gradients and from then on (training included) runs a fused kernel that casts the input to bf16,
    whatever ``bnb_4bit_compute_dtype`` says. Training runs dequantise-then-matmul in the compute dtype, so the
    run's evaluations and its logits probe were computed differently from the training and from the published
    merge into the dequantised base (measured: max |logit diff| 1.9e-3 against 1e-4 with bf16 off). Turning the
    repacking off keeps one computation everywhere; the fused kernel is an inference speed-up only.
    """
    n = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


@contextlib.contextmanager
def fp32_compute(model: Any) -> Iterator[int]:
    """Within the block, 4-bit layers compute in fp32 (dequantised weight, fp32 matmul); yields how many layers.

    For the run's logits probe: the reference a publish is verified against is the fp32 evaluation of the trained
    parameters, which is what the merge into the fp32 dequantised base computes. A probe taken in bf16 compute
    (QLoRA on a GPU) differed from that merge by its own rounding (3.3e-3 on a tiny Llama, against 1e-4 allowed).
    """
    import torch

    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu") and hasattr(m, "compute_dtype")]
    saved = [m.compute_dtype for m in layers]
    for m in layers:
        m.compute_dtype = torch.float32
    try:
        yield len(layers)
    finally:
        for m, dtype in zip(layers, saved, strict=True):
            m.compute_dtype = dtype


def _checkpoint_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process's memory mappings of ``.safetensors`` files (Linux; [] elsewhere)."""
    try:
        lines = open("/proc/self/maps", encoding="utf-8", errors="replace").read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].endswith(".safetensors"):
            lo, hi = parts[0].split("-")
            out.append((int(lo, 16), int(hi, 16)))
    return out


def release_checkpoint_mapping(model: Any) -> int:
    """Copy the tensors that still view the memory-mapped checkpoint into memory of their own; returns bytes copied.

    transformers loads safetensors through a memory mapping and leaves the weights it does not convert
    (embeddings, norms, an untied head) as views of it. Under QLoRA that keeps the whole fp32 file mapped, and
    every page the 4-bit quantisation read stays resident (file-backed, counted in the process's RSS): for a
    0.47B model ~1.6 GB beside ~0.4 GB of NF4 weights. Copying the few unconverted tensors lets the mapping go.
    Quantised weights are new tensors already and are not touched. Without /proc (not Linux) nothing is copied.
    """
    ranges = _checkpoint_mappings()
    if not ranges:
        return 0

    def mapped(t: Any) -> bool:
        if t is None or t.device.type != "cpu" or t.numel() == 0:
            return False
        ptr = t.untyped_storage().data_ptr()
        return any(lo <= ptr < hi for lo, hi in ranges)

    copied = 0
    for module in model.modules():
        for p in list(module._parameters.values()):
            if mapped(p):
                p.data = p.data.clone()
                copied += p.numel() * p.element_size()
        for name, b in list(module._buffers.items()):
            if mapped(b):
                module._buffers[name] = b.clone()
                copied += b.numel() * b.element_size()
    if copied:
        log.debug("copied %.1f MB of tensors out of the memory-mapped checkpoint", copied / 1e6)
    return copied


def prepare_for_kbit_training(model: Any) -> Any:
    """peft's ``prepare_model_for_kbit_training``: freeze the base, fp32 norms/embeddings, inputs needing grads.

    Activation checkpointing is left to :mod:`domainlm.adapt.features` (one place for every method).
    """
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def base_storage(method: str, *, frozen_bf16: bool, quantization: dict[str, Any] | None = None) -> dict[str, Any]:
    """How the frozen base of a run was held in memory, for ``final/base_model.json``."""
    if method == "qlora":
        # frozen_bf16: the weights NF4 does not hold (embeddings, norms, an untied head) were stored in bf16.
        storage = {"storage": "nf4", "quantization": dict(quantization or {})}
        return {**storage, "frozen_bf16": True} if frozen_bf16 else storage
    return {"storage": "bfloat16" if frozen_bf16 else "float32"}


def round_frozen_to_bf16(model: Any, names: set[str] | None = None) -> None:
    """Round every floating parameter (or those in ``names``) to bf16 and back (exact in fp32): the values a
    bf16-stored base holds."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.is_floating_point() and p.dtype == torch.float32 and (names is None or name in names):
                p.copy_(p.to(torch.bfloat16).float())


def dequantized_base(src: Any, objective: str, storage: dict[str, Any] | None, **load_kwargs: Any):
    """The base model in fp32 holding exactly the values a run's frozen base held (see :func:`base_storage`).

    ``storage`` is the recorded ``{"storage": ...}`` entry; None or 'float32' loads the checkpoint as is. For
    'nf4' the base is loaded in 4 bit with the run's settings and dequantised (transformers'
    ``model.dequantize()``), and the weights NF4 does not hold are rounded to bf16 where the run stored them so
    (``frozen_bf16``), so merging adapters into it reproduces the QLoRA-trained model.
    Returns ``(model, LoadReport)``.
    """
    import torch

    from domainlm.sources.load import load_model

    kind = (storage or {}).get("storage", "float32")
    if kind == "nf4":
        model, report = load_4bit(src, objective, (storage or {}).get("quantization") or qlora_settings("float32"),
                                  **load_kwargs)
        plain = {n for n, p in model.named_parameters() if p.is_floating_point()}  # what NF4 does not hold
        model = model.dequantize(dtype=torch.float32) or model
        model = model.float()
        if (storage or {}).get("frozen_bf16"):
            round_frozen_to_bf16(model, plain)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer = None  # a plain fp32 model now: save_pretrained must not write a quantization_config
        for attr in ("is_quantized", "is_loaded_in_4bit"):
            if getattr(model, attr, False):
                setattr(model, attr, False)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        return model, report
    model, report = load_model(src, objective, **load_kwargs)
    if kind == "bfloat16":
        round_frozen_to_bf16(model)
    elif kind != "float32":
        raise ConfigError([f"unknown base storage '{kind}' in base_model.json (expected float32, bfloat16 or nf4)"])
    return model, report


__all__ = ["INSTALL_HINT", "base_storage", "bnb_config", "dequantized_base", "fp32_compute", "keep_training_kernel", "load_4bit",
           "prepare_for_kbit_training", "qlora_compute_dtype", "qlora_settings", "release_checkpoint_mapping", "require_bitsandbytes",
           "round_frozen_to_bf16"]
