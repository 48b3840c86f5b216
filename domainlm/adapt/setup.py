"""Load the base model for training: objective, from-scratch init, embedding resize, LoRA wrapping."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from domainlm.adapt.config import AdaptConfig
from domainlm.artifacts import read_manifest
from domainlm.device import pick_device
from domainlm.errors import ConfigError, DomainLMError
from domainlm.noise import ignoring
from domainlm.sources.gguf import materialise
from domainlm.sources.load import LoadReport, auto_class, load_model, load_tokenizer
from domainlm.sources.resolution import resolve
from domainlm.sources.source import ModelSource

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    model: Any  # the module that trains (a PeftModel under LoRA)
    tokenizer: Any
    source: ModelSource
    objective: str
    report: LoadReport
    lora_modules_to_save: list[str] = field(default_factory=list)
    method: str = "full"
    quantization: dict[str, Any] | None = None  # QLoRA's BitsAndBytesConfig settings

    @property
    def base_storage(self) -> dict[str, Any]:
        """How the frozen base is held (for final/base_model.json): nf4 with its settings, bf16 when
        adapt.features stored it so, else float32. ``domainlm.quant.dequantized_base`` rebuilds it at publish."""
        from domainlm.quant import base_storage

        applied = getattr(self.model, "_domainlm_features", None)
        return base_storage(self.method, frozen_bf16=bool(getattr(applied, "frozen_bf16", False)),
                            quantization=self.quantization)


def saves_embedding_layers(prepared: Prepared, cfg: AdaptConfig) -> bool:
    """Whether a LoRA run's adapter stores the embedding layers whole: the vocabulary was resized (a fresh or
    extended model) or they train; otherwise peft's 'auto' decides (it saves them only when they changed)."""
    return bool(prepared.lora_modules_to_save) or cfg.train_embeddings


def resolve_objective(cfg: AdaptConfig, src: ModelSource) -> str:
    if cfg.objective != "auto":
        return cfg.objective
    return src.kind


def _lora_targets(model: Any, exclude: list[str]) -> dict[str, Any]:
    """LoraConfig arguments wrapping every linear layer of the transformer body.

    peft's ``all-linear`` (which also wraps bitsandbytes' 4-bit and fused layers such as Phi-3's ``qkv_proj``)
    excludes only the output embedding. A masked LM's head has linear layers of its own
    (``cls.predictions.transform.dense``, ESM's ``lm_head.dense``), and MiniLM's is freshly initialised and
    trained fully (modules_to_save), so everything outside ``base_model_prefix`` is excluded as well.
    """
    prefix = getattr(model, "base_model_prefix", "")
    outside = [n for n, _ in model.named_children() if n != prefix] if prefix and hasattr(model, prefix) else []
    if hasattr(getattr(model, prefix, None), "contact_head"):  # ESM's, frozen in prepare_model: no adapter there
        outside.append(f"{prefix}.contact_head")
    names = sorted(set(outside) | set(exclude))
    return {"target_modules": "all-linear",
            "exclude_modules": rf"^({'|'.join(re.escape(n) for n in names)})(\..*)?$" if names else None}


def _embedding_module_names(model: Any) -> list[str]:
    names = []
    by_id = {id(m): n for n, m in model.named_modules()}
    for mod in (model.get_input_embeddings(), model.get_output_embeddings()):
        if mod is not None and id(mod) in by_id and by_id[id(mod)] not in names:
            names.append(by_id[id(mod)])
    return names


def _added_token_ids(src: ModelSource) -> list[int]:
    """The token ids `vocab extend` added, when the base model is one of its output folders (else [])."""
    path = Path(src.path)
    if src.origin == "hub" or not (path / "manifest.json").is_file():
        return []
    try:
        manifest = read_manifest(path)
    except DomainLMError:
        return []
    if manifest.get("kind") != "vocab":
        return []
    return sorted(int(a["id"]) for a in manifest.get("added", []) if isinstance(a, dict) and "id" in a)


