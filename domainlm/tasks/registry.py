"""The registry of task formats (readers) and metrics: the leaf that the schema, readers and metrics share.

Outsiders add a reader or a metric with ``FORMATS.register(name, heads=...)(fn)`` (see
:mod:`.builtin`, which holds the built-in tables). Duplicates are refused; unknown names are
answered with "did you mean" and the known names (peft and lm-eval habits).

An entry's target is the function (or class) itself, or its import path ``"module:name"``: the built-ins
are registered by path and imported when first used, so the schema can check a task's ``format`` and
``metric`` (names and heads) without importing any reader.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from domainlm.config import did_you_mean
from domainlm.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    """A registered reader or metric with what it can be used for."""

    name: str
    target: Callable[..., Any] | str  # the callable, or its "module:name" import path
    heads: tuple[str, ...]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def fn(self) -> Callable[..., Any]:
        """The reader or metric (imported on first use when registered by path)."""
        if isinstance(self.target, str):
            module, _, attr = self.target.partition(":")
            return getattr(importlib.import_module(module), attr)
        return self.target

    @property
    def module(self) -> str:
        return self.target.partition(":")[0] if isinstance(self.target, str) else self.target.__module__

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip().splitlines()[0] if self.fn.__doc__ else ""


class Registry:
    """Name -> :class:`Entry`. Duplicates are refused; unknown names get a did-you-mean."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, heads: tuple[str, ...], **meta: Any) -> Callable:
        """Decorator: ``@FORMATS.register("conll", heads=("token",))``; also takes a ``"module:name"`` path."""

        def wrap(fn: Callable | str) -> Callable | str:
            if name in self._entries:
                owner = self._entries[name].module
                raise ValueError(f"{self.kind} '{name}' is already registered (by {owner}); choose another name")
            self._entries[name] = Entry(name, fn, tuple(heads), dict(meta))
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
