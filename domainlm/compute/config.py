"""The options of ``domainlm compute`` and the accelerators it can price a budget on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from domainlm.config import opt

# Dense (no sparsity) peak tensor-core throughput in the training precision, from the vendors'
# datasheets. Planning uses peak × utilisation, so these are ceilings, not promises.
ACCELERATORS: dict[str, tuple[str, float]] = {
    "h100": ("NVIDIA H100 SXM, BF16 dense", 989e12),
    "h200": ("NVIDIA H200 SXM, BF16 dense (H100 compute, more memory)", 989e12),
    "b200": ("NVIDIA B200, BF16 dense", 2250e12),
    "a100": ("NVIDIA A100, BF16 dense", 312e12),
    "l4": ("NVIDIA L4, BF16 dense", 121e12),
    "a10": ("NVIDIA A10, BF16 dense", 125e12),
    "v100": ("NVIDIA V100, FP16 tensor cores", 125e12),
    "t4": ("NVIDIA T4, FP16 tensor cores", 65e12),
    "mi300x": ("AMD Instinct MI300X, BF16 dense", 1307e12),
    "mi250x": ("AMD Instinct MI250X, BF16 dense", 383e12),
    "tpu-v5e": ("Google TPU v5e, BF16", 197e12),
    "tpu-v4": ("Google TPU v4, BF16", 275e12),
}

Accelerator = Literal["h100", "h200", "b200", "a100", "l4", "a10", "v100", "t4", "mi300x", "mi250x", "tpu-v5e",
                      "tpu-v4"]


@dataclass
class ComputeConfig:
    model: str = opt("tiny-llama", "model whose config sets the FLOPs: local folder, packaged name (minilm, "
                     "smollm2), tiny-* or a Hub id")
    tokens: int | None = opt(None, "training-token budget D (e.g. 1e9); give exactly one of tokens, flops, hours")
    flops: float | None = opt(None, "training FLOPs budget C (e.g. 1e18)")
    hours: float | None = opt(None, "wall-clock budget in hours on this machine (uses the measured throughput)")
    seq_len: int | None = opt(None, "tokens per training sequence (default: 256 causal, 128 masked, 512 protein, "
                              "as adapt prepares corpora)")
    objective: Literal["auto", "causal", "masked", "protein"] = opt("auto", "training objective; auto reads it "
                                                                    "from the model")
    accelerator: Accelerator = opt("h100", "named accelerator to estimate wall time on")
    utilisation: float = opt(0.4, "model FLOPs utilisation assumed on the accelerator; well-tuned large runs reach "
                             "0.4-0.5 (PaLM reported 0.46); a plain PyTorch loop on a 135M model measured 0.14 "
                             "on an H200 (experiments/SCALING.md)")
    head_fraction: float | None = opt(None, "fraction of positions where the output head runs (default: 1 for causal "
                                      "LMs, 0.15 for masked LMs, whose head adapt computes at masked tokens only)")
    trainable_fraction: float | None = opt(None, "fraction of parameters that get weight gradients (LoRA: about "
                                           "0.01); default: all")
    probe_seconds: float = opt(8.0, "seconds of real training steps used to measure throughput here (0: skip)")
    batch_size: int = opt(8, "largest probe micro-batch (smaller when one step would take too long)")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "where to run the probe; auto picks a GPU when present")
    mixture: str | None = opt(None, "an adapt recipe with 'sources:': print the tokens the budget draws from each "
                              "source and the epochs that implies, warning above 4 (Muennighoff et al. 2023)")
    out: str | None = opt(None, "also write the result as JSON to this file")
    trust_remote_code: bool = opt(False, "allow model code from the model folder to run (custom architectures)")
    # --- memory planner (--memory) ----------------------------------------------------------------
    memory: bool = opt(False, "plan memory instead of time: peak per device (weights, gradients, optimizer, "
                       "activations) and the settings that fit; needs no budget")
    params: float | None = opt(None, "with --memory: plan a Llama-shaped model of this many parameters (e.g. 8e9) "
                               "instead of --model's config")
    method: Literal["full", "lora", "qlora"] = opt("full", "with --memory: training method to plan")
    strategy: Literal["auto", "ddp", "fsdp"] = opt("auto", "with --memory: ddp (a full copy per GPU) or fsdp "
                                                   "(sharded); auto: fsdp on several GPUs")
    gpus: int = opt(1, "with --memory: number of GPUs")
    gpu_memory: float = opt(80.0, "with --memory: memory of one GPU in GB")
    micro_batch: int = opt(1, "with --memory: sequences per micro-batch per GPU")
    gradient_checkpointing: bool = opt(False, "with --memory: activation checkpointing on")
    lora_r: int = opt(16, "with --memory: LoRA rank (sets the adapter size)")

    def problems(self) -> list[str]:
        out = []
        given = [k for k in ("tokens", "flops", "hours") if getattr(self, k) is not None]
        if self.memory:
            for key in ("gpus", "micro_batch", "lora_r"):
                if getattr(self, key) < 1:
                    out.append(f"'{key}' must be at least 1, got {getattr(self, key)}")
            if self.gpu_memory <= 0:
                out.append(f"'gpu_memory' must be positive (GB), got {self.gpu_memory}")
            if self.params is not None and self.params < 1e6:
                out.append(f"'params' is a parameter count (e.g. 8e9), got {self.params}")
            if given:
                out.append(f"--memory plans memory and takes no budget; drop {', '.join('--' + g for g in given)}")
        elif len(given) != 1:
            out.append("give exactly one budget: --tokens D, --flops C or --hours H"
                       + (f" (got {', '.join(given)})" if given else ""))
        for key in given:
            if getattr(self, key) <= 0:
                out.append(f"'{key}' must be positive, got {getattr(self, key)}")
        if not 0 < self.utilisation <= 1:
            out.append(f"'utilisation' must be in (0, 1], got {self.utilisation}")
        if self.seq_len is not None and self.seq_len < 1:
            out.append(f"'seq_len' must be at least 1, got {self.seq_len}")
        if self.head_fraction is not None and not 0 <= self.head_fraction <= 1:
            out.append(f"'head_fraction' must be in [0, 1], got {self.head_fraction}")
        if self.trainable_fraction is not None and not 0 <= self.trainable_fraction <= 1:
            out.append(f"'trainable_fraction' must be in [0, 1], got {self.trainable_fraction}")
        if self.probe_seconds < 0:
            out.append(f"'probe_seconds' must be 0 or more, got {self.probe_seconds}")
        if self.hours is not None and self.probe_seconds == 0:
            out.append("'hours' converts time to tokens with the measured throughput: set probe_seconds above 0")
        if self.batch_size < 1:
            out.append(f"'batch_size' must be at least 1, got {self.batch_size}")
        return out
