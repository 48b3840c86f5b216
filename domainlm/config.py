"""Typed configuration: dataclasses are the schema for recipes, flags and ``validate``.

A recipe is a YAML file whose keys are fields of a verb's dataclass; a flag overrides the recipe.
Every problem in a recipe is reported at once, naming the key and the fix (torchtune's ConfigError
habit), before any weights or data are loaded.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from domainlm.errors import ConfigError, did_you_mean  # noqa: F401  (did_you_mean: re-exported)
from domainlm.resources import recipe_path


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def type_name(tp: Any) -> str:
    """Human-readable type for messages and --help."""
    inner, optional = _strip_optional(tp)
    if get_origin(inner) is Literal:
        name = "one of " + ", ".join(repr(a) for a in get_args(inner))
    elif get_origin(inner) in (list, tuple):
        name = f"list of {type_name(get_args(inner)[0])}"
    elif get_origin(inner) is dict:
        name = "mapping"
    else:
        name = getattr(inner, "__name__", str(inner))
    return name + (" or null" if optional else "")


class SectionProblems(ValueError):
    """The problems of a nested section (an item of adapt's ``sources:``), each reported under its own key."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def coerce(value: Any, tp: Any, *, from_string: bool = False) -> Any:
    """Convert ``value`` to ``tp`` or raise ValueError with what was expected.

    ``from_string`` is set for command-line values, which arrive as strings.
    """
    inner, optional = _strip_optional(tp)
    if value is None or (from_string and optional and str(value).lower() in ("none", "null")):
        if optional:
            return None
        raise ValueError(f"expected {type_name(tp)}, got null")
    origin = get_origin(inner)
    if origin is Literal:
        choices = get_args(inner)
        if isinstance(value, bool) and ("on" if value else "off") in choices:
            value = "on" if value else "off"  # YAML 1.1 reads an unquoted on/off (and yes/no) as a boolean
        if value not in choices:
            raise ValueError(f"expected {type_name(inner)}, got {value!r}{did_you_mean(str(value), map(str, choices))}")
        return value
    if origin in (list, tuple):
        if from_string and isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected {type_name(inner)}, got {type(value).__name__} {value!r}")
        item_type = get_args(inner)[0]
        if not dataclasses.is_dataclass(item_type):
            return [coerce(v, item_type, from_string=from_string) for v in value]
        items, problems = [], []
        for i, v in enumerate(value):  # a list of sections: every problem of every item, each with its place
            try:
                items.append(coerce(v, item_type, from_string=from_string))
            except SectionProblems as exc:
                problems.extend(f"[{i}].{p[1:]}" if p.startswith("'") else f"[{i}]': {p}" for p in exc.problems)
            except ValueError as exc:
                problems.append(f"[{i}]': {exc}")
        if problems:
            raise SectionProblems(problems)
        return items
    if dataclasses.is_dataclass(inner) and isinstance(inner, type):
        # a nested section of a recipe (a list item of adapt's ``sources:``): built with the same checks
        if isinstance(value, inner):
            return value
        if isinstance(value, str) and hasattr(inner, "from_text"):  # a flag's compact form (--sources a=0.7)
            return inner.from_text(value)
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping with keys {', '.join(fields_of(inner))}, got {value!r}")
        try:
            return build(inner, value)
        except ConfigError as exc:
            raise SectionProblems(exc.problems) from None
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping, got {value!r}")
        return dict(value)
    if inner is bool:
        if isinstance(value, bool):
            return value
        if from_string and str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if from_string and str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    if inner is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if ("e" in value.lower() and float(value).is_integer()) else int(value)
            except ValueError:
                pass
        raise ValueError(f"expected an integer, got {value!r}")
    if inner is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {value!r}")
    if inner is str:
        if isinstance(value, (str, Path)):
            return str(value)
        if from_string:
            return str(value)
        raise ValueError(f"expected a string, got {type(value).__name__} {value!r}")
    return value


def field_help(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def fields_of(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def resolved_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build(cls: type, values: dict[str, Any], *, source: str | None = None, from_string: set[str] | None = None):
    """Create ``cls`` from ``values``, collecting every problem into one ConfigError.

    Unknown keys get a "did you mean"; wrong types name the expected type. After construction the
    dataclass's ``problems()`` method (if any) reports impossible combinations.
    """
    from_string = from_string or set()
    known = fields_of(cls)
    hints = resolved_hints(cls)
    problems: list[str] = []
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if not isinstance(key, str):  # YAML `1: x` or `null: 1`
            problems.append(f"key {key!r} is not an option name; known keys: {', '.join(sorted(known))}")
            continue
        if key not in known:
            hint = did_you_mean(key, known)
            problems.append(f"unknown key '{key}'{hint}" if hint else
                            f"unknown key '{key}'; known keys: {', '.join(sorted(known))}")
            continue
        try:
            kwargs[key] = coerce(value, hints[key], from_string=key in from_string)
        except SectionProblems as exc:  # "[1].weight' must be ..." -> "'sources[1].weight' must be ..."
            problems.extend(f"'{key}{p}" if p.startswith("[") else f"'{key}': {p}" for p in exc.problems)
        except ValueError as exc:
            problems.append(f"'{key}': {exc}")
    required = [n for n, f in known.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
                and n not in kwargs]
    for name in required:
        if name not in values:
            problems.append(f"'{name}' is required: {field_help(known[name]) or 'set it'}")
    if required:
        raise ConfigError(problems, source)
    obj = cls(**kwargs)
    # Combination checks run even when some keys were rejected above (their defaults stand in), so
    # the user sees every problem at once.
    check = getattr(obj, "problems", None)
    if callable(check):
        problems.extend(check())
    if problems:
        raise ConfigError(problems, source)
    return obj


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning parse errors into a ConfigError naming the file and line."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"file not found: {path}"], str(path))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"not valid YAML{where}: {getattr(exc, 'problem', exc)}"], str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not UTF-8 text: {exc}"], str(path)) from None
    except (ValueError, OverflowError) as exc:
        # PyYAML's scanner lets these escape for a double-quoted escape beyond U+10FFFF ("\U99999999").
        raise ConfigError([f"not valid YAML: {exc} (check the escapes in double-quoted strings)"], str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"expected a mapping of keys to values at the top level, got {type(data).__name__}"], str(path))
    return data


