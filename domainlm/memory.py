"""The memory planner behind ``domainlm compute --memory`` and adapt's start-up check.

Peak memory per device of one training step, broken down into weights, gradients, optimizer state and
activations, from the model's shape and the run's settings. The byte counts follow what ``domainlm adapt``
holds (they are validated against measured peaks in benchmarks/MEMORY_ADAPT.md):

* weights: full training keeps fp32 master weights (4 B/param; bf16 is autocast, not storage). LoRA keeps the
  frozen base in fp32, or bf16 when bf16 is on (adapt.features); QLoRA holds the body's linear weights in NF4
  with double quantisation (0.5 B/param + ~0.127 bits/param of constants, Dettmers et al. 2023) and the rest
  (embeddings, norms, an untied head) as LoRA would. Adapters: r x (in + out) per linear layer, fp32.
* gradients: fp32, one per trainable parameter. Optimizer: AdamW's two fp32 moments (8 B per trainable).
* activations: per layer and token, the tensors a Llama-style block saves for backward (norm inputs and
  outputs, q/k/v and RoPE, attention output, the MLP's gate/up/activation/product): ``11h + 4h_kv + 4I`` values
  (+ ``6h + I`` for LoRA dropout's copies of the inputs),
  in fp32, or mostly bf16 under autocast; attention itself is SDPA's memory-efficient/flash kernel (no L x L
  scores kept). With activation checkpointing only each layer's input is kept, plus one layer recomputed in
  the backward pass. The output head is adapt's chunked fused cross-entropy (at most 2^24 logits at a time).
* sharding: FSDP divides weights, gradients and optimizer state by the number of devices and adds one layer's
  gathered weights; DDP keeps a full copy plus its gradient buckets (a second copy of the gradients).
* the optimizer step: foreach AdamW allocates one fp32 temporary per trainable parameter, after the backward
  pass has freed the activations, so the peak holds the larger of activations and these temporaries.
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
    """Shape of a transformers config (its text config for multimodal ones)."""
    from domainlm.flops import model_flops

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    fb = model_flops(config, 1)
    hidden = int(getattr(text, "hidden_size", 0) or getattr(text, "n_embd", 0) or fb.d_model)
    layers = int(getattr(text, "num_hidden_layers", 0) or getattr(text, "n_layer", 0) or fb.n_layer)
    inter = int(getattr(text, "intermediate_size", 0) or getattr(text, "n_inner", 0) or 4 * hidden)
    heads = int(getattr(text, "num_attention_heads", 0) or getattr(text, "n_head", 0) or 1)
    kv_heads = int(getattr(text, "num_key_value_heads", 0) or heads)
    head_dim = int(getattr(text, "head_dim", 0) or hidden // max(heads, 1))
    return ModelShape(params=fb.total_params, embedding_params=fb.embedding_params, hidden=hidden, layers=layers,
                      intermediate=inter, kv_hidden=kv_heads * head_dim, vocab=int(getattr(text, "vocab_size", 0)),
                      source=getattr(text, "model_type", "config"))


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
    # temporaries of the optimizer step (foreach AdamW: one fp32 tensor per trainable parameter); the step runs
    # after the backward pass has freed the activations, so the peak holds the larger of the two
    step_working: float = 0.0

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + max(self.activations, self.step_working) + self.runtime

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
        return (f"{what}{verdict} (~{self.total / GB:.1f} GB per device = weights {self.weights / GB:.1f} + grads "
                f"{self.gradients / GB:.1f} + optimizer {self.optimizer / GB:.1f} + activations "
                f"{self.activations / GB:.1f} + runtime {self.runtime / GB:.1f})")


def estimate(shape: ModelShape, *, method: str = "full", strategy: str = "ddp", gpus: int = 1,
             gpu_memory_gb: float | None = None, seq_len: int = 2048, batch: int = 1,
             gradient_checkpointing: bool = False, bf16: bool = True, lora_r: int = 16, device: str = "cuda",
             chunked_head: bool = True) -> Estimate:
    """Peak memory per device of one training step of ``shape`` under these settings.

    Args:
        method: 'full' | 'lora' | 'qlora'.
        strategy: 'ddp' | 'fsdp' ('auto' is taken as fsdp when ``gpus`` > 1, else ddp).
        gpus: devices the run is spread over. gpu_memory_gb: memory of one (None: no fit verdict).
        seq_len, batch: tokens per sequence and sequences per micro-batch (per device).
        bf16: autocast on (activations mostly bf16; LoRA/QLoRA frozen weights stored bf16).
        device: 'cuda' (adds ~1 GB of CUDA context and allocator slack) or 'cpu'.
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
    h, kv, inter, layers = shape.hidden, shape.kv_hidden, shape.intermediate, shape.layers
    act_bytes = 2.5 if bf16 else 4.0  # under autocast matmul outputs are bf16, norms and residuals fp32
    # saved for backward per token: two RMSNorms (input, normalised, output: 3h each), RoPE (q, k, their rotated
    # halves and results: 3h + 3kv), v, the attention output and its contiguous copy (2h), the MLP's gate, up,
    # activation and product (4I); LoRA's dropout keeps its own copy of each wrapped layer's input (6h + I)
    values = 11 * h + 4 * kv + 4 * inter + (6 * h + inter if method != "full" else 0)
    per_layer = values * tokens * act_bytes
    if gradient_checkpointing:
        activations = layers * tokens * h * 4.0 + per_layer
    else:
        activations = layers * per_layer
    # the backward pass's working set: gradients of one layer's activations; the output head's logits chunk
    # (fused chunked cross-entropy) or the full logits with their softmax and gradient
    activations += 2 * tokens * max(h, inter) * 4.0
    head_values = min(tokens * shape.vocab, 1 << 24) if chunked_head else tokens * shape.vocab
    activations += 3 * head_values * 4.0
    runtime = 1.0 * GB if device == "cuda" else 0.0
    settings = {"method": method, "strategy": strategy, "gpus": gpus, "seq_len": seq_len, "batch": batch,
                "gradient_checkpointing": gradient_checkpointing, "bf16": bf16, "lora_r": lora_r, "device": device,
                "trainable_params": trainable, "params": n}
    return Estimate(weights, grads, optim, activations, runtime, settings,
                    None if gpu_memory_gb is None else gpu_memory_gb * GB, step_working=grads)


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
        for line in open("/proc/meminfo", encoding="ascii"):
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
    return check_fits(shape, device_memory_bytes=available, method=cfg.method, strategy=strategy, gpus=world,
                      seq_len=seq_len, batch=cfg.batch_size, gradient_checkpointing=cfg.gradient_checkpointing,
                      bf16=bf16, lora_r=cfg.lora_r, device=getattr(device, "type", str(device)),
                      chunked_head=cfg.chunked_head_on(getattr(device, "type", str(device))))


__all__ = ["device_memory_bytes", "startup_warning", "Estimate", "ModelShape", "NF4_BYTES_PER_PARAM", "check_fits", "estimate", "options_that_fit",
           "plan_report", "shape_from_config", "shape_from_params"]
