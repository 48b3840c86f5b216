"""The set-up steps of an adapt run, before the loop: the run folder, the data (a prepared corpus, replay, a
``sources:`` mixture) and the model (device, memory features, sharding, optimizer, schedule)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from domainlm.adapt.batches import BatchBuilder
from domainlm.adapt.checkpoint import complete_checkpoints, read_state
from domainlm.adapt.config import DEFAULT_BLOCK_SIZE, AdaptConfig
from domainlm.adapt.data import Masker, SequenceStream
from domainlm.adapt.parallel import Dist, choose_strategy, loads_once, on_meta, prepare, wrap
from domainlm.adapt.records import Data, Run, Trainer
from domainlm.adapt.setup import saves_embedding_layers
from domainlm.artifacts import why_not_replace
from domainlm.device import use_bf16
from domainlm.errors import ConfigError, IncompleteArtifactError
from domainlm.lm_loss import loss_sum, split_head

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
    from domainlm.corpora.run import prepare_card

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
    from domainlm.corpora.tokenizer_plan import tokenizer_fingerprint

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
    from domainlm.sources.load import count_parameters

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
