"""How ``domainlm validate`` checks a file: which schema it is read against, and the check itself."""

from __future__ import annotations

from pathlib import Path

from domainlm.cli import _load
from domainlm.config import build, read_yaml, to_dict
from domainlm.errors import ConfigError
from domainlm.resources import recipe_path
from domainlm.validate.config import ValidateConfig

# Which schema a YAML file is checked against. A task file names a `format`; everything else under
# benchmarks/ is a task too; other files are adapt recipes unless they say `schema:`.
SCHEMAS = {
    "adapt": "domainlm.adapt.config:AdaptConfig",
    "prepare": "domainlm.corpora.config:PrepareConfig",
    "task": "domainlm.tasks.spec:TaskSpec",
}


def guess_schema(path: Path, data: dict) -> str:
    if "format" in data and ("metric" in data or "mode" in data):
        return "task"
    if "benchmarks" in path.parts:
        return "task"
    if "inputs" in data and "model" not in data:
        return "prepare"
    return "adapt"


def run(config: ValidateConfig) -> str:
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
