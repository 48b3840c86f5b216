"""lm-evaluation-harness as a bench backend: the field's common ruler, inside our report.

``--suite harness:pubmedqa,medmcqa`` (task or group names, comma-separated; everything after
``harness:`` is a harness name, native suites go before it: ``biomed,harness:pubmedqa``) runs
lm-eval's ``simple_evaluate`` on the model bench already loaded (an ``HFLM`` wrapped around it, so
run folders and merged LoRA adapters work unchanged), with ``log_samples=True``. Each item's result
becomes a row of our statistics, so harness tasks get the same bootstrap CIs, paired deltas against
``--baseline``, answer-prior numbers (:mod:`domainlm.tasks.priors`) and family-wise verdict as native tasks, in the
same report.

``--harness-include DIR`` adds task YAMLs (lm-eval's ``TaskManager(include_path=...)``); the shipped
``benchmarks/harness/`` reads local files in the PubMedQA and MedMCQA layouts, for offline use. When
every named task is found there, lm-eval's own index of ~10,000 task files is not built at all.

Only causal models are supported: lm-eval scores masked and protein models not at all (its
maintainers, EleutherAI/lm-evaluation-harness#1840); for them a harness suite is refused with a
pointer to the native suites.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainlm.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PREFIX = "harness:"
INSTALL = "pip install 'domainlm[harness]'"


def split_suite(suite: str) -> tuple[str, list[str]]:
    """``"biomed,harness:pubmedqa,medmcqa"`` -> ``("biomed", ["pubmedqa", "medmcqa"])``."""
    if PREFIX not in suite:
        return suite, []
    native, _, rest = suite.partition(PREFIX)
    names = [x.strip() for x in rest.split(",") if x.strip()]
    return native.strip().rstrip(","), names


def _lm_eval():
    """Import lm-eval (optional extra) with datasets kept offline when the Hub is."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        # datasets reads this when it is imported: local json tasks then never try the Hub
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager, get_task_dict
    except ImportError:
        raise ConfigError([f"harness suites need lm-evaluation-harness, which is not installed: {INSTALL}"]) from None
    return lm_eval, TaskManager, get_task_dict


def _in(folder: str | None):
    """Relative ``data_files`` of included YAMLs resolve under the include folder (datasets resolves them
    against the working directory), so a task folder works from anywhere, installed or not."""
    return contextlib.chdir(folder) if folder else contextlib.nullcontext()


@dataclass
class HarnessPlan:
    """The harness tasks of one bench call, checked before any weights load."""

    names: list[str]
    include: str | None
    num_fewshot: int | None
    limit: int | None
    leaves: dict[str, dict[str, Any]] = field(default_factory=dict)  # leaf task -> {group, version, yaml, ...}
    manager: Any = None


def _walk(tasks: dict, group: str | None, out: dict[str, dict[str, Any]], manager) -> None:
    from lm_eval.api.task import Task

    for key, value in tasks.items():
        if isinstance(value, dict):
            name = getattr(key, "group_name", None) or getattr(key, "group", None) or str(key)
            _walk(value, group or name, out, manager)
        elif isinstance(value, Task):
            name = value.config.task
            entry = manager.task_index.get(name)
            meta = value.config.metadata or {}
            out[name] = {"group": group, "version": meta.get("version", getattr(value, "VERSION", None)),
                         "output_type": value.config.output_type,
                         "yaml": str(entry.yaml_path) if entry is not None and entry.yaml_path else None,
                         "metrics": [m["metric"] for m in (value.config.metric_list or [])
                                     if isinstance(m.get("metric"), str)],
                         "aggregations": {m["metric"]: m.get("aggregation", "mean")
                                          for m in (value.config.metric_list or []) if isinstance(m.get("metric"), str)}}


