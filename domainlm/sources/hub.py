"""The Hugging Face Hub as domainlm sees it: huggingface_hub's offline switch, the endpoint it talks to, and whether
that endpoint can be reached now."""

from __future__ import annotations

import socket
import threading


def hub_offline() -> bool:
    """huggingface_hub's own offline switch (``HF_HUB_OFFLINE``, read when the library is imported), so domainlm
    never disagrees with the library about whether a request may be made."""
    from huggingface_hub import constants  # function-local: `domainlm --help` does not import huggingface_hub

    return bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    """The Hub URL huggingface_hub talks to: ``HF_ENDPOINT`` (a mirror, a test server) or huggingface.co."""
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hub endpoint accepts a TCP connection within ``timeout`` seconds (DNS included)."""
    from urllib.parse import urlsplit

    url = urlsplit(hub_endpoint())
    address = (url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443))
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection(address, timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # A thread bounds the wait: create_connection's timeout does not cover a slow DNS lookup.
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])
