"""The continued-pretraining loop behind ``domainlm adapt``.

One process or many (``torchrun`` / ``accelerate launch``), each keeping a full copy of the model (DDP) or a
shard of it (FSDP2, ``adapt/parallel.py``). The loss of every optimizer step is the sum of token losses over the
whole global batch divided by its number of target tokens, whatever the split into processes and
micro-batches; so a 2-process run matches a 1-process run with the same global batch.

``run`` reads top to bottom as the steps of a run: set up, data, model, resume, loop, finish.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from domainlm.adapt.batches import BatchBuilder, Batches, read_columns
from domainlm.adapt.checkpoint import complete_checkpoints, load_checkpoint, read_state, save_checkpoint
from domainlm.adapt.config import DEFAULT_BLOCK_SIZE, AdaptConfig
from domainlm.adapt.curves import MetricsLog, plot_curves
from domainlm.adapt.data import Masker, SequenceStream, StreamState
from domainlm.adapt.parallel import (
    Dist,
    Strategy,
    choose_strategy,
    clip_grad_norm_,
    loads_once,
    no_sync,
    on_meta,
    peak_memory,
    peak_rss,
    prepare,
    state_bytes,
    wrap,
)
from domainlm.adapt.setup import Prepared, saves_embedding_layers
from domainlm.artifacts import atomic_dir, sha256_file, why_not_replace, write_manifest
from domainlm.config import as_config, to_dict
from domainlm.device import use_bf16
from domainlm.errors import ConfigError, IncompleteArtifactError
from domainlm.faults import fault_point
from domainlm.lm_loss import IGNORE, loss_sum, perplexity, split_head

log = logging.getLogger(__name__)

LORA_METHODS = ("lora", "qlora")


class LossModule(torch.nn.Module):
    """The model seen as one forward that returns the scaled loss sum of a micro-batch (or, without labels, the
    logits): the root that DDP wraps or FSDP shards, so every weight the loss reads is gathered inside it."""

    def __init__(self, model: Any, objective: str, document_mask: bool, fused: bool, bf16: bool, device_type: str):
        super().__init__()
        self.model = model
        self.objective = "causal" if objective == "causal" else "masked"
        self.document_mask = document_mask
        self.bf16 = bf16
        self.device_type = device_type
        self.split = split_head(model, self.objective) if fused else None

    def forward(self, input_ids, labels=None, doc_ids=None, scale: float = 1.0):
        if labels is None:
            return self.model(input_ids=input_ids).logits.float()
        split = self.split
        if split is not None and split.fused_weight is not None:
            # Read the head's weight now, not when the split was made: FSDP swaps each parameter for its shard
            # and, inside this forward, for the gathered full tensor.
            split = dataclasses.replace(split, fused_weight=split.head.weight, fused_bias=split.head.bias)
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16):
            return loss_sum(self.model, self.objective, input_ids, labels, doc_ids, document_mask=self.document_mask,
                            scale=scale, split=split, compute_dtype=torch.bfloat16 if self.bf16 else torch.float32)


@dataclass
class Run:
    """Set up: where the run writes, what it resumes, the loaded model."""

    cfg: AdaptConfig
    dist: Dist
    dir: Path
    resume_from: Path | None
    prepared: Prepared
    t_start: float


@dataclass
class Data:
    corpus_dir: Path
    corpus_manifest: dict
    train: Any
    val: Any
    general_val: Any
    replay: Any
    replay_fraction: float
    block: int
    stream: SequenceStream
    builder: BatchBuilder
    global_batch: int
    tokens_per_step: int
    total_steps: int
    sources: list = field(default_factory=list)  # a ``sources:`` mixture (adapt/mixture.py Source); [] otherwise


@dataclass
class Trainer:
    model: Any  # the (peft) model; under FSDP its parameters are shards
    loss_module: LossModule
    train_module: torch.nn.Module  # what the loop calls (DDP around loss_module, or loss_module itself)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    params: list[torch.Tensor]
    body_params: list[torch.Tensor]
    bf16: bool
    strategy: Strategy
    n_total: int
    n_trainable: int
    flops: Any
    peak: float | None


@dataclass
class Progress:
    start_step: int = 0
    elapsed_before: float = 0.0
    history: dict = field(default_factory=dict)
    metrics: MetricsLog | None = None
    stream_state: StreamState = field(default_factory=StreamState)
    last_loss: float = float("nan")
    tokens_session: int = 0
    loop_s: float = 0.0
    state_bytes: dict = field(default_factory=dict)
    peak_rss_training: int = 0


def run(config: Any = None, **overrides: Any) -> dict[str, Any]:
    cfg = as_config(AdaptConfig, config, overrides)
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
# set up
# ----------------------------------------------------------------------------------------------------

def set_up(cfg: AdaptConfig, dist: Dist) -> Run:
    _check_sources(cfg)
    run_dir, resume_from = _prepare_run_dir(cfg, dist.is_main)
    dist.barrier()
    t_start = time.perf_counter()
    return Run(cfg, dist, run_dir, resume_from, prepare(cfg, dist), t_start)  # FSDP: loaded once (parallel.py)


def _check_sources(cfg: AdaptConfig) -> None:
    """Every source names a prepared folder or a corpus card, every tracker is installed: refused before the
    model is loaded."""
    from domainlm.adapt.tracking import missing_trackers
    from domainlm.config import did_you_mean
    from domainlm.corpora.cards import is_card, list_cards

    problems = missing_trackers(cfg.report_to)
    for i, spec in enumerate(cfg.sources or []):
        if not Path(spec.corpus).is_dir() and not is_card(spec.corpus):
            problems.append(f"'sources[{i}].corpus': no prepared corpus folder or corpus card named "
                            f"'{spec.corpus}'{did_you_mean(spec.corpus, list_cards())}")
    if problems:
        raise ConfigError(problems)


def _prepare_run_dir(cfg: AdaptConfig, is_main: bool) -> tuple[Path, Path | None]:
    run_dir = Path(cfg.out)
    resume_from = None
    if run_dir.exists() and any(run_dir.iterdir()):
        # a folder domainlm did not write, the working directory, one holding the corpus or model: never replaced
        # (a run stopped while preparing its card corpus has only corpora/NAME, before its manifest)
        refused = None if cfg.resume else why_not_replace(
            run_dir, ("run",), inputs=(cfg.corpus, cfg.model, cfg.replay_corpus),
            markers=("corpora/*/manifest.json", "corpora/*/.work/config.json"))
        if refused:
            raise ConfigError([f"'out': {refused}"])
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


# ----------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------

def load_data(r: Run) -> Data:
    from domainlm.corpora import load_prepared

    cfg, dist, prepared = r.cfg, r.dist, r.prepared
    objective, tokenizer = prepared.objective, prepared.tokenizer
    if cfg.sources:
        return _load_mixture(r)
    corpus_dir, corpus_manifest = _resolve_corpus(cfg.corpus, cfg, objective, cfg.block_size, r)
    _check_tokenizer(corpus_manifest, tokenizer, corpus_dir)
    train_ds = load_prepared(corpus_dir, "train").with_format("torch")
    val_ds = load_prepared(corpus_dir, "validation").with_format("torch")
    block = len(train_ds[0]["input_ids"])

    replay_fraction = cfg.replay_fraction
    if replay_fraction is None:
        replay_fraction = 0.05 if ((cfg.replay_corpus or cfg.self_replay) and objective != "protein") else 0.0
    replay_ds = general_val = None
    instructions = _instruction_file(cfg.replay_corpus)
    if cfg.self_replay and replay_fraction > 0:
        if objective != "causal":
            raise ConfigError([f"'self_replay' needs a causal model that answers prompts; {cfg.model} trains as "
                               f"'{objective}'"])
        if cfg.replay_corpus and instructions is None:
            raise ConfigError([f"'self_replay' takes its prompts from an instruction set, but replay_corpus "
                               f"'{cfg.replay_corpus}' is not one; name an instruction JSONL or leave it unset"])
        instructions = _self_replay(r, instructions or _instruction_file("instructions-sample"))
    if instructions is not None and replay_fraction > 0:
        from domainlm.corpora.instructions import prepare_instructions

        rdir = r.dir / "corpora" / f"instructions-{instructions.stem}"
        if dist.is_main:
            prepare_instructions(instructions, tokenizer, block, rdir)
        dist.barrier()
        replay_ds = load_prepared(rdir, "train").with_format("torch")
    elif cfg.replay_corpus and replay_fraction > 0:
        rdir, rman = _resolve_corpus(cfg.replay_corpus, cfg, objective, block, r)
        _check_tokenizer(rman, tokenizer, rdir)
        replay_ds = load_prepared(rdir, "train").with_format("torch")
        if len(replay_ds[0]["input_ids"]) != block:
            raise ConfigError([f"replay corpus {rdir} has blocks of {len(replay_ds[0]['input_ids'])} tokens, the "
                               f"domain corpus {block}: prepare both with the same block_size"])
    # An instruction set has no held-out general text: it is not the forgetting monitor unless general_eval says so.
    general_spec = cfg.general_eval or (cfg.replay_corpus if _instruction_file(cfg.replay_corpus) is None else None)
    if general_spec:
        gdir, gman = _resolve_corpus(general_spec, cfg, objective, block, r)
        _check_tokenizer(gman, tokenizer, gdir)
        general_val = load_prepared(gdir, "validation").with_format("torch")

    global_batch, tokens_per_step, total_steps = _budget(cfg, dist, block)
    stream = SequenceStream.replay(len(train_ds), len(replay_ds) if replay_ds is not None else 0, cfg.seed,
                                   replay_fraction)
    masker = Masker(tokenizer, cfg.mlm_probability, cfg.whole_word_mask) if objective != "causal" else None
    builder = BatchBuilder({"domain": train_ds, "replay": replay_ds}, masker, cfg.seed, cfg.document_mask)
    return Data(corpus_dir, corpus_manifest, train_ds, val_ds, general_val, replay_ds, replay_fraction, block, stream,
                builder, global_batch, tokens_per_step, total_steps)


def _budget(cfg: AdaptConfig, dist: Dist, block: int) -> tuple[int, int, int]:
    """(global batch in sequences, tokens per step, steps): max_steps or max_tokens, whichever comes first."""
    global_batch = cfg.batch_size * dist.world * cfg.grad_accum
    tokens_per_step = global_batch * block
    total_steps = cfg.max_steps or 10**12
    if cfg.max_tokens is not None:
        total_steps = min(total_steps, max(1, math.ceil(cfg.max_tokens / tokens_per_step)))
    return global_batch, tokens_per_step, total_steps


def _load_mixture(r: Run) -> Data:
    """``sources:``: every source's splits, one stream over them (weights, schedule, max_epochs); the first
    source's held-out split is also the run's domain_loss (what publish and scaling read)."""
    from domainlm.adapt.mixture import load_sources, make_stream
    from domainlm.corpora import load_prepared

    cfg, dist, prepared = r.cfg, r.dist, r.prepared
    objective, tokenizer = prepared.objective, prepared.tokenizer
    sources = load_sources(cfg, lambda spec, block: _resolve_corpus(spec, cfg, objective, block, r),
                           lambda man, folder: _check_tokenizer(man, tokenizer, folder), cfg.block_size)
    first = sources[0]
    block = len(first.train[0]["input_ids"])
    general_val = None
    if cfg.general_eval:
        gdir, gman = _resolve_corpus(cfg.general_eval, cfg, objective, block, r)
        _check_tokenizer(gman, tokenizer, gdir)
        general_val = load_prepared(gdir, "validation").with_format("torch")
    global_batch, tokens_per_step, total_steps = _budget(cfg, dist, block)
    stream = make_stream(cfg, sources, global_batch, block, total_steps * global_batch)
    masker = Masker(tokenizer, cfg.mlm_probability, cfg.whole_word_mask) if objective != "causal" else None
    builder = BatchBuilder({s.name: s.train for s in sources}, masker, cfg.seed, cfg.document_mask)
    return Data(first.dir, first.manifest, first.train, first.val, general_val, None, 0.0, block, stream, builder,
                global_batch, tokens_per_step, total_steps, sources)


def _resolve_corpus(spec: str, cfg: AdaptConfig, objective: str, block_size: int | None, r: Run) -> tuple[Path, dict]:
    from domainlm.corpora import read_corpus_manifest

    path = Path(spec)
    if path.is_dir():
        return path, read_corpus_manifest(path)
    from domainlm.corpora.cards import load_card
    from domainlm.corpora.prepare import prepare_card

    load_card(spec)  # unknown names fail here with a did-you-mean
    out = r.dir / "corpora" / spec
    if r.dist.is_main:
        prepare_card(spec, cfg.model, out, block_size=block_size or DEFAULT_BLOCK_SIZE[objective])
    r.dist.barrier()
    return out, read_corpus_manifest(out)


def _instruction_file(spec: str | None) -> Path | None:
    """The JSONL behind ``spec`` when it is a chat/instruction set (a file, or a card of kind instructions)."""
    if not spec:
        return None
    from domainlm.corpora.instructions import looks_like_instructions

    if looks_like_instructions(spec):
        return Path(spec).expanduser()
    if Path(spec).exists():
        return None
    from domainlm.corpora.cards import instructions_path

    return instructions_path(spec)


def _self_replay(r: Run, prompts: Path) -> Path:
    """The base model's greedy answers to ``self_replay`` prompts of ``prompts``, written once to
    OUT/self_replay.jsonl (a resumed run reads it again: the answers are the same for the same seed)."""
    from domainlm.corpora.instructions import read_conversations, self_answers, write_conversations

    cfg = r.cfg
    path = r.dir / "self_replay.jsonl"
    key = r.dir / "self_replay.json"
    want = {"prompts": str(prompts), "n": cfg.self_replay, "seed": cfg.seed, "max_new_tokens": cfg.self_replay_max_tokens}
    if r.dist.is_main:
        done = path.is_file() and key.is_file() and json.loads(key.read_text(encoding="utf-8")) == want
        if not done:
            t0 = time.perf_counter()
            answers = self_answers(r.prepared.model, r.prepared.tokenizer, read_conversations(prompts),
                                   cfg.self_replay, cfg.seed, cfg.self_replay_max_tokens)
            if not answers:
                raise ConfigError([f"self-replay: {cfg.model} gave no answer to {cfg.self_replay} prompts of {prompts}"])
            write_conversations(path, answers)
            from domainlm.artifacts import atomic_write_json

            atomic_write_json(key, want)
            log.info("self-replay: %d answers by the base model in %.0f s -> %s", len(answers),
                     time.perf_counter() - t0, path)
    r.dist.barrier()
    return path


def _check_tokenizer(corpus_manifest: dict, tokenizer, corpus: Path) -> None:
    from domainlm.corpora.pack import tokenizer_fingerprint

    tok = corpus_manifest.get("tokenizer") or {}
    size = tok.get("vocab_size")
    fix = "prepare the corpus with this model's tokenizer (domainlm corpus prepare --model ...)"
    if size is not None and size != len(tokenizer):
        raise ConfigError([f"corpus {corpus} was tokenised with a vocabulary of {size} tokens but the model's "
                           f"tokenizer has {len(tokenizer)}: {fix}"])
    # Same size is not the same ids (two tokens swapped): compare what prepare recorded of the tokenizer itself.
    recorded = tok.get("fingerprint")
    if recorded and recorded != tokenizer_fingerprint(tokenizer):
        raise ConfigError([f"corpus {corpus} was tokenised with another tokenizer than the model's (same vocabulary "
                           f"size, different ids or rules; fingerprint {recorded[:12]} vs "
                           f"{tokenizer_fingerprint(tokenizer)[:12]}): {fix}"])


# ----------------------------------------------------------------------------------------------------
# model: device, features, sharding, optimizer, schedule
# ----------------------------------------------------------------------------------------------------

def build_model(r: Run, data: Data) -> Trainer:
    from domainlm.adapt.features import apply_features
    from domainlm.flops import measure_matmul_peak, model_flops
    from domainlm.sources import count_parameters

    cfg, dist, device = r.cfg, r.dist, r.dist.device
    model = r.prepared.model
    if not on_meta(model):  # a meta-device copy (load once under FSDP) gets its storage when it is sharded
        model.to(device)
    bf16 = use_bf16(cfg.bf16, device, _resumed_bf16(r.resume_from))
    model = apply_features(model, cfg, bf16=bf16, device=device,
                           saves_embeddings=saves_embedding_layers(r.prepared, cfg))
    r.prepared.model = model

    n_trainable = count_parameters(model, trainable_only=True)
    n_total = count_parameters(model)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    chunked = cfg.chunked_head_on(device.type)
    head_fraction = cfg.mlm_probability if (r.prepared.objective != "causal" and chunked) else 1.0
    fl = model_flops(inner, data.block, head_fraction=head_fraction,
                     trainable_fraction=(n_trainable / n_total) if cfg.method in LORA_METHODS else None)
    peak = (measure_matmul_peak("bf16" if bf16 else "fp32", device=str(device))
            if device.type in ("cpu", "cuda") else None)

    strategy = choose_strategy(cfg.strategy, dist, model, cfg, seq_len=data.block, bf16=bf16)
    if dist.is_main:
        print(f"strategy: {strategy.name} ({strategy.reason})", flush=True)
        # issue 15: warn before a run the memory planner says will not fit
        from domainlm.memory import startup_warning

        if fit := startup_warning(model, cfg, strategy=strategy.name, world=dist.world, seq_len=data.block,
                                  bf16=bf16, device=device):
            log.warning(fit)
    loss_module = LossModule(model, r.prepared.objective, cfg.document_mask, chunked, bf16, device.type)
    train_module = wrap(loss_module, model, strategy, bf16, device, load_once=loads_once(cfg, dist))

    # Parameters are read after wrapping: FSDP replaces each one with its shard.
    params = [p for p in model.parameters() if p.requires_grad]
    head_ids = _head_param_ids(model)
    if (cfg.head_warmup_steps or cfg.body_lr_ratio != 1.0) and not head_ids & {id(p) for p in params}:
        raise ConfigError([f"head_warmup_steps/body_lr_ratio need an LM head with weights of its own; {cfg.model}'s "
                           "head is tied to its input embeddings (or absent): drop these options"])
    body_params = [p for p in params if id(p) not in head_ids]
    groups = [g for g in _param_groups(model, cfg.weight_decay, cfg.body_lr_ratio, head_ids) if g["params"]]
    for g in groups:
        g["lr"] = cfg.lr * g.get("lr_scale", 1.0)
    # CUDA: the fused kernel (one launch for every tensor; what the Trainer's adamw_torch_fused uses), except
    # under FSDP, whose sharded DTensor parameters take the foreach path. CPU: foreach.
    fused = device.type == "cuda" and strategy.name != "fsdp"
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  **({"fused": True} if fused else {"foreach": device.type == "cpu" or None}))
    scheduler = make_schedule(optimizer, cfg, data.total_steps)
    return Trainer(model, loss_module, train_module, optimizer, scheduler, params, body_params, bf16, strategy,
                   n_total, n_trainable, fl, peak)


def _resumed_bf16(resume_from: Path | None) -> bool | None:
    """The bf16 decision stored in the checkpoint being resumed (None: fresh run or older checkpoint)."""
    if resume_from is None:
        return None
    try:
        value = read_state(resume_from).get("bf16")
    except (IncompleteArtifactError, AttributeError):
        return None  # load_checkpoint reports an unreadable checkpoint with its own message
    return value if isinstance(value, bool) else None


def make_schedule(optimizer: torch.optim.Optimizer, cfg: AdaptConfig, total_steps: int):
    """transformers' warmup-stable-decay schedule: linear warmup from ``min_lr_ratio`` of each group's lr to it,
    then cosine or linear decay to ``min_lr_ratio`` by the last step (constant: no decay).

    The decay is the one the hand-written schedule had; the warmup now starts at ``min_lr_ratio`` × lr on the
    first step (it started at lr / warmup_steps), so the first step of a run is never at lr 0.
    """
    from transformers import get_wsd_schedule

    warmup = int(math.ceil(cfg.warmup_ratio * total_steps))
    decay = 0 if cfg.schedule == "constant" else total_steps - warmup
    return get_wsd_schedule(optimizer, num_warmup_steps=warmup, num_decay_steps=decay,
                            num_stable_steps=total_steps - warmup - decay,
                            decay_type="cosine" if cfg.schedule == "constant" else cfg.schedule,
                            min_lr_ratio=cfg.min_lr_ratio)


def _head_param_ids(model: Any) -> set[int]:
    """ids of the LM head's own parameters: those outside the transformer body (``base_model_prefix``).
    A head tied to the input embeddings owns none (the shared matrix counts as body)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    prefix = getattr(inner, "base_model_prefix", "")
    if not prefix or getattr(inner, prefix, None) is None:
        return set()
    return {id(p) for n, p in inner.named_parameters() if not n.startswith(prefix + ".")}