def plan(names: list[str], *, include: str | None = None, num_fewshot: int | None = None,
         limit: int | None = None) -> HarnessPlan:
    """Resolve task and group names (did-you-mean for typos) and load their documents once.

    Raises:
        ConfigError: lm-eval is missing, the include folder does not exist, or a name is unknown.
        DataError: a task's dataset cannot be read (offline and not cached, or a bad local file).
    """
    from domainlm.config import did_you_mean

    _, TaskManager, get_task_dict = _lm_eval()
    if include is not None and not Path(include).expanduser().is_dir():
        raise ConfigError([f"'harness_include': {include} is not a folder of lm-eval task YAMLs"])
    inc = str(Path(include).expanduser().resolve()) if include else None
    if not names:
        raise ConfigError([f"'suite': '{PREFIX}' names no task; give e.g. {PREFIX}pubmedqa"])
    manager = TaskManager(include_path=inc, include_defaults=False) if inc else None
    if manager is None or not all(n in manager.all_tasks for n in names):
        manager = TaskManager(include_path=inc)  # lm-eval's own index: slow (~10k files), so only when needed
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise ConfigError([f"'suite': lm-eval knows no task or group '{n}'{did_you_mean(n, manager.all_tasks)}"
                           + ("" if inc else "; local task YAMLs are added with --harness-include DIR")
                           for n in unknown])
    try:
        with _in(inc):
            tasks = get_task_dict(names, manager)
    except Exception as exc:  # noqa: BLE001 - lm-eval and datasets raise many types for unreadable data
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = "check the task's dataset_path and data_files (relative data_files resolve under the include folder)"
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", ""):
            hint += ("; offline (HF_HUB_OFFLINE=1), lm-eval's own tasks cannot download their data: use local task "
                     "YAMLs such as benchmarks/harness/ with --harness-include")
        raise DataError(f"lm-eval could not load the data of {', '.join(names)}: {first}. Fix: {hint}") from None
    out = HarnessPlan(names, inc, num_fewshot, limit, manager=manager)
    _walk(tasks, None, out.leaves, manager)
    return out


@dataclass
class ItemResults:
    """One model on one harness task, per item (sorted by doc id)."""

    task: str
    metric: str  # lm-eval's per-item metric used as the headline (acc for multiple choice)
    doc_ids: list[int]
    values: list[float]
    gold: list[str] | None = None
    predictions: list[str] | None = None
    choice_scores: list[list[float]] | None = None
    choices: list[str] | None = None
    choice_lengths: list[list[int]] | None = None
    lm_eval_scores: dict[str, float] = field(default_factory=dict)
    note: str | None = None


def _num(x: Any) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _items(task: str, samples: list[dict[str, Any]], meta: dict[str, Any], results: dict[str, Any]) -> ItemResults:
    samples = sorted(samples, key=lambda s: int(s["doc_id"]))
    lm_scores = {k.split(",")[0]: float(v) for k, v in results.items()
                 if "," in k and "_stderr" not in k and _num(v) is not None}
    if meta["output_type"] == "multiple_choice":
        scores, golds, preds, lengths, labels_per_item = [], [], [], [], []
        for s in samples:
            conts = [a[1] for a in s["arguments"]]
            labels = [c.strip() for c in conts]
            ll = [float(r[0]) for r in s["filtered_resps"]]
            target = s["target"]
            gold = labels[target] if isinstance(target, int) and 0 <= target < len(labels) else str(target).strip()
            if isinstance(target, list):  # several correct answers: lm-eval counts any of them
                gold = labels[target[0]]
            scores.append(ll)
            golds.append(gold)
            preds.append(labels[max(range(len(ll)), key=ll.__getitem__)])
            lengths.append([len(c) for c in labels])  # lm-eval's acc_norm: characters of the choice itself
            labels_per_item.append(labels)
        same = all(lab == labels_per_item[0] for lab in labels_per_item)
        if not same:  # per-item choice texts (HellaSwag style): report positions, not texts
            golds = [f"choice {lab.index(g)}" if g in lab else g for g, lab in zip(golds, labels_per_item, strict=True)]
            preds = [f"choice {lab.index(p)}" for p, lab in zip(preds, labels_per_item, strict=True)]
        choices = labels_per_item[0] if same else [f"choice {j}" for j in range(len(labels_per_item[0]))]
        return ItemResults(task, "acc", [int(s["doc_id"]) for s in samples], [float(s["acc"]) for s in samples],
                           golds, preds, scores, choices, lengths, lm_scores)
    # Other output types: the first per-item metric that lm-eval averages (exact_match, acc, ...)
    for metric in meta["metrics"]:
        if meta["aggregations"].get(metric) == "mean" and all(_num(s.get(metric)) is not None for s in samples):
            return ItemResults(task, metric, [int(s["doc_id"]) for s in samples],
                               [float(s[metric]) for s in samples], lm_eval_scores=lm_scores)
    return ItemResults(task, meta["metrics"][0] if meta["metrics"] else "?", [], [], lm_eval_scores=lm_scores,
                       note=f"lm-eval aggregates this task's metrics ({', '.join(meta['metrics'])}) other than by "
                            "a mean over items, so no per-item interval is computed; see lm_eval_scores")


