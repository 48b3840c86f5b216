"""The options of ``domainlm scaling sweep`` and ``domainlm scaling fit``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from domainlm.config import opt
from domainlm.scaling.laws import HUBER_DELTA

SIZE = re.compile(r"^(\d+)x(\d+)$")  # a sweep size: LAYERSxHIDDEN
HEAD_DIM = 16  # the tiny presets' head size (hidden 64, 4 heads); kept fixed so only depth and width vary


@dataclass
class SweepConfig:
    corpus: str = opt("pubmed-sample", "prepared corpus folder, or a corpus card name (prepared once, with the "
                      "family's tokenizer, into OUT/corpus)")
    family: Literal["tiny-llama", "tiny-bert"] = opt("tiny-llama", "model family; every size shares its tokenizer")
    # Defaults sized so the whole grid trains in under 10 minutes on 2 CPU cores (see experiments/SCALING.md).
    sizes: list[str] = opt(help="model sizes as LAYERSxHIDDEN (head size 16, MLP 3x hidden for llama, 4x for bert)",
                           factory=lambda: ["1x32", "2x32", "2x64", "4x64"])
    tokens: list[int] = opt(help="training-token budgets D for every size",
                            factory=lambda: [25_000, 50_000, 100_000, 200_000])
    seq_len: int = opt(128, "tokens per training sequence (the corpus is packed into blocks of this length)")
    batch_size: int = opt(8, "sequences per optimizer step")
    lr: float = opt(3e-3, "peak learning rate for every run; tiny models trained from scratch tolerate ~3e-3 "
                    "(nanoGPT's small-model setting is 1e-3 at 10x the width)")
    warmup_ratio: float = opt(0.05, "fraction of each run's steps spent warming up")
    eval_batches: int = opt(8, "held-out micro-batches per evaluation: the same first blocks of the validation "
                            "split for every run, so losses are comparable")
    seed: int = opt(0, "seed for weights and data order (the same for every run)")
    out: str = opt("runs/scaling", "sweep folder: sweep.csv, the runs, the built models and the prepared corpus")
    time_budget_s: float = opt(540.0, "wall-clock bound: a run predicted to end after it is skipped and marked so in "
                               "the table (540 s leaves room for corpus preparation within 10 minutes)")
    overwrite: bool = opt(False, "retrain runs that already finished (otherwise they are reused)")

    def problems(self) -> list[str]:
        out = []
        for size in self.sizes:
            m = SIZE.match(size)
            if not m:
                out.append(f"'sizes': {size!r} is not LAYERSxHIDDEN (e.g. 2x64)")
            elif int(m.group(1)) < 1 or int(m.group(2)) < HEAD_DIM or int(m.group(2)) % HEAD_DIM:
                out.append(f"'sizes': {size!r} needs at least 1 layer and a hidden size that is a multiple of "
                           f"{HEAD_DIM} (the head size)")
        if len(set(self.sizes)) != len(self.sizes):
            out.append("'sizes' lists a size twice")
        if not self.sizes or not self.tokens:
            out.append("'sizes' and 'tokens' must each list at least one value")
        for tok in self.tokens:
            if tok < self.seq_len * self.batch_size:
                out.append(f"'tokens': {tok} is less than one optimizer step ({self.seq_len}x{self.batch_size} tokens)")
        if len(set(self.tokens)) != len(self.tokens):
            out.append("'tokens' lists a budget twice")
        if self.seq_len < 8:
            out.append(f"'seq_len' must be at least 8, got {self.seq_len}")
        for key in ("batch_size", "eval_batches"):
            if getattr(self, key) < 1:
                out.append(f"'{key}' must be at least 1, got {getattr(self, key)}")
        if self.lr <= 0:
            out.append(f"'lr' must be positive, got {self.lr}")
        if self.time_budget_s <= 0:
            out.append(f"'time_budget_s' must be positive, got {self.time_budget_s}")
        return out


@dataclass
class FitConfig:
    table: str = opt(help="sweep table (CSV written by `domainlm scaling sweep`) or the sweep folder holding it")
    n: float | None = opt(None, "predict the loss of a model with this many parameters (with --d)")
    d: float | None = opt(None, "predict the loss after this many training tokens (with --n)")
    budget: float | None = opt(None, "report the compute-optimal N and D for this many training FLOPs")
    params: Literal["non_embedding", "total"] = opt("non_embedding", "which parameter count is N: Kaplan et al. "
                                                    "2020 found laws cleaner without embeddings; Chinchilla counts all")
    bootstrap: int = opt(200, "bootstrap resamples of the runs for parameter and prediction intervals (0: none)")
    confidence: float = opt(0.95, "coverage of the reported intervals")
    huber_delta: float = opt(HUBER_DELTA, "Huber loss threshold on log-loss residuals (1e-3 as in Hoffmann et al. "
                             "2022); large values give plain least squares")
    out: str | None = opt(None, "folder for fit.json and the plot (default: the table's folder)")
    plot: bool = opt(True, "write a log-log loss-vs-compute PNG with the fitted frontier")
    seed: int = opt(0, "seed of the bootstrap resampling")

    def problems(self) -> list[str]:
        out = []
        if (self.n is None) != (self.d is None):
            out.append("give both --n and --d to predict a loss (or neither)")
        for key in ("n", "d", "budget"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                out.append(f"'{key}' must be positive, got {value}")
        if self.bootstrap < 0:
            out.append(f"'bootstrap' must be 0 or more, got {self.bootstrap}")
        if not 0 < self.confidence < 1:
            out.append(f"'confidence' must be between 0 and 1, got {self.confidence}")
        if self.huber_delta <= 0:
            out.append(f"'huber_delta' must be positive, got {self.huber_delta}")
        return out
