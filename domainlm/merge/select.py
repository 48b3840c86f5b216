"""``domainlm merge --select``: the merge weight chosen by measurement on dev splits, never on test.

1. Every task's dev split is loaded once (bench ``split: dev``: its dev file, or a seeded part of its
   train split held out; held-out perplexity tasks get the validation documents of the corpus the
   run trained on, or of the general-English sample for the forgetting check). Test files are not opened.
2. The base is scored once; each swept weight is merged by mergekit, scored (features computed once per
   model and shared by every probe) and compared with the base on the same examples (paired bootstrap).
3. A weight is allowed when no guard task is significantly worse than the base (Holm across the guard
   tasks); the allowed weight with the best domain score (mean relative gain over the domain tasks) wins.
4. OUT is the chosen model as a run folder, with ``selection.json`` and ``pareto.png`` (domain gain
   against the worst guard loss, one point per weight, with paired 95% intervals); then the chosen
   model alone is scored on test, once, into ``OUT/test_bench``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from domainlm.artifacts import MANIFEST, read_manifest
from domainlm.merge.config import MergeConfig

log = logging.getLogger(__name__)

GENERAL_CARD = "general-english-sample"


# ----------------------------------------------------------------------------------------------------
# dev text for held-out perplexity tasks
# ----------------------------------------------------------------------------------------------------

def validation_texts(values: dict[str, Any]) -> list[tuple[str, str]]:
    """(id, text) of the documents ``corpus prepare`` put in the validation split (same hash, same ids)."""
    from domainlm.corpora.clean import validation_of
    from domainlm.documents.readers import ReaderOptions, SkipLog
    from domainlm.documents.registry import iter_documents, resolve_inputs

    fraction = float(values.get("validation_fraction", 0.05))
    files = resolve_inputs(list(values.get("inputs") or []), values.get("format", "auto"))
    opts = ReaderOptions(text_field=values.get("text_field") or "text", id_field=values.get("id_field"))
    return [(str(d.id), d.text) for d, _, _ in iter_documents(files, opts, SkipLog())
            if d.text and validation_of(str(d.id), fraction)]


def _run_corpus_values(run: Any) -> dict[str, Any] | None:
    """The prepare settings of the corpus an adapt run trained on (from the corpus manifest)."""
    if run is None:
        return None
    corpus = (run.config or {}).get("corpus")
    folder = Path(str(corpus)).expanduser() if corpus else None
    if folder is not None and (folder / MANIFEST).is_file():
        return read_manifest(folder, require_complete=False).get("config") or None
    from domainlm.corpora.cards import card_prepare_values, is_card

    return card_prepare_values(corpus) if corpus and is_card(corpus) else None


def dev_text_overrides(specs: list[Any], run: Any, scratch: Path) -> tuple[list[str], list[str]]:
    """Bench overrides giving each held-out perplexity task without a dev/train file a validation-text dev
    split, and notes saying where it came from."""
    from domainlm.artifacts import atomic_write_text
    from domainlm.corpora.cards import card_prepare_values

    overrides, notes = [], []
    for spec in specs:
        if spec.head != "lm" or "dev" in spec.files or "train" in spec.files:
            continue
        if spec.role == "general":
            values, source = card_prepare_values(GENERAL_CARD), f"the {GENERAL_CARD} card"
        else:
            values, source = _run_corpus_values(run), "the corpus the run trained on"
        if not values:
            continue  # load_data then names the task and the fix (a dev file)
        docs = validation_texts(values)
        if not docs:
            continue
        # absolute: a relative path in an override resolves beside the suite's YAML, not the working folder
        path = (scratch / f"dev-{spec.task_name}.jsonl").resolve()
        atomic_write_text(path, "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs))
        overrides += [f"{spec.task_name}.dev={path}", f"{spec.task_name}.format=jsonl",
                      f"{spec.task_name}.text_field=text", f"{spec.task_name}.id_field=id"]
        notes.append(f"{spec.task_name}: dev = the {len(docs)} validation documents of {source} (never trained on; "
                     "the test file is not read)")
    return overrides, notes


# ----------------------------------------------------------------------------------------------------
# roles and scores
# ----------------------------------------------------------------------------------------------------

def task_roles(cfg: MergeConfig, specs: list[Any]) -> tuple[list[str], list[str]]:
    """(domain tasks, guard tasks). Default guards: the general suite plus every zero-shot task."""
    from domainlm.errors import ConfigError
    from domainlm.tasks.suites import load_suite

    names = [s.task_name for s in specs]
    if cfg.guard_tasks is not None:
        guards = list(cfg.guard_tasks)
    else:
        general = {s.task_name for s in load_suite("general")} if "general" in cfg.suite.split(",") else set()
        guards = [s.task_name for s in specs if s.task_name in general or s.mode == "zeroshot"]
    domain = list(cfg.domain_tasks) if cfg.domain_tasks is not None else [n for n in names if n not in guards]
    problems = [f"'{key}' names '{t}', which is not a task of suite {cfg.suite} (tasks: {', '.join(names)})"
                for key, group in (("guard_tasks", guards), ("domain_tasks", domain)) for t in group if t not in names]
    if not domain:
        problems.append("no domain task: name at least one with --domain-tasks")
    both = sorted(set(domain) & set(guards))
    if both:
        problems.append(f"tasks both domain and guard: {', '.join(both)}; a task is one or the other")
    if problems:
        raise ConfigError(problems)
    return domain, guards


def _relative(task: dict[str, Any]) -> tuple[float, list[float] | None]:
    """Signed change relative to the base (positive = better), and its paired interval."""
    base = (task.get("baseline") or {}).get("score")
    delta, ci = task.get("delta"), task.get("delta_ci")
    if base is None or delta is None or not base:
        return 0.0, None
    sign = 1.0 if task.get("higher_is_better", True) else -1.0
    scale = sign / abs(base)
    rel = delta * scale
    return rel, (sorted([ci[0] * scale, ci[1] * scale]) if ci else None)


def judge(report: dict[str, Any], domain: list[str], guards: list[str], alpha: float = 0.05) -> dict[str, Any]:
    """One weight's dev numbers: domain score, guard verdicts after Holm, and whether it is allowed."""
    from domainlm.tasks.priors import holm

    tasks = {t["name"]: t for t in report["tasks"]}
    rows = {}
    for name in domain + guards:
        t = tasks[name]
        rel, rel_ci = _relative(t)
        rows[name] = {"role": "domain" if name in domain else "guard", "metric": t["metric"],
                      "model": (t.get("model") or {}).get("score"), "base": (t.get("baseline") or {}).get("score"),
                      "delta": t.get("delta"), "delta_ci": t.get("delta_ci"), "p_value": t.get("p_value"),
                      "relative": rel, "relative_ci": rel_ci, "verdict": t.get("verdict"),
                      "n": t.get("n_test"), "notes": t.get("notes") or []}
    pvals = {n: rows[n]["p_value"] for n in guards if rows[n]["p_value"] is not None}
    rejected = holm(pvals, alpha) if pvals else {}
    for n in guards:
        rows[n]["holm"] = ("worse" if rows[n]["relative"] < 0 else "better") if rejected.get(n) else "within noise"
    worse = [n for n in guards if rows[n]["holm"] == "worse"]
    d_rel = [rows[n]["relative"] for n in domain]
    d_ci = [rows[n]["relative_ci"] for n in domain]
    worst = max(guards, key=lambda n: -rows[n]["relative"]) if guards else None
    return {"domain_score": sum(d_rel) / len(d_rel),
            # a mean of per-task intervals: exact for one domain task, a summary for several
            "domain_ci": [sum(c[0] for c in d_ci) / len(d_ci), sum(c[1] for c in d_ci) / len(d_ci)]
            if all(d_ci) else None,
            "domain_better": all(rows[n]["verdict"] == "better" for n in domain),
            "worst_guard": worst, "guard_loss": -rows[worst]["relative"] if worst else 0.0,
            "guard_loss_ci": sorted(-x for x in rows[worst]["relative_ci"]) if worst and rows[worst]["relative_ci"]
            else None,
            "guards_worse": worse, "allowed": not worse, "tasks": rows}