def evaluate(p: HarnessPlan, model: Any, tokenizer: Any, *, batch_size: int = 8, seed: int = 0,
             max_length: int | None = None) -> dict[str, ItemResults]:
    """Run lm-eval's ``simple_evaluate`` on an already loaded causal model; per-item results per leaf task."""
    lm_eval, _, _ = _lm_eval()
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    with _in(p.include):
        out = lm_eval.simple_evaluate(model=lm, tasks=list(p.names), task_manager=p.manager, num_fewshot=p.num_fewshot,
                                      limit=p.limit, log_samples=True, bootstrap_iters=0, random_seed=seed,
                                      numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                                      verbosity="WARNING")
    res: dict[str, ItemResults] = {}
    for task, meta in p.leaves.items():
        samples = out["samples"].get(task)
        if samples is None:
            raise DataError(f"lm-eval returned no samples for task {task}")
        res[task] = _items(task, samples, meta, out["results"].get(task, {}))
        meta["lm_eval_version"] = getattr(lm_eval, "__version__", None)
        meta["n_shot"] = (out.get("n-shot") or {}).get(task)
    return res


def task_spec(p: HarnessPlan, task: str, items: ItemResults):
    """The report's view of a harness task: a :class:`TaskSpec` (not read from YAML) and its test items."""
    from domainlm.tasks.data import TaskData
    from domainlm.tasks.readers.base import Example
    from domainlm.tasks.spec import TaskSpec

    meta = p.leaves[task]
    version = meta.get("version")
    try:
        version = max(1, int(float(version)))
    except (TypeError, ValueError):
        version = 1
    spec = TaskSpec(version=version, format="harness", metric="accuracy" if items.metric == "acc" else "item_mean",
                    head="sequence", mode="zeroshot", name=task, family=meta.get("group") or task,
                    description=f"lm-evaluation-harness task {task} ({meta['output_type']}, per-item {items.metric})",
                    source=meta.get("yaml"))
    gold = items.gold or [None] * len(items.doc_ids)
    examples = [Example(str(d), f"lm-eval {task} doc {d}", label=g) for d, g in zip(items.doc_ids, gold, strict=True)]
    files = {"test": meta["yaml"]} if meta.get("yaml") else {}
    notes = [f"lm-evaluation-harness {meta.get('lm_eval_version')}, task version {meta.get('version')}, "
             f"{meta.get('n_shot') if meta.get('n_shot') is not None else p.num_fewshot or 0}-shot, per-item "
             f"'{items.metric}'"]
    if items.note:
        notes.append(items.note)
    return spec, TaskData({"test": examples}, items.choices, files, notes)


def mode_result(items: ItemResults):
    """Per-item harness results as a :class:`~domainlm.bench.modes.ModeResult` (rows = per-item values)."""
    import numpy as np

    from domainlm.bench.modes.result import ModeResult

    r = ModeResult(mode="harness")
    r.extras = {f"lm_eval_{k}": v for k, v in items.lm_eval_scores.items()}
    if not items.values:
        r.skipped = items.note
        return r
    r.rows = [np.asarray(items.values, dtype=np.float64).reshape(-1, 1)]
    r.seed_scores = [float(np.mean(items.values))]
    r.n_examples = len(items.values)
    if items.predictions is not None:
        r.predictions, r.gold = [items.predictions], list(items.gold or [])
        r.choice_scores, r.choices, r.choice_lengths = items.choice_scores, items.choices, items.choice_lengths
    return r
