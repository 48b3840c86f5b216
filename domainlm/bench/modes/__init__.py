"""Evaluation modes: how one loaded model is scored on one task.

* ``probe`` (:mod:`.probe`): frozen features + scikit-learn (logistic regression, ridge); also the
  contact regression over attention maps (:mod:`.contacts`).
* ``finetune`` (:mod:`.finetune`): a task head trained with the whole model for a fixed small
  budget, once per seed.
* ``zeroshot`` (:mod:`.zeroshot`): log-likelihood of each answer choice after a prompt (causal LMs).
* ``perplexity`` (:mod:`.lm`): held-out likelihood and masked-token recovery.

Every mode returns a :class:`ModeResult`: per-seed predictions turned into metric statistics, so
the report can bootstrap confidence intervals and pair the model with its baseline.
"""

from __future__ import annotations

import logging
import time

from domainlm.bench.loading import LoadedModel
from domainlm.bench.modes.result import ModeResult, RunContext, finish
from domainlm.tasks.data import TaskData
from domainlm.tasks.spec import TaskSpec

__all__ = ["ModeResult", "RunContext", "effective_mode", "finish", "run_task"]

log = logging.getLogger(__name__)


def effective_mode(spec: TaskSpec, loaded: LoadedModel, force: str | None) -> tuple[str | None, str | None]:
    """(mode, reason skipped) for this model: lm tasks use perplexity, contacts a probe, zero-shot
    falls back for non-causal models, and a forced probe/finetune replaces supervised modes."""
    if spec.head == "lm":
        if spec.metric == "recovery_accuracy" and loaded.is_causal:
            return None, "masked-token recovery needs a masked language model"
        return "perplexity", None
    if spec.head == "contacts":
        return "probe", None
    mode = force if force in ("probe", "finetune") else spec.mode
    if mode == "zeroshot" and not loaded.is_causal:
        if spec.fallback_mode:
            return spec.fallback_mode, None
        return None, "zero-shot answer scoring needs a causal language model (set fallback_mode: probe)"
    return mode, None


def run_task(loaded: LoadedModel, spec: TaskSpec, data: TaskData, ctx: RunContext) -> ModeResult:
    """Score ``loaded`` on one task in its effective mode, timing it."""
    mode, skipped = effective_mode(spec, loaded, ctx.force_mode)
    if mode is None:
        log.warning("task %s skipped for %s: %s", spec.task_name, loaded.spec, skipped)
        return ModeResult(mode="-", skipped=skipped)
    start = time.perf_counter()
    if spec.head == "contacts":
        from domainlm.bench.modes.contacts import run_contacts as fn
    elif mode == "perplexity":
        from domainlm.bench.modes.lm import run_lm as fn
    elif mode == "zeroshot":
        from domainlm.bench.modes.zeroshot import run_zeroshot as fn
    elif mode == "finetune":
        from domainlm.bench.modes.finetune import run_finetune as fn
    else:
        from domainlm.bench.modes.probe import run_probe as fn
    result = fn(loaded, spec, data, ctx)
    result.mode = mode
    result.wall_s = time.perf_counter() - start
    return result
