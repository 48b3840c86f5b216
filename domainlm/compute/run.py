"""How ``domainlm compute`` prices a budget: a measured throughput probe, the memory plan and the mixture plan."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from domainlm.adapt.config import DEFAULT_BLOCK_SIZE
from domainlm.compute.config import ACCELERATORS, ComputeConfig
from domainlm.errors import ConfigError, SourceError

log = logging.getLogger(__name__)

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

        from domainlm.sources.gguf import materialise
        from domainlm.sources.resolution import resolve

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


def run(cfg: ComputeConfig) -> dict[str, Any]:
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
    from domainlm.sources.gguf import materialise
    from domainlm.sources.resolution import resolve

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


__all__ = ["log_scale_bar", "probe_throughput", "run"]
