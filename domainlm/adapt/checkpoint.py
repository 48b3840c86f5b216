"""Checkpoints: atomic folders with trainable weights, optimizer, schedule position, RNG and stream state.

A checkpoint folder is written under a temporary name and renamed when complete; its manifest says
``complete: true`` only then. Resume picks the newest complete one and ignores anything else.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from domainlm.artifacts import atomic_dir, read_manifest, write_manifest
from domainlm.errors import DomainLMError, IncompleteArtifactError

CKPT_RE = re.compile(r"^step-(\d{8})$")


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """Trainable tensors by name, one entry per storage (tied weights are saved once)."""
    out, seen = {}, set()
    for name, p in model.named_parameters():
        if p.requires_grad and p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            out[name] = p.detach().cpu().contiguous()
    return out


def save_checkpoint(run_dir: Path, step: int, model: Any, optimizer: torch.optim.Optimizer,
                    extra: dict[str, Any], keep_last: int) -> Path:
    from safetensors.torch import save_file

    final = run_dir / "checkpoints" / f"step-{step:08d}"
    with atomic_dir(final) as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        from domainlm.adapt.engine import fault_point

        fault_point("ckpt", step)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(extra, indent=2, default=str))
        write_manifest(tmp, "checkpoint", complete=True, counts={"step": step})
    prune(run_dir, keep_last)
    return final


def complete_checkpoints(run_dir: Path) -> list[Path]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.iterdir()):
        if CKPT_RE.match(p.name) and p.is_dir():
            try:
                read_manifest(p, "checkpoint")
            except DomainLMError:
                continue  # partial or damaged: never taken for a complete one
            if all((p / f).is_file() for f in ("trainable.safetensors", "optimizer.pt", "rng.pt", "state.json")):
                out.append(p)
    return out


def prune(run_dir: Path, keep_last: int) -> None:
    ckpts = complete_checkpoints(run_dir)
    for old in ckpts[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    # Temporary folders left by a crash during a write.
    folder = run_dir / "checkpoints"
    for p in folder.glob(".step-*.tmp"):
        shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(path: Path, model: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    import pickle

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path / "trainable.safetensors"))
        params = dict(model.named_parameters())
        missing = [n for n in state if n not in params]
        if missing:
            raise IncompleteArtifactError(f"{path} holds weights this model does not have ({missing[:3]}...): it "
                                          "belongs to another configuration; start with --overwrite")
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor)
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        rng = torch.load(path / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
        return json.loads((path / "state.json").read_text())
    except (OSError, RuntimeError, ValueError, KeyError, SafetensorError, pickle.UnpicklingError) as exc:
        raise IncompleteArtifactError(f"checkpoint {path} cannot be read ({exc}); delete it to resume from the "
                                      "previous one") from None
