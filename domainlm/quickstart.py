"""``domainlm quickstart``: the whole job end to end on a shipped sample, by chaining the real verbs.

prepare (corpus card) -> adapt (a real base model) -> bench (base vs adapted, domain tasks plus
held-out domain and general perplexity) -> publish (verified checkpoint + model card) -> summary.
Each stage writes its usual folder under OUT; a re-run reuses the stages that finished.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from domainlm.config import as_config, opt

log = logging.getLogger(__name__)

# Why these defaults: see README "Why SmolLM2 with LoRA for biomed". Budgets were sized so the
# whole biomed quickstart finishes in well under 15 minutes on 2 CPU cores.
DOMAINS: dict[str, dict[str, Any]] = {
    "biomed": {
        "corpus": "pubmed-sample", "suite": "biomed,general",
        # 135M parameters in fp32 on a 2-core CPU without fast bf16 trains at ~100 tokens/s, so the budget is
        # small: 16 steps x 4 x 128 tokens. Held-out perplexity already falls measurably at this size.
        "adapt": dict(model="smollm2", objective="causal", method="lora", block_size=128, lr=5e-4, warmup_ratio=0.1,
                      batch_size=4, grad_accum=1, max_steps=16, eval_every=8, save_every=8, eval_batches=4,
                      replay_corpus="general-english-sample", replay_fraction=0.05),
        "bench_max_examples": 80,
        # merge --select after adapt: the weight is chosen on dev splits (never test) so that PubMedQA
        # zero-shot and general-English perplexity (the guards) are not significantly worse than the base
        # while domain perplexity keeps its gain. Three weights (the base and weight 1 are known ends of the
        # line); PubMedQA's dev split is all 200 of the sample's training questions (zero-shot trains on
        # none): 40 of them could not see the adapted model's 5-15 point loss, so 0.75 passed (2026-12-06).
        "merge": dict(method="linear", weights=[0.25, 0.5, 0.75], domain_tasks=["perplexity"],
                      guard_tasks=["pubmedqa", "general_perplexity"], max_examples=200),
    },
    "materials": {
        "corpus": "arxiv-materials-sample", "suite": "materials,general",
        "adapt": dict(model="minilm", objective="masked", method="full", block_size=128, whole_word_mask=True,
                      lr=3e-4, warmup_ratio=0.06, batch_size=16, max_steps=80, eval_every=20, save_every=40,
                      eval_batches=8, replay_corpus="general-english-sample", replay_fraction=0.05),
    },
    "protein": {
        "corpus": "uniprot-sample", "suite": "protein",
        "adapt": dict(model="tiny-esm", objective="protein", from_scratch=True, method="full", block_size=256,
                      lr=1e-3, warmup_ratio=0.05, batch_size=16, max_steps=150, eval_every=50, save_every=50,
                      eval_batches=8, replay_fraction=0.0),
    },
}


@dataclass
class QuickstartConfig:
    domain: Literal["biomed", "materials", "protein"] = opt("biomed", "which shipped sample and base model to use")
    out: str = opt("domainlm-quickstart", "folder for every stage's output")
    fresh: bool = opt(False, "start again instead of reusing finished stages")
    model: str | None = opt(None, "use another base model (default: the domain's packaged or tiny model)")
    max_steps: int | None = opt(None, "training steps (default: the domain's budget)")
    max_examples: int | None = opt(None, "cap each bench split at this many examples (default: the domain's "
                                   "budget; 80 for biomed)")
    seeds: int = opt(1, "seeds per fine-tuned bench task (probes are deterministic)")
    merge: bool = opt(True, "merge the adapted model back into its base with the weight chosen on dev splits "
                      "(merge --select) and publish that (biomed; needs mergekit: pip install 'domainlm[merge]')")
    gguf: list[str] = opt(factory=list, help="also publish verified GGUF files for llama.cpp/Ollama: f16, bf16, q8_0 "
                          "(see `domainlm publish --gguf`)")


def _done(folder: Path) -> bool:
    try:
        from domainlm.artifacts import read_manifest

        read_manifest(folder)
        return True
    except Exception:  # noqa: BLE001 - any unreadable manifest means "not finished"
        return False


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 10 else f"{value:.3f}"
    return str(value)


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per bench task and perplexity: base, adapted, delta (exactly the report.json numbers)."""
    rows = []
    for t in report.get("tasks", []):
        model, base = t.get("model") or {}, t.get("baseline") or {}
        if model.get("skipped") or t.get("mode") == "perplexity":
            continue  # perplexities are listed once, below, per token and per word
        rows.append({"metric": f"{t['name']} ({t['metric']})", "base": base.get("score"), "adapted": model.get("score"),
                     "delta": t.get("delta"), "delta_ci": t.get("delta_ci"),
                     "higher_is_better": t.get("higher_is_better", True), "n_test": t.get("n_test"),
                     "holm": ((report.get("aggregate") or {}).get("family_wise") or {}).get("verdicts", {}).get(
                         t["name"])})
    task_ci = {t["name"]: t.get("delta_ci") for t in report.get("tasks", []) if t.get("metric") == "word_perplexity"}
    for kind, entry in (report.get("perplexity") or {}).items():
        m, b = entry.get("model") or {}, entry.get("baseline") or {}
        # per token is what training optimises; per word compares models with different tokenizers (and is
        # the perplexity task's metric, so it carries that task's bootstrap interval)
        for unit in ("per_token", "per_word"):
            if m.get(unit) is not None:
                delta = (m[unit] - b[unit]) if b.get(unit) is not None else None
                rows.append({"metric": f"{kind} perplexity ({unit.replace('_', ' ')})", "base": b.get(unit),
                             "adapted": m.get(unit), "delta": delta,
                             "delta_ci": task_ci.get(entry.get("task")) if unit == "per_word" else None,
                             "higher_is_better": False})
    return rows


