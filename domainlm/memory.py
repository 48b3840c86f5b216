"""The memory planner behind ``domainlm compute --memory`` and adapt's start-up check.

Peak memory per device of one training step, broken down into weights, gradients, optimizer state and
activations, from the model's shape and the run's settings. The byte counts follow what ``domainlm adapt``
holds (they are validated against measured peaks in experiments/MEMORY_ADAPT.md):

* weights: full training keeps fp32 master weights (4 B/param; bf16 is autocast, not storage). LoRA keeps the
  frozen base in fp32, or bf16 when bf16 is on (adapt.features); QLoRA holds the body's linear weights in NF4
  with double quantisation (0.5 B/param + ~0.127 bits/param of constants, Dettmers et al. 2023) and the rest
  (embeddings, norms, an untied head) as LoRA would. Adapters: r x (in + out) per linear layer, fp32.
* gradients: fp32, one per trainable parameter. Optimizer: AdamW's two fp32 moments (8 B per trainable).
* activations: per layer and token, the bytes of the tensors a Llama-style block saves for backward, counted on
  adapt's own path with ``torch.autograd.graph.saved_tensors_hooks`` (unique storages; experiments/MEMORY_ADAPT.md):
  see :func:`layer_activation_bytes`. A frozen linear keeps no input and a frozen norm only its input, so LoRA's
  base keeps less than full training, while its adapters keep their inputs (and, with dropout, the dropout mask
  and the dropped copy). Under bf16 autocast the norms and the residual stream stay fp32, every linear keeps its
  own bf16 cast of its input, and autocast's bf16 copy of every trainable body weight (2 B/param: all of them
  under full training) is kept until the backward pass. Attention is SDPA's fused kernel (no L x L scores
  kept), but where packed documents reach it as a dense mask (CPU, or CUDA without flash-attn) each layer keeps
  that L x L mask in the compute dtype, and grouped k/v heads are repeated to all heads. With activation
  checkpointing only each layer's input is kept, plus one layer recomputed in the backward pass. The output head
  is adapt's chunked fused cross-entropy (at most 2^24 logits at a time), which computes its gradients in the
  forward pass and keeps them (the hidden states' and, when the head trains, the head weight's).
* the peak: the activations peak at the start of the backward pass, before any body gradient exists; gradients
  then grow as activations are freed, and the optimizer step needs all gradients plus its temporaries (foreach
  AdamW, adapt's step on a CPU and under FSDP: one fp32 tensor per trainable parameter; the fused AdamW adapt
  uses on one or more GPUs without FSDP works in place). So the peak is weights + optimizer + the larger of
  (activations) and (gradients + the larger of the step's temporaries and what the backward pass still holds at
  its end: one layer's activations and the working set).
* sharding: FSDP divides weights, gradients and optimizer state by the number of devices and adds one layer's
  gathered weights; DDP keeps a full copy plus its gradient buckets (a second copy of the gradients).
* runtime: the CUDA context and allocator slack on a GPU (~1 GB assumed); 0 on a CPU, where benchmarks compare
  against the peak RSS above the process's size after ``import torch, transformers``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)

GB = 1e9  # planner output is in decimal GB, as GPU memory sizes are quoted

# NF4 with double quantisation: 4 bits per weight + 8-bit absmax per 64 weights, themselves quantised with an
# fp32 constant per 256 blocks: 4 + 8/64 + 32/(64*256) = 4.127 bits (QLoRA paper, section 3).
NF4_BYTES_PER_PARAM = 4.127 / 8


@dataclass
class ModelShape:
    """What the planner needs to know about a transformer; from a config or from a parameter count."""

    params: int
    embedding_params: int
    hidden: int
    layers: int
    intermediate: int
    kv_hidden: int
    vocab: int
    source: str = "config"

    @property
    def body_linear_params(self) -> int:
        """Parameters in the transformer blocks' linear layers (what LoRA wraps and QLoRA quantises)."""
        return self.layers * (2 * self.hidden * self.hidden + 2 * self.hidden * self.kv_hidden
                              + 3 * self.hidden * self.intermediate)

    @property
    def lora_io_per_rank(self) -> int:
        """Sum of (in + out) over the linear layers LoRA wraps (all-linear), times layers: LoRA params per rank."""
        h, kv, i = self.hidden, self.kv_hidden, self.intermediate
        return self.layers * (9 * h + 2 * kv + 3 * i)


