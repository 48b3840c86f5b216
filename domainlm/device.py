"""The one bf16 decision, shared by adapt, bench and compute.

bf16 autocast helps only where the hardware has bf16 units (recent GPUs, AMX or AVX512-BF16 CPUs); where it has
none, torch emulates it and bf16 is several times slower than fp32. So ``auto`` asks the hardware: CUDA reports
support, and on a CPU the speed of the two dtypes is measured once per process (``flops.bf16_is_fast``), which
also catches CPUs whose flags promise more than their build delivers. ``DOMAINLM_BF16_FAST=1|0`` forces that
answer (tests run the bf16 branches on any machine with it).
"""

from __future__ import annotations

from typing import Any

from domainlm.errors import ConfigError


def use_bf16(setting: str, device: Any, resumed: bool | None = None) -> bool:
    """Whether to run bf16 autocast for ``setting`` (auto, on, off) on ``device`` (str or torch.device).

    ``resumed`` is the decision stored in a checkpoint being resumed: under ``auto`` it wins, because a resume on a
    busier or idler machine must not switch precision mid-run (that would leave the uninterrupted trajectory).
    """
    import torch

    kind = device if isinstance(device, str) else device.type
    if setting == "off":
        return False
    if setting == "auto" and resumed is not None:
        return resumed
    if kind.startswith("cuda"):
        ok = bool(torch.cuda.is_bf16_supported())
        if setting == "on" and not ok:
            raise ConfigError(["bf16: on, but this GPU does not support bf16; use bf16: off"])
        return ok or setting == "on"
    if setting == "on":
        return True
    if kind != "cpu":
        return False  # other devices (mps, ...): fp32 unless asked
    from domainlm.flops import bf16_is_fast

    return bf16_is_fast("cpu")