def _ci(ci: list[float] | None) -> str:
    return "-" if not ci else f"[{ci[0]:+.3g}, {ci[1]:+.3g}]"


def verdict(row: dict[str, Any]) -> str:
    """'better'/'worse' only when the paired bootstrap interval excludes 0; else 'within noise'.

    Rows without an interval (per-token perplexity) say only the direction.
    """
    delta, ci = row["delta"], row.get("delta_ci")
    if delta is None or delta == 0:
        return "-"
    good = (delta > 0) == row["higher_is_better"]
    if not ci:
        return "lower" if delta < 0 else "higher"
    if ci[0] <= 0 <= ci[1]:
        return "within noise"
    return "better" if good else "worse"


# The change a user usually hopes to see from domain adaptation on a 0-1 score (F1, accuracy).
TARGET_EFFECT = 0.02


def detectable(row: dict[str, Any]) -> str:
    """Can this task's test set see a 2-point change? 'yes'/'no' with the minimum detectable effect.

    The minimum detectable effect is the half-width of the paired-delta interval: a true change
    smaller than it lands "within noise". Perplexity rows (no 0-1 scale) get '-'.
    """
    ci = row.get("delta_ci")
    if not ci or ci[0] is None or "perplexity" in row["metric"]:
        return "-"
    mde = (ci[1] - ci[0]) / 2
    return f"{'yes' if mde <= TARGET_EFFECT else 'no'} (±{mde:.2f})"


