"""What every mode returns (:class:`ModeResult`), the settings it gets (:class:`RunContext`), and
:func:`finish`, which turns per-seed predictions into metric statistics. A leaf the modes share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from domainlm.tasks.builtin import METRICS
from domainlm.tasks.data import TaskData
from domainlm.tasks.spec import TaskSpec


@dataclass
class RunContext:
    """Settings shared by every task of one bench run."""

    device: str = "cpu"
    bf16: bool = False
    seeds: int = 3
    force_mode: str | None = None
    cache: dict[Any, Any] = field(default_factory=dict)


@dataclass
class ModeResult:
    """One model on one task."""

    mode: str
    rows: list[Any] = field(default_factory=list)  # metric statistics per seed (same examples, same order)
    seed_scores: list[float] = field(default_factory=list)
    extras: dict[str, float] = field(default_factory=dict)
    n_examples: int = 0  # examples processed (train + test ...), for examples/s
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    perplexity: dict[str, float] | None = None
    skipped: str | None = None
    # Label predictions per seed (classification heads), for the predicted-label distribution.
    predictions: list[list[Any]] = field(default_factory=list)
    gold: list[Any] = field(default_factory=list)
    # Multiple choice (zeroshot, harness): each item's log-likelihood per choice, in ``choices`` order.
    choice_scores: list[list[float]] = field(default_factory=list)
    choices: list[str] = field(default_factory=list)
    choice_lengths: list[list[int]] | None = None  # characters per choice per item (acc_norm); default len(choice)
    # finetune with a dev split: per seed {"seed", "dev": [[step, score], ...], "chosen_step"}
    selection: list[dict[str, Any]] = field(default_factory=list)


def finish(spec: TaskSpec, data: TaskData, gold: list[Any], preds: list[list[Any]], result: ModeResult) -> ModeResult:
    """Fill metric statistics, per-seed scores and extras from per-seed predictions."""
    from domainlm.tasks.metrics import Context, extras

    metric = METRICS.get(spec.metric).fn
    mctx = Context(labels=data.labels, negative_label=spec.negative_label)
    for pred in preds:
        result.rows.append(metric.prepare(gold, pred, mctx))
        result.seed_scores.append(float(metric.point(gold, pred, mctx)))
    if spec.head == "sequence":
        result.predictions = [list(p) for p in preds]
        result.gold = list(gold)
    per_seed = [extras(spec.head, gold, pred, mctx) for pred in preds]
    if per_seed and per_seed[0]:
        result.extras = {k: sum(d[k] for d in per_seed) / len(per_seed) for k in per_seed[0]}
    return result
