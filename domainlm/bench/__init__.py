"""``domainlm bench``: evaluate a model, and optionally its base, on a domain task suite.

Suites are folders of task YAMLs (``benchmarks/<suite>/``; see :mod:`domainlm.tasks`), and
``harness:TASKS`` runs lm-evaluation-harness tasks on the same loaded model (:mod:`.harness`).
Each task is read (:mod:`domainlm.tasks.data`), scored in its mode (:mod:`.modes`: frozen-feature
probe, fixed-budget fine-tuning over seeds, zero-shot answer log-likelihood, perplexity, contacts
from attention), and reported with bootstrap confidence intervals and a paired delta against the
baseline (:mod:`domainlm.tasks.metrics`, :mod:`.report`).

Output folder ``OUT/`` (written atomically; a crash leaves no half report):

* ``report.json`` -- the stable contract that ``quickstart`` and ``publish`` read::

    {"model": str, "baseline": str | null, "suite": str,
     "tasks": [{"name", "family", "metric", "higher_is_better", "head", "version", "mode",
                "model": {"score", "ci": [lo, hi], "seeds": [per-seed scores], "std", "extras": {...},
                          "mode", "wall_s", "examples_per_s", "notes": [...], "skipped": str | null},
                "baseline": {same keys} | null,
                "delta": model - baseline | null, "delta_ci": [lo, hi] | null, "p_value": float | null,
                "verdict": "better" | "worse" | "within noise" | "-", "backend": "domainlm" | "lm-evaluation-harness",
                "wall_s", "examples_per_s", "n_test", "files": {split: path}, "notes": [...],
                "skipped_records": {split: {"counts": {reason: n}, "examples": {reason: [...]}}} | null,
                # classification tasks: answer priors (see domainlm.tasks.priors)
                "gold_distribution": {label: n}, "calibrated": {"model", "baseline", "delta", "delta_ci"} | null,
                # real suites (tasks with `sources`): each data file's provenance and the published number
                "data_files": [{"path", "file", "sha256", "pinned": sha256 | null, "url", "license", "files"}] | null,
                "protocol": str | null, "protocol_shortened": [reason, ...], "reference": {"model", "score", "source"}
                | null}],
     # each side also has "priors": {"predicted": {label: n}, "macro_f1", "acc_norm", "acc_calibrated"} | null
     # and, in finetune mode with a dev split, "selection": [{"seed", "dev": [[step, score]], "chosen_step"}]
     "aggregate": {"blurb_style_macro": {"model", "baseline", "delta",
                                         "families": {family: {"model", "baseline"}}},
                   "family_wise": {"method": "holm", "alpha", "tasks_compared", "verdicts": {task: verdict},
                                   "better": [...], "worse": [...]} | null,  # > 3 tasks compared (real suites: >= 2)
                   "real_suite": {"suite_tasks", "run", "not_run", "reference_model", "reference_source",
                                  "model_macro", "reference_macro"} | null},  # macros over the same tasks run
     "protocol": {"shortened": bool, "tasks": {task: [reason, ...]}},  # --epochs, --max-train-examples, seeds
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

from typing import Any

from domainlm.bench.config import BenchConfig, BenchDownloadConfig
from domainlm.config import as_config


def bench(config: BenchConfig | str | None = None, **overrides: Any) -> dict[str, Any]:
    """Evaluate a model (and optionally its baseline) on a domain task suite and write a comparison.

    Prints a table of every task (score with 95% bootstrap CI, the baseline, the paired delta, wall
    time and examples/s) and writes OUT/report.json, report.md, comparison.png and manifest.json.
    Tasks are YAML files in benchmarks/<suite>/; --data-root and --override point them at other data
    (e.g. the real datasets). Returns the report as a dict.
    """
    from domainlm.bench.run import run

    return run(as_config(BenchConfig, config, overrides))


def download(config: BenchDownloadConfig | str | None = None, **overrides: Any) -> dict[str, Any]:
    """Download a real suite's data files (blurb, matsci, protein-fitness) into the cache, checking each sha256.

    Transfers resume after a cut connection; files already in the cache are checked and reused. A file whose
    task YAML pins no sha256 is refused unless --allow-unpinned. Offline (HF_HUB_OFFLINE=1), a wrong
    checksum or an unreachable source: one line per file naming it, its URL and the fix. Tasks marked
    `ready: false` (data behind a login, no reader yet) are listed with what to place by hand.
    Returns (and writes to CACHE/downloads.json) the files with their sha256.
    """
    from domainlm.bench.run_download import run

    return run(as_config(BenchDownloadConfig, config, overrides))


__all__ = ["BenchConfig", "BenchDownloadConfig", "bench", "download"]