def shape_from_config(config: Any) -> ModelShape:
    """Shape of a transformers config (its text config for multimodal ones), read by ``flops.config_shape`` as the
    FLOPs count reads it."""
    from domainlm.flops import config_shape, model_flops

    s = config_shape(config)
    fb = model_flops(config, 1)
    return ModelShape(params=fb.total_params, embedding_params=fb.embedding_params, hidden=s.d_model, layers=s.n_layer,
                      intermediate=s.d_ff, kv_hidden=s.n_kv_head * s.head_dim, vocab=s.vocab,
                      source=s.model_type or "config")


def shape_from_params(params: float, vocab: int = 32000) -> ModelShape:
    """A Llama-shaped model of about ``params`` parameters (for ``--params``).

    Width/depth follow Llama's aspect ratio (hidden = 128 x layers, SwiGLU intermediate 8/3 x hidden, untied
    head), which puts 12 h^2 parameters in each block.
    """
    params = int(params)
    h = 256
    for _ in range(60):  # solve 12 h^2 L + 2 V h = N with L = h / 128
        layers = max(1, round(h / 128))
        total = 12 * h * h * layers + 2 * vocab * h
        h = max(64, int(h * (params / total) ** (1 / 3)))
    h = max(64, round(h / 64) * 64)
    layers = max(1, round((params - 2 * vocab * h) / (12 * h * h)))
    inter = int(8 * h / 3)
    return ModelShape(params=params, embedding_params=2 * vocab * h, hidden=h, layers=layers, intermediate=inter,
                      kv_hidden=h, vocab=vocab, source=f"--params {params:.3g} (Llama-shaped)")