def _param_groups(model: Any, weight_decay: float, body_lr_ratio: float = 1.0,
                  head_ids: set[int] | None = None) -> list[dict]:
    """AdamW groups: no decay for biases and norms; with ``body_lr_ratio`` < 1 the head's groups come
    first and keep the full lr (``lr_scale`` 1), the body's are scaled."""
    split = body_lr_ratio != 1.0 and bool(head_ids)
    groups: dict[tuple[bool, bool], list] = {(h, d): [] for h in ((True, False) if split else (False,))
                                             for d in (True, False)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias"))
        groups[(split and id(p) in head_ids, decay)].append(p)
    return [{"params": ps, "weight_decay": weight_decay if d else 0.0,
             "lr_scale": 1.0 if (h or not split) else body_lr_ratio} for (h, d), ps in groups.items()]


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
        write_manifest(r.dir, "run", complete=False, config=to_dict(cfg), base=_base_info(r),
                       corpus=_corpus_info(r, data),
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
            r.dir, "run", complete=True, config=to_dict(cfg), base=_base_info(r), corpus=_corpus_info(r, data),
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


def _base_info(r: Run) -> dict[str, Any]:
    src = r.prepared.source
    return {"name": r.cfg.model, "kind": src.kind, "origin": src.origin, "path": src.path, "hub_id": src.hub_id,
            "license": src.license, "gguf_file": src.gguf_file}


def _corpus_info(r: Run, data: Data) -> dict[str, Any]:
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
