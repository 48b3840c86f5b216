"""The comparison report: base and adapted side by side, deltas with paired CIs, JSON/Markdown/PNG.

The JSON schema is documented in :mod:`domainlm.bench` (publish and quickstart read it). Markdown
and the chart are views of the same dict, so they never disagree with it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from domainlm.tasks.builtin import METRICS
from domainlm.tasks.data import TaskData
from domainlm.tasks.metrics import blurb_macro, bootstrap, mean_std
from domainlm.tasks.priors import answer_priors, holm, label_distribution, macro_f1, verdict
from domainlm.tasks.spec import TaskSpec


def _clean(x: Any) -> Any:
    """NaN/inf -> None so report.json is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _priors(result) -> dict[str, Any] | None:
    """Predicted-label distribution, macro-F1 and prior-corrected accuracies of a classification result."""
    if not result.predictions or not result.gold or not isinstance(result.gold[0], str):
        return None
    preds = [p for seed in result.predictions for p in seed]  # all seeds pooled
    gold = list(result.gold) * len(result.predictions)
    out: dict[str, Any] = {"predicted": label_distribution(preds), "macro_f1": macro_f1(gold, preds)}
    if result.choice_scores:
        pri = answer_priors(result.choice_scores, result.choices, result.gold, result.choice_lengths)
        out.update(acc_norm=pri["acc_norm"], acc_calibrated=pri["acc_calibrated"],
                   calibrated_predicted=label_distribution(pri["calibrated_predictions"]),
                   calibrated_hits=pri["calibrated_hits"])
    return out


def _side(result, ci: list[float] | None) -> dict[str, Any]:
    if result.skipped is not None:
        return {"score": None, "ci": None, "seeds": [], "std": None, "extras": {}, "mode": None, "wall_s": 0.0,
                "examples_per_s": None, "notes": result.notes, "skipped": result.skipped, "priors": None}
    score, std = mean_std(result.seed_scores)
    return {"score": score, "ci": ci, "seeds": result.seed_scores, "std": std, "extras": result.extras,
            "mode": result.mode, "wall_s": result.wall_s,
            "examples_per_s": (result.n_examples / result.wall_s) if result.wall_s > 0 else None,
            "notes": result.notes, "skipped": None, "priors": _priors(result),
            "selection": result.selection or None}


def _calibrated(task: dict[str, Any], n_boot: int) -> dict[str, Any] | None:
    """Batch-calibrated accuracy of model and baseline, with a paired interval (same items)."""
    import numpy as np

    m = (task["model"].get("priors") or {}).get("calibrated_hits")
    b = ((task["baseline"] or {}).get("priors") or {}).get("calibrated_hits")
    if m is None:
        return None
    out: dict[str, Any] = {"model": float(np.mean(m)), "baseline": float(np.mean(b)) if b else None,
                           "delta": None, "delta_ci": None}
    if b and n_boot > 0:
        boot = bootstrap([np.asarray(m).reshape(-1, 1)], lambda r: float(r[:, 0].mean()),
                         [np.asarray(b).reshape(-1, 1)], n_boot=n_boot)
        out.update(delta=out["model"] - out["baseline"], delta_ci=boot["delta_ci"])
    return out


def family_verdicts(tasks: list[dict[str, Any]], alpha: float = 0.05, min_tasks: int = 4) -> dict[str, Any] | None:
    """Holm-corrected verdict over the tasks with a paired p-value, when at least ``min_tasks`` are compared
    (real suites: 2, since a BLURB score is read as one claim over its datasets)."""
    pvals = {t["name"]: t["p_value"] for t in tasks if t.get("p_value") is not None}
    if len(pvals) < min_tasks:
        return None
    rejected = holm(pvals, alpha)
    verdicts = {}
    for t in tasks:
        if t["name"] in pvals:
            if not rejected[t["name"]]:
                verdicts[t["name"]] = "within noise"
            else:
                verdicts[t["name"]] = "better" if (t["delta"] > 0) == t["higher_is_better"] else "worse"
    return {"method": "holm", "alpha": alpha, "tasks_compared": len(pvals), "verdicts": verdicts,
            "better": sorted(k for k, v in verdicts.items() if v == "better"),
            "worse": sorted(k for k, v in verdicts.items() if v == "worse")}