def choose(points: list[dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """The allowed weight with the best domain score (ties: the smaller weight); (point, an allowed one exists).

    Without an allowed weight, the one with the fewest guard losses, then the smallest guard loss."""
    allowed = [p for p in points if p["allowed"]]
    if allowed:
        return max(allowed, key=lambda p: (round(p["domain_score"], 12), -p["weight"])), True
    return min(points, key=lambda p: (len(p["guards_worse"]), p["guard_loss"], p["weight"])), False


def pareto_png(points: list[dict[str, Any]], chosen: float, path: Path, title: str) -> None:
    """Domain gain (y) against the worst guard loss (x), one point per weight, with paired 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for p in points:
        x, y = 100 * p["guard_loss"], 100 * p["domain_score"]
        xe = [[x - 100 * p["guard_loss_ci"][0]], [100 * p["guard_loss_ci"][1] - x]] if p["guard_loss_ci"] else None
        ye = [[y - 100 * p["domain_ci"][0]], [100 * p["domain_ci"][1] - y]] if p["domain_ci"] else None
        color = "tab:green" if p["allowed"] else "tab:red"
        ax.errorbar([x], [y], xerr=xe, yerr=ye, fmt="o", color=color, ecolor=color, alpha=0.8, capsize=3,
                    markersize=9 if p["weight"] == chosen else 6)
        label = f"w={p['weight']:g}" + (" (chosen)" if p["weight"] == chosen else "")
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
    ax.axvline(0, color="grey", lw=0.8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("worst guard task: loss vs base, % of the base score (right = worse)")
    ax.set_ylabel("domain gain vs base, % (up = better)")
    ax.set_title(title, fontsize=10)
    ax.plot([], [], "o", color="tab:green", label="no guard significantly worse (Holm)")
    ax.plot([], [], "o", color="tab:red", label="a guard significantly worse")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def _pct(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:+.1f}%"


def line(point: dict[str, Any], method: str) -> str:
    """The one-line result: weight, domain and guard deltas (dev splits)."""
    parts = []
    for name, r in point["tasks"].items():
        ci = r["delta_ci"]
        ci_s = f" [{ci[0]:+.3g}, {ci[1]:+.3g}]" if ci else ""
        verdict = r.get("holm") or r["verdict"]
        parts.append(f"{name} {r['delta']:+.3g}{ci_s} {verdict}" if r["delta"] is not None else f"{name} -")
    return f"weight {point['weight']:g} ({method}) on dev: " + "; ".join(parts)


# ----------------------------------------------------------------------------------------------------
# the sweep
# ----------------------------------------------------------------------------------------------------

def select(cfg: MergeConfig) -> dict[str, Any]:
    from domainlm.artifacts import atomic_write_json
    from domainlm.bench import bench
    from domainlm.bench.config import BenchConfig
    from domainlm.bench.report import build_report
    from domainlm.bench.run import load_all, pick_bf16, score_model, warm_imports
    from domainlm.device import pick_device
    from domainlm.merge.engine import merge_info, prepare_pair, run_mergekit, write_run
    from domainlm.tasks.suites import load_suite, parse_overrides

    t0 = time.perf_counter()
    out = Path(cfg.out)
    weights = sorted(set(float(w) for w in cfg.weights))
    from domainlm.bench.modes import RunContext

    with tempfile.TemporaryDirectory(prefix="domainlm-select-", dir=out.parent if out.parent.exists() else None) as s:
        scratch = Path(s)
        pair = prepare_pair(cfg.model, cfg.other, scratch)
        specs0 = load_suite(cfg.suite, None, parse_overrides(cfg.override))
        domain, guards = task_roles(cfg, specs0)
        # dev texts only for the tasks with a role: the others are not read
        dev_over, notes = dev_text_overrides([sp for sp in specs0 if sp.task_name in domain + guards], pair.run,
                                             scratch)
        # only the tasks with a role are read and scored: the others cost time and decide nothing, and their data
        # need not exist (a real-data root with the domain and guard tasks only)
        bcfg = BenchConfig(model=cfg.model, baseline=pair.other_spec, suite=cfg.suite, tasks=domain + guards,
                           override=list(cfg.override) + dev_over, data_root=cfg.data_root,
                           max_examples=cfg.max_examples, split="dev", dev_fraction=cfg.dev_fraction, seeds=cfg.seeds,
                           bootstrap=cfg.bootstrap, out=str(scratch / "bench"))
        specs, data = load_all(bcfg, causal=pair.objective == "causal")
        notes += [f"{name}: {n}" for name, d in data.items() for n in d.notes if n.startswith(("no dev", "scored on"))]
        warm_imports()
        device = pick_device("auto")
        ctx = RunContext(device=device, bf16=pick_bf16("auto", device), seeds=cfg.seeds)
        base = score_model(pair.other_spec, specs, data, ctx, None, role="base")
        points = []
        for w in weights:
            t = time.perf_counter()
            if w == 0.0:
                results, how = base, "the base itself"
            elif w == 1.0 and cfg.method in ("linear", "slerp"):
                results, how = score_model(cfg.model, specs, data, ctx, None, role="adapted"), "the adapted model"
            else:
                run_dir = scratch / f"run-w{w:g}"
                merged = run_mergekit(pair, cfg.method, w, cfg.density, cfg.seed, scratch / f"mk-w{w:g}")
                write_run(pair, merged, run_dir, merge_info(cfg, pair, w, time.perf_counter() - t))
                shutil.rmtree(merged, ignore_errors=True)
                results, how = score_model(str(run_dir), specs, data, ctx, None, role=f"merged w={w:g}"), "merged"
                shutil.rmtree(run_dir, ignore_errors=True)
            report = build_report(bcfg, specs, data, {"model": results, "baseline": base}, n_boot=cfg.bootstrap,
                                  device=device, bf16=ctx.bf16)
            point = {"weight": w, "model": how, **judge(report, domain, guards), "wall_s": time.perf_counter() - t}
            points.append(point)
            log.info("%s", line(point, cfg.method))
        chosen, found = choose(points)
        goal = found and chosen["domain_better"]
        if goal:
            verdict = (f"chosen weight {chosen['weight']:g}: domain gain kept ({_pct(chosen['domain_score'])}) with no "
                       "guard task significantly worse than the base (Holm) on the dev splits")
        elif found:
            verdict = (f"no swept weight keeps a significant domain gain without a guard loss: weight "
                       f"{chosen['weight']:g} is the best allowed one (domain {_pct(chosen['domain_score'])}, not "
                       "significantly better on dev)")
        else:
            verdict = (f"every swept weight loses a guard task significantly (Holm); weight {chosen['weight']:g} loses "
                       f"the fewest ({', '.join(chosen['guards_worse'])})")
        selection = {"method": cfg.method, "weights": weights, "chosen_weight": chosen["weight"],
                     "goal_met_on_dev": goal, "allowed_weight_found": found, "verdict": verdict,
                     "domain_tasks": domain, "guard_tasks": guards, "alpha": 0.05, "split": "dev",
                     "dev": {name: d.files for name, d in data.items()}, "notes": notes, "points": points,
                     "rule": "max domain score (mean relative gain over the domain tasks) subject to no guard task "
                             "significantly worse than the base (paired bootstrap p-values, Holm across guards)"}

        # the dev texts made for perplexity tasks are kept in OUT/dev/, so the record points there
        selection = json.loads(json.dumps(selection).replace(f"{scratch}/dev-", f"{out}/dev/dev-"))

        def extras(tmp: Path) -> None:
            dev_files = sorted(scratch.glob("dev-*.jsonl"))
            if dev_files:  # the validation texts scored, kept beside the choice they made (scratch goes away)
                (tmp / "dev").mkdir()
                for f in dev_files:
                    shutil.copyfile(f, tmp / "dev" / f.name)
            atomic_write_json(tmp / "selection.json", selection)
            pareto_png(points, chosen["weight"], tmp / "pareto.png",
                       f"merge --select ({cfg.method}) on dev splits: {Path(cfg.model).name} into {pair.other_spec}")

        t = time.perf_counter()
        merged = run_mergekit(pair, cfg.method, chosen["weight"], cfg.density, cfg.seed, scratch / "mk-chosen")
        manifest = write_run(pair, merged, out, merge_info(cfg, pair, chosen["weight"], time.perf_counter() - t,
                                                           selection={"file": "selection.json", "picture": "pareto.png",
                                                                      "verdict": verdict}), extras=extras)
    print(line(chosen, cfg.method))
    print(verdict)
    if cfg.test:
        report = bench(model=str(out), baseline=pair.other_spec, suite=cfg.suite, override=list(cfg.override),
                       data_root=cfg.data_root, max_examples=cfg.test_max_examples or cfg.max_examples,
                       seeds=cfg.seeds, bootstrap=cfg.bootstrap, out=str(out / "test_bench"))
        selection["test"] = {"report": "test_bench/report.json",
                             "tasks": {t["name"]: {"delta": t.get("delta"), "delta_ci": t.get("delta_ci"),
                                                   "verdict": t.get("verdict")} for t in report["tasks"]},
                             "family_wise": (report.get("aggregate") or {}).get("family_wise")}
        atomic_write_json(out / "selection.json", selection)
    selection["wall_time_s"] = time.perf_counter() - t0
    manifest["selection"] = selection
    return manifest
