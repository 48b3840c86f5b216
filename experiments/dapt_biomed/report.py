"""Stage 4 of the DAPT experiment: experiments/DAPT_BIOMED.md (verdict first, then every number it rests on),
.json and .png, from what WORK holds (run manifests and bench reports); nothing is typed in."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .arms import ARMS, GROUPS, arm_model, reference
from .reading import (
    RAW_TEXT_TASKS,
    _fmt,
    _goal_lines,
    _mean_tps,
    _reading,
    _sfmt,
    _task_keys,
    _tok,
    _verdict,
    merge_reading,
    replication,
    trend,
)
from .run import read_run

TASK_LABELS = {("ncbi", "ner"): "NCBI-disease NER", ("ncbi-ft", "ner"): "NCBI-disease NER (fine-tuned)",
               ("bc5cdr-ft", "ner_pubtator"): "BC5CDR NER (fine-tuned)",
               ("bc5cdr", "ner"): "BC5CDR NER", ("cls", "relation"): "ChemProt",
               ("cls", "doccls"): "HoC", ("cls", "pubmedqa"): "PubMedQA", ("pqa", "pubmedqa"): "PubMedQA",
               ("ppl", "perplexity"): "held-out corpus docs, ppl/word",
               ("ppl", "general_perplexity"): "WikiText-2 test, ppl/word",
               ("pubmed", "perplexity"): "real PubMed abstracts, ppl/word"}


MERGE_NOT_RUN = (
    "The merge arms ({arms}) are `domainlm merge --select` on their source arm: a linear merge back into SmolLM2 at "
    "weights 0.25, 0.5 and 0.75, chosen on dev splits only (BC5CDR devel as the domain task; PubMedQA's labelled "
    "questions outside its test ids, all 500, and WikiText-2 valid as guards, Holm over the guards), then "
    "scored like every arm. They need their source runs (~40 min of one core each) and were not measured, so "
    "whether a merge keeps the BC5CDR gain while removing the PubMedQA loss is still open.")


def collect(work: Path) -> dict[str, Any]:
    """Every finished arm's run manifest and bench reports, from the work folder."""

    arms: dict[str, Any] = {}
    for arm in ARMS:
        run_dir = work / "runs" / arm
        try:
            man = read_run(run_dir)
        except Exception:
            continue
        cfg = man["config"]
        entry = {"arm": arm, "model": cfg["model"] if "init" not in ARMS[arm] else arm_model(arm),
                 "init": ARMS[arm].get("init"), "corpus": ARMS[arm].get("corpus", "domain"),
                 "method": man["method"], "lr": cfg["lr"], "body_lr_ratio": cfg.get("body_lr_ratio", 1.0),
                 "head_warmup_steps": min(cfg.get("head_warmup_steps", 0), man["steps"]), "seed": cfg["seed"],
                 "replay_fraction": man["stream"]["replay_fraction_actual"], "steps": man["steps"],
                 "tokens": man["tokens_trained"], "flops": man["flops"]["total"], "wall_s": man["wall_time_s"],
                 "tokens_per_s": man["tokens_per_s"], "adapt_metrics": man["metrics"], "tasks": {}}
        entry["head_to_head"] = {}
        if man.get("merge"):  # a merge arm: the weight merge --select chose on the dev splits, and why
            entry["merge"] = {k: man["merge"].get(k) for k in ("method", "weight", "other", "selection")}
            sel = run_dir / "selection.json"
            if sel.is_file():  # every swept weight's dev numbers, for the report's dev table
                s = json.loads(sel.read_text())
                entry["merge"].update(selection_verdict=s.get("verdict"), weights=s.get("weights"),
                                      points=[{"weight": p["weight"], "allowed": p["allowed"],
                                               "tasks": p["tasks"]} for p in s.get("points", [])],
                                      domain_tasks=s.get("domain_tasks"), guard_tasks=s.get("guard_tasks"))
        cman = work / "corpora" / f"{entry['corpus']}-{arm_model(arm)}" / "manifest.json"
        if cman.is_file():  # tokens in one pass over the training corpus (epochs = tokens / this)
            entry["corpus_train_tokens"] = json.loads(cman.read_text())["splits"]["train"]["tokens"]
        for group in GROUPS:
            hits = sorted((work / "bench").glob(f"{arm}-vs-*/{group}/report.json"))
            for path in hits:
                rep = json.loads(path.read_text())
                against = path.parent.parent.name[len(arm) + 4:]
                pair = against != reference(arm, group)
                for t in rep["tasks"]:
                    (entry["head_to_head"] if pair else entry["tasks"])[f"{group}/{t['name']}"] = {
                        "label": TASK_LABELS.get((group, t["name"]), f"{group}/{t['name']}"),
                        "metric": t["metric"], "higher_is_better": t["higher_is_better"], "against": rep["baseline"],
                        "model": t["model"]["score"], "model_ci": t["model"]["ci"],
                        "baseline": (t["baseline"] or {}).get("score"), "delta": t["delta"],
                        "delta_ci": t["delta_ci"], "n_test": t["n_test"], "mode": t["mode"],
                        "model_seeds": t["model"].get("seeds"), "baseline_seeds": (t["baseline"] or {}).get("seeds")}
        arms[arm] = entry
    return arms


