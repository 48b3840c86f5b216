"""``domainlm validate``: check a recipe or task file without loading weights or data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from domainlm.cli import _load
from domainlm.config import build, opt, read_yaml, to_dict
from domainlm.errors import ConfigError
from domainlm.resources import recipe_path

# Which schema a YAML file is checked against. A task file names a `format`; everything else under
# benchmarks/ is a task too; other files are adapt recipes unless they say `schema:`.
SCHEMAS = {
    "adapt": "domainlm.adapt:AdaptConfig",
    "prepare": "domainlm.corpora.prepare:PrepareConfig",
    "task": "domainlm.tasks.spec:TaskSpec",
}


@dataclass
class ValidateConfig:
    path: str = opt(help="the recipe or task YAML to check (a path or a shipped recipe name)")
    schema: str | None = opt(None, "adapt, prepare or task; guessed from the file when omitted")


def guess_schema(path: Path, data: dict) -> str:
    if "format" in data and ("metric" in data or "mode" in data):
        return "task"
    if "benchmarks" in path.parts:
        return "task"
    if "inputs" in data and "model" not in data:
        return "prepare"
    return "adapt"


def validate(config: ValidateConfig) -> str:
    """Check a recipe (adapt / corpus prepare) or a task file, reporting every problem at once.

    Unknown keys get a "did you mean", wrong types name the expected type, and impossible combinations
    name the keys involved. Prints "OK" and the resolved settings when the file is valid.
    """
    path = recipe_path(config.path)
    data = read_yaml(path)
    schema = config.schema or guess_schema(path, data)
    if schema not in SCHEMAS:
        raise ConfigError([f"schema '{schema}' is not one of {', '.join(SCHEMAS)}"], str(path))
    cls = _load(SCHEMAS[schema])
    obj = build(cls, data, source=str(path))
    print(f"OK: {path} is a valid {schema} file")
    for key, value in to_dict(obj).items():
        mark = "" if key in data else "   (default)"
        print(f"  {key}: {value!r}{mark}")
    return schema
