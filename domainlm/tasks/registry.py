"""The registry of task formats (readers) and metrics: the leaf that tasks, readers and metrics share.

Outsiders add a reader or a metric with ``FORMATS.register(name, heads=...)(fn)`` (see
:mod:`.builtin`, which holds the built-in tables). Duplicates are refused; unknown names are
answered with "did you mean" and the known names (peft and lm-eval habits).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from domainlm.config import did_you_mean
from domainlm.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    """A registered reader or metric with what it can be used for."""

    name: str
    fn: Callable[..., Any]
    heads: tuple[str, ...]
    doc: str = ""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


class Registry:
    """Name -> :class:`Entry`. Duplicates are refused; unknown names get a did-you-mean."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, heads: tuple[str, ...], **meta: Any) -> Callable:
        """Decorator: ``@FORMATS.register("conll", heads=("token",))``."""

        def wrap(fn: Callable) -> Callable:
            if name in self._entries:
                owner = self._entries[name].fn.__module__
                raise ValueError(f"{self.kind} '{name}' is already registered (by {owner}); choose another name")
            doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
            self._entries[name] = Entry(name, fn, tuple(heads), doc, dict(meta))
            return fn

        return wrap

    def unknown(self, name: str) -> str:
        return f"unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}; known: {', '.join(self.names())}"

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            raise ConfigError([self.unknown(name)])
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)
