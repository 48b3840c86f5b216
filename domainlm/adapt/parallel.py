"""How several processes share a training run: one process, DDP, or FSDP2 (``fully_shard``).

Processes are started by ``torchrun`` or ``accelerate launch``; this module only joins the process group they
describe (RANK, WORLD_SIZE, LOCAL_RANK) and wraps the model. DDP keeps a full copy of weights, gradients and
optimizer state in every process; FSDP2 shards all three, each transformer block being one unit that is
all-gathered for its forward and backward and freed after (torchtitan's and torchtune's layout). DeepSpeed is
not offered: FSDP2 is PyTorch's own and does the same job.

Under FSDP the model is loaded once (``load_once``, torchtitan's and accelerate's ``cpu_ram_efficient_loading``
scheme): process 0 reads the checkpoint, every other process builds the same module tree on the meta device, and
after ``fully_shard`` the weights are broadcast from process 0 straight into the shards
(``set_model_state_dict(..., full_state_dict=True, broadcast_from_rank0=True)``), so host memory holds one full
copy per job instead of one per process. Buffers outside the state dict (rotary ``inv_freq``) are broadcast too.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from domainlm.adapt.features import transformer_blocks
from domainlm.device import pick_device
from domainlm.errors import ConfigError

log = logging.getLogger(__name__)

# The share of a device the estimated peak may take under 'auto' before FSDP is chosen: the estimate is rough.
FIT_FRACTION = 0.8


class Dist:
    """This process's place in the run, and the few collectives the loop needs (no-ops in one process)."""

    def __init__(self):
        import torch.distributed as td

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.world)))
        self.is_main = self.rank == 0
        if pick_device() == "cuda":  # each process on its own GPU
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        self._owns_group = False
        if self.world > 1 and not td.is_initialized():
            # NCCL for GPU tensors, gloo for the CPU tensors of checkpoint metadata and cpu_offload gathers.
            backend = "cuda:nccl,cpu:gloo" if self.device.type == "cuda" else "gloo"
            td.init_process_group(backend=backend)
            self._owns_group = True

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self._owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def loads_once(cfg: Any, dist: Dist) -> bool:
    """Whether this run loads the model once (process 0) and broadcasts it into the shards.

    Only under an explicit ``strategy: fsdp``: ``auto`` chooses from the loaded model, and DDP keeps a full copy in
    every process anyway.
    """
    return dist.world > 1 and getattr(cfg, "strategy", "auto") == "fsdp" and getattr(cfg, "load_once", True)


def prepare(cfg: Any, dist: Dist):
    """``adapt.setup.prepare_model`` in every process, or, when :func:`loads_once`, in process 0 only while the
    others build the model on the meta device (with process 0's loading report)."""
    from domainlm.adapt.setup import prepare_model
    from domainlm.errors import DomainLMError

    if not loads_once(cfg, dist):
        return prepare_model(cfg)
    prepared, box = None, [None]
    if dist.is_main:
        try:
            prepared = prepare_model(cfg)
            box = [prepared.report]
        except BaseException as exc:
            # the other processes wait in the broadcast below: tell them, then fail here with the real error
            torch.distributed.broadcast_object_list([f"{type(exc).__name__}: {exc}"], src=0)
            raise
    torch.distributed.broadcast_object_list(box, src=0)
    if dist.is_main:
        return prepared
    if isinstance(box[0], str):
        raise DomainLMError(f"process 0 could not load {cfg.model} ({box[0].splitlines()[0]})")
    return prepare_model(cfg, meta_report=box[0])


