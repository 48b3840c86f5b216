"""Finding and loading task files: one task YAML, a suite folder (shipped or any folder), ``--override``
entries, and every shipped task (tests load each one).

A suite is a folder of task YAMLs (``benchmarks/<suite>/``); each file is checked against :class:`TaskSpec`
(:mod:`.spec`) and every problem of every file is reported at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from domainlm.config import did_you_mean
from domainlm.errors import ConfigError
from domainlm.tasks.spec import TaskSpec

SUITES = ("biomed", "materials", "protein", "general")
# Real suites: each task names the canonical public source of its files (``sources``); `bench download` fetches
# them into the cache and `bench --data-root` reads a folder laid out the same way.
REAL_SUITES = ("blurb", "matsci", "protein-fitness")


def load_task(path: str | Path, overrides: dict[str, Any] | None = None) -> TaskSpec:
    """Read and check one task YAML; ``overrides`` replace keys (``files`` entries are merged)."""
    from domainlm import config as cfgmod

    path = Path(path)
    data = cfgmod.read_yaml(path)
    data.pop("source", None)
    overrides = dict(overrides or {})
    files = overrides.pop("files", None)
    if files:
        merged = dict(data.get("files") or {})
        for split, value in files.items():
            if value in ("", None):
                merged.pop(split, None)  # `task.dev=` removes a split the real data lacks
            else:
                merged[split] = value
        data["files"] = merged
    from_string = {k for k, v in overrides.items() if isinstance(v, str)}
    data.update(overrides)
    data["source"] = str(path)
    return cfgmod.build(TaskSpec, data, source=str(path), from_string=from_string)


def suite_folder(suite: str) -> Path:
    """A shipped suite name or a folder of task YAMLs."""
    from domainlm.resources import benchmarks_dir

    path = Path(suite).expanduser()
    if suite.rstrip("/").endswith("harness") and (path.is_dir() or suite == "harness"):
        raise ConfigError([f"suite '{suite}' holds lm-evaluation-harness task YAMLs, not native tasks; run them with "
                           "--suite harness:TASK[,TASK] --harness-include benchmarks/harness"])
    if path.is_dir():
        return path
    shipped = benchmarks_dir() / suite
    if suite in SUITES + REAL_SUITES or shipped.is_dir():
        return shipped
    known = [p.name for p in sorted(benchmarks_dir().iterdir()) if p.is_dir() and p.name != "harness"]
    raise ConfigError([f"suite '{suite}' is neither a folder nor a shipped suite{did_you_mean(suite, known)}; "
                       f"shipped suites: {', '.join(known)}"])


def task_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.yaml") if not p.name.startswith("."))


def parse_overrides(entries: list[str] | None) -> dict[str, dict[str, Any]]:
    """``["ner.train=path", "ner.labels=Disease", "@file"]`` -> {task: {key: value}}.

    ``@FILE`` reads one override per line (``#`` comments). Split names (train/dev/test) set data
    files; any other key sets a :class:`TaskSpec` field. Every entry is one whole TASK.KEY=VALUE (the
    command line keeps ``--override`` words whole, commas included), so a stray word is an error.
    """
    out: dict[str, dict[str, Any]] = {}
    lines: list[tuple[str, str]] = []
    for entry in entries or []:
        if entry.startswith("@"):
            path = Path(entry[1:]).expanduser()
            if not path.is_file():
                raise ConfigError([f"override file not found: {path}"], "override")
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if line:
                    lines.append((line, f"{path}:{n}"))
        else:
            lines.append((entry, "override"))
    problems = []
    for line, where in lines:
        key, eq, value = line.partition("=")
        task, dot, field = key.strip().partition(".")
        if not eq or not dot or not task or not field:
            problems.append(f"{where}: '{line}' is not TASK.KEY=VALUE (e.g. ner.test=ncbi_disease_conll/test.tsv)")
            continue
        value = value.strip()
        field = field.strip()
        slot = out.setdefault(task, {})
        if field in ("train", "dev", "test"):
            slot.setdefault("files", {})[field] = value
        elif field not in {f.name for f in dataclasses.fields(TaskSpec)}:
            names = [f.name for f in dataclasses.fields(TaskSpec)] + ["train", "dev", "test"]
            problems.append(f"{where}: unknown task key '{field}'{did_you_mean(field, names)}")
        else:
            slot[field] = value
    if problems:
        raise ConfigError(problems, "override")
    return out


def load_suite(suite: str, tasks: list[str] | None = None,
               overrides: dict[str, dict[str, Any]] | None = None) -> list[TaskSpec]:
    """Load the tasks of one or more suites (``biomed`` or ``biomed,general``), all problems at once."""
    specs: list[TaskSpec] = []
    problems: list[str] = []
    for part in [s.strip() for s in suite.split(",") if s.strip()]:
        folder = suite_folder(part)
        paths = task_files(folder)
        if not paths:
            problems.append(f"suite folder {folder} holds no task files (*.yaml)")
        for path in paths:
            try:
                specs.append(load_task(path, (overrides or {}).get(path.stem)))
            except ConfigError as exc:
                problems.extend(f"{path}: {p}" for p in exc.problems)
    names = [s.task_name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"task names appear twice across the suites: {', '.join(dupes)}")
    for task in overrides or {}:
        if task not in names:
            problems.append(f"override names task '{task}', which is not in the suite{did_you_mean(task, names)}; "
                            f"tasks: {', '.join(names)}")
    if tasks:
        for t in tasks:
            if t not in names:
                problems.append(f"--tasks names '{t}', which is not in the suite{did_you_mean(t, names)}; "
                                f"tasks: {', '.join(names)}")
        specs = [s for s in specs if s.task_name in tasks]
    if problems:
        raise ConfigError(problems, suite)
    return specs


def iter_shipped_tasks() -> Iterator[Path]:
    """Every shipped task YAML (tests load and validate each one)."""
    from domainlm.resources import benchmarks_dir

    for suite in SUITES + REAL_SUITES:
        folder = benchmarks_dir() / suite
        if folder.is_dir():
            yield from task_files(folder)