def _new_row_targets(model: Any, added: list[int], tied: bool, modules_to_save: list[str]) -> dict[str, list[int]]:
    """peft ``trainable_token_indices`` for the added rows: the input embedding, and the output layer when untied.

    Training only these rows (a sparse delta) leaves every row the base model already had untouched, so
    text without new words is scored exactly as before; training whole matrices moves all 50k rows.
    An untied output layer with a bias is trained fully instead (peft's token wrapper drops the bias).
    """
    by_id = {id(m): n for n, m in model.named_modules()}
    rows = {by_id[id(model.get_input_embeddings())]: list(added)}
    out = model.get_output_embeddings()
    if not tied and out is not None and id(out) in by_id:
        if isinstance(out, torch.nn.Linear) and out.bias is None:
            rows[by_id[id(out)]] = list(added)
        elif by_id[id(out)] not in modules_to_save:
            modules_to_save.append(by_id[id(out)])
    return rows


def _set_attention(model: Any, cfg: AdaptConfig, objective: str) -> None:
    """Switch from the SDPA the model was loaded with to the configured packed-document attention (domainlm.attention)."""
    from domainlm.attention import resolve_attention

    name = resolve_attention(getattr(cfg, "attention", "auto"), objective, type(model), pick_device(),
                             config=model.config)
    if name != "sdpa":
        model.set_attn_implementation(name)
        log.info("attention: %s for packed documents", name)


