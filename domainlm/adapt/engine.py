"""The continued-pretraining loop behind ``domainlm adapt``.

One process or many (``torchrun`` / ``accelerate launch``: DDP over gloo on CPU, NCCL on GPU). The
loss of every optimizer step is the sum of token losses over the whole global batch divided by its
number of target tokens, whatever the split into processes and micro-batches; so a 2-process run
matches a 1-process run with the same global batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from domainlm.adapt.checkpoint import complete_checkpoints, load_checkpoint, save_checkpoint
from domainlm.adapt.config import AdaptConfig
from domainlm.adapt.curves import MetricsLog, plot_curves
from domainlm.adapt.data import Masker, SequenceStream, sequence_generator
from domainlm.adapt.setup import Prepared, prepare_model
from domainlm.artifacts import atomic_dir, read_manifest, sha256_file, write_manifest
from domainlm.config import as_config, to_dict
from domainlm.errors import ConfigError, DomainLMError
from domainlm.lm_loss import causal_labels, loss_sum, perplexity, split_head

log = logging.getLogger(__name__)

DEFAULT_BLOCK = {"masked": 128, "causal": 256, "protein": 512}


def fault_point(kind: str, step: int) -> None:
    """Fault injection for the kill-and-resume tests: ``DOMAINLM_FAULT=step:N`` (after optimizer step N) or
    ``ckpt:N`` (halfway through writing checkpoint N) SIGKILLs this process, as a crash or OOM kill would."""
    spec = os.environ.get("DOMAINLM_FAULT")
    if spec and spec == f"{kind}:{step}":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


class LossModule(torch.nn.Module):
    """Wraps the model so DDP sees one forward that returns the scaled loss sum of a micro-batch."""

    def __init__(self, model: Any, objective: str, document_mask: bool, fused: bool, bf16: bool, device_type: str):
        super().__init__()
        self.model = model
        self.objective = objective
        self.document_mask = document_mask
        self.bf16 = bf16
        self.device_type = device_type
        self.split = split_head(model, "causal" if objective == "causal" else "masked") if fused else None

    def forward(self, input_ids, labels, doc_ids, scale: float):
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16):
            return loss_sum(self.model, "causal" if self.objective == "causal" else "masked", input_ids, labels,
                            doc_ids, document_mask=self.document_mask, scale=scale, split=self.split,
                            compute_dtype=torch.bfloat16 if self.bf16 else torch.float32)


# ----------------------------------------------------------------------------------------------------
# corpora
# ----------------------------------------------------------------------------------------------------

def _resolve_corpus(spec: str, model_spec: str, objective: str, block_size: int | None, run_dir: Path,
                    is_main: bool, barrier) -> tuple[Path, dict]:
    from domainlm.corpora import read_corpus_manifest

    path = Path(spec)
    if path.is_dir():
        return path, read_corpus_manifest(path)
    from domainlm.corpora.cards import load_card, prepare_card

    load_card(spec)  # unknown names fail here with a did-you-mean
    out = run_dir / "corpora" / spec
    block = block_size or DEFAULT_BLOCK[objective]
    if is_main:
        prepare_card(spec, model_spec, out, block_size=block)
    barrier()
    return out, read_corpus_manifest(out)


def _check_tokenizer(corpus_manifest: dict, tokenizer, corpus: Path) -> None:
    tok = corpus_manifest.get("tokenizer") or {}
    size = tok.get("vocab_size")
    if size is not None and size != len(tokenizer):
        raise ConfigError([f"corpus {corpus} was tokenised with a vocabulary of {size} tokens but the model's "
                           f"tokenizer has {len(tokenizer)}: prepare the corpus with this model's tokenizer "
                           "(domainlm corpus prepare --model ...)"])


# ----------------------------------------------------------------------------------------------------
# schedule
# ----------------------------------------------------------------------------------------------------

def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Linear warmup to the peak, then cosine/linear decay to ``min_ratio`` of it (or constant)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return min_ratio + (1 - min_ratio) * (1 - progress)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _param_groups(model: Any, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ----------------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------------

class _Dist:
    """Process-group helpers that are no-ops in a single process."""

    def __init__(self):
        from accelerate import Accelerator

        # On a machine without a GPU accelerate only sets up a gloo process group (MULTI_CPU) when told cpu=True.
        self.acc = Accelerator(cpu=not torch.cuda.is_available())
        self.world = self.acc.num_processes
        self.rank = self.acc.process_index
        self.is_main = self.acc.is_main_process
        self.device = self.acc.device

    def barrier(self) -> None:
        if self.world > 1:
            self.acc.wait_for_everyone()

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()


def _resumed_bf16(resume_from: Path | None) -> bool | None:
    """The bf16 decision stored in the checkpoint being resumed (None: fresh run or older checkpoint)."""
    if resume_from is None:
        return None
    try:
        value = json.loads((resume_from / "state.json").read_text()).get("bf16")
    except (OSError, ValueError, AttributeError):
        return None  # load_checkpoint reports an unreadable checkpoint with its own message
    return value if isinstance(value, bool) else None


def _bf16_enabled(setting: str, device: torch.device, resumed: bool | None = None) -> bool:
    if setting == "off":
        return False
    if setting == "auto" and resumed is not None:
        # 'auto' times matmuls at start-up; a resume on a busier or idler machine must not switch precision
        # mid-run, or it leaves the uninterrupted trajectory.
        return resumed
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
    else:
        from domainlm.flops import bf16_is_fast

        ok = bf16_is_fast()
    if setting == "on" and not ok and device.type == "cuda":
        raise ConfigError(["bf16: on, but this GPU does not support bf16; use bf16: off"])
    return ok or setting == "on"


def _prepare_run_dir(cfg: AdaptConfig, is_main: bool) -> tuple[Path, Path | None]:
    run_dir = Path(cfg.out)
    resume_from = None
    if run_dir.exists() and any(run_dir.iterdir()):
        if cfg.resume:
            ckpts = complete_checkpoints(run_dir)
            resume_from = ckpts[-1] if ckpts else None
            if resume_from is None:
                log.warning("no complete checkpoint in %s: starting from the beginning", run_dir)
        elif cfg.overwrite:
            if is_main:
                for child in run_dir.iterdir():
                    if child.name == "corpora":
                        continue  # prepared corpora are reusable
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        else:
            raise ConfigError([f"run folder {run_dir} exists and is not empty: pass --resume to continue it or "
                               "--overwrite to start again"])
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, resume_from


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    from domainlm.flops import cpu_name

    return f"{cpu_name()}, {torch.get_num_threads()} threads"


def run(config: Any = None, **overrides: Any) -> dict[str, Any]:
    cfg = as_config(AdaptConfig, config, overrides)
    dist = _Dist()
    run_dir, resume_from = _prepare_run_dir(cfg, dist.is_main)
    dist.barrier()
    t_start = time.perf_counter()

    prepared: Prepared = prepare_model(cfg)
    objective, tokenizer = prepared.objective, prepared.tokenizer
    corpus_dir, corpus_manifest = _resolve_corpus(cfg.corpus, cfg.model, objective, cfg.block_size, run_dir,
                                                  dist.is_main, dist.barrier)
    _check_tokenizer(corpus_manifest, tokenizer, corpus_dir)
    from domainlm.corpora import load_prepared

    train_ds = load_prepared(corpus_dir, "train").with_format("torch")
    val_ds = load_prepared(corpus_dir, "validation").with_format("torch")
    block = len(train_ds[0]["input_ids"])

    replay_fraction = cfg.replay_fraction
    if replay_fraction is None:
        replay_fraction = 0.05 if (cfg.replay_corpus and objective != "protein") else 0.0
    replay_ds = None
    general_spec = cfg.general_eval or cfg.replay_corpus
    general_val = None
    if cfg.replay_corpus and replay_fraction > 0:
        rdir, rman = _resolve_corpus(cfg.replay_corpus, cfg.model, objective, block, run_dir, dist.is_main,
                                     dist.barrier)
        _check_tokenizer(rman, tokenizer, rdir)
        replay_ds = load_prepared(rdir, "train").with_format("torch")
        if len(replay_ds[0]["input_ids"]) != block:
            raise ConfigError([f"replay corpus {rdir} has blocks of {len(replay_ds[0]['input_ids'])} tokens, the "
                               f"domain corpus {block}: prepare both with the same block_size"])
    if general_spec:
        gdir, gman = _resolve_corpus(general_spec, cfg.model, objective, block, run_dir, dist.is_main, dist.barrier)
        _check_tokenizer(gman, tokenizer, gdir)
        general_val = load_prepared(gdir, "validation").with_format("torch")

    model = prepared.model
    device = dist.device
    model.to(device)
    bf16 = _bf16_enabled(cfg.bf16, device, _resumed_bf16(resume_from))
    loss_module = LossModule(model, objective, cfg.document_mask, cfg.chunked_head, bf16, device.type)
    train_module = dist.acc.prepare_model(loss_module) if dist.world > 1 else loss_module
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2), foreach=device.type == "cpu" or None)
    masker = Masker(tokenizer, cfg.mlm_probability, cfg.whole_word_mask) if objective != "causal" else None

    global_batch = cfg.batch_size * dist.world * cfg.grad_accum
    tokens_per_step = global_batch * block
    total_steps = cfg.max_steps or 10**12
    if cfg.max_tokens is not None:
        total_steps = min(total_steps, max(1, math.ceil(cfg.max_tokens / tokens_per_step)))
    warmup = int(math.ceil(cfg.warmup_ratio * total_steps))
    stream = SequenceStream(len(train_ds), len(replay_ds) if replay_ds is not None else 0, cfg.seed, replay_fraction)

    from domainlm.flops import measure_matmul_peak, mfu, model_flops
    from domainlm.sources import count_parameters

    n_trainable = count_parameters(model, trainable_only=True)
    n_total = count_parameters(model)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head_fraction = cfg.mlm_probability if (objective != "causal" and cfg.chunked_head) else 1.0
    fl = model_flops(inner, block, head_fraction=head_fraction,
                     trainable_fraction=(n_trainable / n_total) if cfg.method == "lora" else None)
    peak = (measure_matmul_peak("bf16" if bf16 else "fp32", device=str(device))
            if device.type in ("cpu", "cuda") else None)

    start_step, elapsed_before = 0, 0.0
    history: dict[str, Any] = {}
    if resume_from is not None:
        state = load_checkpoint(resume_from, model, optimizer)
        start_step = state["step"]
        stream.load_state_dict(state["stream"])
        elapsed_before = state.get("elapsed", 0.0)
        history = state.get("history", {})
        log.info("resumed from %s (step %d)", resume_from, start_step)
    metrics = MetricsLog(run_dir / "metrics.jsonl", start_step if resume_from is not None else None, dist.is_main)

    base_info = {"name": cfg.model, "kind": prepared.source.kind, "origin": prepared.source.origin,
                 "path": prepared.source.path, "hub_id": prepared.source.hub_id, "license": prepared.source.license,
                 "gguf_file": prepared.source.gguf_file}
    corpus_info = {"path": str(corpus_dir), "name": cfg.corpus,
                   "manifest_sha256": sha256_file(corpus_dir / "manifest.json"),
                   "counts": corpus_manifest.get("counts", {}), "splits": corpus_manifest.get("splits", {}),
                   "block_size": block}
    if dist.is_main:
        write_manifest(run_dir, "run", complete=False, config=to_dict(cfg), base=base_info, corpus=corpus_info,
                       notes=["training in progress (or interrupted): resume with --resume"])

    def make_batch(items: list[tuple[str, int]], first_index: int, salt: int = 0):
        ids, docs = [], []
        for source, row in items:
            rec = (train_ds if source == "domain" else replay_ds)[row]
            ids.append(rec["input_ids"])
            docs.append(rec["doc_ids"])
        input_ids = torch.stack(ids).long()
        doc_ids = torch.stack(docs).long()
        if masker is not None:
            gens = [sequence_generator(cfg.seed, first_index + i, salt) for i in range(len(items))]
            input_ids, labels = masker(input_ids, doc_ids if cfg.document_mask else None, gens)
        else:
            labels = causal_labels(input_ids, doc_ids if cfg.document_mask else None)
        return input_ids.to(device), labels.to(device), doc_ids.to(device)

    @torch.no_grad()
    def evaluate(ds) -> tuple[float, float]:
        n = len(ds) if cfg.eval_batches == 0 else min(len(ds), cfg.eval_batches * cfg.batch_size)
        model.eval()
        total, count = 0.0, 0
        mine = list(range(dist.rank, n, dist.world))
        for i in range(0, len(mine), cfg.batch_size):
            rows = mine[i:i + cfg.batch_size]
            ids = torch.stack([ds[r]["input_ids"] for r in rows]).long()
            docs = torch.stack([ds[r]["doc_ids"] for r in rows]).long()
            if masker is not None:
                gens = [sequence_generator(cfg.seed, r, salt=1) for r in rows]
                ids, labels = masker(ids, docs if cfg.document_mask else None, gens)
            else:
                labels = causal_labels(ids, docs if cfg.document_mask else None)
            total += float(loss_module(ids.to(device), labels.to(device), docs.to(device), 1.0))
            count += int((labels != -100).sum())
        model.train()
        total, count = dist.sum([total, float(count)])
        return total, count

    def eval_record(step: int) -> dict[str, Any]:
        rec: dict[str, Any] = {"type": "eval", "step": step}
        if len(val_ds):
            loss, count = evaluate(val_ds)
            rec.update(domain_loss=loss / max(count, 1), domain_ppl=perplexity(loss, int(count)))
        if general_val is not None and len(general_val):
            loss, count = evaluate(general_val)
            rec.update(general_loss=loss / max(count, 1), general_ppl=perplexity(loss, int(count)))
        metrics.write(rec)
        return rec

    if start_step == 0:
        history["initial"] = eval_record(0)
    pbar = None
    if dist.is_main:
        from tqdm.auto import tqdm

        pbar = tqdm(total=total_steps, initial=start_step, desc=f"adapt {objective}/{cfg.method}", unit="step",
                    dynamic_ncols=True, disable=os.environ.get("DOMAINLM_PROGRESS", "1") == "0")
    t_loop = time.perf_counter()
    tokens_done_session = 0
    last = {"loss": float("nan")}
    step = start_step
    try:
        for step in range(start_step, total_steps):
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, total_steps, warmup, cfg.schedule, cfg.min_lr_ratio)
            first = stream.state.next_index
            items = stream.take(global_batch)
            micro = []
            for k in range(cfg.grad_accum):
                off = k * dist.world * cfg.batch_size + dist.rank * cfg.batch_size
                chunk = items[off:off + cfg.batch_size]
                micro.append(make_batch(chunk, first + off))
            local_count = sum(int((m[1] != -100).sum()) for m in micro)
            (global_count,) = dist.sum([float(local_count)])
            scale = dist.world / max(global_count, 1.0)
            loss_total = 0.0
            for k, (ids, labels, docs) in enumerate(micro):
                sync = contextlib.nullcontext()
                if dist.world > 1 and k < len(micro) - 1:
                    sync = train_module.no_sync()
                with sync:
                    loss = train_module(ids, labels, docs, scale)
                    loss.backward()
                loss_total += float(loss.detach()) / dist.world
            (loss_total,) = dist.sum([loss_total])
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            fault_point("step", done)
            tokens_done_session += tokens_per_step
            last["loss"] = loss_total
            now = time.perf_counter()
            tps = tokens_done_session / max(now - t_loop, 1e-9)
            if pbar is not None:
                pbar.update(1)
                pbar.set_postfix(loss=f"{loss_total:.3f}", tok_s=f"{tps:,.0f}")
            if done % cfg.log_every == 0 or done == total_steps or done == start_step + 1:
                rec = {"type": "train", "step": done, "loss": loss_total, "lr": optimizer.param_groups[0]["lr"],
                       "tokens": done * tokens_per_step, "tokens_per_s": tps,
                       "mfu": mfu(tps, fl.training_flops_per_token, peak * dist.world) if peak else None}
                metrics.write(rec)
            if cfg.eval_every and done % cfg.eval_every == 0 and done != total_steps:
                eval_record(done)
            if cfg.save_every and done % cfg.save_every == 0 and done != total_steps:
                _save(run_dir, done, model, optimizer, stream, elapsed_before + now - t_start, history, cfg, dist,
                      bf16)
    finally:
        if pbar is not None:
            pbar.close()
    loop_s = time.perf_counter() - t_loop
    history["final"] = eval_record(total_steps)
    tokens_trained = total_steps * tokens_per_step
    session_tps = tokens_done_session / max(loop_s, 1e-9)
    s = stream.state
    replay_actual = s.replay_used / max(1, s.replay_used + s.domain_used)
    stream_meta = {"domain_sequences": s.domain_used, "replay_sequences": s.replay_used,
                   "replay_fraction_config": replay_fraction, "replay_fraction_actual": replay_actual,
                   "replay_corpus": cfg.replay_corpus if replay_ds is not None else None}
    warnings_out = []
    init, fin = history.get("initial", {}), history["final"]
    if "general_ppl" in init and "general_ppl" in fin and math.isfinite(init["general_ppl"]):
        rise = fin["general_ppl"] / init["general_ppl"] - 1
        fin["general_ppl_rise"] = rise
        if rise > cfg.forgetting_threshold:
            msg = (f"FORGETTING: general-text perplexity rose {rise:+.1%} ({init['general_ppl']:.2f} -> "
                   f"{fin['general_ppl']:.2f}), above the {cfg.forgetting_threshold:.0%} threshold. Consider more "
                   "replay (replay_fraction), a lower lr, or fewer steps.")
            log.warning(msg)
            warnings_out.append(msg)
    elapsed = elapsed_before + time.perf_counter() - t_start
    result: dict[str, Any] = {}
    if dist.is_main:
        final_dir = _save_final(run_dir, prepared, cfg, val_ds, device)
        plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png",
                    f"{cfg.model} -> {cfg.corpus} ({objective}, {cfg.method})")
        metrics.close()
        result = write_manifest(
            run_dir, "run", complete=True, config=to_dict(cfg), base=base_info, corpus=corpus_info,
            objective=objective, method=cfg.method, final_dir=str(final_dir.relative_to(run_dir)),
            steps=total_steps, tokens_trained=tokens_trained, global_batch=global_batch, block_size=block,
            world_size=dist.world, bf16=bf16, hardware=_hardware(device), wall_time_s=elapsed,
            tokens_per_s=session_tps,
            mfu=mfu(session_tps, fl.training_flops_per_token, peak * dist.world) if peak else None,
            peak_flops=peak, parameters={"total": n_total, "trainable": n_trainable},
            flops={"training_per_token": fl.training_flops_per_token, "total": fl.training_flops_per_token *
                   tokens_trained, "kaplan_6n_per_token": fl.kaplan_6n, "chinchilla_6n_per_token": fl.chinchilla_6n,
                   "non_embedding_params": fl.non_embedding_params, "embedding_params": fl.embedding_params},
            stream=stream_meta, fresh_parameters=prepared.report.fresh_parameters,
            load_messages=prepared.report.messages, lora_modules_to_save=prepared.lora_modules_to_save,
            metrics={"initial": init, "final": fin, "validation_loss": fin.get("domain_loss"),
                     "train_loss": last["loss"]},
            warnings=warnings_out)
        result["run_dir"] = str(run_dir)
        _print_summary(result)
    dist.barrier()
    return result


def _save(run_dir, step, model, optimizer, stream, elapsed, history, cfg, dist, bf16: bool) -> None:
    if dist.is_main:
        save_checkpoint(run_dir, step, model, optimizer,
                        {"step": step, "stream": stream.state_dict(), "elapsed": elapsed, "history": history,
                         "bf16": bf16},
                        cfg.keep_last)
    dist.barrier()


def _save_final(run_dir: Path, prepared: Prepared, cfg: AdaptConfig, val_ds, device) -> Path:
    """The final model (full weights, or the LoRA adapter with its base recorded) plus a logits probe."""
    from safetensors.torch import save_file

    model = prepared.model
    final = run_dir / "final"
    with atomic_dir(final) as tmp:
        if cfg.method == "lora":
            resized = bool(prepared.lora_modules_to_save) or cfg.train_embeddings
            model.save_pretrained(tmp, save_embedding_layers=resized if resized else "auto")
            (tmp / "base_model.json").write_text(json.dumps(
                {"model": cfg.model, "objective": prepared.objective, "path": prepared.source.path,
                 "hub_id": prepared.source.hub_id, "vocab_size": len(prepared.tokenizer)}, indent=2))
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        prepared.tokenizer.save_pretrained(tmp)
        # A probe of the trained model's logits, so publish can prove its export reproduces them.
        if len(val_ds):
            ids = val_ds[0]["input_ids"][:64].long().unsqueeze(0).to(device)
            model.eval()
            with torch.no_grad():
                logits = model(input_ids=ids).logits.float()
            model.train()
            save_file({"input_ids": ids.cpu(), "logits": logits.cpu()}, str(tmp / "probe.safetensors"))
        write_manifest(tmp, "final", complete=True, notes=[f"method: {cfg.method}"])
    return final


def _print_summary(m: dict[str, Any]) -> None:
    init, fin = m["metrics"]["initial"], m["metrics"]["final"]
    lines = [f"run: {m['run_dir']}  ({m['steps']} steps, {m['tokens_trained']:,} tokens, "
             f"{m['wall_time_s']:.0f} s, {m['tokens_per_s']:,.0f} tokens/s"
             + (f", MFU {m['mfu']:.0%} of measured peak" if m.get("mfu") else "") + ")"]
    for key, label in (("domain_ppl", "held-out domain perplexity"), ("general_ppl", "held-out general perplexity")):
        if key in fin:
            lines.append(f"  {label}: {init.get(key, float('nan')):.2f} -> {fin[key]:.2f}")
    lines.append(f"  FLOPs: {m['flops']['total']:.3g}   final model: {Path(m['run_dir']) / m['final_dir']}")
    print("\n".join(lines))


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """The manifest of a finished run, refusing unfinished ones."""
    try:
        return read_manifest(run_dir, "run")
    except DomainLMError as exc:
        raise DomainLMError(f"{run_dir}: {exc}") from None
