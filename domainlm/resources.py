"""Where shipped data lives: recipes inside the package, corpora/ and benchmarks/ beside it.

A wheel carries corpora/ and benchmarks/ under ``domainlm/_data`` (see pyproject's force-include);
a source checkout or editable install finds them at the repository root.
"""

from __future__ import annotations

from pathlib import Path

from domainlm.errors import ConfigError, did_you_mean

PACKAGE_DIR = Path(__file__).resolve().parent
RECIPES_DIR = PACKAGE_DIR / "recipes"


def _data_dir(name: str) -> Path:
    for candidate in (PACKAGE_DIR / "_data" / name, PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"shipped folder '{name}' not found next to {PACKAGE_DIR}; reinstall domainlm")


def corpora_dir() -> Path:
    """The shipped ``corpora/`` folder (corpus cards and ``samples/``)."""
    return _data_dir("corpora")


def benchmarks_dir() -> Path:
    """The shipped ``benchmarks/`` folder (task suites)."""
    return _data_dir("benchmarks")


def shipped_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"))}


def recipe_path(recipe: str | Path) -> Path:
    """Resolve a recipe given as a path or as the name of a shipped recipe (``biogpt-style``)."""
    path = Path(recipe)
    if path.is_file():
        return path
    known = shipped_recipes()
    name = path.stem if path.suffix in (".yaml", ".yml") else str(recipe)
    if name in known:
        return known[name]
    raise ConfigError([f"recipe '{recipe}' is neither a file nor a shipped recipe{did_you_mean(name, known)}; "
                       f"shipped recipes: {', '.join(known)}"])
