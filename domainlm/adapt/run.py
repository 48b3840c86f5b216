"""The continued-pretraining loop behind ``domainlm adapt``.

One process or many (``torchrun`` / ``accelerate launch``), each keeping a full copy of the model (DDP) or a
shard of it (FSDP2, ``adapt/parallel.py``). The loss of every optimizer step is the sum of token losses over the
whole global batch divided by its number of target tokens, whatever the split into processes and
micro-batches; so a 2-process run matches a 1-process run with the same global batch.

``run`` reads top to bottom as the steps of a run: set up, data, model (``build.py``), resume, loop (here),
finish (``finish.py``, with the evaluations); ``records.py`` holds what the steps hand to each other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from domainlm.adapt.batches import Batches
from domainlm.adapt.build import build_model, load_data, set_up
from domainlm.adapt.checkpoint import load_checkpoint, read_state, save_checkpoint
from domainlm.adapt.config import AdaptConfig
from domainlm.adapt.curves import MetricsLog
from domainlm.adapt.finish import base_info, corpus_info, eval_record, finish
from domainlm.adapt.parallel import Dist, clip_grad_norm_, no_sync, peak_rss, state_bytes
from domainlm.adapt.records import Data, Progress, Run, Trainer
from domainlm.artifacts import write_manifest
from domainlm.config import to_dict
from domainlm.errors import ConfigError
from domainlm.faults import fault_point
from domainlm.lm_loss import IGNORE

log = logging.getLogger(__name__)


def run(cfg: AdaptConfig) -> dict[str, Any]:
    dist = Dist()
    made_out = not Path(cfg.out).exists()
    try:
        r = set_up(cfg, dist)
        data = load_data(r)
        tr = build_model(r, data)
        progress = resume(r, data, tr)
        train(r, data, tr, progress)
        return finish(r, data, tr, progress)
    except BaseException:
        if made_out and dist.is_main:  # a run that failed before writing anything leaves no empty --out behind
            with contextlib.suppress(OSError):
                Path(cfg.out).rmdir()
        raise
    finally:
        dist.close()


# ----------------------------------------------------------------------------------------------------
# resume
# ----------------------------------------------------------------------------------------------------

def resume(r: Run, data: Data, tr: Trainer) -> Progress:
    cfg, dist = r.cfg, r.dist
    p = Progress()
    if r.resume_from is not None:
        saved = read_state(r.resume_from)
        saved_world = int(saved.get("world_size", dist.world))
        saved_batch = saved.get("global_batch", data.global_batch)
        if saved_batch != data.global_batch:
            raise ConfigError([f"{r.resume_from} was written with a global batch of {saved_batch} sequences "
                               f"({saved_world} processes), this run has {data.global_batch} ({dist.world} x "
                               f"batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum}): set batch_size/grad_accum "
                               f"so the global batch is {saved_batch}, or start again with --overwrite"])
        if saved_world != dist.world:
            log.warning("resuming a %d-process checkpoint on %d processes: weights and optimizer are resharded, "
                        "the data continue where they stopped; dropout noise differs from an uninterrupted run",
                        saved_world, dist.world)
        state = load_checkpoint(r.resume_from, tr.loss_module, tr.optimizer, rank=dist.rank, world=dist.world,
                                device=dist.device)
        tr.scheduler.load_state_dict(state["scheduler"])
        p.start_step = state["step"]
        data.stream.load_state_dict(state["stream"])
        p.elapsed_before = state.get("elapsed", 0.0)
        p.history = state.get("history", {})
        log.info("resumed from %s (step %d)", r.resume_from, p.start_step)
    p.stream_state = data.stream.state.copy()
    p.metrics = MetricsLog(r.dir / "metrics.jsonl", p.start_step if r.resume_from is not None else None,
                           dist.is_main, cfg.report_to, to_dict(cfg))  # trackers: process 0 only
    if dist.is_main:
        write_manifest(r.dir, "run", complete=False, config=to_dict(cfg), base=base_info(r),
                       corpus=corpus_info(r, data),
                       notes=["training in progress (or interrupted): resume with --resume"])
    return p


# ----------------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------------

def log_interval(cfg: AdaptConfig, total_steps: int) -> int:
    """Steps between train log lines: as configured, else every step for runs under 100 steps and about 100
    points otherwise (a short run logged every 10 steps draws 2 or 3 points, which can read as a rising loss)."""
    if cfg.log_every:
        return cfg.log_every
    return 1 if total_steps < 100 else total_steps // 100


def train(r: Run, data: Data, tr: Trainer, p: Progress) -> None:
    from domainlm.flops import mfu

    cfg, dist, device = r.cfg, r.dist, r.dist.device
    if p.start_step == 0:
        p.history["initial"] = eval_record(r, data, tr, p, 0)
    every = log_interval(cfg, data.total_steps)
    pbar = None
    if dist.is_main:
        from tqdm.auto import tqdm

        pbar = tqdm(total=data.total_steps, initial=p.start_step, desc=f"adapt {r.prepared.objective}/{cfg.method}",
                    unit="step", dynamic_ncols=True, disable=os.environ.get("DOMAINLM_PROGRESS", "1") == "0")
    batches = Batches(data.builder, data.stream, p.start_step, data.total_steps, ahead=cfg.prefetch_steps(device.type),
                      pin=device.type == "cuda", rank=dist.rank, world=dist.world, batch_size=cfg.batch_size,
                      grad_accum=cfg.grad_accum)
    from domainlm.adapt.features import compile_seconds

    # tokens/s is steady-state: compile time spent inside the loop (--compile compiles at the first steps) is
    # subtracted and reported on its own (manifest memory_features.compile_s).
    t_loop, compile_before = time.perf_counter(), compile_seconds()
    try:
        for batch in batches:
            micro = [tuple(t.to(device, non_blocking=True) for t in m) for m in batch.micro]
            local_count = sum(int((labels != IGNORE).sum()) for _, labels, _ in batch.micro)
            (global_count,) = dist.sum([float(local_count)])
            scale = dist.world / max(global_count, 1.0)  # DDP and FSDP average gradients over processes
            loss_t = None
            for k, (ids, labels, docs) in enumerate(micro):
                with no_sync(tr.train_module, last=k == len(micro) - 1):
                    loss = tr.train_module(ids, labels, docs, scale)
                    loss.backward()
                loss_t = loss.detach() if loss_t is None else loss_t + loss.detach()
            done = batch.step + 1
            logged = done % every == 0 or done == data.total_steps or done == p.start_step + 1
            # The loss becomes a Python float only when something reads it: each conversion waits for the GPU
            # to finish the step, so converting every step keeps the CPU from queueing the next one.
            if logged or dist.world > 1 or (pbar is not None and not pbar.disable):
                (loss_total,) = dist.sum([float(loss_t) / dist.world])
            else:
                loss_total = None
            if batch.step < cfg.head_warmup_steps:
                # Head-first warm-up: drop the body's (already reduced) gradients, so AdamW neither moves the
                # body nor fills its moments with the random head's gradients.
                for param in tr.body_params:
                    param.grad = None
            if cfg.max_grad_norm > 0:
                clip_grad_norm_(tr.params, cfg.max_grad_norm)
            lr = tr.optimizer.param_groups[0]["lr"]
            tr.optimizer.step()
            tr.scheduler.step()
            tr.optimizer.zero_grad(set_to_none=True)
            p.stream_state = batch.state_after
            fault_point("step", done)
            p.tokens_session += data.tokens_per_step
            p.last_loss = loss_total if loss_total is not None else loss_t
            tps = p.tokens_session / max(time.perf_counter() - t_loop - (compile_seconds() - compile_before), 1e-9)
            if pbar is not None:
                pbar.update(1)
                if loss_total is not None:
                    pbar.set_postfix(loss=f"{loss_total:.3f}", tok_s=f"{tps:,.0f}")
            if logged:
                p.metrics.write({"type": "train", "step": done, "loss": loss_total, "lr": lr,
                                 "tokens": done * data.tokens_per_step, "tokens_per_s": tps,
                                 "mfu": mfu(tps, tr.flops.training_flops_per_token, tr.peak * dist.world)
                                 if tr.peak else None})
            if cfg.eval_every and done % cfg.eval_every == 0 and done != data.total_steps:
                eval_record(r, data, tr, p, done)
            if cfg.save_every and done % cfg.save_every == 0 and done != data.total_steps:
                save(r, data, tr, p, done)
    finally:
        batches.close()
        if pbar is not None:
            pbar.close()
    p.loop_s = time.perf_counter() - t_loop - (compile_seconds() - compile_before)
    if isinstance(p.last_loss, torch.Tensor):
        p.last_loss = float(p.last_loss)
    p.state_bytes = state_bytes(tr.model, tr.optimizer)
    p.peak_rss_training = peak_rss()  # before the final evaluation and the gathering of the full model


def save(r: Run, data: Data, tr: Trainer, p: Progress, step: int) -> None:
    extra = {"step": step, "stream": dataclasses.asdict(p.stream_state), "scheduler": tr.scheduler.state_dict(),
             "elapsed": p.elapsed_before + time.perf_counter() - r.t_start, "history": p.history, "bf16": tr.bf16,
             "world_size": r.dist.world, "global_batch": data.global_batch, "strategy": tr.strategy.name}
    save_checkpoint(r.dir, step, tr.loss_module, tr.optimizer, extra, r.cfg.keep_last, rank=r.dist.rank,
                    world=r.dist.world, device=r.dist.device)