def build_report(config, specs: list[TaskSpec], data: dict[str, TaskData], results: dict[str, dict[str, Any]],
                 *, n_boot: int = 1000, device: str = "cpu", bf16: bool = False) -> dict[str, Any]:
    """Assemble the report dict (see the schema in :mod:`domainlm.bench`)."""
    import datetime as dt

    from domainlm.config import to_dict

    has_base = "baseline" in results
    tasks = []
    perplexity: dict[str, Any] = {}
    for spec in specs:
        name = spec.task_name
        metric = METRICS.get(spec.metric)
        m = results["model"][name]
        b = results["baseline"][name] if has_base else None
        both = m.skipped is None and b is not None and b.skipped is None
        boot: dict[str, Any] = {}
        if n_boot > 0 and m.skipped is None:
            boot = bootstrap(m.rows, metric.fn.reduce, b.rows if both else None, n_boot=n_boot)
        elif n_boot > 0 and b is not None and b.skipped is None:
            boot = {"baseline_ci": bootstrap(b.rows, metric.fn.reduce, n_boot=n_boot)["ci"]}
        model_side = _side(m, boot.get("ci"))
        base_side = _side(b, boot.get("baseline_ci")) if b is not None else None
        delta = (model_side["score"] - base_side["score"]) if both else None
        tasks.append({
            "name": name, "family": spec.task_family, "metric": spec.metric,
            "higher_is_better": bool(metric.meta.get("higher_is_better", True)), "head": spec.head,
            "version": spec.version, "mode": model_side["mode"], "model": model_side, "baseline": base_side,
            "delta": delta, "delta_ci": boot.get("delta_ci") if both else None,
            "p_value": boot.get("p_value") if both else None,
            "verdict": verdict(delta, boot.get("delta_ci"), bool(metric.meta.get("higher_is_better", True)))
            if both else "-",
            "wall_s": model_side["wall_s"], "examples_per_s": model_side["examples_per_s"],
            "n_test": len(data[name].test), "files": data[name].files, "notes": data[name].notes,
            "backend": "lm-evaluation-harness" if spec.format == "harness" else "domainlm",
            "skipped_records": data[name].skipped or None,
            # real suites: provenance, protocol and the published number shown beside ours
            "data_files": data[name].sources or None, "protocol": spec.protocol,
            "protocol_shortened": data[name].shortened, "reference": spec.reference,
        })
        if model_side.get("priors") is not None:
            tasks[-1]["gold_distribution"] = label_distribution([ex.label for ex in data[name].test])
            tasks[-1]["calibrated"] = _calibrated(tasks[-1], n_boot)
            for side in (model_side, base_side):
                if side and side.get("priors"):
                    side["priors"].pop("calibrated_hits", None)
        if spec.head == "lm" and spec.metric != "recovery_accuracy" and spec.role not in perplexity:
            perplexity[spec.role] = {"task": name, "model": m.perplexity,
                                     "baseline": b.perplexity if b is not None else None}
    agg = {}
    for role in ("model", "baseline"):
        pairs = [(t["family"], t[role]["score"]) for t in tasks
                 if t["head"] != "lm" and t[role] is not None and t[role]["score"] is not None]
        agg[role] = blurb_macro(pairs) if pairs else {"score": None, "families": {}}
    macro = {"model": agg["model"]["score"], "baseline": agg["baseline"]["score"] if has_base else None,
             "delta": None, "families": {}}
    if macro["model"] is not None and macro["baseline"] is not None:
        macro["delta"] = macro["model"] - macro["baseline"]
    for fam in sorted(set(agg["model"]["families"]) | set(agg["baseline"]["families"])):
        macro["families"][fam] = {"model": agg["model"]["families"].get(fam),
                                  "baseline": agg["baseline"]["families"].get(fam) if has_base else None}
    shortened = {t["name"]: t["protocol_shortened"] for t in tasks if t["protocol_shortened"]}
    return _clean({
        "model": config.model, "baseline": config.baseline, "suite": config.suite, "tasks": tasks,
        "aggregate": {"blurb_style_macro": macro,
                      "family_wise": family_verdicts(tasks, min_tasks=2 if any(s.sources for s in specs) else 4),
                      "real_suite": real_suite_summary(specs, tasks)},
        "protocol": {"shortened": bool(shortened), "tasks": shortened},
        "perplexity": perplexity,
        "config": to_dict(config), "device": device, "bf16": bf16, "bootstrap": n_boot,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    })


