"""The order of a bench run: check everything, then load one model at a time and score every task.

1. Tasks (YAML + overrides) and every data split are read and checked before any weights load, so a
   bad label or path costs seconds, not a model load.
2. Both model arguments are resolved up front (a typo in --baseline is reported at once).
3. The model, then the baseline, is loaded and scored on each task; only one is in memory at a time.
4. The report (paired bootstrap deltas, BLURB-style average, perplexity summary) is written
   atomically to OUT and printed as a table.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from domainlm.artifacts import peek_manifest, read_manifest
from domainlm.bench.config import BenchConfig
from domainlm.device import pick_device
from domainlm.errors import ConfigError
from domainlm.tasks.data import TaskData, load_data
from domainlm.tasks.spec import TaskSpec
from domainlm.tasks.suites import load_suite, parse_overrides

log = logging.getLogger(__name__)


def pick_bf16(setting: str, device: str) -> bool:
    from domainlm.device import use_bf16  # the one bf16 decision (adapt and compute use it too)

    return use_bf16(setting, device)


def _check_model_arg(spec: str, flag: str) -> None:
    from domainlm.bench.loading import is_run_folder
    from domainlm.errors import SourceError
    from domainlm.sources.resolution import resolve

    if is_run_folder(spec):
        return
    try:
        resolve(spec)
    except SourceError as exc:
        raise ConfigError([f"'{flag}': {exc}"]) from None


def _needs_train(spec: TaskSpec, force: str | None, causal: bool | None = None) -> bool:
    """Whether scoring ``spec`` trains on its train split. ``causal`` (when the caller knows the model kind)
    settles a zero-shot task with a training fallback: a causal model runs the zero-shot mode and trains on
    nothing."""
    if spec.head in ("lm",):
        return False
    if spec.head == "contacts" or force in ("probe", "finetune"):
        return True
    if causal and spec.mode == "zeroshot":
        return False
    return spec.mode in ("probe", "finetune") or spec.fallback_mode in ("probe", "finetune")


def _check_out(out: Path) -> None:
    """Refuse to replace a folder that is not an earlier bench report (atomic_dir swaps the whole folder)."""
    if not out.exists():
        return
    if out.is_file():
        raise ConfigError([f"'out': {out} is a file; give a folder"])
    entries = [p for p in out.iterdir()]
    if not entries:
        return
    if peek_manifest(out).get("kind") != "bench":
        raise ConfigError([f"'out': {out} exists and is not a bench report folder; the report replaces the whole "
                           "folder, so choose a new or empty --out"])


def load_all(config: BenchConfig, causal: bool | None = None) -> tuple[list[TaskSpec], dict[str, TaskData]]:
    """Every native task and its checked data (step 1); harness tasks are checked by :func:`plan_harness`.
    ``causal``: the models' kind where the caller knows it (merge --select), so a zero-shot task's dev split
    can be its whole train split (see :func:`domainlm.tasks.data.load_data`)."""
    from domainlm.bench.harness import split_suite

    overrides = parse_overrides(config.override)
    native, _ = split_suite(config.suite)
    if not native and (config.tasks or overrides):
        raise ConfigError(["'tasks' and 'override' select native tasks, but 'suite' names only harness tasks"])
    specs = load_suite(native, config.tasks, overrides) if native else []
    if any(s.sources for s in specs):
        from domainlm.bench.run_download import prepare_real

        specs, roots = prepare_real(specs, data_root=config.data_root, tasks=config.tasks,
                                    allow_unpinned=config.allow_unpinned, suite=native)
    else:
        roots = {}
    data = {}
    for spec in specs:
        epochs_before = spec.finetune_epochs
        if config.epochs is not None:
            spec.finetune_epochs = config.epochs
        data[spec.task_name] = load_data(spec, data_root=roots.get(spec.task_name, config.data_root),
                                         max_examples=config.max_examples,
                                         needs_train=_needs_train(spec, config.mode, causal), split=config.split,
                                         dev_fraction=config.dev_fraction,
                                         max_train_examples=config.max_train_examples)
        data[spec.task_name].shortened = shortened_protocol(spec, config, epochs_before, data[spec.task_name])
        if spec.sources:
            from domainlm.bench.run_download import verify

            data[spec.task_name].sources = verify(spec, Path(roots[spec.task_name]))
        sizes = ", ".join(f"{k} {len(v)}" for k, v in data[spec.task_name].splits.items())
        log.info("task %s: %s (%s)", spec.task_name, sizes, spec.format)
    return specs, data


def shortened_protocol(spec: TaskSpec, config: BenchConfig, epochs_before: float | None, td: TaskData) -> list[str]:
    """How this run departs from a real-suite task's protocol (budget flags, fewer seeds), in words; [] when it
    does not, or when the task states no protocol (then an --epochs change is a plain note)."""
    if not spec.protocol:
        if config.epochs is not None and config.epochs != epochs_before:
            td.notes.append(f"fine-tuned for {config.epochs:g} epoch(s) (--epochs)")
        return []
    out = []
    mode = config.mode or spec.mode
    finetuned = mode == "finetune" or (mode == "zeroshot" and spec.fallback_mode == "finetune")
    if config.epochs is not None and finetuned and config.epochs != epochs_before:
        was = f"{epochs_before:g} epoch(s)" if epochs_before is not None else f"{spec.finetune_steps} steps"
        out.append(f"fine-tuned for {config.epochs:g} epoch(s) instead of the task's {was} (--epochs)")
    out += [n for n in td.notes if n.endswith("(--max-train-examples)")]
    if config.max_examples is not None:
        out.append(f"every split capped at {config.max_examples} records, the test split too (--max-examples): "
                   "scores are not comparable with published ones")
    if spec.protocol_seeds and finetuned and config.seeds < spec.protocol_seeds:
        out.append(f"{config.seeds} seed(s) instead of the protocol's {spec.protocol_seeds} (--seeds)")
    if config.mode is not None and config.mode != spec.mode and spec.protocol:
        out.append(f"mode forced to {config.mode} (--mode); the protocol uses {spec.mode}")
    return out


def _model_kind(spec: str, objective: str | None) -> str | None:
    """causal / masked / protein as far as it is known before loading (run folders: their manifest)."""
    from domainlm.bench.loading import is_run_folder
    from domainlm.sources.resolution import resolve

    if objective:
        return objective
    if is_run_folder(spec):
        manifest = read_manifest(Path(spec).expanduser(), "run", require_complete=False)
        kind = (manifest.get("config") or {}).get("objective")
        return kind if kind in ("causal", "masked", "protein") else None
    return resolve(spec).kind


def _not_causal(spec: str, kind: str) -> ConfigError:
    return ConfigError([f"'suite': harness tasks score causal language models; {spec} is a {kind} model, which "
                        "lm-evaluation-harness does not support (EleutherAI/lm-evaluation-harness#1840). Use the "
                        "native suites (biomed, materials, protein), which probe or fine-tune any model"])


def plan_harness(config: BenchConfig, models: list[tuple[str, str]], objective: str | None):
    """Check harness tasks (names, data, model kinds) before any weights load; None without harness tasks."""
    from domainlm.bench.harness import plan, split_suite

    _, names = split_suite(config.suite)
    if not names:
        return None
    for _, spec in models:
        kind = _model_kind(spec, objective)
        if kind not in (None, "causal"):
            raise _not_causal(spec, kind)
    return plan(names, include=config.harness_include, num_fewshot=config.num_fewshot, limit=config.max_examples)


def run_harness(hplan, loaded, config: BenchConfig, specs: list[TaskSpec], data: dict[str, TaskData],
                role: str) -> dict[str, Any]:
    """lm-eval on the loaded model; the first model's items define each harness task's spec and test set."""
    from domainlm.bench import harness

    if not loaded.is_causal:
        raise _not_causal(loaded.spec, loaded.kind)
    start = time.perf_counter()
    items = harness.evaluate(hplan, loaded.model, loaded.tokenizer, batch_size=config.harness_batch_size)
    wall = time.perf_counter() - start
    total = sum(max(1, len(it.values)) for it in items.values())
    out = {}
    for task, it in items.items():
        name = f"{harness.PREFIX}{task}"
        if name not in data:
            spec, td = harness.task_spec(hplan, task, it)
            spec.name = name
            specs.append(spec)
            data[name] = td
        elif [ex.id for ex in data[name].test] != [str(d) for d in it.doc_ids]:
            raise ConfigError([f"harness task {task} scored other items for the {role} than for the model"])
        result = harness.mode_result(it)
        result.wall_s = wall * max(1, len(it.values)) / total  # one lm-eval call for all tasks: shared by items
        result.notes.append(f"lm-eval ran all harness tasks in {wall:.1f} s; wall time split by items")
        out[name] = result
    return out


def warm_imports() -> None:
    """Import the scoring libraries before any timing, so the first task's wall time is its own."""
    import scipy.stats  # noqa: F401
    import seqeval.metrics  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.metrics  # noqa: F401


