"""The options of ``domainlm merge``: one dataclass, whose fields are the CLI flags and YAML keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from domainlm.config import opt

METHODS = ("linear", "slerp", "ties", "dare")


@dataclass
class MergeConfig:
    model: str = opt(help="the adapted model: a run folder from `adapt` (LoRA runs included) or a model folder "
                     "(e.g. a `publish` output)")
    other: str | None = opt(None, "the model to merge into, of the same architecture (default: the run's base); "
                            "e.g. the instruct model the base came from")
    out: str = opt("runs/merged", "output folder, a run folder that bench, publish and generate take")
    method: Literal["linear", "slerp", "ties", "dare"] = opt(
        "linear", "linear interpolation, SLERP, or task arithmetic with TIES or DARE sparsification (mergekit)")
    weight: float = opt(0.5, "weight on the adapted model: 0 is the other model, 1 the adapted one (SLERP's t)")
    density: float = opt(0.5, "ties/dare: share of the task vector kept (BioMistral used 0.5)")
    seed: int = opt(0, "dare: seed of the random drop")
    overwrite: bool = opt(False, "replace a non-empty --out")
    # --select: the weight chosen by measurement on dev splits
    select: bool = opt(False, "sweep --weights, score each on dev/validation splits only and keep the weight with "
                       "the best domain score whose guard tasks are not significantly worse than the base (Holm)")
    weights: list[float] = opt(factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], help="--select: weights to sweep")
    suite: str = opt("biomed,general", "--select: bench suites whose tasks are scored")
    domain_tasks: list[str] | None = opt(None, "--select: tasks whose gain the merge should keep (default: the "
                                         "domain suite's tasks that are not guards)")
    guard_tasks: list[str] | None = opt(None, "--select: tasks the merge must not lose (default: the general suite "
                                        "plus every zero-shot task of the domain suite)")
    override: list[str] = opt(factory=list, sep=None, help="--select: bench overrides, TASK.KEY=VALUE (e.g. "
                              "ner.dev=PATH)")
    data_root: str | None = opt(None, "--select: resolve task data files under this folder")
    max_examples: int | None = opt(None, "--select: cap each dev split at this many records")
    dev_fraction: float = opt(0.2, "--select: share of a task's train split held out as its dev split when the "
                              "task has none and trains on it (a zero-shot or perplexity task scores its whole train split)")
    test: bool = opt(True, "--select: score the chosen model (and the base) on the test splits once, afterwards")
    test_max_examples: int | None = opt(None, "--select: cap each test split (default: --max-examples)")
    bootstrap: int = opt(1000, "--select: bootstrap resamples for the paired intervals")
    seeds: int = opt(1, "--select: seeds per fine-tuned task")
    threads: int | None = opt(None, "CPU threads for torch")

    def problems(self) -> list[str]:
        out = []
        if not self.model:
            out.append("'model' is required: name the adapted run or model folder")
        if not 0.0 <= self.weight <= 1.0:
            out.append(f"'weight' must be between 0 and 1, got {self.weight}")
        if not 0.0 < self.density <= 1.0:
            out.append(f"'density' must be in (0, 1], got {self.density}")
        if self.select:
            if not self.weights or any(not 0.0 <= w <= 1.0 for w in self.weights):
                out.append(f"'weights' must be a non-empty list of numbers between 0 and 1, got {self.weights}")
            if not 0.0 < self.dev_fraction < 1.0:
                out.append(f"'dev_fraction' must be between 0 and 1, got {self.dev_fraction}")
            if "harness:" in self.suite:
                out.append("'suite': --select scores native tasks only (their dev splits); drop the harness: part")
        for key in ("max_examples", "test_max_examples", "threads"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                out.append(f"'{key}' must be at least 1, got {getattr(self, key)}")
        return out