def on_meta(model: torch.nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


@dataclass
class Strategy:
    name: str  # single | ddp | fsdp
    reason: str


def peak_estimate(model: Any, cfg: Any, *, device: torch.device, seq_len: int, bf16: bool) -> float:
    """Estimated peak bytes of one unsharded training step on one device (the memory planner, issue 15).

    Architectures the planner cannot read fall back to 16 bytes per trainable parameter and 4 per frozen one
    (fp32 weights, gradients and AdamW's two moments), without activations.
    """
    from domainlm import memory

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        shape = memory.shape_from_config(inner.config)
        return memory.estimate(shape, method=cfg.method, strategy="ddp", gpus=1, seq_len=seq_len,
                               batch=cfg.batch_size, gradient_checkpointing=cfg.gradient_checkpointing, bf16=bf16,
                               lora_r=cfg.lora_r, device=device.type, chunked_head=cfg.chunked_head_on(device.type)).total
    except Exception as exc:  # noqa: BLE001 - an unplannable architecture must not stop training
        log.debug("memory planner unavailable (%s): bytes-per-parameter estimate", exc)
        params = list(model.parameters())
        return float(sum(p.numel() * (16 if p.requires_grad else 4) for p in params))


def choose_strategy(setting: str, dist: Dist, model: Any, cfg: Any, *, seq_len: int, bf16: bool) -> Strategy:
    """The strategy for ``setting`` (auto, ddp, fsdp) and why; 'single' when there is one process."""
    if dist.world == 1:
        if setting == "fsdp":
            return Strategy("single", "one process: nothing to shard across (launch with torchrun "
                            "--nproc_per_node N to shard)")
        return Strategy("single", "one process")
    if setting != "auto":
        return Strategy(setting, f"--strategy {setting}")
    # Process 0 decides for all: free memory read a moment apart could split the processes between strategies.
    box = [_auto_strategy(dist, model, cfg, seq_len=seq_len, bf16=bf16) if dist.is_main else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _auto_strategy(dist: Dist, model: Any, cfg: Any, *, seq_len: int, bf16: bool) -> Strategy:
    from domainlm.memory import device_memory_bytes

    need = peak_estimate(model, cfg, device=dist.device, seq_len=seq_len, bf16=bf16)
    have = device_memory_bytes(dist.device)
    if have is not None and dist.device.type == "cpu":
        have /= max(1, dist.local_world)  # the processes of one machine share its memory
    gib = 1 << 30
    if have is None:
        return Strategy("ddp", f"the device's memory is unknown, so each of {dist.world} processes keeps a full copy "
                        "(use --strategy fsdp to shard)")
    if need <= FIT_FRACTION * have:
        return Strategy("ddp", f"one step needs ~{need / gib:.2f} GiB unsharded (memory planner), which fits one "
                        f"{dist.device.type} device ({have / gib:.0f} GiB per process), so each of {dist.world} "
                        "processes keeps a full copy")
    return Strategy("fsdp", f"one step needs ~{need / gib:.2f} GiB unsharded (memory planner), more than "
                    f"{FIT_FRACTION:.0%} of one {dist.device.type} device ({have / gib:.0f} GiB per process): "
                    f"weights, gradients and optimizer state sharded across {dist.world} processes")


def fsdp_units(model: Any) -> list[torch.nn.Module]:
    """The transformer blocks to shard one by one, innermost first, without any that holds the embeddings.

    Tied weights must stay in one FSDP unit (the root), and BERT lists its embeddings among its no-split modules.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    embeddings = {id(m) for m in (inner.get_input_embeddings(), inner.get_output_embeddings()) if m is not None}
    units = [b for b in transformer_blocks(model) if not any(id(m) in embeddings for m in b.modules())]
    if not units:
        raise ConfigError([f"--strategy fsdp: {type(inner).__name__} names no transformer blocks "
                           "(_no_split_modules) to shard one by one; use --strategy ddp"])
    return units[::-1]


def wrap(loss_module: torch.nn.Module, model: Any, strategy: Strategy, bf16: bool,
         device: torch.device, *, load_once: bool = False) -> torch.nn.Module:
    """The module the loop calls: ``loss_module`` itself (one process), DDP around it, or it sharded in place.

    Under FSDP each transformer block is one unit, then the root (the loss module: embeddings, final norm and the
    output head, which the fused loss reads directly inside the root's forward). With bf16, parameters are cast to
    bf16 for compute while gradients are reduced and the optimizer steps in fp32.

    With ``load_once`` process 0 holds the loaded weights and the others a meta-device copy; after sharding, the
    weights are broadcast into every process's shards (:func:`broadcast_into_shards`).
    """
    if load_once and strategy.name != "fsdp":
        raise ValueError(f"load_once needs FSDP, got strategy {strategy.name}")  # loads_once guarantees it
    if strategy.name == "single":
        return loss_module
    if strategy.name == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(loss_module, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
          else MixedPrecisionPolicy())
    # Process 0's full state dict, taken before sharding: references to the loaded tensors (no copy), which keep
    # them alive until they are broadcast.
    full = loss_module.state_dict() if load_once and torch.distributed.get_rank() == 0 else {}
    for block in fsdp_units(model):
        fully_shard(block, mp_policy=mp)
    fully_shard(loss_module, mp_policy=mp)
    if load_once:
        broadcast_into_shards(loss_module, full, device)
    split = getattr(loss_module, "split", None)
    if split is not None and split.fused_weight is not None:
        # The head split made before sharding still names the unsharded head weight: a reference that would keep
        # the loaded full tensor (and a memory-mapped checkpoint behind it) alive. Point it at the sharded one.
        import dataclasses

        loss_module.split = dataclasses.replace(split, fused_weight=split.head.weight, fused_bias=split.head.bias)
    return loss_module


def broadcast_into_shards(module: torch.nn.Module, full: dict[str, torch.Tensor], device: torch.device) -> None:
    """Fill a sharded ``module`` with process 0's ``full`` state dict (``{}`` elsewhere), tensor by tensor.

    Meta-device parameters and buffers are first given (uninitialised) storage on ``device``: FSDP2 re-registers
    its sharded parameters on every module that shares them, so tied embeddings stay one parameter. Buffers that
    are not in the state dict (non-persistent: rotary ``inv_freq``, BERT's ``position_ids``) are broadcast apart,
    so a model whose buffers are computed at construction gets process 0's values, not garbage.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    # The meta-built tree must equal process 0's in names and dtypes: set_model_state_dict would cast silently.
    mine = {k: str(v.dtype) for k, v in module.state_dict().items()}
    box = [mine if torch.distributed.get_rank() == 0 else None]
    torch.distributed.broadcast_object_list(box, src=0)
    if box[0] != mine:
        diff = sorted(k for k in box[0].keys() | mine.keys() if box[0].get(k) != mine.get(k))
        raise RuntimeError(f"load_once: process {torch.distributed.get_rank()} built {len(diff)} tensors unlike "
                           f"process 0's (first: {diff[0]}: {mine.get(diff[0])} vs {box[0].get(diff[0])}); "
                           "use --no-load-once")
    if on_meta(module) or any(b.is_meta for b in module.buffers()):
        module.to_empty(device=device)
    set_model_state_dict(module, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    full.clear()
    with torch.no_grad():
        for sub in module.modules():
            for name in sorted(getattr(sub, "_non_persistent_buffers_set", ())):
                buf = sub._buffers.get(name)
                if buf is not None:
                    torch.distributed.broadcast(buf, src=0)


def no_sync(train_module: torch.nn.Module, last: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-batch of a step.

    FSDP reduce-scatters every micro-batch into the sharded gradients instead: skipping it would keep unsharded
    gradients alive across micro-batches, which is the memory sharding exists to save.
    """
    if not last and hasattr(train_module, "no_sync") and not hasattr(train_module, "reshard"):
        return train_module.no_sync()
    return contextlib.nullcontext()


def clip_grad_norm_(params: list[torch.Tensor], max_norm: float) -> float:
    """Clip by the total norm of all gradients; under FSDP the norm of the sharded gradients is reduced first."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads)
    from torch.distributed.tensor import DTensor

    if isinstance(total, DTensor):
        total = total.full_tensor()  # sum of the shards' squares across processes, then the root
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


def local_bytes(tensors) -> int:
    """Bytes this process holds for ``tensors`` (a sharded tensor counts its local shard only)."""
    from torch.distributed.tensor import DTensor

    total = 0
    for t in tensors:
        if isinstance(t, torch.Tensor):
            local = t.to_local() if isinstance(t, DTensor) else t
            total += local.numel() * local.element_size()
    return total


def state_bytes(model: Any, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """This process's parameter and optimizer-state bytes, counted from what it holds (shards under FSDP)."""
    opt = [v for state in optimizer.state.values() for v in state.values()]
    return {"parameters": local_bytes(model.parameters()), "optimizer": local_bytes(opt)}


def peak_rss() -> int:
    """This process's peak resident memory so far, in bytes."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def peak_memory(dist: Dist, **marks: int) -> list[dict[str, int]]:
    """Every process's peak resident memory (and peak CUDA allocation), plus earlier ``marks`` of it (e.g. the
    peak at the end of the training loop, before the final model is gathered), collected from all processes."""
    mine = {"rank": dist.rank, "peak_rss_bytes": peak_rss(), **marks}
    if dist.device.type == "cuda":
        mine["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated(dist.device))
    if dist.world == 1:
        return [mine]
    out: list[Any] = [None] * dist.world
    torch.distributed.all_gather_object(out, mine)
    return out
