"""``domainlm compute``: what a training budget costs, here and on a named accelerator.

Given a model and one of a token budget, a FLOPs budget or a number of hours, it prints the FLOPs
(from :mod:`domainlm.flops`), the wall time on this machine from a short measured training probe,
the wall time on a named accelerator at an assumed utilisation, the Chinchilla-optimal token count
for the model, and where the budget sits on a log scale below the 10^23 FLOPs mark.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

from domainlm.adapt.config import DEFAULT_BLOCK_SIZE
from domainlm.config import as_config, opt
from domainlm.errors import ConfigError, SourceError

log = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------------------------------
# Throughput probe
# --------------------------------------------------------------------------------------------------

def probe_throughput(model_config: Any, objective: str, seq_len: int, *, seconds: float = 8.0,
                     max_batch: int = 8, device: str = "cpu", trust_remote_code: bool = False) -> dict[str, Any]:
    """Measure training tokens/s with real optimizer steps of a freshly initialised model.

    Weights are random (built from the config): speed does not depend on their values, and this keeps
    the probe from loading a checkpoint. The micro-batch is chosen from one timed warm-up step so that
    one step stays short against ``seconds``, capped at ``max_batch``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from domainlm.device import use_bf16 as bf16_decision  # the one bf16 decision (adapt, bench)

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    auto = AutoModelForCausalLM if objective == "causal" else AutoModelForMaskedLM
    torch.manual_seed(0)
    try:
        model = auto.from_config(model_config, trust_remote_code=trust_remote_code).to(device)
    except ValueError as exc:
        raise ConfigError([f"'objective: {objective}' does not fit a {model_config.model_type} model "
                           f"({str(exc).splitlines()[0][:200]}); use --objective auto"]) from None
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    use_bf16 = bf16_decision("auto", device)
    vocab = int(model_config.get_text_config().vocab_size)
    gen = torch.Generator().manual_seed(0)

    def step(batch: int) -> None:
        ids = torch.randint(0, vocab, (batch, seq_len), generator=gen).to(device)
        labels = ids.clone()
        if objective != "causal":
            keep = torch.rand(batch, seq_len, generator=gen).to(device) >= 0.15
            labels[keep] = -100
        with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16,
                            enabled=use_bf16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    dtype = "bf16 autocast" if use_bf16 else "fp32"
    t0 = time.perf_counter()
    step(1)  # warm-up: allocations, optimizer state and kernel choice
    sync()
    warm = time.perf_counter() - t0
    if warm >= seconds:
        # A model too big for this machine to step within the probe: the warm-up step is the only
        # measurement we can afford, and it includes one-time costs, so the estimate is pessimistic.
        return {"tokens_per_s": seq_len / warm, "steps": 1, "micro_batch": 1, "seq_len": seq_len, "seconds": warm,
                "device": device, "dtype": dtype, "threads": torch.get_num_threads(), "tokens": seq_len,
                "from_warmup": True}
    # Small models on CPUs are overhead-bound, so throughput grows with the batch: double it while a
    # step stays under a sixth of the probe, up to max_batch.
    batch, began = 1, time.perf_counter()
    while batch < max_batch and time.perf_counter() - began < seconds / 2:
        t0 = time.perf_counter()
        step(batch)
        sync()
        if time.perf_counter() - t0 > seconds / 6:
            break
        batch = min(max_batch, batch * 2)
    tokens, steps = 0, 0
    start = time.perf_counter()
    while True:
        step(batch)
        sync()
        tokens += batch * seq_len
        steps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds or (steps >= 2 and elapsed + elapsed / steps > 1.5 * seconds):
            break
    return {"tokens_per_s": tokens / elapsed, "steps": steps, "micro_batch": batch, "seq_len": seq_len,
            "seconds": elapsed, "device": device, "dtype": dtype, "threads": torch.get_num_threads(),
            "tokens": tokens, "from_warmup": False}


# --------------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------------

def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "n/a"
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _count(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.3g}"


