"""Held-out evaluation (at the start, during and after training) and the end of an adapt run: the final model
with its logits probe, the manifest and the printed summary."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from domainlm.adapt.batches import read_columns
from domainlm.adapt.build import LORA_METHODS
from domainlm.adapt.config import AdaptConfig
from domainlm.adapt.curves import plot_curves
from domainlm.adapt.parallel import peak_memory
from domainlm.adapt.records import Data, Progress, Run, Trainer
from domainlm.adapt.setup import saves_embedding_layers
from domainlm.artifacts import atomic_dir, sha256_file, write_manifest
from domainlm.config import to_dict
from domainlm.lm_loss import IGNORE, perplexity

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------

def eval_sequences(cfg: AdaptConfig) -> int:
    """Validation sequences scored per evaluation (0: the whole split), the same for any number of processes."""
    if cfg.eval_batches is not None:  # the older setting, in micro-batches of one process
        return cfg.eval_batches * cfg.batch_size
    return cfg.eval_sequences


@torch.no_grad()
def evaluate(r: Run, data: Data, tr: Trainer, ds) -> tuple[float, float]:
    """(sum of token losses, target tokens) over the first ``eval_sequences`` of ``ds``, split over processes.

    Every process runs the same number of forwards (FSDP gathers weights collectively); a process whose share
    has run out scores a placeholder row and drops it.
    """
    cfg, dist, device = r.cfg, r.dist, r.dist.device
    n = len(ds) if eval_sequences(cfg) == 0 else min(len(ds), eval_sequences(cfg))
    mine = list(range(dist.rank, n, dist.world))
    rounds = math.ceil(math.ceil(n / dist.world) / cfg.batch_size)
    tr.model.eval()
    total, count = 0.0, 0
    for i in range(rounds):
        rows = mine[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        cols = read_columns(ds, rows or [0])
        ids, labels, docs = data.builder.labelled(cols["input_ids"], cols["doc_ids"], rows or [0], salt=1,
                                                  loss_mask=cols.get("loss_mask"))
        loss = float(tr.loss_module(ids.to(device), labels.to(device), docs.to(device), 1.0))
        if rows:
            total += loss
            count += int((labels != IGNORE).sum())
    tr.model.train()
    total, count = dist.sum([total, float(count)])
    return total, count


def eval_record(r: Run, data: Data, tr: Trainer, p: Progress, step: int) -> dict[str, Any]:
    rec: dict[str, Any] = {"type": "eval", "step": step}
    if data.sources:  # a mixture: every source's held-out loss; the first source's is also the domain's
        rec["sources"] = {}
        for src in data.sources:
            if len(src.val):
                loss, count = evaluate(r, data, tr, src.val)
                rec["sources"][src.name] = {"loss": loss / max(count, 1), "ppl": perplexity(loss, int(count))}
        if (first := rec["sources"].get(data.sources[0].name)) is not None:
            rec.update(domain_loss=first["loss"], domain_ppl=first["ppl"])
    elif len(data.val):
        loss, count = evaluate(r, data, tr, data.val)
        rec.update(domain_loss=loss / max(count, 1), domain_ppl=perplexity(loss, int(count)))
    if data.general_val is not None and len(data.general_val):
        loss, count = evaluate(r, data, tr, data.general_val)
        rec.update(general_loss=loss / max(count, 1), general_ppl=perplexity(loss, int(count)))
    p.metrics.write(rec)
    return rec


# ----------------------------------------------------------------------------------------------------
# finish: final evaluation, final model, manifest
# ----------------------------------------------------------------------------------------------------

def finish(r: Run, data: Data, tr: Trainer, p: Progress) -> dict[str, Any]:
    from domainlm.flops import mfu

    cfg, dist = r.cfg, r.dist
    p.history["final"] = eval_record(r, data, tr, p, data.total_steps)
    tokens_trained = data.total_steps * data.tokens_per_step
    session_tps = p.tokens_session / max(p.loop_s, 1e-9)
    from domainlm.adapt.mixture import forgetting_warnings, mixture_record

    used = data.stream.state.used
    domain_used, replay_used = used.get("domain", 0), used.get("replay", 0)
    stream_meta = {"domain_sequences": domain_used, "replay_sequences": replay_used,
                   "replay_fraction_config": data.replay_fraction,
                   "replay_fraction_actual": replay_used / max(1, replay_used + domain_used),
                   "replay_corpus": cfg.replay_corpus if data.replay is not None else None,
                   # instruction replay: loss on the assistant tokens only; self-replay: the base model's answers
                   "replay_kind": (None if data.replay is None else "self-replay" if cfg.self_replay else
                                   "instructions" if "loss_mask" in data.replay.column_names else "text"),
                   # issue 33: the realised mixture, tokens and epochs per source (domain/replay for the older form)
                   "sources": mixture_record(data.stream, used, data.block,
                                             {s.name: str(s.dir) for s in data.sources} or None)}
    if data.sources:
        stream_meta = {"sources": stream_meta["sources"], "mixture_schedule": [
            dataclasses.asdict(pt) for pt in cfg.mixture_schedule or []]}
    warnings_out = []
    init, fin = p.history.get("initial", {}), p.history["final"]
    for msg in forgetting_warnings(init, fin, cfg.forgetting_threshold):  # per source of a mixture
        log.warning(msg)
        warnings_out.append(msg)
    if "general_ppl" in init and "general_ppl" in fin and math.isfinite(init["general_ppl"]):
        rise = fin["general_ppl"] / init["general_ppl"] - 1
        fin["general_ppl_rise"] = rise
        if rise > cfg.forgetting_threshold:
            msg = (f"FORGETTING: general-text perplexity rose {rise:+.1%} ({init['general_ppl']:.2f} -> "
                   f"{fin['general_ppl']:.2f}), above the {cfg.forgetting_threshold:.0%} threshold. Consider more "
                   "replay (replay_fraction), a lower lr, or fewer steps.")
            log.warning(msg)
            warnings_out.append(msg)
    final_dir = save_final(r, data, tr)
    peaks = peak_memory(dist, peak_rss_bytes_training=p.peak_rss_training)
    elapsed = p.elapsed_before + time.perf_counter() - r.t_start
    result: dict[str, Any] = {}
    if dist.is_main:
        target = " + ".join(s.name for s in data.sources) if data.sources else cfg.corpus
        plot_curves(r.dir / "metrics.jsonl", r.dir / "curves.png",
                    f"{cfg.model} -> {target} ({r.prepared.objective}, {cfg.method})")
        fl, peak = tr.flops, tr.peak
        result = write_manifest(
            r.dir, "run", complete=True, config=to_dict(cfg), base=base_info(r), corpus=corpus_info(r, data),
            objective=r.prepared.objective, method=cfg.method, final_dir=str(final_dir.relative_to(r.dir)),
            steps=data.total_steps, tokens_trained=tokens_trained, global_batch=data.global_batch,
            block_size=data.block, world_size=dist.world, strategy=tr.strategy.name,
            strategy_reason=tr.strategy.reason, state_bytes_per_process=p.state_bytes, peak_memory=peaks,
            bf16=tr.bf16, memory_features=_features_record(tr.model),  # issue 15: what apply_features did
            hardware=_hardware(dist.device), wall_time_s=elapsed, tokens_per_s=session_tps,
            mfu=mfu(session_tps, fl.training_flops_per_token, peak * dist.world) if peak else None,
            peak_flops=peak, parameters={"total": tr.n_total, "trainable": tr.n_trainable},
            flops={"training_per_token": fl.training_flops_per_token, "total": fl.training_flops_per_token *
                   tokens_trained, "kaplan_6n_per_token": fl.kaplan_6n, "chinchilla_6n_per_token": fl.chinchilla_6n,
                   "non_embedding_params": fl.non_embedding_params, "embedding_params": fl.embedding_params},
            stream=stream_meta, fresh_parameters=r.prepared.report.fresh_parameters,
            load_messages=r.prepared.report.messages, lora_modules_to_save=r.prepared.lora_modules_to_save,
            metrics={"initial": init, "final": fin, "validation_loss": fin.get("domain_loss"),
                     "train_loss": p.last_loss},
            warnings=warnings_out)
        p.metrics.manifest(result)
        p.metrics.close()
        result["run_dir"] = str(r.dir)
        _print_summary(result)
    dist.barrier()
    return result


def save_final(r: Run, data: Data, tr: Trainer) -> Path:
    """The final model (full weights, or the LoRA adapter with its base recorded) plus a logits probe.

    Every process takes part: the weights are gathered into one full state dict on process 0 (from the shards
    under FSDP) with ``get_model_state_dict``, and the probe's forward runs through the (sharded) model.
    """
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    cfg, prepared, device = r.cfg, r.prepared, r.dist.device
    model = prepared.model
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # Tied weights (BERT's decoder and word embeddings) come back as separate gathered copies, which
    # save_pretrained can no longer recognise as one storage: keep each parameter under its first name only.
    first_names = {name for name, _ in model.named_parameters()}
    for name, _ in model.named_parameters(remove_duplicate=False):
        if name not in first_names:
            full.pop(name, None)
    if tr.strategy.name != "fsdp":  # issue 15: a bf16-stored frozen base back to fp32 (exact) for the fp32 probe
        from domainlm.adapt.features import restore_fp32

        restore_fp32(model)
    probe = None
    if len(data.val):
        # A probe of the trained model's logits, so publish can prove its export reproduces them.
        ids = data.val[0]["input_ids"][:64].long().unsqueeze(0)
        model.eval()
        from domainlm.quant import (
            fp32_compute,  # QLoRA's 4-bit layers: the fp32 evaluation a publish reproduces
        )

        with torch.no_grad(), fp32_compute(model):
            probe = {"input_ids": ids, "logits": tr.loss_module(ids.to(device)).cpu()}
        model.train()
    final = r.dir / "final"
    if r.dist.is_main:
        with atomic_dir(final) as tmp:
            if cfg.method in LORA_METHODS:
                resized = saves_embedding_layers(prepared, cfg)
                model.save_pretrained(tmp, state_dict=full, save_embedding_layers=resized if resized else "auto")
                (tmp / "base_model.json").write_text(json.dumps(
                    {"model": cfg.model, "objective": prepared.objective, "path": prepared.source.path,
                     "hub_id": prepared.source.hub_id, "vocab_size": len(prepared.tokenizer),
                     **prepared.base_storage}, indent=2))  # how the frozen base was held (quant.dequantized_base)
            else:
                model.save_pretrained(tmp, state_dict=full, safe_serialization=True)
            prepared.tokenizer.save_pretrained(tmp)
            if probe is not None:
                save_file(probe, str(tmp / "probe.safetensors"))
            write_manifest(tmp, "final", complete=True, notes=[f"method: {cfg.method}"])
    r.dist.barrier()
    return final


def _features_record(model: Any) -> dict[str, Any] | None:
    """adapt.features' record (bf16 base, checkpointing, compiled blocks) plus the seconds spent compiling, which
    are part of wall_time_s but are reported apart from the steady-state tokens/s (issue 15)."""
    from domainlm.adapt.features import compile_seconds

    applied = getattr(model, "_domainlm_features", None)
    if applied is None:
        return None
    config = getattr(model, "config", None)  # a peft model forwards .config to the base model
    return {**applied.as_dict(), "compile_s": compile_seconds() if applied.compiled_blocks else 0.0,
            "attention": getattr(config, "_attn_implementation", None)}


def base_info(r: Run) -> dict[str, Any]:
    src = r.prepared.source
    return {"name": r.cfg.model, "kind": src.kind, "origin": src.origin, "path": src.path, "hub_id": src.hub_id,
            "license": src.license, "gguf_file": src.gguf_file}


def corpus_info(r: Run, data: Data) -> dict[str, Any]:
    if data.sources:  # a mixture: the first source is the domain corpus; every source is listed
        first = data.sources[0]
        return {"path": str(first.dir), "name": first.name, "block_size": data.block,
                "manifest_sha256": sha256_file(first.dir / "manifest.json"),
                "counts": first.manifest.get("counts", {}), "splits": first.manifest.get("splits", {}),
                "sources": [{"name": s.name, "path": str(s.dir), "manifest_sha256": sha256_file(s.dir / "manifest.json"),
                             "counts": s.manifest.get("counts", {}), "training_blocks": len(s.train)}
                            for s in data.sources]}
    return {"path": str(data.corpus_dir), "name": r.cfg.corpus,
            "manifest_sha256": sha256_file(data.corpus_dir / "manifest.json"),
            "counts": data.corpus_manifest.get("counts", {}), "splits": data.corpus_manifest.get("splits", {}),
            "block_size": data.block}


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    from domainlm.device import cpu_name

    return f"{cpu_name()}, {torch.get_num_threads()} threads"


def _print_summary(m: dict[str, Any]) -> None:
    init, fin = m["metrics"]["initial"], m["metrics"]["final"]
    lines = [f"run: {m['run_dir']}  ({m['steps']} steps, {m['tokens_trained']:,} tokens, "
             f"{m['wall_time_s']:.0f} s, {m['tokens_per_s']:,.0f} tokens/s"
             + (f", MFU {m['mfu']:.0%} of measured peak" if m.get("mfu") else "") + ")"]
    sources = fin.get("sources")
    for name, rec in (sources or {}).items():
        before = (init.get("sources") or {}).get(name, {}).get("ppl", float("nan"))
        drawn = m["stream"]["sources"].get(name, {})
        lines.append(f"  held-out perplexity of {name}: {before:.2f} -> {rec['ppl']:.2f}   ({drawn.get('share', 0):.1%} "
                     f"of training tokens, {drawn.get('epochs', 0):.2f} epochs)")
    for key, label in (("domain_ppl", "held-out domain perplexity"), ("general_ppl", "held-out general perplexity")):
        if key in fin and not (sources and key == "domain_ppl"):
            lines.append(f"  {label}: {init.get(key, float('nan')):.2f} -> {fin[key]:.2f}")
    if "domain_ppl" not in fin:
        lines.append("  held-out domain perplexity: not tracked (the corpus has no validation blocks; prepare it "
                     "with --validation-fraction above 0 to track it)")
    lines.append(f"  FLOPs: {m['flops']['total']:.3g}   final model: {Path(m['run_dir']) / m['final_dir']}")
    print("\n".join(lines))
