"""Where a command runs and in which precision: the device choice, the bf16 decision and the CPU facts behind it.

adapt, bench, compute, merge --select and QLoRA's compute dtype all ask here, so the answers cannot drift apart:

* :func:`pick_device`: ``auto`` is the GPU when torch sees one, else the CPU; a CUDA device asked for on a machine
  without one is refused.
* :func:`use_bf16`: bf16 autocast helps only where the hardware has bf16 units (recent GPUs, AMX or AVX512-BF16
  CPUs); where it has none, torch emulates it and bf16 is several times slower than fp32. So ``auto`` asks the
  hardware: CUDA reports support, and on a CPU the speed of the two dtypes is measured once per process
  (:func:`bf16_is_fast`), which also catches CPUs whose flags promise more than their build delivers.
  ``DOMAINLM_BF16_FAST=1|0`` forces that answer (tests run the bf16 branches on any machine with it).
* :func:`cpu_name`, :func:`cpu_flags`: what the CPU is, recorded with benchmarks and runs.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

from domainlm.errors import ConfigError, DomainLMError

log = logging.getLogger(__name__)


def pick_device(setting: str = "auto") -> str:
    """The device a command runs on for ``setting`` (auto, cpu, cuda, cuda:N, mps).

    ``auto`` is ``cuda`` where torch sees a GPU, else ``cpu``; ``cuda`` (or ``cuda:N``) where torch sees none is a
    config error naming the fix. adapt places each process on its own GPU of the ``cuda`` this answers.
    """
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError([f"'device: {setting}' but torch sees no CUDA device here; use --device cpu or auto"])
    return setting


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
    return bf16_is_fast("cpu")


# --------------------------------------------------------------------------------------------------
# CPU facts
# --------------------------------------------------------------------------------------------------

def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one), for reports and manifests."""
    import contextlib
    import platform
    from pathlib import Path

    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# The SIMD extensions that decide CPU matmul speed (AVX2 only: bf16 emulated; AVX512-BF16/AMX: bf16 fast).
SIMD_FLAGS = ("sse4_2", "fma", "f16c", "avx", "avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16")


def cpu_flags() -> list[str]:
    """The CPU's :data:`SIMD_FLAGS` (from /proc/cpuinfo; empty where there is none), recorded with benchmarks."""
    import contextlib
    from pathlib import Path

    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [f for f in SIMD_FLAGS if f in present]
    return []


# Forces the answer of :func:`bf16_is_fast` ("1": fast, "0": slow), so that the bf16 branches (frozen bf16 base,
# autocast, QLoRA bf16 compute) can be run and tested on a CPU without bf16 units, and the fp32 ones on one with.
BF16_FAST_ENV = "DOMAINLM_BF16_FAST"


def forced_bf16_fast() -> bool | None:
    """The answer forced by ``DOMAINLM_BF16_FAST`` (1/0, true/false, yes/no, on/off), or None when unset."""
    value = os.environ.get(BF16_FAST_ENV, "").strip().lower()
    if not value:
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise DomainLMError(f"{BF16_FAST_ENV}={value!r}: expected 1 (bf16 is fast) or 0 (it is not), or unset to measure")


def bf16_is_fast(device: str = "cpu", margin: float = 1.3) -> bool:
    """True when bf16 matmuls run at least ``margin``× faster than fp32 here (decided once per process).

    Where the hardware has bf16 units (AMX or AVX512-BF16 CPUs, recent GPUs) bf16 can run several times
    faster than fp32; where it has none, torch emulates it and bf16 is far slower (on this project's
    AVX2-only AMD EPYC build machine: about 0.5 vs 26 GFLOP/s on 2 shared cores), so autocast must be
    decided by the hardware, not by whether the dtype is supported. ``DOMAINLM_BF16_FAST=1`` or ``=0`` forces
    the answer instead (read on every call, so a test can set it per test). :func:`bf16_basis` says how the
    answer was reached.
    """
    forced = forced_bf16_fast()
    if forced is not None:
        return forced
    return _decided_bf16_is_fast(device, margin)[0]