def real_suite_summary(specs: list[TaskSpec], tasks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """For real suites: which of the suite's tasks ran, and the published reference's macro over the same tasks.

    The reference macro uses the same family averaging as ours (:func:`blurb_macro`) over exactly the tasks
    that ran, so the two numbers compare like with like; the paper's full BLURB score averages all 13.
    """
    from domainlm.tasks.suites import task_files

    real = [s for s in specs if s.sources]
    if not real:
        return None
    suite_tasks = sorted({p.stem for s in real for p in task_files(s.folder)})
    ran = [t for t in tasks if t["reference"] is not None or t["data_files"]]
    ran_names = [t["name"] for t in ran if t["model"]["score"] is not None]
    refs = [t for t in ran if t["reference"] is not None and t["model"]["score"] is not None]
    ref_macro = blurb_macro([(t["family"], float(t["reference"]["score"])) for t in refs]) if refs else None
    ours = blurb_macro([(t["family"], t["model"]["score"]) for t in refs]) if refs else None
    return {"suite_tasks": suite_tasks, "run": ran_names, "not_run": [n for n in suite_tasks if n not in ran_names],
            "reference_model": refs[0]["reference"].get("model") if refs else None,
            "reference_source": refs[0]["reference"].get("source") if refs else None,
            "model_macro": ours["score"] if ours else None, "reference_macro": ref_macro["score"] if ref_macro else None}


def reference_lines(report: dict[str, Any]) -> list[str]:
    """Plain lines: our score beside the published one per task, the macro over the tasks run, what was not run,
    and whether the protocol was shortened."""
    real = report["aggregate"].get("real_suite")
    lines = []
    if real:
        rows = [t for t in report["tasks"] if t.get("reference")]
        if rows:
            who = real["reference_model"]
            lines.append(f"Published reference beside ours ({who}; {real['reference_source']}):")
            width = max(len(t["name"]) for t in rows)
            for t in rows:
                base = f", baseline {_fmt(t['baseline']['score'])}" if t.get("baseline") else ""
                lines.append(f"  {t['name']:<{width}}  ours {_fmt(t['model']['score'])}{base}  vs  "
                             f"{_fmt(float(t['reference']['score']))}")
            lines.append(f"BLURB-style score over the {len(real['run'])} of {len(real['suite_tasks'])} suite tasks run "
                         f"({', '.join(real['run'])}): ours {_fmt(real['model_macro'])}, {who} "
                         f"{_fmt(real['reference_macro'])} on the same tasks")
        if real["not_run"]:
            lines.append(f"Not run: {', '.join(real['not_run'])}")
    proto = report.get("protocol") or {}
    if proto.get("shortened"):
        by_reason: dict[str, list[str]] = {}
        for name, why in proto["tasks"].items():
            for reason in why:
                by_reason.setdefault(reason, []).append(name)
        n_tasks = len(report["tasks"])
        lines.append("Shortened protocol (these scores do not follow the task files' protocol):")
        lines += [f"  - {reason}" + ("" if len(names) == n_tasks else f" [{', '.join(names)}]")
                  for reason, names in by_reason.items()]
    elif real:
        lines.append("Protocol: as the task files define it (" + "; ".join(
            dict.fromkeys(t["protocol"] for t in report["tasks"] if t.get("protocol"))) + ")")
    return lines


# --------------------------------------------------------------------------------------------------
# Views: table, Markdown, chart
# --------------------------------------------------------------------------------------------------

def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1e6:
        return f"{x:.3g}"
    if abs(x) >= 1000:
        return f"{x:.0f}"
    return f"{x:.{digits}f}"


def _signed(x: float) -> str:
    return ("+" if x >= 0 else "") + _fmt(x)


def _ci(ci: list[float] | None) -> str:
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci and ci[0] is not None else ""


def _score(side: dict[str, Any] | None) -> str:
    if side is None:
        return "-"
    if side.get("skipped"):
        return "skipped"
    s = _fmt(side["score"])
    if len(side.get("seeds") or []) > 1:
        s += f" ±{_fmt(side['std'])}"
    return f"{s} {_ci(side.get('ci'))}".strip()


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for t in report["tasks"]:
        arrow = "" if t["higher_is_better"] else " (lower better)"
        delta = "-" if t["delta"] is None else f"{_signed(t['delta'])} {_ci(t['delta_ci'])}".strip()
        modes = [t["model"]["mode"]] + ([t["baseline"]["mode"]] if t["baseline"] else [])
        mode = "/".join(dict.fromkeys(m for m in modes if m)) or "-"
        fam = (report["aggregate"].get("family_wise") or {}).get("verdicts") or {}
        row = [t["name"], t["metric"] + arrow, mode, _score(t["model"]), _score(t["baseline"]),
               delta, t.get("verdict", "-")]
        if report["aggregate"].get("family_wise"):
            row.append(fam.get(t["name"], "-"))
        rows.append(row + [str(t["n_test"]), f"{t['wall_s']:.1f}",
                           f"{t['examples_per_s']:.3g}" if t["examples_per_s"] else "-"])
    return rows


HEADER = ["task", "metric", "mode", "model [95% CI]", "baseline [95% CI]", "delta [95% CI]", "verdict", "n_test",
          "wall_s", "ex/s"]


def header(report: dict[str, Any]) -> list[str]:
    """The table's columns; a Holm-corrected verdict column when more than three tasks are compared."""
    if not report["aggregate"].get("family_wise"):
        return HEADER
    return HEADER[:7] + ["verdict (Holm)"] + HEADER[7:]


def _dist(d: dict[str, int] | None) -> str:
    return ", ".join(f"{k} {v}" for k, v in (d or {}).items()) or "-"


def prior_lines(report: dict[str, Any]) -> list[str]:
    """Markdown rows: predicted labels, macro-F1 and prior-corrected accuracies per classification task."""
    lines = []
    for t in report["tasks"]:
        for who in ("model", "baseline"):
            side = t[who] or {}
            pri = side.get("priors")
            if not pri:
                continue
            cal = t.get("calibrated") or {}
            delta = ""
            if who == "model" and cal.get("delta") is not None:
                delta = f" ({_signed(cal['delta'])} {_ci(cal.get('delta_ci'))})"
            lines.append(f"| {t['name']} | {who} | {_fmt(side['score'])} | {_fmt(pri.get('macro_f1'))} | "
                         f"{_fmt(pri.get('acc_norm'))} | {_fmt(pri.get('acc_calibrated'))}{delta} | "
                         f"{_dist(pri.get('predicted'))} | {_dist(t.get('gold_distribution'))} |")
    return lines


def print_table(report: dict[str, Any]) -> None:
    """A plain fixed-width table on stdout."""
    cols = header(report)
    rows = [cols] + table_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    print(f"\nbench: {report['model']}" + (f" vs {report['baseline']}" if report["baseline"] else "") +
          f" on {report['suite']}")
    for k, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))
    macro = report["aggregate"]["blurb_style_macro"]
    if macro["model"] is not None:
        line = f"BLURB-style macro average: model {_fmt(macro['model'])}"
        if macro["baseline"] is not None:
            line += f", baseline {_fmt(macro['baseline'])}, delta {macro['delta']:+.3f}"
        print(line)
    for line in reference_lines(report):
        print(line)
    fw = report["aggregate"].get("family_wise")
    if fw:
        print(f"Holm-corrected over {fw['tasks_compared']} tasks (family-wise alpha {fw['alpha']}): better: "
              f"{', '.join(fw['better']) or 'none'}; worse: {', '.join(fw['worse']) or 'none'}")
    for t in report["tasks"]:
        pri = t["model"].get("priors") if t["model"] else None
        if pri:
            line = f"{t['name']}: predicted {_dist(pri['predicted'])} (gold {_dist(t.get('gold_distribution'))}); " \
                   f"macro-F1 {_fmt(pri['macro_f1'])}"
            if pri.get("acc_calibrated") is not None:
                line += f", acc_norm {_fmt(pri['acc_norm'])}, calibrated acc {_fmt(pri['acc_calibrated'])}"
            print(line)
    for role, p in report["perplexity"].items():
        m = p["model"] or {}
        line = f"{role} perplexity ({p['task']}): model per-token {_fmt(m.get('per_token'))}, per-word " \
               f"{_fmt(m.get('per_word'))}"
        if p.get("baseline"):
            line += f"; baseline per-token {_fmt(p['baseline'].get('per_token'))}, per-word " \
                    f"{_fmt(p['baseline'].get('per_word'))}"
        print(line)


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Benchmark: {report['model']}" + (f" vs {report['baseline']}" if report["baseline"] else ""), "",
             f"Suite `{report['suite']}`, device {report['device']}, {report['bootstrap']} bootstrap resamples "
             f"(95% percentile CIs; deltas paired), created {report['created']}.", "",
             "| " + " | ".join(header(report)) + " |", "|" + "---|" * len(header(report))]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(report)]
    lines += ["", "`verdict`: better or worse only when the paired 95% interval of the delta excludes 0."]
    fw = report["aggregate"].get("family_wise")
    if fw:
        lines += [f"`verdict (Holm)`: the same question for all {fw['tasks_compared']} compared tasks at once, "
                  f"Holm-corrected so that the chance of any false better/worse stays under {fw['alpha']} "
                  f"(better: {', '.join(fw['better']) or 'none'}; worse: {', '.join(fw['worse']) or 'none'})."]
    priors = prior_lines(report)
    if priors:
        lines += ["", "## Answer priors", "",
                  "A gain that only shifts the answer prior moves accuracy but not macro-F1 or the prior-corrected "
                  "accuracies: `acc_norm` is lm-eval's (log-likelihood per character of the choice), `calibrated` "
                  "is batch calibration (each choice's probability divided by its mean over the test items; "
                  "Zhou et al. 2024), with the paired delta against the baseline.", "",
                  "| task | who | score | macro-F1 | acc_norm | calibrated acc | predicted labels | gold labels |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += priors
    macro = report["aggregate"]["blurb_style_macro"]
    if macro["model"] is not None:
        lines += ["", "## BLURB-style macro average", "",
                  "Mean over task families of the mean task score in each family (perplexity excluded).", "",
                  "| family | model | baseline |", "|---|---|---|"]
        lines += [f"| {f} | {_fmt(v['model'])} | {_fmt(v['baseline'])} |" for f, v in macro["families"].items()]
        lines.append(f"| **macro** | **{_fmt(macro['model'])}** | **{_fmt(macro['baseline'])}** |")
    refs = reference_lines(report)
    if refs:
        lines += ["", "## Published reference and protocol", ""] + [f"    {r}" for r in refs]
    files = [(t["name"], f) for t in report["tasks"] for f in (t.get("data_files") or [])]
    if files:
        lines += ["", "## Data files", "", "| task | file | sha256 | pinned in the task file |", "|---|---|---|---|"]
        lines += [f"| {name} | {f['path']} | `{f['sha256']}` | {'yes' if f['pinned'] else 'no (recorded only)'} |"
                  for name, f in files]
    if report["perplexity"]:
        lines += ["", "## Held-out perplexity", "", "| text | model | per token | per char | per word | bits/char |",
                  "|---|---|---|---|---|---|"]
        for role, p in report["perplexity"].items():
            for who in ("model", "baseline"):
                v = p.get(who)
                if v:
                    lines.append(f"| {role} ({p['task']}) | {who} | {_fmt(v.get('per_token'))} | "
                                 f"{_fmt(v.get('per_char'))} | {_fmt(v.get('per_word'))} | "
                                 f"{_fmt(v.get('bits_per_char'))} |")
    notes = [(t["name"], n) for t in report["tasks"] for n in
             t["notes"] + t["model"]["notes"] + ((t["baseline"] or {}).get("notes") or [])]
    skipped = [(t["name"], side, t[side]["skipped"]) for t in report["tasks"] for side in ("model", "baseline")
               if t[side] and t[side].get("skipped")]
    if notes or skipped:
        lines += ["", "## Notes", ""]
        lines += [f"- {name}: {note}" for name, note in dict.fromkeys(notes)]
        lines += [f"- {name}: skipped for the {side}: {why}" for name, side, why in skipped]
    return "\n".join(lines) + "\n"


def chart(report: dict[str, Any], path: Path) -> None:
    """Grouped bars (model vs baseline) with CI whiskers; perplexities on their own log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [[t for t in report["tasks"] if t["higher_is_better"]],
              [t for t in report["tasks"] if not t["higher_is_better"]]]
    groups = [g for g in groups if g]
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(6 * max(1, len(groups)), 0.6 * max(
        [len(g) for g in groups] or [1]) + 2.5), squeeze=False)
    for ax, group in zip(axes[0], groups or [[]], strict=False):
        names = [t["name"] for t in group]
        y = list(range(len(group)))
        for k, (who, color) in enumerate((("model", "tab:blue"), ("baseline", "tab:gray"))):
            vals, errs = [], [[], []]
            for t in group:
                side = t[who] or {}
                v = side.get("score")
                vals.append(v if v is not None else 0.0)
                ci = side.get("ci") or [v, v]
                lo = ci[0] if ci and ci[0] is not None else v
                hi = ci[1] if ci and ci[1] is not None else v
                errs[0].append(max(0.0, (v or 0) - (lo or 0)))
                errs[1].append(max(0.0, (hi or 0) - (v or 0)))
            if who == "baseline" and not report["baseline"]:
                continue
            label = report[who] if who == "model" else f"baseline: {report['baseline']}"
            ax.barh([i + (0.2 if k else -0.2) for i in y], vals, height=0.38, xerr=errs, color=color, label=label,
                    capsize=3)
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        lower = group and not group[0]["higher_is_better"]
        ax.set_xlabel("perplexity (lower is better)" if lower else "score (higher is better)")
        if lower:
            ax.set_xscale("log")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"{report['suite']}: {report['model']}" + (f" vs {report['baseline']}" if report["baseline"] else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _hash_input(path: str) -> dict[str, Any]:
    """sha256 of a file, or of the sorted (name, sha256) list of a folder's files."""
    import hashlib

    from domainlm.artifacts import sha256_file

    p = Path(path)
    if p.is_file():
        return {"path": path, "sha256": sha256_file(p), "bytes": p.stat().st_size}
    h, size = hashlib.sha256(), 0
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(f"{f.relative_to(p)}\0{sha256_file(f)}\n".encode())
        size += f.stat().st_size
    return {"path": path, "sha256": h.hexdigest(), "bytes": size}


def write_report(out: Path, report: dict[str, Any], config, specs: list[TaskSpec], data: dict[str, TaskData]) -> None:
    """report.json, report.md, comparison.png and manifest.json, all or nothing."""
    from domainlm.artifacts import (
        atomic_dir,
        atomic_write_json,
        atomic_write_text,
        sha256_file,
        write_manifest,
    )
    from domainlm.config import to_dict

    inputs = []
    for spec in specs:
        if spec.source and Path(spec.source).is_file():
            inputs.append({"task": spec.task_name, "split": "task", "path": spec.source,
                           "sha256": sha256_file(spec.source)})
        if spec.format == "harness":  # lm-eval resolves the data itself; its task YAML is hashed above
            continue
        for split, path in data[spec.task_name].files.items():
            inputs.append({"task": spec.task_name, "split": split, **_hash_input(path)})
    with atomic_dir(out) as tmp:
        atomic_write_json(tmp / "report.json", report)
        atomic_write_text(tmp / "report.md", markdown(report))
        chart(report, tmp / "comparison.png")
        write_manifest(tmp, "bench", config=to_dict(config), inputs=inputs,
                       counts={"tasks": len(specs), "test_examples": {t["name"]: t["n_test"] for t in report["tasks"]},
                               "skipped_records": {t["name"]: t["skipped_records"] for t in report["tasks"]
                                                   if t.get("skipped_records")}},
                       wall_time_s=report["wall_s"],
                       metrics={t["name"]: {"metric": t["metric"], "model": t["model"]["score"],
                                            "baseline": (t["baseline"] or {}).get("score"), "delta": t["delta"]}
                                for t in report["tasks"]},
                       notes="per-task notes, skips and settings are in report.json")
