"""Checkpoints: atomic folders written with ``torch.distributed.checkpoint`` (DCP) by every process.

One code path for one process, DDP and FSDP: the model and optimizer state dicts come from
``torch.distributed.checkpoint.state_dict`` (keyed by parameter name, sharded where the model is), and each
process writes its own shards, so a checkpoint written by N processes loads into M (DCP reshards). A folder holds

* ``dcp/``: the trainable weights and the optimizer state (frozen LoRA base weights are not saved: they are the
  base model's);
* ``rng-RRRRR.pt``: each process's CPU and CUDA generator states (dropout);
* ``state.json``: step, scheduler, data-stream position, elapsed time, history, the bf16 decision and layout.

It is written under a temporary name and renamed when complete; its manifest says ``complete: true`` only
then. Resume picks the newest complete one and ignores anything else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from domainlm.artifacts import atomic_dir, read_manifest, write_manifest
from domainlm.errors import DomainLMError, IncompleteArtifactError
from domainlm.faults import fault_point

log = logging.getLogger(__name__)

CKPT_RE = re.compile(r"^step-(\d{8})$")
REQUIRED = ("dcp/.metadata", "state.json", "rng-00000.pt")


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Frozen weights (a LoRA base) are the base model's: saving them would make every checkpoint full size.
    # strict=False lets set_state_dict skip those frozen keys (with strict it reports them missing, so a LoRA run
    # or ESM with its frozen contact head could not resume); dcp.load has already required every trainable one.
    return StateDictOptions(ignore_frozen_params=True, strict=False)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _broadcast_path(path: Path | None, world: int) -> Path:
    if world == 1:
        assert path is not None
        return path
    box = [str(path) if path is not None else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return Path(box[0])


def _dcp(fn, *args, **kwargs):
    """Call a DCP function, re-raising the first process's own error instead of DCP's CheckpointException.

    CheckpointException derives from BaseException, so without this a full disk would skip atomic_dir's
    one-line "no space left" report and surface as a traceback.
    """
    from torch.distributed.checkpoint.api import CheckpointException

    from domainlm.noise import ignoring

    try:
        # one process (no_dist): DCP warns at every save and load that it runs without a process group, our intent
        with (ignoring("torch.distributed is disabled", UserWarning) if kwargs.get("no_dist")
              else contextlib.nullcontext()):
            return fn(*args, **kwargs)
    except CheckpointException as exc:
        for failure in exc.failures.values():
            inner = failure[0] if isinstance(failure, tuple) else failure
            if isinstance(inner, Exception):
                raise inner from None
        raise RuntimeError(str(exc)) from None


def save_checkpoint(run_dir: Path, step: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    extra: dict[str, Any], keep_last: int, *, rank: int, world: int,
                    device: torch.device) -> Path:
    """Write checkpoint ``step`` (a collective: every process calls it) and keep the newest ``keep_last``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = run_dir / "checkpoints" / f"step-{step:08d}"
    model_sd, optim_sd = get_state_dict(module, optimizer, options=_options())
    with contextlib.ExitStack() as stack:
        # Process 0 owns the temporary folder (created, renamed or removed by atomic_dir); the others write into it.
        tmp = stack.enter_context(atomic_dir(final)) if rank == 0 else None
        tmp = _broadcast_path(tmp, world)
        _dcp(dcp.save, {"model": model_sd, "optimizer": optim_sd}, checkpoint_id=tmp / "dcp", no_dist=world == 1)
        fault_point("ckpt", step)
        torch.save(_rng_state(device), tmp / f"rng-{rank:05d}.pt")
        if world > 1:
            torch.distributed.barrier()
        if rank == 0:
            (tmp / "state.json").write_text(json.dumps(extra, indent=2, default=str))
            write_manifest(tmp, "checkpoint", complete=True, counts={"step": step, "processes": world})
    if rank == 0:
        prune(run_dir, keep_last)
    if world > 1:
        torch.distributed.barrier()
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
            if all((p / f).is_file() for f in REQUIRED):
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