@dataclass
class Estimate:
    """Peak bytes per device, by kind, and the settings that produced it."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    runtime: float
    settings: dict[str, Any] = field(default_factory=dict)
    device_memory: float | None = None
    # temporaries of the optimizer step (foreach AdamW: one fp32 tensor per trainable parameter)
    step_working: float = 0.0
    # what the backward pass still holds when the last gradients form: one layer's activations and the working set
    backward_tail: float = 0.0

    @property
    def total(self) -> float:
        """Weights + optimizer + the larger of the activation peak (start of the backward pass, no body gradients
        yet) and all gradients with the larger of the step's temporaries and the backward pass's tail."""
        late = self.gradients + max(self.step_working, self.backward_tail)
        return self.weights + self.optimizer + max(self.activations, late) + self.runtime

    @property
    def fits(self) -> bool | None:
        return None if self.device_memory is None else self.total <= self.device_memory

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(total=self.total, fits=self.fits)
        return out

    def line(self) -> str:
        s = self.settings
        what = (f"{s['method']}" + (" + checkpointing" if s["gradient_checkpointing"] else "")
                + f", {s['strategy']} on {s['gpus']}x" + (f"{self.device_memory / GB:.0f} GB" if self.device_memory
                                                            else "device"))
        verdict = "" if self.fits is None else (": fits" if self.fits else ": does not fit")
        late = max(self.step_working, self.backward_tail)
        return (f"{what}{verdict} (~{self.total / GB:.1f} GB per device = weights {self.weights / GB:.1f} + "
                f"optimizer {self.optimizer / GB:.1f} + max(activations {self.activations / GB:.1f}, grads "
                f"{self.gradients / GB:.1f} + step {late / GB:.1f}) + runtime {self.runtime / GB:.1f})")


def layer_activation_bytes(shape: ModelShape, *, method: str, bf16: bool, lora_dropout: float = 0.05,
                           lora_r: int = 16, repeat_kv: bool = True) -> float:
    """Bytes one transformer block saves for backward per token (without the attention mask and weight copies).

    Counted with ``saved_tensors_hooks`` on adapt's path for a Llama block (h hidden, kv the k/v width, I the MLP
    width; tests/test_adapt_memory.py checks it against autograd); 2026-12-04, torch 2.13, transformers 5.25,
    peft 0.21:

    * full, fp32: two RMSNorms keep input, normalised and output (6h); attention keeps q and k after RoPE, v
      and its output (the output projection's input is a view of it): 4h where transformers repeats grouped k/v
      heads for SDPA (``repeat_kv``: with a dense mask), else 2h + 2kv; the MLP's gate, up, SiLU(gate) and
      product (4I).
    * full, bf16 autocast: the norms keep two fp32 tensors each (their output is not kept: each linear keeps its
      own bf16 cast of it), q/k/v/gate/up keep five bf16 input casts, attention and MLP tensors are bf16.
    * LoRA / QLoRA: frozen linears keep no input and frozen norms only their input (2h); attention as above; the
      MLP's gate, up and SiLU(gate) (3I). The adapters on the seven projections keep their inputs: without
      dropout the shared attention input, MLP input and product (2h + I in fp32; under bf16 each adapter its own
      bf16 cast, 6h + I); with dropout each adapter keeps its mask and dropped input (2 x (6h + I) in fp32; under
      bf16 the mask in fp32 and a bf16 cast of the dropped input); and each ``lora_B`` its input (r values).
    """
    h, kv, i = shape.hidden, shape.kv_hidden, shape.intermediate
    attention = 4 * h if repeat_kv else 2 * h + 2 * kv
    if method == "full":
        if bf16:
            return 4.0 * 4 * h + 2.0 * (5 * h + attention + 4 * i)
        return 4.0 * (6 * h + attention + 4 * i)
    if bf16:
        base = 4.0 * 2 * h + 2.0 * (attention + 3 * i)
        adapters = (4.0 + 2.0) * (6 * h + i) if lora_dropout > 0 else 2.0 * (6 * h + i)
        return base + adapters + 2.0 * 7 * lora_r
    base = 4.0 * (2 * h + attention + 3 * i)
    adapters = 4.0 * 2 * (6 * h + i) if lora_dropout > 0 else 4.0 * (2 * h + i)
    return base + adapters + 4.0 * 7 * lora_r


def estimate(shape: ModelShape, *, method: str = "full", strategy: str = "ddp", gpus: int = 1,
             gpu_memory_gb: float | None = None, seq_len: int = 2048, batch: int = 1,
             gradient_checkpointing: bool = False, bf16: bool = True, lora_r: int = 16, device: str = "cuda",
             chunked_head: bool = True, lora_dropout: float = 0.05, dense_doc_mask: bool | None = None) -> Estimate:
    """Peak memory per device of one training step of ``shape`` under these settings.

    Args:
        method: 'full' | 'lora' | 'qlora'.
        strategy: 'ddp' | 'fsdp' ('auto' is taken as fsdp when ``gpus`` > 1, else ddp).
        gpus: devices the run is spread over. gpu_memory_gb: memory of one (None: no fit verdict).
        seq_len, batch: tokens per sequence and sequences per micro-batch (per device).
        bf16: autocast on (activations mostly bf16; LoRA/QLoRA frozen weights stored bf16).
        device: 'cuda' (adds ~1 GB of CUDA context and allocator slack) or 'cpu'.
        lora_dropout: LoRA/QLoRA dropout (above 0 each adapter keeps its dropout mask and dropped input).
        dense_doc_mask: packed documents reach attention as a dense L x L mask that each layer keeps, and grouped
            k/v heads are repeated (None: as adapt's attention 'auto' does here: SDPA with that mask, except on
            CUDA with flash-attn installed; flash and flex keep neither).
    """
    if method not in ("full", "lora", "qlora"):
        raise ValueError(f"method must be full, lora or qlora, got {method!r}")
    if strategy == "auto":
        strategy = "fsdp" if gpus > 1 else "ddp"
    n, body = shape.params, shape.body_linear_params
    other = max(0, n - body)  # embeddings, norms, biases, an untied head
    frozen_bytes = 2 if bf16 else 4
    if method == "full":
        trainable = n
        weights = 4.0 * n
    else:
        trainable = lora_r * shape.lora_io_per_rank
        base = NF4_BYTES_PER_PARAM * body + frozen_bytes * other if method == "qlora" else frozen_bytes * n
        weights = base + 4.0 * trainable
    grads = 4.0 * trainable
    optim = 8.0 * trainable
    if strategy == "fsdp" and gpus > 1:
        layer_weights = weights / max(shape.layers, 1)
        weights = weights / gpus + 2 * layer_weights  # the layer being computed and the next one prefetched
        grads, optim = grads / gpus, optim / gpus
    elif gpus > 1:
        grads *= 2  # DDP's gradient buckets hold a second copy

    tokens = seq_len * batch
    h, layers = shape.hidden, shape.layers
    if dense_doc_mask is None:  # adapt's attention 'auto': flash-attn on CUDA where installed, else SDPA + the mask
        from domainlm.attention import _flash_installed

        dense_doc_mask = device != "cuda" or not _flash_installed()
    per_layer = tokens * layer_activation_bytes(shape, method=method, bf16=bf16, lora_dropout=lora_dropout,
                                                lora_r=lora_r, repeat_kv=dense_doc_mask)
    if dense_doc_mask:  # the [B, 1, L, L] document mask, converted to the compute dtype by each layer's SDPA call
        per_layer += batch * seq_len * seq_len * (2 if bf16 else 4)
    # the backward pass's working set: gradients of one layer's activations
    working = 2 * tokens * max(h, shape.intermediate) * 4.0
    if gradient_checkpointing:
        activations = layers * tokens * h * 4.0 + per_layer  # each layer's fp32 input, one layer recomputed
    else:
        activations = layers * per_layer
    activations += working
    if bf16:  # autocast's bf16 copies of the trainable body weights (all of them, or the adapters), kept for backward
        activations += 2.0 * (body if method == "full" else trainable)
    # the output head: logits, softmax and gradient of one chunk (chunked fused cross-entropy) or of all tokens;
    # the fused head's gradients computed in the forward pass: the hidden states' (fp32) and, when the head
    # trains, the head weight's
    head_values = min(tokens * shape.vocab, 1 << 24) if chunked_head else tokens * shape.vocab
    activations += 3 * head_values * 4.0
    if chunked_head:
        activations += tokens * h * 4.0 + (shape.vocab * h * 4.0 if method == "full" else 0.0)
    runtime = 1.0 * GB if device == "cuda" else 0.0
    settings = {"method": method, "strategy": strategy, "gpus": gpus, "seq_len": seq_len, "batch": batch,
                "gradient_checkpointing": gradient_checkpointing, "bf16": bf16, "lora_r": lora_r, "device": device,
                "lora_dropout": lora_dropout, "dense_doc_mask": dense_doc_mask, "trainable_params": trainable,
                "params": n}
    # adapt's optimizer step: fused AdamW on CUDA (in place, no temporaries) except under FSDP; foreach elsewhere
    fused_step = device == "cuda" and not (strategy == "fsdp" and gpus > 1)
    return Estimate(weights, grads, optim, activations, runtime, settings,
                    None if gpu_memory_gb is None else gpu_memory_gb * GB, step_working=0.0 if fused_step else grads,
                    backward_tail=per_layer + working)


def options_that_fit(shape: ModelShape, *, gpus: int, gpu_memory_gb: float, seq_len: int, batch: int = 1,
                     bf16: bool = True, lora_r: int = 16) -> list[Estimate]:
    """Every method x checkpointing (x strategy with several GPUs) estimate, smallest total first."""
    out = []
    strategies = ("ddp", "fsdp") if gpus > 1 else ("ddp",)
    for method in ("full", "lora", "qlora"):
        for ckpt in (False, True):
            for strategy in strategies:
                out.append(estimate(shape, method=method, strategy=strategy, gpus=gpus, gpu_memory_gb=gpu_memory_gb,
                                    seq_len=seq_len, batch=batch, gradient_checkpointing=ckpt, bf16=bf16,
                                    lora_r=lora_r))
    return sorted(out, key=lambda e: e.total)


def plan_report(shape: ModelShape, chosen: Estimate, *, gpus: int, gpu_memory_gb: float, seq_len: int,
                batch: int, bf16: bool = True, lora_r: int = 16) -> list[str]:
    """Printable lines: the chosen settings' breakdown and verdict, then the cheapest settings that fit."""
    lines = [f"model          {shape.source}: {shape.params / 1e9:.3g}B parameters ({shape.layers} layers, hidden "
             f"{shape.hidden}, vocab {shape.vocab})",
             f"memory         {chosen.line()}"]
    fitting = [e for e in options_that_fit(shape, gpus=gpus, gpu_memory_gb=gpu_memory_gb, seq_len=seq_len,
                                           batch=batch, bf16=bf16, lora_r=lora_r) if e.fits]
    if chosen.fits:
        lines.append("               fits")
    elif fitting:
        best = {}
        for e in fitting:  # cheapest per method, in the order full, lora, qlora
            best.setdefault(e.settings["method"], e)
        lines.append(f"               does not fit in {gpus}x{gpu_memory_gb:g} GB (~{chosen.total / GB:.0f} GB); "
                     "settings that fit:")
        for method in ("full", "lora", "qlora"):
            if method in best:
                lines.append(f"                 {best[method].line()}")
    else:
        lines.append(f"               does not fit in {gpus}x{gpu_memory_gb:g} GB (~{chosen.total / GB:.0f} GB), and "
                     f"neither does any method with checkpointing at seq_len {seq_len}, batch {batch}: add GPUs "
                     "(FSDP) or shorten the sequences")
    return lines


def check_fits(shape: ModelShape, *, device_memory_bytes: float, **kwargs: Any) -> str | None:
    """For adapt's start-up: a warning line when the run's estimate exceeds the device's memory, else None."""
    est = estimate(shape, gpu_memory_gb=device_memory_bytes / GB, **kwargs)
    if est.fits is False:
        return (f"memory planner: this run needs ~{est.total / GB:.1f} GB per device but the device has "
                f"{device_memory_bytes / GB:.1f} GB ({est.line()}); consider --gradient-checkpointing, "
                "method: lora/qlora, FSDP over more GPUs or a shorter block_size (domainlm compute --memory)")
    return None


def device_memory_bytes(device: Any) -> float | None:
    """Total memory of a GPU, or the memory available to this process on a CPU machine (None if unknown)."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:  # closed: an unclosed file is a ResourceWarning
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024.0
    except OSError:
        pass
    return None


def startup_warning(model: Any, cfg: Any, *, strategy: str, world: int, seq_len: int, bf16: bool,
                    device: Any) -> str | None:
    """What ``adapt`` prints before training when the planner says the run will not fit its device (else None)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        shape = shape_from_config(inner.config)
    except Exception as exc:  # noqa: BLE001 - an unplannable architecture must not stop training
        log.debug("memory planner skipped: %s", exc)
        return None
    available = device_memory_bytes(device)
    if available is None:
        return None
    kind = getattr(device, "type", str(device))
    return check_fits(shape, device_memory_bytes=available, method=cfg.method, strategy=strategy, gpus=world,
                      seq_len=seq_len, batch=cfg.batch_size, gradient_checkpointing=cfg.gradient_checkpointing,
                      bf16=bf16, lora_r=cfg.lora_r, device=kind, chunked_head=cfg.chunked_head_on(kind),
                      lora_dropout=cfg.lora_dropout)


__all__ = ["device_memory_bytes", "startup_warning", "Estimate", "ModelShape", "NF4_BYTES_PER_PARAM", "check_fits", "estimate", "layer_activation_bytes",
           "options_that_fit",
           "plan_report", "shape_from_config", "shape_from_params"]
