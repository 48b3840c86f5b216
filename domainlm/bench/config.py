"""The options of ``domainlm bench`` and ``domainlm bench download``: dataclasses whose fields are the CLI flags and
YAML keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from domainlm.config import opt


@dataclass
class BenchConfig:
    model: str = opt(help="model to evaluate: a run folder from `adapt`, a local folder, a packaged name "
                     "(minilm, smollm2), tiny-* or a Hub id")
    baseline: str | None = opt(None, "the model to compare against (usually the base model adapt started from)")
    suite: str = opt("biomed", "biomed, materials, protein, general; the real suites blurb, matsci, "
                     "protein-fitness (fetched and checked on first use); a folder of task YAMLs, or several "
                     "joined by commas (biomed,general adds the forgetting check); harness:TASKS runs "
                     "lm-evaluation-harness tasks or groups (causal models), after any native suites: "
                     "biomed,harness:pubmedqa,medmcqa")
    tasks: list[str] | None = opt(None, "run only these tasks of the suite (names are the YAML file names)")
    data_root: str | None = opt(None, "resolve task data files under this folder instead of beside the task "
                                "files (e.g. ../shared/realdata with the real datasets). Real suites (blurb, "
                                "matsci, protein-fitness) read a folder laid out like their download cache; "
                                "without it they read (and on first use fill) $DOMAINLM_CACHE/bench")
    override: list[str] = opt(factory=list, sep=None, help="per-task settings, TASK.KEY=VALUE: a split's file "
                              "(ner.test=ncbi/test.tsv; empty removes the split) or any task key "
                              "(ner.labels=Disease); @FILE reads one per line")
    out: str = opt("runs/bench", "output folder: report.json, report.md, comparison.png, manifest.json")
    seeds: int = opt(3, "seeds per fine-tuned task (mean +- std is reported); probes are deterministic")
    mode: Literal["probe", "finetune"] | None = opt(None, "force every supervised task into this mode")
    max_examples: int | None = opt(None, "cap each split at this many records (seeded sample) for quick runs")
    max_train_examples: int | None = opt(None, "budget: cap only the train split at this many records (seeded "
                                         "sample); dev and test stay whole. The report says the protocol was "
                                         "shortened")
    epochs: float | None = opt(None, "budget: fine-tune every task for this many passes over train instead of "
                               "its finetune_epochs/steps (fractions allowed); the report says when this "
                               "shortens a real suite's protocol")
    allow_unpinned: bool = opt(False, "real suites: accept downloaded files whose task YAML pins no sha256 (the "
                               "sha256 of what arrived is recorded in the report)")
    objective: Literal["auto", "causal", "masked", "protein"] = opt(
        "auto", "how to load the models; auto uses what the source or run folder says")
    device: str = opt("auto", "cpu, cuda, cuda:N or auto (cuda when available)")
    bf16: Literal["auto", "on", "off"] = opt("auto", "bf16 autocast for forward passes; auto: on for CUDA with "
                                             "bf16 support and CPUs with native bf16 (AMX/AVX512-BF16), else off")
    threads: int | None = opt(None, "CPU threads for torch (default: torch's own choice, one per core)")
    bootstrap: int = opt(1000, "bootstrap resamples for confidence intervals (0 skips them)")
    harness_include: str | None = opt(None, "folder of extra lm-evaluation-harness task YAMLs (lm-eval's "
                                      "include_path; relative data_files resolve under it), e.g. benchmarks/harness "
                                      "for the offline pubmedqa_local and medmcqa_local")
    num_fewshot: int | None = opt(None, "few-shot examples for harness tasks (default: each task's own setting)")
    harness_batch_size: int = opt(8, "examples per forward pass for harness tasks")
    split: Literal["test", "dev"] = opt("test", "the split scored: test, or dev for choosing settings (merge "
                                        "--select): a task's dev split, else a held-out part of its train split; "
                                        "the test split is never read")
    dev_fraction: float = opt(0.2, "split dev: share of the train split held out where a task has no dev split")

    def problems(self) -> list[str]:
        out = []
        if not self.model:
            out.append("'model' is required: name the model to evaluate")
        if self.seeds < 1:
            out.append(f"'seeds' must be at least 1, got {self.seeds}")
        if self.threads is not None and self.threads < 1:
            out.append(f"'threads' must be at least 1, got {self.threads}")
        if self.bootstrap < 0:
            out.append(f"'bootstrap' must be 0 or more, got {self.bootstrap}")
        if self.max_examples is not None and self.max_examples < 1:
            out.append(f"'max_examples' must be at least 1, got {self.max_examples}")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            out.append(f"'max_train_examples' must be at least 1, got {self.max_train_examples}")
        if self.epochs is not None and self.epochs <= 0:
            out.append(f"'epochs' must be positive, got {self.epochs}")
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            out.append(f"'device' must be auto, cpu, cuda, cuda:N or mps, got {dev!r}")
        if "harness:" not in self.suite and (self.harness_include or self.num_fewshot is not None):
            out.append("'harness_include' and 'num_fewshot' apply to harness tasks only; add harness:TASKS to "
                       "'suite' or drop them")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            out.append(f"'num_fewshot' must be 0 or more, got {self.num_fewshot}")
        if self.harness_batch_size < 1:
            out.append(f"'harness_batch_size' must be at least 1, got {self.harness_batch_size}")
        if not 0 < self.dev_fraction < 1:
            out.append(f"'dev_fraction' must be between 0 and 1, got {self.dev_fraction}")
        if self.split == "dev" and "harness:" in self.suite:
            out.append("'split: dev' scores native tasks only; lm-evaluation-harness tasks are scored on their own split")
        if self.baseline is not None and self.baseline == self.model:
            out.append("'baseline' is the same as 'model'; compare against a different model or drop --baseline")
        return out


@dataclass
class BenchDownloadConfig:
    """Options of ``domainlm bench download``."""

    suite: str = opt(help="a real suite (blurb, matsci, protein-fitness) or a folder of task YAMLs with 'sources'")
    tasks: list[str] | None = opt(None, "fetch only these tasks' files (names are the YAML file names)")
    cache: str | None = opt(None, "folder to download into (default: $DOMAINLM_CACHE/bench, i.e. "
                            "~/.cache/domainlm/bench); laid out like ../shared/realdata, so it works as --data-root")
    allow_unpinned: bool = opt(False, "accept files whose task YAML pins no sha256 (the sha256 of what arrived is "
                               "recorded in downloads.json and in bench reports); without it they are refused")
    retries: int = opt(3, "attempts per file after the first one (transfers resume where they stopped)")
    retry_wait: float = opt(2.0, "seconds before the first retry; doubled each time")
    timeout: float = opt(60.0, "seconds without data before a connection is given up")

    def problems(self) -> list[str]:
        out = []
        if self.retries < 0:
            out.append(f"'retries' cannot be negative, got {self.retries}")
        if self.timeout <= 0:
            out.append(f"'timeout' must be positive, got {self.timeout}")
        return out
