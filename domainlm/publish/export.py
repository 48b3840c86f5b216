"""Write a finished run's final model as a folder plain ``transformers`` loads (merged or as an adapter).

The run is read and loaded by :mod:`domainlm.loading`, the loader bench and generate use too, so the
model published is loaded exactly as the model benchmarked: a full run's ``final/`` through the same
safety checks, an adapter run (``lora``/``qlora``) as its base sized to the run's vocabulary with the
adapter applied and folded into the weights.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from domainlm.loading import RunInfo, load_run_model, load_run_tokenizer
from domainlm.sources.load import count_parameters

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------

def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _untie_if_trained_apart(model: Any) -> bool:
    """If the config ties input and output embeddings but training changed them apart, untie them.

    Saving a tied config would drop the output layer and reloading would copy the input embeddings
    over it, silently changing the model. Returns True when it untied.
    """
    import torch

    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if out is None or not getattr(model.config, "tie_word_embeddings", False):
        return False
    if inp.weight is out.weight or torch.equal(inp.weight, out.weight):
        return False
    out.weight = torch.nn.Parameter(out.weight.detach().clone())
    model.config.tie_word_embeddings = False
    log.warning("the input and output embeddings were trained apart: the export unties them "
                "(tie_word_embeddings: false)")
    return True


def export_merged(info: RunInfo, tmp: Path, dtype: str) -> dict[str, Any]:
    """Write the (merged) model, tokenizer and, for causal models, the generation config into ``tmp``."""
    model, _ = load_run_model(info, merge=True)
    tokenizer = load_run_tokenizer(info)
    untied = _untie_if_trained_apart(model)
    if info.objective == "causal":
        # adapt turns the KV cache off for training; generation wants it back.
        model.config.use_cache = True
        _fill_generation_config(model, tokenizer)
    model = model.to(_torch_dtype(dtype))
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    if info.objective == "causal" and not (tmp / "generation_config.json").is_file():
        model.generation_config.save_pretrained(str(tmp))
    return {"kind": "merged" if info.is_adapter else "full", "parameters": count_parameters(model),
            "vocab_size": int(model.get_input_embeddings().weight.shape[0]), "tokenizer_size": len(tokenizer),
            "architecture": (model.config.architectures or [type(model).__name__])[0], "untied_embeddings": untied,
            "model_type": model.config.model_type}


def _fill_generation_config(model: Any, tokenizer: Any) -> None:
    """Token ids generation needs (bos/eos/pad), taken from the tokenizer where the model has none."""
    gen = model.generation_config
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(gen, key, None) is None:
            value = getattr(model.config, key, None)
            if value is None:
                value = getattr(tokenizer, key, None)
            if key == "pad_token_id" and value is None:
                value = tokenizer.eos_token_id  # the usual choice for decoder-only models without a pad token
            if value is not None:
                setattr(gen, key, value)


def export_adapter(info: RunInfo, tmp: Path, dtype: str, base_hub_id: str | None) -> dict[str, Any]:
    """Write the LoRA adapter alone (plus the tokenizer) into ``tmp``.

    ``adapter_config.json`` is pointed at the base's Hub id when it is known, so
    ``PeftModel.from_pretrained`` (or transformers' peft integration) finds the base by itself.
    """
    from safetensors.torch import load_file, save_file

    config = json.loads((info.final / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_hub_id or info.base_model.get("model") or config.get(
        "base_model_name_or_path")
    if info.objective == "causal" and not config.get("task_type"):
        config["task_type"] = "CAUSAL_LM"  # lets AutoPeftModelForCausalLM and transformers pick the class
    config["inference_mode"] = True
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tensors = load_file(str(info.final / "adapter_model.safetensors"))
    target = _torch_dtype(dtype)
    tensors = {k: (v.to(target) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    tokenizer = load_run_tokenizer(info)
    tokenizer.save_pretrained(str(tmp))
    n = sum(v.numel() for v in tensors.values())
    has_embeddings = any("embed" in k or "lm_head" in k or "modules_to_save" in k for k in tensors)
    return {"kind": "adapter", "parameters": n, "vocab_size": info.base_model.get("vocab_size"),
            "tokenizer_size": len(tokenizer), "modules_to_save": config.get("modules_to_save") or [],
            "saves_embeddings": has_embeddings, "base_model_name_or_path": config["base_model_name_or_path"],
            "lora_r": config.get("r"), "lora_alpha": config.get("lora_alpha")}


def copy_if_present(src: Path, dst: Path) -> bool:
    if src.is_file():
        shutil.copyfile(src, dst)
        return True
    return False
