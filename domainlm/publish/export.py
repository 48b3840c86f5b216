"""Read a finished run and write its final model as a folder plain ``transformers`` loads.

A full run's ``final/`` is already a transformers folder; a LoRA run's is a peft adapter plus
``base_model.json`` naming the base. Merging loads that base the way adapt did (domainlm.sources),
resizes it to the run's vocabulary, applies the adapter and folds it into the weights.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainlm.artifacts import read_manifest
from domainlm.errors import DataError, DomainLMError, IncompleteArtifactError, SourceError

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Tokenizer files a transformers tokenizer folder may hold; copied as they are for adapter exports.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja")


@dataclass
class RunInfo:
    """A finished run as publish sees it."""

    run_dir: Path
    manifest: dict[str, Any]
    final: Path
    method: str  # "full" | "lora"
    objective: str  # "causal" | "masked" | "protein"
    base_model: dict[str, Any] = field(default_factory=dict)  # final/base_model.json (LoRA runs)

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.get("config") or {}

    @property
    def probe(self) -> Path | None:
        p = self.final / "probe.safetensors"
        return p if p.is_file() else None


def read_run(run_dir: str | Path) -> RunInfo:
    """Check that ``run_dir`` is a finished adapt run with a complete final model, and describe it.

    Raises:
        IncompleteArtifactError: the manifest is missing or says the run did not finish, or the final
            model folder is missing or incomplete.
        DataError: the final folder lacks the files its method needs.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run folder {run_dir} does not exist; pass the --out folder of a `domainlm adapt` run")
    try:
        manifest = read_manifest(run_dir, "run")
    except IncompleteArtifactError as exc:
        raise IncompleteArtifactError(f"{run_dir} is not a finished run: {exc}. Publish needs a run that reached "
                                      "its last step; resume it with `domainlm adapt --out "
                                      f"{run_dir} --resume`") from None
    except DomainLMError as exc:
        raise DataError(f"{run_dir} is not a run folder: {exc}") from None
    final = run_dir / (manifest.get("final_dir") or "final")
    if not final.is_dir():
        raise IncompleteArtifactError(f"{run_dir}: the manifest says the run finished but its final model folder "
                                      f"{final} is missing; re-run `domainlm adapt` (with --overwrite)")
    try:
        read_manifest(final, "final")
    except DomainLMError as exc:
        raise IncompleteArtifactError(f"{final}: the final model folder is not complete ({exc}); re-run `domainlm "
                                      "adapt` (with --overwrite)") from None
    method = manifest.get("method") or (manifest.get("config") or {}).get("method") or "full"
    objective = manifest.get("objective") or "causal"
    base_model: dict[str, Any] = {}
    if method == "lora":
        missing = [n for n in (*ADAPTER_FILES, "base_model.json") if not (final / n).is_file()]
        if missing:
            raise DataError(f"{final} is a LoRA run's final folder but lacks {', '.join(missing)}; the run folder "
                            "is damaged: re-run `domainlm adapt`")
        try:
            base_model = json.loads((final / "base_model.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{final / 'base_model.json'} is not valid JSON ({exc}); re-run `domainlm adapt`") from None
        objective = base_model.get("objective") or objective
    else:
        if not (final / "config.json").is_file() or not any(final.glob("*.safetensors")):
            raise DataError(f"{final} should hold a full model (config.json and *.safetensors) but does not; "
                            "re-run `domainlm adapt`")
    return RunInfo(run_dir, manifest, final, method, objective, base_model)


# ----------------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------------

def base_source(info: RunInfo):
    """The resolved base of a LoRA run as a :class:`~domainlm.sources.ModelSource` whose ``path`` is a
    plain safetensors folder (GGUF bases are dequantised into the cache)."""
    from domainlm.sources import materialise, resolve

    cfg = info.config
    kwargs = {"allow_pickle": bool(cfg.get("allow_pickle")), "trust_remote_code": bool(cfg.get("trust_remote_code"))}
    spec = info.base_model.get("model") or cfg.get("model")
    try:
        src = resolve(spec, **kwargs)
    except SourceError as first:
        # The spec may have been a folder that moved; the path adapt recorded may still exist.
        path = info.base_model.get("path")
        if not path or not Path(path).is_dir() or not (Path(path) / "config.json").is_file():
            raise SourceError(f"the base model of {info.run_dir} ('{spec}', from {info.final / 'base_model.json'}) "
                              f"cannot be loaded: {first}") from None
        src = resolve(path, **kwargs)
    return materialise(src)


def load_base(info: RunInfo):
    """The base model of a LoRA run, loaded as adapt loaded it and sized to the run's vocabulary."""
    from domainlm.sources import load_model

    cfg = info.config
    src = base_source(info)
    model, _ = load_model(src, info.objective, allow_pickle=bool(cfg.get("allow_pickle")),
                          trust_remote_code=bool(cfg.get("trust_remote_code")))
    vocab = info.base_model.get("vocab_size")
    if vocab and vocab > model.get_input_embeddings().weight.shape[0]:
        # adapt resized before wrapping; the new rows are replaced by the adapter's saved embeddings
        # (modules_to_save), so how they are initialised here does not matter.
        model.resize_token_embeddings(vocab, mean_resizing=False)
    return model


def load_run_model(info: RunInfo, *, merge: bool = True):
    """The run's final model in fp32 and eval mode: full weights, or the base with the LoRA adapter.

    With ``merge`` the adapter is folded into the weights (a plain transformers model); without it the
    peft wrapper is returned.
    """
    from domainlm.sources import auto_class

    if info.method != "lora":
        import torch

        model = auto_class(info.objective).from_pretrained(str(info.final), dtype=torch.float32)
        model.eval()
        return model
    from peft import PeftModel

    base = load_base(info)
    model = PeftModel.from_pretrained(base, str(info.final))
    model.eval()
    if merge:
        model = model.merge_and_unload()
        model.eval()
    return model


def load_tokenizer(info: RunInfo):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(info.final))
    except (OSError, ValueError) as exc:
        raise DataError(f"the tokenizer in {info.final} cannot be loaded ({exc}); re-run `domainlm adapt`") from None


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
    model = load_run_model(info, merge=True)
    tokenizer = load_tokenizer(info)
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
    from domainlm.sources import count_parameters

    return {"kind": "merged" if info.method == "lora" else "full", "parameters": count_parameters(model),
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
    tokenizer = load_tokenizer(info)
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