def prepare_model(cfg: AdaptConfig, *, meta_report: LoadReport | None = None) -> Prepared:
    """Load (or build) the model that trains, with its tokenizer, objective and LoRA wrapping.

    With ``meta_report`` (load once under FSDP, ``adapt.parallel.prepare``) no weight is read: the model
    is built from its config on the meta device and every later step (embedding resize, LoRA wrapping) runs there,
    so the module tree and parameter names equal process 0's; ``meta_report`` is process 0's loading report, whose
    fresh parameters decide LoRA's ``modules_to_save`` as they do there. The weights arrive after sharding.
    """
    src = resolve(cfg.model, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code)
    objective = resolve_objective(cfg, src)
    tokenizer = load_tokenizer(src, trust_remote_code=cfg.trust_remote_code)
    if objective == "causal" and tokenizer.eos_token_id is None:
        raise ConfigError([f"the tokenizer of {cfg.model} has no EOS token to separate documents"])
    # None is transformers' "SDPA, else eager": families without SDPA (Gemma 2's soft-capped attention,
    # DeBERTa) get eager, and lm_loss.family_inputs hands eager attention the additive form of the mask.
    kwargs = {"attn_implementation": None}
    torch.manual_seed(cfg.seed)  # fresh heads and from-scratch weights depend on the seed only
    if meta_report is not None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(materialise(src).path, trust_remote_code=cfg.trust_remote_code)
        with torch.device("meta"):
            # fp32 as load_model loads (a config may name the bf16 its checkpoint is stored in)
            model = auto_class(objective).from_config(config, trust_remote_code=cfg.trust_remote_code,
                                                      dtype=torch.float32, **kwargs)
        report = meta_report
    elif cfg.from_scratch:
        from transformers import AutoConfig

        path = materialise(src).path
        config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
        model = auto_class(objective).from_config(config, trust_remote_code=cfg.trust_remote_code, **kwargs)
        report = LoadReport(messages=["weights initialised from the config (from_scratch: true)"])
    elif cfg.method == "qlora":
        from domainlm import quant

        quant.require_bitsandbytes()
        if getattr(cfg, "strategy", "auto") == "fsdp":
            # FSDP2 would shard bitsandbytes' packed uint8 weights and their quant_state apart; not supported here
            raise ConfigError(["'method: qlora' with 'strategy: fsdp' is not supported: use strategy: ddp (QLoRA's "
                               "4-bit base is small enough to replicate) or method: lora with FSDP"])
        compute_dtype, why = quant.qlora_compute_dtype(cfg.bf16, pick_device())
        log.info("QLoRA: NF4 base with double quantisation, computing in %s (%s)", compute_dtype, why)
        settings = quant.qlora_settings(compute_dtype)
        model, report = quant.load_4bit(src, objective, settings, trust_remote_code=cfg.trust_remote_code,
                                        allow_pickle=cfg.allow_pickle, **kwargs)
    else:
        model, report = load_model(src, objective, trust_remote_code=cfg.trust_remote_code,
                                   allow_pickle=cfg.allow_pickle, **kwargs)
    _set_attention(model, cfg, objective)
    # Resize before any wrapping (a known peft pitfall): the adapter then saves the new size.
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        log.info("resizing embeddings %d -> %d to match the tokenizer", model.get_input_embeddings().weight.shape[0],
                 len(tokenizer))
        # (on the meta device there is nothing to average: process 0's resized rows are broadcast)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=meta_report is None)
    if cfg.document_mask and getattr(model.config, "token_dropout", False):
        # ESM's token dropout rescales embeddings by the mask ratio of the whole packed row, so one document's
        # masks would change another's activations; turn it off (ESM-2 fine-tuning commonly does too).
        model.config.token_dropout = False
        for module in model.modules():
            if hasattr(module, "token_dropout"):
                module.token_dropout = False
        log.warning("token_dropout turned off: it would leak information across packed documents")
    contact_head = getattr(getattr(model, "esm", None), "contact_head", None)
    if contact_head is not None:
        # ESM's contact head reads attention maps and gets no gradient from the masked-LM loss; left trainable it
        # sits in the optimizer without state, and resuming a checkpoint then fails on the missing state.
        contact_head.requires_grad_(False)
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False
    model.train()
    modules_to_save: list[str] = []
    if cfg.method == "qlora":
        model = quant.prepare_for_kbit_training(model)
    if cfg.method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        fresh_top = sorted({p.split(".")[0] for p in report.fresh_parameters})
        modules_to_save = list(fresh_top)
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        added = _added_token_ids(src)
        token_rows: dict[str, list[int]] | None = None
        if added and not cfg.train_embeddings:
            log.warning("%s is a `vocab extend` output with %d added tokens, but LoRA without train_embeddings "
                        "leaves their rows at the mean-of-pieces initialisation; set train_embeddings: true",
                        cfg.model, len(added))
        if cfg.train_embeddings and added and cfg.embedding_rows == "new":
            token_rows = _new_row_targets(model, added, tied, modules_to_save)
            log.info("training only the %d added embedding rows (%s) under LoRA", len(added), ", ".join(token_rows))
        elif cfg.train_embeddings:
            modules_to_save += [n for n in _embedding_module_names(model) if n not in modules_to_save]
        targets: dict[str, Any] = ({"target_modules": cfg.lora_target_modules} if cfg.lora_target_modules
                                   else _lora_targets(model, modules_to_save + list(token_rows or {})))
        lora_cfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              **targets, modules_to_save=modules_to_save or None, bias="none",
                              trainable_token_indices=token_rows,
                              ensure_weight_tying=tied and cfg.train_embeddings)
        try:
            # peft reads transformers' deprecated is_gradient_checkpointing: a FutureWarning on every LoRA run
            with ignoring(".*is_gradient_checkpointing", FutureWarning):
                model = get_peft_model(model, lora_cfg)
        except ValueError as exc:
            raise ConfigError([f"LoRA could not wrap {cfg.model}: {exc}; check lora_target_modules"]) from None
        if fresh_top:
            log.warning("%s: the freshly initialised %s is trained fully under LoRA (modules_to_save)",
                        cfg.model, ", ".join(fresh_top))
    return Prepared(model, tokenizer, src, objective, report, modules_to_save, method=cfg.method,
                    quantization=settings if cfg.method == "qlora" else None)
