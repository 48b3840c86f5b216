"""``domainlm bench``: evaluate a model, and optionally its base, on a domain task suite.

Suites are folders of task YAMLs (``benchmarks/<suite>/``; see :mod:`domainlm.bench.tasks`).
Each task is read (:mod:`.readers`, :mod:`.data`), scored in its mode (:mod:`.modes`: frozen-feature
probe, fixed-budget fine-tuning over seeds, zero-shot answer log-likelihood, perplexity, contacts
from attention), and reported with bootstrap confidence intervals and a paired delta against the
baseline (:mod:`.metrics`, :mod:`.report`).

Output folder ``OUT/`` (written atomically; a crash leaves no half report):

* ``report.json`` -- the stable contract that ``quickstart`` and ``publish`` read::

    {"model": str, "baseline": str | null, "suite": str,
     "tasks": [{"name", "family", "metric", "higher_is_better", "head", "version", "mode",
                "model": {"score", "ci": [lo, hi], "seeds": [per-seed scores], "std", "extras": {...},
                          "mode", "wall_s", "examples_per_s", "notes": [...], "skipped": str | null},
                "baseline": {same keys} | null,
                "delta": model - baseline | null, "delta_ci": [lo, hi] | null,
                "wall_s", "examples_per_s", "n_test", "files": {split: path}, "notes": [...]}],
     "aggregate": {"blurb_style_macro": {"model", "baseline", "delta",
                                         "families": {family: {"model", "baseline"}}}},
     "perplexity": {"domain" | "general": {"task", "model": {"per_token", "per_char", "per_word",
                    "bits_per_char", "tokens", "chars", "words", "method", ...}, "baseline": {...} | null}},
     "config": {...}, "wall_s": float, "created": iso time}

  Scores are fractions (F1 0-1), correlations, or perplexities (``higher_is_better: false``).
  ``ci`` is the 95% percentile bootstrap over test examples of the seed-averaged score; ``delta_ci``
  is paired (model and baseline scored on the same resamples). Perplexity tasks are left out of the
  BLURB-style macro average (the mean over families of the mean task score per family).
* ``report.md`` -- the same as a Markdown table; ``comparison.png`` -- bars with CIs;
  ``manifest.json`` -- kind "bench": config, input file hashes, counts, versions, wall time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from domainlm.config import as_config, opt


@dataclass
class BenchConfig:
    model: str = opt(help="model to evaluate: a run folder from `adapt`, a local folder, a packaged name "
                     "(minilm, smollm2), tiny-* or a Hub id")
    baseline: str | None = opt(None, "the model to compare against (usually the base model adapt started from)")
    suite: str = opt("biomed", "biomed, materials, protein, general, a folder of task YAMLs, or several "
                     "joined by commas (biomed,general adds the forgetting check)")
    tasks: list[str] | None = opt(None, "run only these tasks of the suite (names are the YAML file names)")
    data_root: str | None = opt(None, "resolve task data files under this folder instead of beside the task "
                                "files (e.g. ../shared/realdata with the real datasets)")
    override: list[str] = opt(factory=list, help="per-task settings, TASK.KEY=VALUE: a split's file "
                              "(ner.test=ncbi/test.tsv; empty removes the split) or any task key "
                              "(ner.labels=Disease); @FILE reads one per line")
    out: str = opt("runs/bench", "output folder: report.json, report.md, comparison.png, manifest.json")
    seeds: int = opt(3, "seeds per fine-tuned task (mean +- std is reported); probes are deterministic")
    mode: Literal["probe", "finetune"] | None = opt(None, "force every supervised task into this mode")
    max_examples: int | None = opt(None, "cap each split at this many records (seeded sample) for quick runs")
    objective: Literal["auto", "causal", "masked", "protein"] = opt(
        "auto", "how to load the models; auto uses what the source or run folder says")
    device: str = opt("auto", "cpu, cuda, cuda:N or auto (cuda when available)")
    bf16: Literal["auto", "on", "off"] = opt("auto", "bf16 autocast for forward passes; auto: on for CUDA with "
                                             "bf16 support and CPUs with native bf16 (AMX/AVX512-BF16), else off")
    threads: int | None = opt(None, "CPU threads for torch (default: torch's own choice, one per core)")
    bootstrap: int = opt(1000, "bootstrap resamples for confidence intervals (0 skips them)")

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
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            out.append(f"'device' must be auto, cpu, cuda, cuda:N or mps, got {dev!r}")
        if self.baseline is not None and self.baseline == self.model:
            out.append("'baseline' is the same as 'model'; compare against a different model or drop --baseline")
        return out


def bench(config: BenchConfig | str | None = None, **overrides: Any) -> dict[str, Any]:
    """Evaluate a model (and optionally its baseline) on a domain task suite and write a comparison.

    Prints a table of every task (score with 95% bootstrap CI, the baseline, the paired delta, wall
    time and examples/s) and writes OUT/report.json, report.md, comparison.png and manifest.json.
    Tasks are YAML files in benchmarks/<suite>/; --data-root and --override point them at other data
    (e.g. the real datasets). Returns the report as a dict.
    """
    from domainlm.bench.runner import run

    return run(as_config(BenchConfig, config, overrides))


__all__ = ["BenchConfig", "bench"]
