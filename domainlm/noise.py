"""Third-party warnings that domainlm silences where it triggers them, and why; ``--verbose`` shows them all.

A user's terminal should show what domainlm has to say, not a library's note about its own internals that the user
can do nothing about. Each entry below names the library, what triggers it and why it is not the user's problem.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

# Loggers whose WARNINGs are muted below --verbose, each with its reason.
QUIET_LOGGERS = {
    # bitsandbytes, on a CPU with AVX512-BF16, tries at import (so at `import peft`, on every verb, for any method)
    # to fetch a 4-bit kernel from the Hub (kernels-community/quantization-bitsandbytes) and logs two WARNING lines
    # when it cannot (offline, or trust_remote_code unset). domainlm never uses that kernel
    # (quant.keep_training_kernel keeps the training computation), so the failure changes nothing.
    "bitsandbytes.backends.cpu.ops": logging.ERROR,
    "kernels": logging.ERROR,
}


def verbose() -> bool:
    return logging.getLogger("domainlm").isEnabledFor(logging.DEBUG)


def quiet_loggers() -> None:
    """Mute :data:`QUIET_LOGGERS` (the CLI calls this once; ``--verbose`` undoes it with :func:`loud_loggers`)."""
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def loud_loggers() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


@contextlib.contextmanager
def ignoring(message: str, category: type[Warning]) -> Iterator[None]:
    """Ignore warnings whose text starts with ``message`` (a regex) inside the block, unless --verbose."""
    with warnings.catch_warnings():
        if not verbose():
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


@contextlib.contextmanager
def muted_log(logger: str, message: str) -> Iterator[None]:
    """Drop ``logger``'s records whose text starts with ``message`` inside the block, unless --verbose."""

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not record.getMessage().startswith(message)

    log, drop = logging.getLogger(logger), _Drop()
    if not verbose():
        log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


@contextlib.contextmanager
def no_transformers_bars() -> Iterator[None]:
    """No transformers tqdm bars inside the block ("Writing model shards" for a one-file tiny model), unless
    --verbose; the previous setting is restored."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    if was_on and not verbose():
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