def bf16_basis(device: str = "cpu", margin: float = 1.3) -> str:
    """How :func:`bf16_is_fast` decided: the CPU flags that settle it, or the measured bf16/fp32 ratio."""
    return _decided_bf16_is_fast(device, margin)[1]


@functools.lru_cache(maxsize=4)
def _decided_bf16_is_fast(device: str, margin: float) -> tuple[bool, str]:
    """On an x86 CPU whose flags are readable the flags settle the clear cases without timing anything: no
    AVX512-BF16 and no AMX means emulated bf16 (slow), AMX means bf16 tiles (fast). A timing decided them all
    before, and on a loaded 2-core machine it flipped between runs (AVX512-BF16 EPYC, 2026-12-06: the 256²
    bf16/fp32 ratio measured 0.93, 26.5 and 16.9 in three calls), so two runs of one config trained in different
    precisions. What is left (AVX512-BF16 without AMX; CPUs whose flags say nothing, e.g. ARM; GPUs) is measured
    by :func:`_bf16_ratio`, made robust to a busy machine."""
    import platform

    if not device.startswith("cuda"):
        flags = set(cpu_flags())
        if platform.machine().lower() in ("x86_64", "amd64", "i686", "x86") and "avx2" in flags:
            if "amx_bf16" in flags:
                return True, "cpu flags: amx_bf16"
            if "avx512_bf16" not in flags:
                return False, "cpu flags: no avx512_bf16 or amx_bf16 (bf16 emulated)"
    try:
        ratio = _bf16_ratio(device)
    except (RuntimeError, TypeError) as exc:  # a build or device without bf16 matmul
        log.debug("bf16 matmul unavailable: %s", exc)
        return False, f"bf16 matmul unavailable ({exc})"
    return ratio > margin, f"measured bf16/fp32 matmul ratio {ratio:.2g} (fast above {margin:g})"


def _bf16_ratio(device: str, rounds: int = 5) -> float:
    """bf16 over fp32 matmul throughput: the best of ``rounds`` interleaved short samples of each, on one
    thread for a CPU. Best-of and one thread make it robust to other jobs: a sample that lost the core reads
    low and is discarded, and no OpenMP team waits on a descheduled thread (with two threads under a load of 4,
    single samples varied 30-fold)."""
    import torch

    from domainlm.flops import measure_matmul_peak

    # Small matrices on a CPU: emulated bf16 runs near 0.5 GFLOP/s, so a 1024² product would take seconds.
    size = 2048 if device.startswith("cuda") else 256
    threads = torch.get_num_threads()
    if not device.startswith("cuda"):
        torch.set_num_threads(1)
    try:
        fp32 = bf16 = 0.0
        for _ in range(rounds):
            fp32 = max(fp32, measure_matmul_peak("fp32", seconds=0.04, size=size, device=device))
            bf16 = max(bf16, measure_matmul_peak("bf16", seconds=0.04, size=size, device=device))
    finally:
        torch.set_num_threads(threads)
    log.debug("matmul peak on %s: fp32 %.3g, bf16 %.3g FLOP/s", device, fp32, bf16)
    return bf16 / fp32


def bf16_report() -> str:
    """One line naming the CPU, its bf16-relevant flags and the bf16 answer, so a test failure can be traced to
    the hardware (printed by ``.ci/run`` before the tests)."""
    flags = [f for f in cpu_flags() if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")]
    forced = forced_bf16_fast()
    if forced is not None:
        answer = f"{'yes' if forced else 'no'} (forced by {BF16_FAST_ENV}={os.environ[BF16_FAST_ENV]})"
    else:
        answer = f"{'yes' if bf16_is_fast() else 'no'} ({bf16_basis()}; force it with {BF16_FAST_ENV}=1 or 0)"
    return f"cpu: {cpu_name()}; flags: {' '.join(flags) or 'none of avx2/avx512f/avx512_bf16/amx_bf16'}; " \
           f"bf16 fast: {answer}"


__all__ = ["BF16_FAST_ENV", "SIMD_FLAGS", "bf16_basis", "bf16_is_fast", "bf16_report", "cpu_flags", "cpu_name", "forced_bf16_fast",
           "pick_device", "use_bf16"]
