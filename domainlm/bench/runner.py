"""The order of a bench run: check everything, then load one model at a time and score every task.

1. Tasks (YAML + overrides) and every data split are read and checked before any weights load, so a
   bad label or path costs seconds, not a model load.
2. Both model arguments are resolved up front (a typo in --baseline is reported at once).
3. The model, then the baseline, is loaded and scored on each task; only one is in memory at a time.
4. The report (paired bootstrap deltas, BLURB-style average, perplexity summary) is written
   atomically to OUT and printed as a table.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any

from domainlm.bench import BenchConfig
from domainlm.bench.data import TaskData, load_data
from domainlm.bench.tasks import TaskSpec, load_suite, parse_overrides
from domainlm.errors import ConfigError

log = logging.getLogger(__name__)


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError([f"'device: {device}' but torch sees no CUDA device here; use --device cpu"])
    return device


def cpu_has_fast_bf16() -> bool:
    """Native bf16 matmuls (AMX or AVX512-BF16); elsewhere bf16 autocast is several times slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pick_bf16(setting: str, device: str) -> bool:
    import torch

    if setting != "auto":
        return setting == "on"
    if device.startswith("cuda"):
        return bool(torch.cuda.is_bf16_supported())
    return device == "cpu" and cpu_has_fast_bf16()


def _check_model_arg(spec: str, flag: str) -> None:
    from domainlm import sources
    from domainlm.bench.loading import is_run_folder
    from domainlm.errors import SourceError

    if is_run_folder(spec):
        return
    try:
        sources.resolve(spec)
    except SourceError as exc:
        raise ConfigError([f"'{flag}': {exc}"]) from None


def _needs_train(spec: TaskSpec, force: str | None) -> bool:
    if spec.head in ("lm",):
        return False
    if spec.head == "contacts" or force in ("probe", "finetune"):
        return True
    return spec.mode in ("probe", "finetune") or spec.fallback_mode in ("probe", "finetune")


def _check_out(out: Path) -> None:
    """Refuse to replace a folder that is not an earlier bench report (atomic_dir swaps the whole folder)."""
    import json

    if not out.exists():
        return
    if out.is_file():
        raise ConfigError([f"'out': {out} is a file; give a folder"])
    entries = [p for p in out.iterdir()]
    if not entries:
        return
    manifest = out / "manifest.json"
    try:
        kind = json.loads(manifest.read_text(encoding="utf-8")).get("kind") if manifest.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        kind = None
    if kind != "bench":
        raise ConfigError([f"'out': {out} exists and is not a bench report folder; the report replaces the whole "
                           "folder, so choose a new or empty --out"])


def load_all(config: BenchConfig) -> tuple[list[TaskSpec], dict[str, TaskData]]:
    """Every task and its checked data (step 1)."""
    overrides = parse_overrides(config.override)
    specs = load_suite(config.suite, config.tasks, overrides)
    data = {}
    for spec in specs:
        data[spec.task_name] = load_data(spec, data_root=config.data_root, max_examples=config.max_examples,
                                         needs_train=_needs_train(spec, config.mode))
        sizes = ", ".join(f"{k} {len(v)}" for k, v in data[spec.task_name].splits.items())
        log.info("task %s: %s (%s)", spec.task_name, sizes, spec.format)
    return specs, data


def warm_imports() -> None:
    """Import the scoring libraries before any timing, so the first task's wall time is its own."""
    import scipy.stats  # noqa: F401
    import seqeval.metrics  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.metrics  # noqa: F401


def run(config: BenchConfig) -> dict[str, Any]:
    from domainlm.bench.loading import load_for_eval
    from domainlm.bench.modes import RunContext, run_task
    from domainlm.bench.report import build_report, print_table, write_report

    start = time.perf_counter()
    out = Path(config.out)
    _check_out(out)
    specs, data = load_all(config)
    models = [("model", config.model)] + ([("baseline", config.baseline)] if config.baseline else [])
    for role, spec in models:
        _check_model_arg(spec, role)
    warm_imports()
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    ctx = RunContext(device=device, bf16=pick_bf16(config.bf16, device), seeds=config.seeds,
                     force_mode=config.mode)
    objective = None if config.objective == "auto" else config.objective
    results: dict[str, dict[str, Any]] = {}
    for role, model_spec in models:
        log.info("loading %s %s", role, model_spec)
        loaded = load_for_eval(model_spec, objective)
        loaded.model.to(device)
        results[role] = {}
        for spec in specs:
            log.info("%s: task %s", role, spec.task_name)
            results[role][spec.task_name] = run_task(loaded, spec, data[spec.task_name], ctx)
            r = results[role][spec.task_name]
            if r.skipped is None:
                log.info("%s: task %s %s = %.4f (%.1f s)", role, spec.task_name, spec.metric,
                         sum(r.seed_scores) / len(r.seed_scores), r.wall_s)
        del loaded
        ctx.cache.clear()
        gc.collect()
    report = build_report(config, specs, data, results, n_boot=config.bootstrap, device=device, bf16=ctx.bf16)
    report["wall_s"] = time.perf_counter() - start
    write_report(out, report, config, specs, data)
    print_table(report)
    return report