@contextlib.contextmanager
def _task_progress(loaded: Any, desc: str, **tqdm_kwargs: Any) -> Iterator[Any]:
    """A bar per task counting the model's forward passes (batches), whatever the mode (probe, fine-tune,
    zero-shot, perplexity): a hook on the transformer body, which every mode calls once per batch. Hidden when
    DOMAINLM_PROGRESS=0 (as adapt's bar) or when stderr is not a terminal (tqdm's disable=None)."""
    from tqdm.auto import tqdm

    from domainlm.bench.features import body

    off = os.environ.get("DOMAINLM_PROGRESS", "1") == "0"
    kwargs = {"unit": "batch", "leave": False, "dynamic_ncols": True, "disable": True if off else None, **tqdm_kwargs}
    bar = tqdm(desc=desc, **kwargs)
    handle = body(loaded.model).register_forward_hook(lambda *_: bar.update(1))
    try:
        yield bar
    finally:
        handle.remove()
        bar.close()


def score_model(model_spec: str, specs: list[TaskSpec], data: dict[str, TaskData], ctx, objective: str | None,
                *, role: str = "model", harness=None) -> dict[str, Any]:
    """Load one model, score it on every native task (features cached per model in ``ctx``), free it.

    ``merge --select`` calls this once per swept weight, on data loaded once with ``split: dev``.
    """
    from domainlm.bench.loading import load_for_eval
    from domainlm.bench.modes import run_task

    log.info("loading %s %s", role, model_spec)
    loaded = load_for_eval(model_spec, objective)
    loaded.model.to(ctx.device)
    results = {}
    for spec in [s for s in specs if s.format != "harness"]:
        log.info("%s: task %s", role, spec.task_name)
        with _task_progress(loaded, f"{role}: {spec.task_name}"):
            results[spec.task_name] = r = run_task(loaded, spec, data[spec.task_name], ctx)
        if r.skipped is None:
            log.info("%s: task %s %s = %.4f (%.1f s)", role, spec.task_name, spec.metric,
                     sum(r.seed_scores) / len(r.seed_scores), r.wall_s)
    if harness is not None:
        results.update(harness(loaded))
    del loaded
    ctx.cache.clear()
    gc.collect()
    return results


def run(config: BenchConfig) -> dict[str, Any]:
    from domainlm.bench.modes import RunContext
    from domainlm.bench.report import build_report, print_table, write_report

    start = time.perf_counter()
    out = Path(config.out)
    _check_out(out)
    specs, data = load_all(config)
    models = [("model", config.model)] + ([("baseline", config.baseline)] if config.baseline else [])
    for role, spec in models:
        _check_model_arg(spec, role)
    objective = None if config.objective == "auto" else config.objective
    hplan = plan_harness(config, models, objective)
    warm_imports()
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    ctx = RunContext(device=device, bf16=pick_bf16(config.bf16, device), seeds=config.seeds,
                     force_mode=config.mode)
    results: dict[str, dict[str, Any]] = {}
    for role, model_spec in models:
        harness = (lambda loaded, role=role: run_harness(hplan, loaded, config, specs, data, role)) \
            if hplan is not None else None
        results[role] = score_model(model_spec, specs, data, ctx, objective, role=role, harness=harness)
    report = build_report(config, specs, data, results, n_boot=config.bootstrap, device=device, bf16=ctx.bf16)
    report["wall_s"] = time.perf_counter() - start
    write_report(out, report, config, specs, data)
    print_table(report)
    return report