def add_merged(rows: list[dict[str, Any]], merged_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The merged model's test numbers (its bench against the same base) beside each base/adapted row."""
    by_metric = {r["metric"]: r for r in merged_rows}
    out = []
    for r in rows:
        m = by_metric.get(r["metric"]) or {}
        out.append({**r, "merged": m.get("adapted"), "merged_delta": m.get("delta"),
                    "merged_delta_ci": m.get("delta_ci"), "merged_holm": m.get("holm")})
    return out


def _verdict_text(row: dict[str, Any], prefix: str = "") -> str:
    r = {**row, "delta": row.get(f"{prefix}delta"), "delta_ci": row.get(f"{prefix}delta_ci")}
    holm = row.get(f"{prefix}holm")
    return verdict(r) + (f" (Holm: {holm})" if holm else "")


def render_summary(rows: list[dict[str, Any]], facts: list[tuple[str, str]]) -> str:
    width = max([len(r["metric"]) for r in rows] + [24])
    if any("merged" in r for r in rows):  # base | adapted | merged, each model's paired delta against the base
        cells = []
        for r in rows:
            cells.append([f"{'-' if r.get(f'{p}delta') is None else format(r[f'{p}delta'], '+.3g')} "
                          f"{_ci(r.get(f'{p}delta_ci'))} {_verdict_text(r, p)}" for p in ("", "merged_")])
        cw = max([len(c[0]) for c in cells] + [24])
        lines = [f"{'metric':<{width}}  {'base':>9}  {'adapted':>9}  {'merged':>9}  {'adapted - base, 95% CI':<{cw}}  "
                 "merged - base, 95% CI", "-" * (width + 38 + 2 * cw)]
        for r, (a, m) in zip(rows, cells, strict=True):
            lines.append(f"{r['metric']:<{width}}  {_fmt(r['base']):>9}  {_fmt(r['adapted']):>9}  "
                         f"{_fmt(r.get('merged')):>9}  {a:<{cw}}  {m}")
    else:
        lines = [f"{'metric':<{width}}  {'base':>9}  {'adapted':>9}  {'delta':>9}  {'delta 95% CI':>18}  "
                 f"{'sees 2 pts':>11}  verdict", "-" * (width + 90)]
        for r in rows:
            lines.append(f"{r['metric']:<{width}}  {_fmt(r['base']):>9}  {_fmt(r['adapted']):>9}  "
                         f"{'-' if r['delta'] is None else format(r['delta'], '+.3g'):>9}  "
                         f"{_ci(r.get('delta_ci')):>18}  {detectable(r):>11}  {verdict(r)}"
                         + (f" (Holm: {r['holm']})" if r.get("holm") else ""))
    lines.append("")
    if not any("merged" in r for r in rows) and any(detectable(r).startswith("no") for r in rows):
        lines += ["sees 2 pts: 'no' means the test set is too small to tell a 2-point change from noise (the number "
                  "is the smallest change it can see: half the paired interval); use the real datasets "
                  "(benchmarks/*/README.md) to see one.", ""]
    lines += [f"{k:<18} {v}" for k, v in facts]
    return "\n".join(lines)


PATH_FACTS = ("model card", "loss curve", "comparison chart", "published model", "merge selection", "pareto chart")


def _merge_line(selection: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Weight chosen, its dev deltas, and whether the goal holds on test: no task significantly worse than
    the base (Holm where bench applies it) while domain perplexity per word stays significantly better."""
    chosen = next(p for p in selection["points"] if p["weight"] == selection["chosen_weight"])
    dev = "; ".join(f"{n} {r['delta']:+.3g} [{r['delta_ci'][0]:+.3g}, {r['delta_ci'][1]:+.3g}]"
                    for n, r in chosen["tasks"].items() if r.get("delta") is not None and r.get("delta_ci"))
    worse = [r["metric"] for r in rows if "merged" in r and (r.get("merged_holm") or _verdict_text(r, "merged_")
                                                              ).startswith("worse")]
    domain = next((r for r in rows if r["metric"] == "domain perplexity (per word)"), None)
    kept = domain is not None and _verdict_text(domain, "merged_").startswith("better")
    if not worse and kept:
        goal = "goal met on test: no task significantly worse than the base, domain perplexity per word better"
    else:
        goal = ("goal NOT met on test at this budget: " + (f"worse than the base: {', '.join(worse)}" if worse else "")
                + ("; " if worse and not kept else "") + ("" if kept else "domain perplexity per word not "
                                                                   "significantly better"))
    return (f"{selection['method']} weight {selection['chosen_weight']:g} on the adapted model (chosen on dev from "
            f"{', '.join(format(w, 'g') for w in selection['weights'])}; dev: {dev}). {goal}")


def quickstart(config: QuickstartConfig | None = None, **overrides: Any) -> dict[str, Any]:
    """Adapt a general model to a scientific domain, measure it against its base, and publish it.

    With no arguments: SmolLM2-135M (packaged, offline) with LoRA on the shipped PubMed sample, benched on
    the shipped biomedical suite plus held-out domain and general perplexity, published with its card.
    """
    from tqdm.auto import tqdm

    cfg = as_config(QuickstartConfig, config, overrides)
    preset = DOMAINS[cfg.domain]
    out = Path(cfg.out)
    if cfg.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    adapt_kwargs = dict(preset["adapt"])
    if cfg.model:
        adapt_kwargs["model"] = cfg.model
    if cfg.max_steps:
        adapt_kwargs["max_steps"] = cfg.max_steps
        adapt_kwargs["eval_every"] = max(1, cfg.max_steps // 2)
        adapt_kwargs["save_every"] = max(1, cfg.max_steps // 2)
    model = adapt_kwargs["model"]
    run_dir, bench_dir, pub_dir, merged_dir = out / "run", out / "bench", out / "published", out / "merged"
    merge_cfg = dict(preset["merge"]) if preset.get("merge") and cfg.merge else None
    max_examples = cfg.max_examples or preset.get("bench_max_examples")
    timings: dict[str, float] = {}
    stages = tqdm(total=5 if merge_cfg else 4, desc="quickstart", unit="stage", position=0)
    t0 = time.perf_counter()

    # 1. prepare the shipped corpus with the base model's tokenizer
    stages.set_postfix_str("prepare")
    from domainlm.corpora.prepare import prepare_card

    t = time.perf_counter()
    corpus_dir = out / "corpus"
    prepare_card(preset["corpus"], model, corpus_dir, block_size=adapt_kwargs["block_size"])
    timings["prepare"] = time.perf_counter() - t
    stages.update(1)

    # 2. adapt (resume an interrupted run, reuse a finished one)
    stages.set_postfix_str("adapt")
    from domainlm.adapt import adapt
    from domainlm.artifacts import read_manifest

    t = time.perf_counter()
    if _done(run_dir):
        run_manifest = read_manifest(run_dir)
        log.info("reusing the finished run in %s", run_dir)
    else:
        resume = run_dir.exists() and any(run_dir.iterdir())
        kw = {k: v for k, v in adapt_kwargs.items() if k != "block_size"}
        run_manifest = adapt(corpus=str(corpus_dir), out=str(run_dir), resume=resume, **kw)
    timings["adapt"] = time.perf_counter() - t
    stages.update(1)

    # 3. bench: adapted vs base on the domain suite + held-out perplexity
    stages.set_postfix_str("bench")
    from domainlm.bench import bench

    t = time.perf_counter()
    if _done(bench_dir) and (bench_dir / "report.json").is_file():
        report = json.loads((bench_dir / "report.json").read_text())
    else:
        report = bench(model=str(run_dir), baseline=model, suite=preset["suite"], out=str(bench_dir),
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
                  suite=preset["suite"], seeds=cfg.seeds, test_max_examples=max_examples, **merge_cfg)
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
        facts.insert(0, ("merge", _merge_line(selection, rows)))
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