def _machine() -> dict[str, Any]:
    from domainlm.device import SIMD_FLAGS, cpu_flags, cpu_name

    present = cpu_flags()
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "flags": {f: f in present for f in SIMD_FLAGS},
            "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "note": "MiniLM arms ran while the machine was shared with other agents' jobs (two sessions, 4-8 jobs at "
                    "a time), so their timings are pessimistic; SmolLM2 arms ran on an otherwise idle machine, two "
                    "processes of one thread each (one arm training beside another's scoring)"}


def plot(arms: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    keys = ["ncbi/ner", "bc5cdr/ner", *RAW_TEXT_TASKS, "pqa/pubmedqa"]
    scored = sorted(((n, a) for n, a in arms.items() if any(k in a["tasks"] for k in keys)),
                    key=lambda kv: (kv[1]["model"], kv[1]["tokens"]))  # the head-only reference has no task row
    for i, (_name, a) in enumerate(scored):
        for j, k in enumerate(keys):
            t = a["tasks"].get(k)
            if not t or t["delta"] is None or not t["delta_ci"]:
                continue
            y = i + (j - 2) * 0.12
            ax.errorbar(t["delta"], y, xerr=[[t["delta"] - t["delta_ci"][0]], [t["delta_ci"][1] - t["delta"]]],
                        fmt="o", color=f"C{j}", label=t["label"] if i == 0 or k not in ax.get_legend_handles_labels()[1]
                        else None, capsize=2)
    names = [n for n, _ in scored]
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("task score delta vs the base model (paired 95% CI)")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=True))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="best")
    ax = axes[1]
    style = {"minilm": ("o", "C0", "MiniLM (whole-word MLM)"), "smollm2": ("s", "C3", "SmolLM2-135M (causal LM)")}
    at: dict[int, int] = {}  # arms at the same budget are spread a little sideways so their CIs do not overlap
    for name, a in sorted(arms.items(), key=lambda kv: (kv[1]["model"], kv[0])):
        t = a["tasks"].get("ncbi/ner")
        if t and t["delta"] is not None:
            marker, color, label = style.get(a["model"], ("^", "C7", a["model"]))
            x = a["tokens"] * 1.06 ** at.setdefault(a["tokens"], 0)
            at[a["tokens"]] += 1
            shown = ax.get_legend_handles_labels()[1]
            ax.errorbar(x, t["delta"], yerr=[[t["delta"] - t["delta_ci"][0]], [t["delta_ci"][1] - t["delta"]]],
                        fmt=marker, color=color, capsize=3, label=None if label in shown else label)
            ax.annotate(name.replace("minilm-", "").replace("smollm2-", "s-"), (x, t["delta"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    tr = trend(arms)
    if tr and tr["fit"]:
        import numpy as np

        xs = np.logspace(5, 7.5, 50)
        ax.plot(xs, tr["fit"]["intercept"] + tr["fit"]["slope_per_decade"] * np.log10(xs), "k--", lw=0.8,
                label="fit over MiniLM warm-up budgets")
    ax.legend(fontsize=7)
    ax.set_xscale("log")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("adaptation tokens")
    ax.set_ylabel("NCBI-disease entity F1 delta vs base")
    names = {"minilm": "MiniLM", "smollm2": "SmolLM2-135M"}
    present = ", ".join(names.get(m, m) for m in sorted({a["model"] for a in arms.values()}))
    fig.suptitle(f"DAPT on real biomedical text ({present}): task deltas with paired 95% CIs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(out: Path, work: Path, realdata: Path, decon: dict[str, Any], data_info: dict[str, Any], *,
              quick: bool, wall_s: float) -> None:
    arms = collect(work)
    machine = _machine()
    tr = trend(arms)
    result = {"arms": arms, "decontamination": decon, "data": data_info, "trend_ncbi": tr,
              "trend_bc5cdr": trend(arms, key="bc5cdr/ner"), "machine": machine,
              "quick": quick, "wall_s_this_call": wall_s,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(str(out) + ".json").write_text(json.dumps(result, indent=2, default=str))
    plot(arms, Path(str(out) + ".png"))
    Path(str(out) + ".md").write_text(render(result, out.name))


def render(r: dict[str, Any], stem: str) -> str:
    arms = r["arms"]
    L: list[str] = ["# Does domain-adaptive pretraining help? Real biomedical data, real tasks, a forgetting bill", ""]
    L += ["Written by `python experiments/dapt_biomed --realdata ../shared/realdata` (numbers in "
          f"`{stem}.json`, picture `{stem}.png`). Every number below comes from the run folders; nothing is typed in.",
          ""]
    # ---- verdict
    L += ["## Verdict", ""]
    gains, losses = [], []
    for name, a in arms.items():
        for k, t in a["tasks"].items():
            v = _verdict(t)
            item = f"`{name}` on {t['label']}: {_sfmt(t['delta'])} [{_sfmt(t['delta_ci'][0])}, {_sfmt(t['delta_ci'][1])}]" \
                if t["delta_ci"] else None
            if item and v == "better" and not k.startswith(("ppl/", "pubmed/")):
                gains.append(item)
            elif item and v == "worse" and not k.startswith(("ppl/", "pubmed/")):
                losses.append(item)
    n_cmp = sum(len(_task_keys(a)) for a in arms.values())
    if gains:
        L.append("- **Significant task gains (paired 95% CI above 0):** " + "; ".join(gains) + f". Each CI is a "
                 f"separate 95% interval; {n_cmp} arm-task comparisons are in this file, no correction for multiple "
                 f"comparisons (about {0.025 * n_cmp:.1f} spurious gains expected if nothing worked), so a gain "
                 "counts most where it repeats across seeds and tasks (below).")
    else:
        L.append("- **No arm improved any task with a paired 95% CI above 0.** The goal (one real task with a "
                 "significant gain and no significant loss) is **not met**.")
    L.append("- **Significant task losses (CI below 0):** " + ("; ".join(losses) + "." if losses else "none."))
    L += _goal_lines(arms)
    L += merge_reading(arms)
    if rep := replication(arms):
        L.append("- **Seeds (same recipe and budget, seed 0 vs seed 1):** " + "; ".join(rep) + ".")
    forget = []
    for name, a in arms.items():
        t = a["tasks"].get("ppl/general_perplexity")
        if t and t.get("delta") is not None:
            forget.append(f"`{name}` {_sfmt(t['delta'], 1)} ({_verdict(t)}; vs `{t['against'].split('/')[-1]}`)")
    if forget:
        L.append("- **Forgetting (WikiText-2 test, per-word perplexity change):** " + "; ".join(forget) + ".")
    gain = []
    for name, a in arms.items():
        t = a["tasks"].get("ppl/perplexity")
        if t and t.get("delta") is not None:
            gain.append(f"`{name}` {_fmt(t['baseline'], 1)} -> {_fmt(t['model'], 1)} ({_verdict(t)}; vs "
                        f"`{t['against'].split('/')[-1]}`)")
    if gain:
        L.append("- **Domain gain (held-out corpus documents, per-word perplexity):** " + "; ".join(gain) + ".")
    for key, label in (("trend_ncbi", "NCBI-disease"), ("trend_bc5cdr", "BC5CDR")):
        tr = r.get(key) or {}
        if tr.get("fit"):
            f = tr["fit"]
            s = (f"- **Trend ({label}, warm-up recipe, {len(tr['points'])} runs at "
                 f"{', '.join(_tok(b) for b in sorted({p[0] for p in tr['points']}))} tokens):** "
                 f"{f['slope_per_decade']:+.3f} F1 per 10x tokens; ")
            s += (f"at this slope the fitted gain clears the mean CI half-width (±{f['ci_half_width']:.3f}) from about "
                  f"{f['tokens_for_significant_gain']:.2g} adaptation tokens." if "tokens_for_significant_gain" in f
                  else "the line does not rise over this range: more tokens did not add to the gain here.")
            L.append(s)
    L += _reading(arms)
    L.append("")
    # ---- arms
    L += ["## Arms (each a real `domainlm adapt` run)", "",
          "| arm | model | method | lr head / body | head warm-up steps | corpus | replay | seed | tokens | steps | "
          "FLOPs | wall s | tokens/s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, a in arms.items():
        corpus = a["corpus"] + (f" (after {a['init']})" if a["init"] else "")
        L.append(f"| `{name}` | {a['model']} | {a['method']} | {a['lr']:.0e} / {a['lr'] * a['body_lr_ratio']:.0e} | "
                 f"{a['head_warmup_steps']} | {corpus} | {a['replay_fraction'] or 0:.0%} | {a['seed']} | {a['tokens']:,} | "
                 f"{a['steps']} | "
                 f"{a['flops']:.2e} | {a['wall_s']:.0f} | {a['tokens_per_s']:.0f} |")
    L.append("")
    # ---- tasks
    L += ["## Tasks: arm vs base, paired 95% bootstrap CIs", "",
          "Probe mode (frozen features, logistic regression; `benchmarks/biomed/README.md`). NCBI-disease: "
          "devel trains the probe, the full test split (940 sentences) is scored; BC5CDR: devel trains, the full "
          "test split (4,797) is scored; ChemProt/HoC: half of the test file trains (seeded), half is scored; "
          "PubMedQA: the official 500-question test split (a probe for MiniLM, which is not causal; zero-shot answer "
          "scoring for SmolLM2: the mode column says which). NCBI-disease and BC5CDR "
          "(fine-tuned): the BLURB protocol (`--mode finetune`: the whole model and a linear head trained on train "
          "for 1 epoch, checkpoint chosen on devel, full test split scored), the mean of 3 seeds.", "",
          "| arm | task | mode | metric | base | arm | delta [95% CI] | verdict | n test |",
          "|---|---|---|---|---|---|---|---|---|"]
    for name, a in arms.items():
        for k, t in a["tasks"].items():
            if k.startswith(("ppl/", "pubmed/")):
                continue
            ci = f"[{_sfmt(t['delta_ci'][0])}, {_sfmt(t['delta_ci'][1])}]" if t["delta_ci"] else ""
            L.append(f"| `{name}` | {t['label']} | {t.get('mode') or '-'} | {t['metric']} | {_fmt(t['baseline'])} | "
                     f"{_fmt(t['model'])} | "
                     f"{_sfmt(t['delta'])} {ci} | {_verdict(t)} | {t['n_test']} |")
    L.append("")
    h2h = [(n, k, t) for n, a in arms.items() for k, t in a.get("head_to_head", {}).items()]
    if h2h:
        L += ["Head to head (the same test sentences, paired bootstrap): which recipe is better, whatever the base "
              "scores.", "", "| arm | against | task | against's score | arm's score | delta [95% CI] | verdict |",
              "|---|---|---|---|---|---|---|"]
        for n, _k, t in h2h:
            ci = f"[{_sfmt(t['delta_ci'][0])}, {_sfmt(t['delta_ci'][1])}]" if t["delta_ci"] else ""
            L.append(f"| `{n}` | `{str(t['against']).split('/')[-1]}` | {t['label']} | {_fmt(t['baseline'])} | "
                     f"{_fmt(t['model'])} | {_sfmt(t['delta'])} {ci} | {_verdict(t)} |")
        L.append("")
    L += _merge_section(arms)
    # ---- perplexity
    L += ["## Perplexity: domain gain and forgetting cost", "",
          "MiniLM ships no masked-LM head, so the base model's pseudo-perplexity is that of a random head. The "
          "reference for MiniLM arms is therefore `minilm-headonly-0.1m`: the same head trained with the body "
          "frozen (the base's body, a trained head). Masked models: pseudo-perplexity over the first 512 tokens "
          "of each set (one forward pass per token). SmolLM2 (causal) arms are scored against the base SmolLM2 itself: "
          "next-token perplexity per word over the first 8,192 tokens of each set.", "",
          "| arm | text | reference | reference ppl/word | arm ppl/word | delta [95% CI] | verdict |",
          "|---|---|---|---|---|---|---|"]
    for name, a in arms.items():
        for k, t in a["tasks"].items():
            if not k.startswith(("ppl/", "pubmed/")):
                continue
            ci = f"[{_sfmt(t['delta_ci'][0], 1)}, {_sfmt(t['delta_ci'][1], 1)}]" if t["delta_ci"] else ""
            L.append(f"| `{name}` | {t['label']} | `{str(t['against']).split('/')[-1]}` | {_fmt(t['baseline'], 1)} | "
                     f"{_fmt(t['model'], 1)} | {_sfmt(t['delta'], 1)} {ci} | {_verdict(t)} |")
    L.append("")
    L += ["Perplexity per token measured by `adapt` itself (MiniLM: exp of the MLM loss on 15% masked tokens; "
          "SmolLM2: next-token; 8 batches of the corpus's 5% held-out split, and of WikiText-2 valid's held-out "
          "split), start -> end of training. MiniLM's start is a random head's; the head-only arm is the reference "
          "for what the base body allows:", "",
          "| arm | domain start | domain end | general (WikiText-2 valid) start | end |", "|---|---|---|---|---|"]
    for name, a in arms.items():
        i, f = a["adapt_metrics"]["initial"], a["adapt_metrics"]["final"]
        L.append(f"| `{name}` | {_fmt(i.get('domain_ppl'), 1)} | {_fmt(f.get('domain_ppl'), 1)} | "
                 f"{_fmt(i.get('general_ppl'), 1)} | {_fmt(f.get('general_ppl'), 1)} |")
    L.append("")
    # ---- not run
    missing = [a for a in ARMS if a not in arms]
    if missing:
        L += ["## Not run", "",
              "Defined in the script but not run for this file: the 2-core CPU was shared with other agents' jobs, "
              f"so MiniLM trained at {_fmt(_mean_tps(arms), 0)} tokens/s per process on average (about 850 "
              "on the idle machine, experiments/SPEED_ADAPT.md); SmolLM2 LoRA trains at "
              + (f"{_fmt(smol_tps, 0)} tokens/s on one thread of the idle machine (the arms above)"
                 if (smol_tps := _mean_tps(arms, "smollm2")) else "about 90-140 tokens/s (experiments/SPEED_ADAPT.md)")
              + ". Each runs, with its evaluation, by:", "", "```",
              "python experiments/dapt_biomed --realdata ../shared/realdata --arms " + ",".join(missing)
              + " --full-eval all", "```", ""]
        merges = [a for a in missing if "merge" in ARMS[a]]
        if merges:
            L += [MERGE_NOT_RUN.format(arms=", ".join(f"`{a}`" for a in merges)), ""]
    gaps = {n: [g for g in GROUPS if not any(k.startswith(g + "/") for k in a["tasks"])]
            for n, a in arms.items() if n != "minilm-headonly-0.1m"}
    gaps = {n: g for n, g in gaps.items() if g}
    if gaps:
        L += ["Arms run but not scored on every evaluation group (each fills in, reusing the trained arm, by "
              "`python experiments/dapt_biomed --realdata ../shared/realdata --arms ARM --full-eval ARM --groups "
              "GROUPS`):", ""]
        L += [f"- `{n}`: {', '.join(g)}" for n, g in gaps.items()]
        L.append("")
    unscored = [g for g in GROUPS if not any(k.startswith(g + "/") for a in arms.values() for k in a["tasks"])]
    if unscored:
        L += ["Evaluation groups scored for no arm in this file: " + ", ".join(
              f"{g} ({GROUPS[g]['label']})" for g in unscored) + ". Add them with `--full-eval ARM` (BC5CDR and "
              "ChemProt/HoC/PubMedQA cost ~10-20 min of one idle core per model).", ""]
    # ---- decontamination
    d = r["decontamination"]
    # a cache made before the experiment used the engine's decontamination has no "rule" or "dropped_by": its own words
    by_split = "".join(f"; {n} {name}" for name, n in d.get("dropped_by_split", {}).items())
    L += ["## Decontamination", "",
          f"Word {d['ngram']}-grams ({d.get('rule', 'lower-cased words and punctuation marks')}). Of "
          f"{d['corpus_documents']:,} corpus pseudo-documents, **{d['dropped_documents']}** shared a {d['ngram']}-gram "
          f"with an evaluation split and were dropped {d.get('dropped_by', 'before `corpus prepare`')}"
          + (f" (by the split it matched first{by_split})" if by_split else "")
          + f". Share of each split's sentences sharing a {d['ngram']}-gram with the "
          "corpus (before the drop):", "", "| split | sentences | with >= 13 words | sharing a 13-gram | share |",
          "|---|---|---|---|---|"]
    for name, o in d["overlap_before_drop"].items():
        L.append(f"| {name} | {o['sentences']:,} | {o['sentences_with_13_words']:,} | {o['sharing_13gram']} | "
                 f"{o['share']:.2%} |")
    L += ["", f"Method: {d['method']}.", ""]
    # ---- data
    di = r["data"]
    dm = di.get("domain-minilm", {}).get("splits", {})
    L += ["## Data (read in place from `--realdata`; see its SOURCES.md)", "",
          f"- Domain corpus: `biomed_corpus/biomed_sentences.jsonl` (108k sentences from ten NER corpora, labels "
          f"dropped, 8 sentences per pseudo-document), decontaminated, then `corpus prepare` (JSONL, exact + MinHash "
          f"dedup, 5% of documents held out by id hash): train {dm.get('train', {}).get('tokens', 0):,} MiniLM tokens "
          f"in {dm.get('train', {}).get('documents', 0):,} documents; held out "
          f"{dm.get('validation', {}).get('documents', 0):,} documents (the domain perplexity set).",
          "- `smollm2-lora-detok`'s corpus: the same documents with the NER corpora's word tokenisation undone "
          "(`corpus prepare --detokenize`: \"anti - nucleolin ( 2 % )\" -> \"anti-nucleolin (2%)\"); the held-out perplexity set "
          "stays the tokenised text, so real PubMed abstracts are its domain measure.",
          "- `smollm2-lora-rc`'s corpus: the detokenised documents converted to reading comprehension (`corpus prepare "
          "--detokenize --reading-comprehension`): each followed by question/answer tasks mined from it alone, in "
          "SmolLM2's chat template (counts per task type in the prepared corpus's manifest).",
          "- Replay (the share of training sequences in the arms table's replay column) and adapt's forgetting "
          "monitor: WikiText-2 valid. General held-out "
          "text: WikiText-2 test.",
          f"- Real PubMed abstracts for domain perplexity: the {di.get('pubmed_abstracts')} records under `pubmed/` "
          "(MEDLINE text and PubMed XML).",
          "- TAPT text: the NCBI-disease training split's sentences (labels dropped).",
          "- Tasks: NCBI-disease and BC5CDR (BIO, cambridgeltl/MTL-Bioinformatics-2016), ChemProt (allenai/scibert), "
          "Hallmarks of Cancer (sb895/Hallmarks-of-Cancer, first 300 abstracts), PubMedQA PQA-L (pubmedqa/pubmedqa).",
          ""]
    m = r["machine"]
    L += ["## Machine", "",
          f"{m['cpu']}, {m['cores']} cores, flags {', '.join(k for k, v in m['flags'].items() if v)} "
          f"(absent: {', '.join(k for k, v in m['flags'].items() if not v)}), fp32 training. {m['note']}; "
          f"load average when the report was written: {', '.join(f'{x:.1f}' for x in m['load_avg'] or [])}.", ""]
    return "\n".join(L) + "\n"


def _merge_section(arms: dict[str, Any]) -> list[str]:
    """Each measured merge arm: the dev sweep merge --select judged (never a test file), then base, adapted and
    merged side by side on the test splits, with the merge's head to head against its source arm."""
    merged = [(n, a) for n, a in arms.items() if "merge" in ARMS.get(n, {}) and a.get("merge")]
    if not merged:
        return []
    L = ["## Merging back into the base (`domainlm merge --select`)", "",
         "Each merge arm is its source arm merged linearly back into SmolLM2 (`weight` on the adapted model), the "
         "weight chosen by `domainlm merge --select` on dev splits only: BC5CDR devel as the domain task (its probe "
         "trained on BC5CDR train; 500 sentences of each), PubMedQA's 500 labelled questions outside the test ids (zero-shot, so all of them) and "
         "WikiText-2 valid as guards; the rule is the best domain score with no guard significantly worse than the "
         "base (paired bootstrap, Holm over the guards). Then only the chosen model is scored on test, like every arm.",
         ""]
    for name, a in merged:
        m, src_name = a["merge"], ARMS[name]["merge"]
        src = arms.get(src_name, {"tasks": {}})
        L += [f"### `{name}`: weight {m.get('weight')} on `{src_name}`", ""]
        if m.get("selection_verdict"):
            L += [f"Selection: {m['selection_verdict']}.", ""]
        if m.get("points"):
            names = list(m["points"][0]["tasks"])
            L += ["Dev sweep (delta vs the base [95% CI], Holm verdict for guards):", "",
                  "| weight | " + " | ".join(f"{t} ({m['points'][0]['tasks'][t]['role']})" for t in names)
                  + " | allowed |", "|---" * (len(names) + 2) + "|"]
            for p in m["points"]:
                cells = []
                for t in names:
                    r = p["tasks"][t]
                    ci = f" [{_sfmt(r['delta_ci'][0])}, {_sfmt(r['delta_ci'][1])}]" if r.get("delta_ci") else ""
                    cells.append(f"{_sfmt(r.get('delta'))}{ci} {r.get('holm') or r.get('verdict')}")
                chosen = " **(chosen)**" if p["weight"] == m.get("weight") else ""
                L.append(f"| {p['weight']:g}{chosen} | " + " | ".join(cells) + f" | {'yes' if p['allowed'] else 'no'} |")
            L.append("")
        L += ["Test (the full test splits; ppl/word for perplexities, lower is better):", "",
              f"| task | base | adapted (`{src_name}`) | merged | merged - base [95% CI] | merged - adapted [95% CI] |",
              "|---|---|---|---|---|---|"]
        for k, t in a["tasks"].items():
            s, h = src["tasks"].get(k), a.get("head_to_head", {}).get(k)
            d = 1 if k.startswith(("ppl/", "pubmed/")) else 3
            ci = f"{_sfmt(t['delta'], d)} [{_sfmt(t['delta_ci'][0], d)}, {_sfmt(t['delta_ci'][1], d)}] {_verdict(t)}" \
                if t.get("delta_ci") else _sfmt(t.get("delta"), d)
            hh = (f"{_sfmt(h['delta'], d)} [{_sfmt(h['delta_ci'][0], d)}, {_sfmt(h['delta_ci'][1], d)}] {_verdict(h)}"
                  if h and h.get("delta_ci") else "-")
            L.append(f"| {t['label']} | {_fmt(t['baseline'], d)} | {_fmt(s['model'], d) if s else '-'} | "
                     f"{_fmt(t['model'], d)} | {ci} | {hh} |")
        L.append("")
    return L
