"""The checks on a model folder. Before loading: pickle-only weights and remote code are refused unless the user
opted in (both can execute code). After a load: a config.json that does not fit the weights (depth, shapes,
architecture) is refused, where transformers would only warn and fill or drop layers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from domainlm.errors import SourceError


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path} is not valid JSON ({exc}); the model folder is damaged") from None


def check_folder_safety(folder: Path, *, allow_pickle: bool, trust_remote_code: bool) -> None:
    """Refuse pickle-only weights and remote code unless the user opted in (both can execute code)."""
    # The tokenizer's config can ask for its own code too (transformers then ignores it without the opt-in and
    # silently loads a different tokenizer class, so it is refused here as well).
    for name in ("config.json", "tokenizer_config.json"):
        config_path = folder / name
        if not config_path.is_file():
            continue
        config = read_json(config_path)
        if isinstance(config, dict) and config.get("auto_map") and not trust_remote_code:
            raise SourceError(f"{folder} asks to run its own Python code ({name} has 'auto_map'). Code in a "
                              "model folder runs with your permissions; pass --trust-remote-code only if you trust "
                              "its author")
    has_safe = any(folder.glob("*.safetensors")) or any(folder.glob("*.gguf"))
    has_pickle = any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth"))
    if has_pickle and not has_safe and not allow_pickle:
        raise SourceError(f"{folder} holds only pickle weights (*.bin/*.pt). Loading a pickle can execute arbitrary "
                          "code; convert it to safetensors, or pass --allow-pickle if you trust the file")


_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.")


def _weight_shapes(folder: str) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from the safetensors headers of ``folder`` (no weights are read); {} when unreadable."""
    from safetensors import SafetensorError, safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(f), "pt") as fh:
                for key in fh.keys():
                    shapes[key] = tuple(fh.get_slice(key).get_shape())
        except (OSError, SafetensorError):
            return {}
    return shapes


def config_mismatch(folder: str, cls: Any) -> str | None:
    """Why ``folder``'s config.json does not fit its weights (tensor shapes), or None when they fit or it is
    unknown. Called after a failed load, to replace transformers' "see the report above" with the tensors."""
    import torch
    from transformers import AutoConfig

    shapes = _weight_shapes(folder)
    if not shapes:
        return None
    try:
        config = AutoConfig.from_pretrained(folder)
        with torch.device("meta"):
            expected = {n: tuple(p.shape) for n, p in cls.from_config(config).state_dict().items()}
    except Exception:  # a config too broken to build a model from: the original error says more
        return None
    prefixes = ("",) + tuple(sorted({n.split(".")[0] + "." for n in expected}))
    bad = []
    for key, shape in shapes.items():
        for prefix in prefixes:
            want = expected.get(prefix + key)
            if want is None and prefix:
                want = expected.get(key.removeprefix(prefix))
            if want is not None:
                if want != shape:
                    bad.append(f"{key} is {list(shape)} in the weights but {list(want)} by config.json")
                break
    if not bad:
        return None
    more = f" (and {len(bad) - 2} more)" if len(bad) > 2 else ""
    return (f"{folder}: config.json does not match the weights: {'; '.join(bad[:2])}{more}. The config was edited "
            "or belongs to another model; use the config.json that came with these weights")


def check_layout(folder: str, model: Any, info: dict[str, Any]) -> None:
    """Refuse a config whose depth or architecture differs from the weights (transformers only warns: a deeper
    config gets fresh random layers, a shallower one silently drops layers, another architecture uses nothing)."""
    if not Path(folder).is_dir():
        return
    shapes = _weight_shapes(folder)
    if not shapes:
        return
    unexpected = set(info.get("unexpected_keys") or [])
    if unexpected and len(unexpected) == len(shapes):
        raise SourceError(f"{folder}: none of the {len(shapes)} tensors in its weights fit the architecture that "
                          f"config.json names ({type(model).__name__}); the config was edited or belongs to another "
                          "model")
    have = {int(m.group(1)) for k in shapes if (m := _LAYER.search(k))}
    want = {int(m.group(1)) for n, _ in model.named_parameters() if (m := _LAYER.search(n))}
    if have and want and have != want:
        raise SourceError(f"{folder}: config.json describes {len(want)} layers but the weights hold {len(have)}; the "
                          "config was edited or belongs to another model (transformers would fill the gap with random "
                          "layers or drop layers silently)")
