"""How ``domainlm generate`` loads a causal model and samples from it, printing tokens as they come."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from domainlm.errors import ConfigError
from domainlm.generate.config import GenerateConfig
from domainlm.loading import is_run_folder, load_for_eval, read_run
from domainlm.sources.resolution import resolve

log = logging.getLogger(__name__)


def _no_head(spec: str, what: str) -> str:
    return (f"'{spec}' is {what} with no generation head: `generate` needs a causal language model (e.g. smollm2, "
            "tiny-llama, or a published causal model); score masked models with `domainlm bench`")


def _precheck(spec: str, *, allow_pickle: bool, trust_remote_code: bool) -> str | None:
    """Why ``spec`` cannot generate (masked model, adapter alone), found without loading weights; else None."""
    path = Path(spec).expanduser()
    if is_run_folder(path):
        info = read_run(path)
        return None if info.objective == "causal" else _no_head(spec, f"a run of a {info.objective} language model")
    if path.is_dir() and (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        return (f"'{spec}' holds a LoRA adapter alone; generate from a merged export (`domainlm publish` without "
                "--no-merge) or from the run folder")
    src = resolve(spec, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    if src.kind != "causal":
        arch = ""
        if Path(src.path, "config.json").is_file():
            archs = json.loads(Path(src.path, "config.json").read_text(encoding="utf-8")).get("architectures") or []
            arch = f" ({', '.join(archs)})" if archs else ""
        return _no_head(spec, f"a {src.kind} language model{arch}")
    return None


def load_causal(spec: str, *, allow_pickle: bool = False, trust_remote_code: bool = False):
    """``(model, tokenizer)`` for a causal model named by ``spec``, in eval mode; refuses masked models.

    Loaded by :func:`domainlm.loading.load_for_eval`, as bench and publish load it (a run's adapter merged).
    """
    why = _precheck(spec, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    if why:
        raise ConfigError([why])
    loaded = load_for_eval(spec, "causal", allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    model = loaded.model
    if not model.can_generate():
        raise ConfigError([_no_head(spec, f"a {type(model).__name__}")])
    model.config.use_cache = True  # adapt turns it off for training; generation is much slower without it
    return model, loaded.tokenizer


def _generate_one(model: Any, tokenizer: Any, cfg: GenerateConfig, label: str) -> dict[str, Any]:
    import torch
    from transformers import TextStreamer

    inputs = tokenizer(cfg.prompt, return_tensors="pt")
    kwargs: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens}
    if cfg.temperature > 0:
        kwargs.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p)
    else:
        kwargs.update(do_sample=False)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    print(f"=== {label} ===", flush=True)
    print(cfg.prompt, end="", flush=True)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, streamer=streamer, pad_token_id=pad, **kwargs)
    seconds = time.perf_counter() - t0
    new = out[0, inputs["input_ids"].shape[1]:]
    text = tokenizer.decode(new, skip_special_tokens=True)
    print(f"[{len(new)} tokens, {len(new) / max(seconds, 1e-9):.1f} tokens/s]\n", flush=True)
    return {"model": label, "continuation": text, "tokens": int(len(new)), "seconds": seconds}


def run(cfg: GenerateConfig) -> dict[str, Any]:
    flags = {"allow_pickle": cfg.allow_pickle, "trust_remote_code": cfg.trust_remote_code}
    # Both models are checked before either is loaded, so a masked --compare fails before any generation.
    problems = [f"'{key}': {why}" for key, spec in (("model", cfg.model), ("compare", cfg.compare)) if spec
                for why in [_precheck(spec, **flags)] if why]
    if problems:
        raise ConfigError(problems)
    model, tokenizer = load_causal(cfg.model, **flags)
    result = _generate_one(model, tokenizer, cfg, cfg.model)
    if cfg.compare:
        del model
        base, base_tok = load_causal(cfg.compare, **flags)
        result["compare"] = _generate_one(base, base_tok, cfg, f"{cfg.compare} (for comparison)")
    return result
