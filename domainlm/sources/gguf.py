"""GGUF models: dequantised once into a safetensors folder in domainlm's cache, so every later load is a plain
``from_pretrained`` (a GGUF load takes ~17-40 s)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from domainlm.artifacts import atomic_dir
from domainlm.sources.source import ModelSource, cache_dir

log = logging.getLogger(__name__)


def _materialise_gguf(src: ModelSource) -> ModelSource:
    """Dequantise a GGUF model once into a safetensors folder in the cache (GGUF loads take ~17-40 s)."""
    target = cache_dir() / "gguf" / (Path(src.gguf_file).stem)
    if not (target / "config.json").is_file():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("dequantising %s once into %s", src.gguf_file, target)
        tokenizer = AutoTokenizer.from_pretrained(src.path, gguf_file=src.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(src.path, gguf_file=src.gguf_file)
        # transformers marks GGUF-loaded models as quantised and refuses to save them, although the weights
        # are already dequantised: copy them into a plain model of the same config.
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config)
        plain.load_state_dict(model.state_dict())
        with atomic_dir(target) as tmp:
            plain.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "domainlm_source.json").write_text(json.dumps({"gguf": str(Path(src.path) / src.gguf_file)}))
    return ModelSource(src.name, src.kind, src.origin, str(target), hub_id=src.hub_id, license=src.license,
                       description=src.description, aliases=src.aliases,
                       extra={**src.extra, "gguf_origin": str(Path(src.path) / src.gguf_file)})


def materialise(src: ModelSource) -> ModelSource:
    """A source whose ``path`` is a plain safetensors folder (GGUF dequantised and cached)."""
    return _materialise_gguf(src) if src.gguf_file else src
