"""Load the base model for training: objective, from-scratch init, embedding resize, LoRA wrapping."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from domainlm.adapt.config import AdaptConfig
from domainlm.errors import ConfigError
from domainlm.sources import (
    LoadReport,
    ModelSource,
    auto_class,
    load_model,
    load_tokenizer,
    materialise,
    resolve,
)

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    model: Any  # the module that trains (a PeftModel under LoRA)
    tokenizer: Any
    source: ModelSource
    objective: str
    report: LoadReport
    lora_modules_to_save: list[str] = field(default_factory=list)


def resolve_objective(cfg: AdaptConfig, src: ModelSource) -> str:
    if cfg.objective != "auto":
        return cfg.objective
    return src.kind


def _linear_targets(model: Any, exclude_prefixes: list[str]) -> str:
    """A peft regex matching every nn.Linear inside the transformer body (not the output head)."""
    prefix = getattr(model, "base_model_prefix", "")
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith(prefix + ".") and not any(
                name.startswith(p) for p in exclude_prefixes):
            names.add(name.rsplit(".", 1)[-1])
    if not names:
        raise ConfigError([f"found no linear layers under '{prefix}' to wrap with LoRA; set lora_target_modules"])
    return rf"{re.escape(prefix)}\..*\.({'|'.join(sorted(names))})"


def _embedding_module_names(model: Any) -> list[str]:
    names = []
    by_id = {id(m): n for n, m in model.named_modules()}
    for mod in (model.get_input_embeddings(), model.get_output_embeddings()):
        if mod is not None and id(mod) in by_id and by_id[id(mod)] not in names:
            names.append(by_id[id(mod)])
    return names


def prepare_model(cfg: AdaptConfig) -> Prepared:
    src = resolve(cfg.model, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code)
    objective = resolve_objective(cfg, src)
    tokenizer = load_tokenizer(src, trust_remote_code=cfg.trust_remote_code)
    if objective == "causal" and tokenizer.eos_token_id is None:
        raise ConfigError([f"the tokenizer of {cfg.model} has no EOS token to separate documents"])
    # SDPA takes the boolean 4-D document masks directly; eager attention would need an additive mask.
    kwargs = {"attn_implementation": "sdpa"}
    torch.manual_seed(cfg.seed)  # fresh heads and from-scratch weights depend on the seed only
    if cfg.from_scratch:
        from transformers import AutoConfig

        path = materialise(src).path
        config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
        model = auto_class(objective).from_config(config, trust_remote_code=cfg.trust_remote_code, **kwargs)
        report = LoadReport(messages=["weights initialised from the config (from_scratch: true)"])
    else:
        model, report = load_model(src, objective, trust_remote_code=cfg.trust_remote_code,
                                   allow_pickle=cfg.allow_pickle, **kwargs)
    # Resize before any wrapping (a known peft pitfall): the adapter then saves the new size.
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        log.info("resizing embeddings %d -> %d to match the tokenizer", model.get_input_embeddings().weight.shape[0],
                 len(tokenizer))
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    if cfg.document_mask and getattr(model.config, "token_dropout", False):
        # ESM's token dropout rescales embeddings by the mask ratio of the whole packed row, so one document's
        # masks would change another's activations; turn it off (ESM-2 fine-tuning commonly does too).
        model.config.token_dropout = False
        for module in model.modules():
            if hasattr(module, "token_dropout"):
                module.token_dropout = False
        log.warning("token_dropout turned off: it would leak information across packed documents")
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False
    model.train()
    modules_to_save: list[str] = []
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        fresh_top = sorted({p.split(".")[0] for p in report.fresh_parameters})
        modules_to_save = list(fresh_top)
        if cfg.train_embeddings:
            modules_to_save += [n for n in _embedding_module_names(model) if n not in modules_to_save]
        targets: Any = cfg.lora_target_modules or _linear_targets(model, modules_to_save)
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        lora_cfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              target_modules=targets, modules_to_save=modules_to_save or None, bias="none",
                              ensure_weight_tying=tied and cfg.train_embeddings)
        try:
            model = get_peft_model(model, lora_cfg)
        except ValueError as exc:
            raise ConfigError([f"LoRA could not wrap {cfg.model}: {exc}; check lora_target_modules"]) from None
        if fresh_top:
            log.warning("%s: the freshly initialised %s is trained fully under LoRA (modules_to_save)",
                        cfg.model, ", ".join(fresh_top))
    return Prepared(model, tokenizer, src, objective, report, modules_to_save)