def load(cls: type, recipe: str | Path | None = None, overrides: dict[str, Any] | None = None,
         *, from_string: set[str] | None = None):
    """Load ``cls`` from an optional YAML recipe plus overrides (overrides win).

    ``recipe`` may be a path or the name of a shipped recipe (see :func:`domainlm.resources.recipe_path`).
    """
    values, source = recipe_values(recipe, overrides)
    return build(cls, values, source=source, from_string=from_string)


def recipe_values(recipe: str | Path | None,
                  overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], str | None]:
    """A recipe's keys with ``overrides`` on top (overrides win), and the recipe's path for messages (None without
    one): what :func:`load` builds a config from, for callers that pass the keys on (the quickstart)."""
    values: dict[str, Any] = {}
    source = None
    if recipe is not None:
        path = recipe_path(recipe)
        source = str(path)
        values.update(read_yaml(path))
    values.update({k: v for k, v in (overrides or {}).items()})
    return values, source


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a plain JSON/YAML-serialisable mapping."""
    return dataclasses.asdict(obj)


def opt(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None, sep: str | None = ",") -> Any:
    """A dataclass field with help text (shown by --help and ``validate``).

    ``sep`` matters for list fields on the command line: each word of ``--flag a b,c`` is split at
    ``sep`` (None keeps words whole, for items that may contain commas themselves, like KEY=VALUE).
    """
    meta = {"help": help, "sep": sep}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def at_least(obj: Any, **minimums: float) -> list[str]:
    """The bounds check every config's ``problems()`` makes, worded one way: for each ``field=minimum`` whose
    value is set and smaller, "'field' must be at least minimum, got value"."""
    return [f"'{name}' must be at least {low}, got {value}" for name, low in minimums.items()
            if (value := getattr(obj, name)) is not None and value < low]


def as_config(cls: type, config: Any = None, overrides: dict[str, Any] | None = None):
    """Accept a dataclass instance, a recipe path/name, or None, plus keyword overrides (Python API)."""
    if isinstance(config, cls):
        if not overrides:
            return config
        return build(cls, {**to_dict(config), **overrides})
    if isinstance(config, dict):
        return build(cls, {**config, **(overrides or {})})
    return load(cls, config, overrides)