def log_scale_bar(marks: list[tuple[str, float]], *, width: int = 48) -> list[str]:
    """One line per (label, FLOPs) with its position on a shared log10 axis (the axis is the first line)."""
    logs = [math.log10(v) for _, v in marks if v > 0]
    lo, hi = math.floor(min(logs)), math.ceil(max(logs))
    hi = max(hi, lo + 1)
    label_w = max(len(label) for label, _ in marks)
    axis = [" "] * (width + 1)
    ticks = list(range(lo, hi + 1))
    step = max(1, len(ticks) // 8)
    for t in ticks[::step]:
        axis[round((t - lo) / (hi - lo) * width)] = "|"
    lines = [f"{'':<{label_w}}  10^{lo} {''.join(axis)} 10^{hi}"]
    for label, value in marks:
        row = ["-"] * (width + 1)
        row[round((math.log10(value) - lo) / (hi - lo) * width)] = "#"
        lines.append(f"{label:<{label_w}}  {'':>{len(str(lo)) + 3}} {''.join(row)}  {value:.3g}")
    return lines


# --------------------------------------------------------------------------------------------------
# The verb
# --------------------------------------------------------------------------------------------------

def memory_plan(cfg: ComputeConfig) -> dict[str, Any]:
    """``compute --memory``: the planner of :mod:`domainlm.memory` for a model config or ``--params``."""
    from domainlm.artifacts import atomic_write_json
    from domainlm.memory import estimate, plan_report, shape_from_config, shape_from_params

    if cfg.params is not None:
        shape, kind = shape_from_params(cfg.params), "causal"
    else:
        from transformers import AutoConfig

        from domainlm.sources import materialise, resolve

        src = resolve(cfg.model, trust_remote_code=cfg.trust_remote_code)
        try:
            model_config = AutoConfig.from_pretrained(materialise(src).path, trust_remote_code=cfg.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise SourceError(f"could not read the config of '{cfg.model}' ({src.path}): "
                              f"{str(exc).splitlines()[0]}") from None
        shape = shape_from_config(model_config)
        shape.source = f"{src.name} ({shape.source})"
        kind = src.kind if cfg.objective == "auto" else cfg.objective
    seq_len = cfg.seq_len or (2048 if cfg.params is not None else DEFAULT_BLOCK_SIZE[kind])
    chosen = estimate(shape, method=cfg.method, strategy=cfg.strategy, gpus=cfg.gpus, gpu_memory_gb=cfg.gpu_memory,
                      seq_len=seq_len, batch=cfg.micro_batch, gradient_checkpointing=cfg.gradient_checkpointing,
                      lora_r=cfg.lora_r)
    lines = plan_report(shape, chosen, gpus=cfg.gpus, gpu_memory_gb=cfg.gpu_memory, seq_len=seq_len,
                        batch=cfg.micro_batch, lora_r=cfg.lora_r)
    print("\n" + "\n".join(lines))
    result = {"model": shape.source, "params": shape.params, "seq_len": seq_len, "estimate": chosen.as_dict(),
              "fits": chosen.fits, "report": lines}
    if cfg.out:
        atomic_write_json(cfg.out, {"config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, **result})
    return result


def mixture_plan(recipe: str, tokens: float) -> dict[str, Any]:
    """What a token budget draws from each source of an adapt recipe's ``sources:`` (its weights, schedule and
    max_epochs, walked as the run's stream would), and the epochs over each source's training blocks.

    A source is measured from its prepared folder, or, for a card, from the copy adapt prepared in OUT/corpora;
    a card not prepared yet has no block count, so the plan cannot say its epochs (and says so)."""
    from pathlib import Path

    from domainlm.adapt.config import AdaptConfig
    from domainlm.adapt.data import MixtureExhausted, SequenceStream, StreamSource
    from domainlm.adapt.mixture import schedule_points
    from domainlm.config import load
    from domainlm.corpora import read_corpus_manifest

    acfg = load(AdaptConfig, recipe)
    if not acfg.sources:
        raise ConfigError([f"'mixture': {recipe} has no 'sources:' list to plan"])
    blocks: dict[str, int | None] = {}
    block_size = None
    for spec in acfg.sources:
        folder = Path(spec.corpus)
        if not folder.is_dir():
            folder = Path(acfg.out) / "corpora" / spec.corpus
        try:
            man = read_corpus_manifest(folder)
        except Exception:  # noqa: BLE001 - not prepared (yet): the plan says so instead of failing
            blocks[spec.label] = None
            continue
        blocks[spec.label] = int(man["splits"]["train"]["blocks"])
        block_size = block_size or int(man["block_size"])
    block_size = block_size or acfg.block_size or DEFAULT_BLOCK_SIZE["causal"]
    sequences = int(tokens // block_size)
    stream = SequenceStream([StreamSource(s.label, blocks[s.label] or 1, s.weight,
                                          s.max_epochs if blocks[s.label] else None, salt=i)
                             for i, s in enumerate(acfg.sources)], acfg.seed,
                            schedule=schedule_points(acfg, acfg.batch_size * acfg.grad_accum, block_size))
    try:
        used = stream.plan(sequences)
    except MixtureExhausted as exc:
        raise ConfigError([f"'mixture': {exc}"]) from None
    plan = {name: {"tokens": n * block_size, "share": n / max(1, sequences), "blocks": blocks[name],
                   "epochs": n / blocks[name] if blocks[name] else None}
            for name, n in used.items()}
    return {"recipe": str(recipe), "block_size": block_size, "sequences": sequences, "sources": plan}


def compute(config: ComputeConfig | str | None = None, **overrides: Any) -> dict[str, Any]:
    """FLOPs, wall time here and on an accelerator, and Chinchilla-optimal tokens for a training budget.

    Give the model and exactly one budget: --tokens D, --flops C or --hours H (hours on this machine).
    The wall time here comes from a few seconds of real training steps of the model at --seq-len.
    Returns the numbers as a dict (and writes them as JSON with --out).
    """
    from domainlm.artifacts import atomic_write_json
    from domainlm.device import pick_device
    from domainlm.flops import (
        CHINCHILLA_TOKENS_PER_PARAM,
        EMERGENCE_FLOPS,
        chinchilla_optimal_tokens,
        measure_matmul_peak,
        mfu,
        model_flops,
    )
    from domainlm.sources import materialise, resolve

    cfg = as_config(ComputeConfig, config, overrides)
    if cfg.memory:
        return memory_plan(cfg)
    src = resolve(cfg.model, trust_remote_code=cfg.trust_remote_code)
    from transformers import AutoConfig

    try:
        model_config = AutoConfig.from_pretrained(materialise(src).path, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise SourceError(f"could not read the config of '{cfg.model}' ({src.path}): {str(exc).splitlines()[0]}"
                          ) from None
    kind = src.kind if cfg.objective == "auto" else cfg.objective
    objective = "causal" if kind == "causal" else "masked"
    seq_len = cfg.seq_len or DEFAULT_BLOCK_SIZE[kind]
    max_pos = getattr(model_config.get_text_config(), "max_position_embeddings", None)
    if getattr(model_config, "model_type", "") in ("roberta",) and max_pos:
        max_pos -= 2  # RoBERTa reserves two positions for padding offsets
    if max_pos and seq_len > max_pos:
        raise ConfigError([f"'seq_len' {seq_len} is longer than {cfg.model}'s {max_pos} positions; "
                           f"use --seq-len {max_pos} or less"])
    head_fraction = cfg.head_fraction if cfg.head_fraction is not None else (1.0 if objective == "causal" else 0.15)
    fb = model_flops(model_config, seq_len, head_fraction=head_fraction, trainable_fraction=cfg.trainable_fraction)
    acc_name, acc_peak = ACCELERATORS[cfg.accelerator]
    acc_rate = acc_peak * cfg.utilisation

    probe: dict[str, Any] | None = None
    peak_here = None
    if cfg.probe_seconds > 0:
        device = pick_device(cfg.device)
        log.info("measuring training throughput of %s at seq_len %d on %s for ~%.0f s", src.name, seq_len, device,
                 cfg.probe_seconds)
        probe = probe_throughput(model_config, objective, seq_len, seconds=cfg.probe_seconds,
                                 max_batch=cfg.batch_size, device=device, trust_remote_code=cfg.trust_remote_code)
        # 1024² products cannot fill a datacenter GPU (an H200 measured 114 TFLOP/s at 1024 and 669 at
        # 8192 in bf16), and a peak measured too low makes the MFU exceed 100%.
        peak_here = measure_matmul_peak("bf16" if probe["dtype"].startswith("bf16") else "fp32", seconds=0.5,
                                        size=8192 if device.startswith("cuda") else 1024, device=device)
        probe["matmul_peak_flops"] = peak_here
        probe["mfu"] = mfu(probe["tokens_per_s"], fb.training_flops_per_token, peak_here)
        probe["flops"] = probe["tokens"] * fb.training_flops_per_token

    per_token = fb.training_flops_per_token
    if cfg.tokens is not None:
        tokens = float(cfg.tokens)
        flops = tokens * per_token
    elif cfg.flops is not None:
        flops = float(cfg.flops)
        tokens = flops / per_token
    else:
        assert probe is not None  # problems() requires the probe for --hours
        tokens = probe["tokens_per_s"] * cfg.hours * 3600
        flops = tokens * per_token
    here_s = tokens / probe["tokens_per_s"] if probe else float("nan")
    acc_s = flops / acc_rate
    optimal = chinchilla_optimal_tokens(fb.total_params)

    result: dict[str, Any] = {
        "model": src.name, "model_type": fb.model_type, "objective": objective, "seq_len": seq_len,
        "params": fb.as_dict(), "tokens": tokens, "flops": flops, "flops_6nd_chinchilla": fb.chinchilla_6n * tokens,
        "flops_6nd_kaplan": fb.kaplan_6n * tokens, "probe": probe, "wall_time_here_s": here_s,
        "accelerator": {"name": cfg.accelerator, "description": acc_name, "peak_flops": acc_peak,
                        "utilisation": cfg.utilisation, "wall_time_s": acc_s},
        "chinchilla_optimal_tokens": optimal, "tokens_per_param": tokens / fb.total_params,
        "log10_flops": math.log10(flops), "orders_below_1e23": math.log10(EMERGENCE_FLOPS) - math.log10(flops),
    }
    if probe:
        lo = math.log10(probe["flops"])
        result["log_position_probe_to_1e23"] = (math.log10(flops) - lo) / (math.log10(EMERGENCE_FLOPS) - lo)
    if cfg.mixture:
        result["mixture"] = mixture_plan(cfg.mixture, tokens)

    # ---- the table -------------------------------------------------------------------------------
    p = print
    p(f"\nmodel          {src.name} ({fb.model_type}, {objective} LM), seq_len {seq_len}")
    p(f"parameters     {_count(fb.total_params)} total = {_count(fb.non_embedding_params)} non-embedding "
      f"(Kaplan's N) + {_count(fb.embedding_params)} embedding")
    p(f"FLOPs/token    {per_token:.3g} training = {fb.training_flops_per_token / fb.forward_flops_per_token:.2f} x "
      f"forward {fb.forward_flops_per_token:.3g} (2N {2 * fb.non_embedding_params:.3g} + attention "
      f"{fb.attention_flops_per_token:.3g} + head {fb.head_flops_per_token:.3g})")
    p(f"               for reference: 6N = {fb.kaplan_6n:.3g} (Kaplan, no embeddings), "
      f"{fb.chinchilla_6n:.3g} (Chinchilla, all parameters)")
    how = "given" if cfg.tokens else ("from --flops" if cfg.flops else f"{cfg.hours:g} h at the measured speed")
    p(f"\nbudget         {_count(tokens)} tokens ({how}) = {flops:.3g} FLOPs  "
      f"[6ND: {fb.chinchilla_6n * tokens:.3g} Chinchilla, {fb.kaplan_6n * tokens:.3g} Kaplan]")
    if probe:
        p(f"this machine   {probe['tokens_per_s']:.4g} tokens/s measured ({probe['steps']} steps of "
          f"{probe['micro_batch']}x{seq_len} tokens, {probe['dtype']}, {probe['device']}, {probe['threads']} threads), "
          f"MFU {probe['mfu']:.1%} of a measured {peak_here:.3g} FLOP/s matmul peak")
        p(f"               wall time {_duration(here_s)}"
          + ("  (from one warm-up step, which includes one-time costs: an upper bound)" if probe["from_warmup"]
             else ""))
    else:
        p("this machine   not measured (probe_seconds: 0)")
    p(f"{cfg.accelerator:<14} {_duration(acc_s)} at {cfg.utilisation:.0%} of {acc_peak:.3g} FLOP/s ({acc_name})"
      + (f"; {cfg.hours:g} h there buys {acc_rate * cfg.hours * 3600 / per_token:.3g} tokens" if cfg.hours else ""))
    ratio = tokens / optimal
    p(f"\nChinchilla     {_count(optimal)} tokens is compute-optimal for {_count(fb.total_params)} parameters "
      f"({CHINCHILLA_TOKENS_PER_PARAM:g} per parameter, Hoffmann et al. 2022); this budget is {ratio:.3g}x that "
      f"({tokens / fb.total_params:.3g} tokens per parameter)")
    if ratio < 1:
        p("               continued pretraining usually sits far below it: it starts from a trained model, so "
          "the optimum for training from scratch is an upper reference, not a target")
    marks = []
    if probe:
        marks.append(("throughput probe (just now)", probe["flops"]))
        marks.append(("1 hour on this machine", probe["tokens_per_s"] * 3600 * per_token))
    marks.append(("this budget", flops))
    marks.append((f"1 day on one {cfg.accelerator}", acc_rate * 86400))
    marks.append(("1e23: emergent abilities", EMERGENCE_FLOPS))
    p("\nlog scale (FLOPs); Wei et al. 2022 saw abilities emerge around 10^23 training FLOPs")
    for line in log_scale_bar(marks):
        p("  " + line)
    gap = result["orders_below_1e23"]
    if gap > 0:
        p(f"10^23 FLOPs is {10 ** gap:.3g}x this budget ({gap:.1f} orders of magnitude)"
          + (f"; from the probe, this budget is {result['log_position_probe_to_1e23']:.0%} of the way there on a "
             "log scale" if probe else "")
          + f"; it would take {_duration(EMERGENCE_FLOPS / acc_rate)} on one {cfg.accelerator}.")
    else:
        p(f"this budget is {10 ** -gap:.3g}x beyond 10^23 FLOPs.")
    if cfg.mixture:
        from domainlm.adapt.config import REPEAT_WARNING_EPOCHS

        mix = result["mixture"]
        p(f"\nmixture        {mix['recipe']}: {_count(tokens)} tokens = {mix['sequences']:,} blocks of "
          f"{mix['block_size']} tokens")
        for name, src in mix["sources"].items():
            epochs = (f"{src['epochs']:7.2f} epochs of {src['blocks']:,} blocks" if src["epochs"] is not None
                      else "epochs unknown: not prepared yet (domainlm corpus prepare, or run adapt once)")
            p(f"  {name:<26} {_count(src['tokens']):>8} tokens  {src['share']:6.1%}  {epochs}")
            if src["epochs"] is not None and src["epochs"] > REPEAT_WARNING_EPOCHS:
                msg = (f"source '{name}' would repeat {src['epochs']:.1f} times: returns from repeated data fall "
                       f"after about {REPEAT_WARNING_EPOCHS} epochs (Muennighoff et al. 2023); cap it with "
                       "max_epochs, lower its weight or add data")
                log.warning(msg)
                result.setdefault("warnings", []).append(msg)
    if cfg.out:
        atomic_write_json(cfg.out, {"config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, **result})
    return result


__all__ = ["ACCELERATORS", "ComputeConfig", "compute", "log_scale_bar", "probe_throughput"]