def read_state(path: Path) -> dict[str, Any]:
    """The checkpoint's ``state.json``; an unreadable one is reported as a damaged checkpoint."""
    try:
        return json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise IncompleteArtifactError(f"checkpoint {path} cannot be read ({exc}); delete it to resume from the "
                                      "previous one") from None


def load_checkpoint(path: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer, *, rank: int,
                    world: int, device: torch.device) -> dict[str, Any]:
    """Load weights, optimizer and this process's RNG from ``path`` (a collective); return its state.json."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    state = read_state(path)
    saved_world = int(state.get("world_size", 1))
    try:
        model_sd, optim_sd = get_state_dict(module, optimizer, options=_options())
        absent = _stateless_in_checkpoint(path, optim_sd)
        both = {"model": model_sd, "optimizer": optim_sd}
        _dcp(dcp.load, both, checkpoint_id=path / "dcp", no_dist=world == 1)
        set_state_dict(module, optimizer, model_state_dict=both["model"], optim_state_dict=both["optimizer"],
                       options=_options())
        _drop_optimizer_state(module, optimizer, absent)
        # A checkpoint written by fewer processes has no generator for the extra ranks: they take one of the
        # saved ones (the engine has already said that the dropout noise then differs from an uninterrupted run).
        rng = torch.load(path / f"rng-{rank % saved_world:05d}.pt", weights_only=True)
    except (OSError, RuntimeError, ValueError, KeyError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise IncompleteArtifactError(f"checkpoint {path} cannot be loaded into this run ({first}); it may belong to "
                                      "another configuration (start with --overwrite) or be damaged (delete it to "
                                      "resume from the previous one)") from None
    torch.set_rng_state(rng["cpu"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)
    return state


def _stateless_in_checkpoint(path: Path, optim_sd: dict[str, Any]) -> set[str]:
    """Trainable parameters that had no optimizer state when ``path`` was saved (never had a gradient, e.g. a
    head the objective does not reach), removed from the load template ``optim_sd``.

    get_state_dict fills a fresh optimizer's state for every parameter (one zero-gradient step), so without this
    the load would ask the checkpoint for state it never had.
    """
    from torch.distributed.checkpoint import FileSystemReader

    prefix = "optimizer.state."
    saved = {key[len(prefix):].rsplit(".", 1)[0] for key in
             FileSystemReader(str(path / "dcp")).read_metadata().state_dict_metadata if key.startswith(prefix)}
    absent = {fqn for fqn in optim_sd.get("state", {}) if fqn not in saved}
    for fqn in absent:
        del optim_sd["state"][fqn]
    return absent


def _drop_optimizer_state(module: torch.nn.Module, optimizer: torch.optim.Optimizer, absent: set[str]) -> None:
    """Forget the placeholder state get_state_dict gave the parameters in ``absent``, so that they start their
    Adam moments and step count at their first real gradient, as in the run without the interruption."""
    if not absent:
        return
    # the name mapping get_state_dict itself uses
    from torch.distributed.checkpoint.state_dict import _get_fqns

    for name, param in module.named_parameters():
        if _get_fqns(module, name) & absent:
            optimizer.state.pop(param, None)


def checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    """The trainable weights saved in checkpoint ``path``, as full tensors by parameter name (for inspection).

    Reads the DCP files in this one process whatever number of processes wrote them.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = FileSystemReader(str(path / "dcp"))
    meta = reader.read_metadata()
    out = {key: torch.empty(md.size, dtype=md.properties.dtype) for key, md in meta.state_dict_metadata.items()
           if key.startswith("model.") and isinstance(md, TensorStorageMetadata)}
    with warnings.catch_warnings():  # DCP warns that it runs without a process group: that is the intent here
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(out, storage_reader=reader, no_dist=True)
    return {key[len("model."):]: t for key, t in out.items()}
