"""What every task reader shares: the :class:`Example` record, failing with the place and the fix, and the skip
policy for bad records (``on_error: skip``).

A reader is ``read(path, spec, split) -> list[Example]`` (registered on ``FORMATS``, :mod:`domainlm.tasks.builtin`).
Every record carries ``where`` (``file:line``) so a bad label or offset is reported with its place and the fix.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainlm.errors import DataError
from domainlm.tasks.spec import TaskSpec


@dataclass
class Example:
    """One record. Token tasks fill ``tokens``/``tags``; others ``text`` (+ ``text_b``) and ``label``."""

    id: str
    where: str
    text: str | None = None
    text_b: str | None = None
    tokens: list[str] | None = None
    tags: list[str] | None = None
    label: Any = None
    # Line of each token (CoNLL) or of the mention that produced its tag (PubTator/BRAT).
    tag_where: list[str] | None = None
    group: str | None = None  # document the record came from (carving keeps documents whole)
    meta: dict[str, Any] = field(default_factory=dict)


def fail(where: str, what: str, fix: str) -> DataError:
    return DataError(f"{where}: {what}. Fix: {fix}")


# Bad records under ``on_error: skip``: counted by reason with a few examples (the documents' SkipLog, the
# same record of drops ``corpus prepare`` keeps). ``load_data`` sets one per split around the reader
# call; readers registered by outsiders keep their (path, spec, split) signature.
SKIPS: contextvars.ContextVar[Any] = contextvars.ContextVar("bench_skips", default=None)


def skip_or_raise(spec: TaskSpec, exc: DataError, reason: str) -> None:
    """Raise ``exc`` (``on_error: raise``, the default) or count the bad record and go on (``skip``)."""
    skips = SKIPS.get()
    if getattr(spec, "on_error", "raise") != "skip" or skips is None:
        raise exc
    where, _, detail = str(exc).partition(": ")
    skips.skip(reason, where, detail.split(". Fix:")[0])


def read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise fail(str(path), f"not UTF-8 text ({exc.reason} at byte {exc.start})",
                   "re-save the file as UTF-8") from None


def check_tag(tag: str, where: str) -> str:
    """A BIO tag must be 'O' or 'B-TYPE' / 'I-TYPE'."""
    if tag == "O" or (len(tag) > 2 and tag[:2] in ("B-", "I-")):
        return tag
    raise fail(where, f"tag {tag!r} is not BIO", "use O, B-TYPE or I-TYPE (e.g. B-Disease)")
