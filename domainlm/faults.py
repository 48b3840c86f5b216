"""Fault injection for the kill-and-resume tests (a leaf module: checkpoint and engine both call it).

``DOMAINLM_FAULT=step:N`` SIGKILLs the process after optimizer step N; ``ckpt:N`` does it halfway through
writing checkpoint N, as a crash, an OOM kill or a pre-empted node would.
"""

from __future__ import annotations

import os
import signal


def fault_point(kind: str, step: int) -> None:
    """SIGKILL this process when ``DOMAINLM_FAULT`` names this point (``kind:step``); else do nothing."""
    spec = os.environ.get("DOMAINLM_FAULT")
    if spec and spec == f"{kind}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
