"""Corpus cards: ``corpora/<name>.yaml`` says where a corpus comes from, its license and format, and how
to prepare it (a ``prepare:`` mapping of :class:`~domainlm.corpora.config.PrepareConfig` fields).

Input paths in a card are relative to the card's folder; ``{data}`` stands for the download folder
(``$DOMAINLM_DATA``, default ``~/.cache/domainlm/data``), where ``domainlm corpus download`` puts
the real sources, and ``~`` and ``$VARS`` are expanded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from domainlm.corpora.config import PrepareConfig
from domainlm.errors import ConfigError, did_you_mean

REQUIRED_KEYS = ("name", "description", "source", "license", "format", "prepare")


def data_dir() -> Path:
    """Where downloaded corpora live: ``$DOMAINLM_DATA``, else ``<domainlm cache>/data``."""
    if os.environ.get("DOMAINLM_DATA"):
        return Path(os.environ["DOMAINLM_DATA"]).expanduser()
    from domainlm.sources.source import cache_dir

    return cache_dir() / "data"


def list_cards() -> dict[str, Path]:
    """Shipped corpus cards by name."""
    from domainlm.resources import corpora_dir

    return {p.stem: p for p in sorted(corpora_dir().glob("*.yaml"))}


def card_path(name: str | Path) -> Path:
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    known = list_cards()
    if str(name) in known:
        return known[str(name)]
    raise ConfigError([f"unknown corpus card '{name}'{did_you_mean(str(name), known)}; shipped cards: "
                       f"{', '.join(known)} (or pass a path to a card .yaml)"])


def corpus_problem(key: str, spec: str) -> str | None:
    """Why ``spec`` (a ``--corpus``-style value) names neither a folder nor a corpus card, or None when it may.

    Checked with the rest of a config (``domainlm validate`` too), before any folder is made: a path that does not
    exist is reported as one, not as an unknown card name.
    """
    try:
        path = Path(spec).expanduser()
        exists, is_dir, is_file = path.exists(), path.is_dir(), path.is_file()
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a name too long, an unknown ~user
        return f"'{key}': {spec!r} is not a usable path ({exc})"
    if is_dir or str(spec) in list_cards() or (path.suffix in (".yaml", ".yml") and is_file):
        return None
    if exists:
        return (f"'{key}': {spec} is a file, not a prepared corpus folder: prepare it first (domainlm corpus prepare "
                f"{spec} --model MODEL --out FOLDER) and pass the folder")
    if "/" in str(spec) or os.sep in str(spec) or str(spec).startswith((".", "~")) or path.suffix:
        return (f"'{key}': {spec} does not exist; pass a folder made by `domainlm corpus prepare`, or a corpus "
                f"card ({', '.join(list_cards())})")
    known = list_cards()
    return (f"'{key}': unknown corpus card '{spec}'{did_you_mean(str(spec), known)}; shipped cards: "
            f"{', '.join(known)} (or pass a prepared corpus folder)")


def is_card(name: str | Path) -> bool:
    """True when ``name`` is a shipped card's name or a YAML file with a ``prepare:`` mapping (so the CLI can
    accept ``domainlm corpus prepare CARD`` where it otherwise expects a recipe)."""
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        try:
            from domainlm.config import read_yaml

            return isinstance(read_yaml(path).get("prepare"), dict)
        except ConfigError:
            return False
    return str(name) in list_cards()


def load_card(name: str | Path) -> dict[str, Any]:
    """Read and check a corpus card; returns its mapping plus ``path`` (the card file).

    Every problem (missing descriptive keys, unknown or mistyped ``prepare`` options) is reported at once.
    """
    from domainlm.config import build, read_yaml

    path = card_path(name)
    card = read_yaml(path)
    # An instruction set (kind: instructions) is replayed by adapt, not prepared: it names its JSONL instead.
    required = [k if k != "prepare" else "instructions" for k in REQUIRED_KEYS] \
        if card.get("kind") == "instructions" else REQUIRED_KEYS
    problems = [f"missing key '{k}'" for k in required if k not in card]
    prep = card.get("prepare")
    if prep is not None and not isinstance(prep, dict):
        problems.append("'prepare' must be a mapping of prepare options")
    elif isinstance(prep, dict):
        if "inputs" not in prep:
            problems.append("'prepare' has no 'inputs'")
        try:
            build(PrepareConfig, {"model": "-", "out": "-", **prep}, source=str(path))
        except ConfigError as exc:
            problems.extend(f"prepare: {p}" for p in exc.problems)
    if problems:
        raise ConfigError(problems, str(path))
    card = dict(card)
    card["path"] = str(path)
    return card


def resolve_card_path(raw: str, base: Path) -> str:
    text = str(raw).replace("{data}", str(data_dir()))
    text = os.path.expanduser(os.path.expandvars(text))
    p = Path(text)
    return str(p if p.is_absolute() else (base / p))


def instructions_path(name: str | Path) -> Path | None:
    """The JSONL of an instruction-set card (``kind: instructions``), absolute; None for a corpus card or a name
    that is no card."""
    try:
        card_path(name)
    except ConfigError:
        return None
    card = load_card(name)  # a broken card is reported, not taken for a corpus
    if card.get("kind") != "instructions":
        return None
    return Path(resolve_card_path(card["instructions"], Path(card["path"]).parent))


def card_prepare_values(name: str | Path) -> dict[str, Any]:
    """The card's ``prepare:`` options with input paths made absolute."""
    card = load_card(name)
    if card.get("kind") == "instructions":
        raise ConfigError([f"'{name}' is an instruction set, used as replay data by adapt (replay_corpus: {name}), "
                           "not a corpus to prepare"])
    base = Path(card["path"]).parent
    values = dict(card["prepare"])
    values["inputs"] = [resolve_card_path(p, base) for p in values.get("inputs", [])]
    return values


def heldout_inputs(name: str | Path) -> list[str]:
    """Absolute paths of the card's held-out files (documents kept out of training), if it lists any."""
    card = load_card(name)
    base = Path(card["path"]).parent
    return [resolve_card_path(p, base) for p in card.get("heldout", []) or []]

