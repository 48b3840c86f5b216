"""``domainlm quickstart``: the whole job end to end on a shipped sample, by chaining the real verbs.

prepare (corpus card) -> adapt (a real base model) -> bench (base vs adapted, domain tasks plus
held-out domain and general perplexity) -> [merge --select] -> publish (verified checkpoint + model card) -> summary.
What each stage gets is the domain's YAML (``quickstart/<domain>.yaml``: a shipped recipe and the keys the quickstart
changes in it) with the command's options on top (:func:`plan_stages`). Each stage writes its usual folder under OUT;
a re-run reuses the stages that finished.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainlm.config import as_config, build, load, recipe_values
from domainlm.errors import ConfigError
from domainlm.quickstart.config import QuickstartConfig, QuickstartDomain, shipped_domains

log = logging.getLogger(__name__)

# Adapt keys the quickstart sets itself (the prepared corpus, the run folder, resuming an interrupted run); the
# recipe's `corpus` and `block_size` go to prepare instead.
_ADAPT_OWN = ("corpus", "out", "resume", "block_size")
# merge --select keys the quickstart sets itself from its run folders and options.
_MERGE_OWN = ("model", "out", "select", "test", "overwrite", "suite", "seeds", "test_max_examples")
# What a quickstart leaves in OUT before anything else: prepare's work folder, then the corpus, last the summary.
# `--fresh` deletes OUT only when one of these is there (artifacts.why_not_replace).
_MARKERS = ("summary.json", "corpus/manifest.json", "corpus/.work/config.json")


@dataclass
class QuickstartPlan:
    """What each stage of one quickstart gets."""

    corpus: str  # the corpus card prepare reads (the recipe's `corpus`)
    model: str  # the base model, for prepare's tokenizer, adapt and bench's baseline
    block_size: int  # tokens per block of the prepared corpus
    adapt: dict[str, Any]  # adapt's keywords besides corpus, out and resume
    suite: str  # bench suites (and merge --select's)
    max_examples: int | None  # cap on each bench split (and merge's test splits)
    merge: dict[str, Any] | None  # merge --select's keywords besides the ones the quickstart sets; None: no merge


def plan_stages(cfg: QuickstartConfig) -> QuickstartPlan:
    """The domain's YAML over its recipe (the loader ``adapt RECIPE`` uses), with the command's options on top;
    every problem of the recipe, the YAML or the options is reported at once, before any stage runs."""
    path = shipped_domains()[cfg.domain]
    domain = load(QuickstartDomain, path)
    values, recipe = recipe_values(domain.recipe, domain.adapt)
    if cfg.model:
        values["model"] = cfg.model
    if cfg.max_steps:
        values.update(max_steps=cfg.max_steps, eval_every=max(1, cfg.max_steps // 2),
                      save_every=max(1, cfg.max_steps // 2))
    from domainlm.adapt.config import AdaptConfig

    problems = [f"adapt: '{k}' is set by the quickstart itself; drop it" for k in ("out", "resume") if k in domain.adapt]
    try:
        adapt_cfg = build(AdaptConfig, values)
    except ConfigError as exc:  # named by the recipe they are checked over: a key may come from either file
        adapt_cfg = None
        problems += [f"adapt (over {recipe}): {p}" for p in exc.problems]
    if adapt_cfg is not None and adapt_cfg.block_size is None:
        problems.append(f"adapt (over {recipe}): set block_size in either file (the quickstart prepares the corpus)")
    merge = dict(domain.merge) if domain.merge is not None and cfg.merge else None
    if merge is not None:
        from domainlm.merge.config import MergeConfig

        problems += [f"'merge': '{k}' is set by the quickstart itself; drop it" for k in merge if k in _MERGE_OWN]
        try:
            build(MergeConfig, {**merge, "model": "OUT/run", "select": True})  # the run folder comes at run time
        except ConfigError as exc:
            problems += [f"'merge': {p}" for p in exc.problems]
    if problems:
        raise ConfigError(problems, str(path))
    return QuickstartPlan(corpus=adapt_cfg.corpus, model=adapt_cfg.model, block_size=adapt_cfg.block_size,
                          adapt={k: v for k, v in values.items() if k not in _ADAPT_OWN}, suite=domain.suite,
                          max_examples=cfg.max_examples or domain.max_examples, merge=merge)


def start_fresh(out: Path, inputs: tuple[str | None, ...] = ()) -> None:
    """``--fresh``: delete OUT, under the one rule of every verb that replaces a folder (``artifacts.why_not_replace``):
    only a folder a quickstart wrote, never the working directory or a folder holding an input (a local --model)."""
    from domainlm.artifacts import why_not_replace

    if refused := why_not_replace(out, (), inputs=inputs, markers=_MARKERS):
        raise ConfigError([f"'out': {refused}"])
    if out.exists():
        shutil.rmtree(out)


def _done(folder: Path) -> bool:
    try:
        from domainlm.artifacts import read_manifest

        read_manifest(folder)
        return True
    except Exception:  # noqa: BLE001 - any unreadable manifest means "not finished"
        return False


PATH_FACTS = ("model card", "loss curve", "comparison chart", "published model", "merge selection", "pareto chart")


def run(config: QuickstartConfig | None = None, **overrides: Any) -> dict[str, Any]:
    """The quickstart's stages in order (see :func:`domainlm.quickstart.quickstart`); returns summary.json's dict."""
    from tqdm.auto import tqdm

    from domainlm.artifacts import read_manifest
    from domainlm.quickstart.summary import add_merged, merge_line, render_summary, summary_rows

    cfg = as_config(QuickstartConfig, config, overrides)
    plan = plan_stages(cfg)
    out = Path(cfg.out)
    if cfg.fresh:
        start_fresh(out, inputs=(cfg.model,))
    out.mkdir(parents=True, exist_ok=True)
    model, max_examples, merge_cfg = plan.model, plan.max_examples, plan.merge
    run_dir, bench_dir, pub_dir, merged_dir = out / "run", out / "bench", out / "published", out / "merged"
    timings: dict[str, float] = {}
    stages = tqdm(total=5 if merge_cfg else 4, desc="quickstart", unit="stage", position=0)
    t0 = time.perf_counter()

    # 1. prepare the shipped corpus with the base model's tokenizer
    stages.set_postfix_str("prepare")
    from domainlm.corpora.run import prepare_card

    t = time.perf_counter()
    corpus_dir = out / "corpus"
    prepare_card(plan.corpus, model, corpus_dir, block_size=plan.block_size)
    timings["prepare"] = time.perf_counter() - t
    stages.update(1)

    # 2. adapt (resume an interrupted run, reuse a finished one)
    stages.set_postfix_str("adapt")
    from domainlm.adapt import adapt

    t = time.perf_counter()
    if _done(run_dir):
        run_manifest = read_manifest(run_dir)
        log.info("reusing the finished run in %s", run_dir)
    else:
        resume = run_dir.exists() and any(run_dir.iterdir())
        run_manifest = adapt(corpus=str(corpus_dir), out=str(run_dir), resume=resume, **plan.adapt)
    timings["adapt"] = time.perf_counter() - t
    stages.update(1)

    # 3. bench: adapted vs base on the domain suite + held-out perplexity
    stages.set_postfix_str("bench")
    from domainlm.bench import bench

    t = time.perf_counter()
    if _done(bench_dir) and (bench_dir / "report.json").is_file():
        report = json.loads((bench_dir / "report.json").read_text())
    else:
        report = bench(model=str(run_dir), baseline=model, suite=plan.suite, out=str(bench_dir),
                       seeds=cfg.seeds, max_examples=max_examples)
    timings["bench"] = time.perf_counter() - t
    stages.update(1)

    # 4. merge --select: the adapted model merged back into its base, the weight chosen on dev splits,
    # then scored once on test (merged/test_bench); the chosen model is what gets published
    selection, merged_report = None, None
    if merge_cfg:
        stages.set_postfix_str("merge --select")
        from domainlm.merge import merge

        t = time.perf_counter()
        if not (_done(merged_dir) and (merged_dir / "test_bench" / "report.json").is_file()):
            merge(model=str(run_dir), out=str(merged_dir), select=True, test=True, overwrite=True,
                  suite=plan.suite, seeds=cfg.seeds, test_max_examples=max_examples, **merge_cfg)
        selection = json.loads((merged_dir / "selection.json").read_text())
        merged_report = json.loads((merged_dir / "test_bench" / "report.json").read_text())
        timings["merge"] = time.perf_counter() - t
        stages.update(1)

    # 5. publish with the card
    stages.set_postfix_str("publish")
    from domainlm.publish import publish

    t = time.perf_counter()
    if not _done(pub_dir) or {g["type"] for g in read_manifest(pub_dir).get("gguf") or []} != {
            t.lower() for t in cfg.gguf}:
        if merge_cfg:
            publish(run_dir=str(merged_dir), out=str(pub_dir), bench=str(merged_dir / "test_bench"), overwrite=True,
                    gguf=cfg.gguf)
        else:
            publish(run_dir=str(run_dir), out=str(pub_dir), bench=str(bench_dir), overwrite=True, gguf=cfg.gguf)
    timings["publish"] = time.perf_counter() - t
    stages.update(1)
    stages.close()

    rows = summary_rows(report)
    if merged_report is not None:
        rows = add_merged(rows, summary_rows(merged_report))
    total = time.perf_counter() - t0
    facts = [
        ("base model", f"{model} ({run_manifest['base']['origin']})"),
        ("training", f"{run_manifest['method']} {run_manifest['objective']}, {run_manifest['steps']} steps, "
                     f"{run_manifest['tokens_trained']:,} tokens"),
        ("wall time", f"{total:.0f} s this call (" + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) +
         f"); training itself {run_manifest['wall_time_s']:.0f} s"),
        ("training FLOPs", f"{run_manifest['flops']['total']:.3g}"),
        ("model card", str(pub_dir / "README.md")),
        ("loss curve", str(run_dir / "curves.png")),
        ("comparison chart", str(bench_dir / "comparison.png")),
        ("published model", str(pub_dir)),
    ]
    if selection is not None:
        facts.insert(0, ("merge", merge_line(selection, rows)))
        facts += [("merge selection", str(merged_dir / "selection.json")), ("pareto chart", str(merged_dir / "pareto.png"))]
    text = render_summary(rows, facts)
    print("\n" + text)
    from domainlm.artifacts import atomic_write_json, atomic_write_text

    summary = {"domain": cfg.domain, "model": model, "rows": rows, "timings_s": timings, "wall_time_s": total,
               "flops": run_manifest["flops"]["total"], "paths": {k: v for k, v in facts if k in PATH_FACTS},
               "merge": None if selection is None else {
                   "chosen_weight": selection["chosen_weight"], "method": selection["method"],
                   "verdict_dev": selection["verdict"], "line": dict(facts)["merge"]}}
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.txt", text + "\n")
    return summary
