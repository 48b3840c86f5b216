"""What the DAPT experiment's numbers say: the verdict of a paired CI, the issue's goal, seed replication, the
budget trend, and the report's reading of each question (fresh head, forgetting, fine-tuning, form vs field, TAPT,
SmolLM2). Pure functions of the arm records that :func:`.report.collect` builds."""

from __future__ import annotations

from typing import Any

from .arms import ARMS

# The fine-tuned task keys, the probe each replaces, and the dataset's name in the report.
FINETUNED = [("ncbi-ft/ner", "ncbi/ner", "NCBI-disease"), ("bc5cdr-ft/ner_pubtator", "bc5cdr/ner", "BC5CDR")]
# The tasks scored on raw (not word-tokenised) text.
RAW_TEXT_TASKS = ("cls/relation", "cls/doccls", "cls/pubmedqa")


def _verdict(t: dict[str, Any]) -> str:
    ci = t.get("delta_ci")
    if not ci or ci[0] is None:
        return "no CI"
    better = t["higher_is_better"]
    if (ci[0] > 0 and better) or (ci[1] < 0 and not better):
        return "better"
    if (ci[1] < 0 and better) or (ci[0] > 0 and not better):
        return "worse"
    return "within noise"


def _fmt(x: float | None, d: int = 3) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{d}f}"


def _sfmt(x: float | None, d: int = 3) -> str:
    return "-" if x is None else (("+" if x >= 0 else "") + _fmt(x, d))


def trend(arms: dict[str, Any], key: str = "ncbi/ner", family: str = "minilm-warmup") -> dict[str, Any] | None:
    """Least-squares line of the task delta against log10(adaptation tokens) over one recipe's budgets, and
    the budget at which the line would clear the mean CI half-width (a significant gain), if it rises."""
    pts = [(a["tokens"], a["tasks"][key]["delta"], a["tasks"][key]["delta_ci"]) for n, a in arms.items()
           if n.startswith(family) and key in a["tasks"] and a["tasks"][key]["delta"] is not None
           and a["corpus"] == "domain" and a["init"] is None]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return {"points": pts, "fit": None}
    import numpy as np

    x = np.log10([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    slope, icpt = np.polyfit(x, y, 1)
    half = float(np.mean([(p[2][1] - p[2][0]) / 2 for p in pts if p[2]]))
    out = {"points": pts, "fit": {"slope_per_decade": float(slope), "intercept": float(icpt), "ci_half_width": half}}
    if slope > 0:
        out["fit"]["tokens_for_significant_gain"] = float(10 ** ((half - icpt) / slope))
    return out


def _mean_tps(arms: dict[str, Any], model: str = "minilm") -> float | None:
    v = [a["tokens_per_s"] for a in arms.values() if a["model"] == model and a["tokens_per_s"]]
    return sum(v) / len(v) if v else None


def _reading(arms: dict[str, Any]) -> list[str]:
    """What the MiniLM arms say about the issue's question (fresh head vs body), from the numbers."""
    def ncbi(name: str) -> dict[str, Any] | None:
        return arms.get(name, {}).get("tasks", {}).get("ncbi/ner")

    rec, warm = ncbi("minilm-recipe-0.1m"), ncbi("minilm-warmup-0.1m")
    out = []
    if rec and warm and rec["delta"] is not None and warm["delta"] is not None:
        h2h = arms["minilm-warmup-0.1m"].get("head_to_head", {}).get("ncbi/ner")
        vs = (f" (head to head {_sfmt(h2h['delta'])} [{_sfmt(h2h['delta_ci'][0])}, {_sfmt(h2h['delta_ci'][1])}], "
              f"{_verdict(h2h)})") if h2h and h2h.get("delta_ci") else ""
        out.append(f"- **The fresh-head effect.** The shipped `matscibert-style` settings (fresh MLM head and body "
                   f"together at lr 3e-4) moved NCBI-disease F1 by {_sfmt(rec['delta'])} after "
                   f"{arms['minilm-recipe-0.1m']['tokens']:,} tokens (the issue measured 0.423 -> 0.399 after 614k). "
                   f"Training the head alone for the first "
                   f"{arms['minilm-warmup-0.1m']['head_warmup_steps']} steps and the body at a tenth of the lr "
                   f"(`head_warmup_steps`, `body_lr_ratio`, new adapt options) moved it by {_sfmt(warm['delta'])} "
                   f"on the same data and budget{vs}.")
    ref = arms.get("minilm-headonly-0.1m", {}).get("adapt_metrics", {}).get("final", {}).get("general_ppl")
    others = {n: a["adapt_metrics"]["final"].get("general_ppl") for n, a in arms.items()
              if a["model"] == "minilm" and n != "minilm-headonly-0.1m"}
    if ref and others and all(v is not None for v in others.values()):
        lower = all(v < ref for v in others.values())
        out.append("- **Forgetting bill (MiniLM).** General-text (WikiText-2) masked-token perplexity at the end: "
                   + ", ".join(f"`{n}` {_fmt(v, 0)}" for n, v in others.items())
                   + f", against {_fmt(ref, 0)} for the head-only reference (the base body with a trained head). "
                   + ("Every arm is lower: training the body made MiniLM a better masked LM on general text too, so "
                      "perplexity shows no forgetting cost here. What all-MiniLM-L6-v2 was tuned for (sentence "
                      "embeddings) is not measured by it." if lower else
                      "Arms above the reference lost general-text modelling ability."))
    dom = {n: a["tasks"].get("ppl/perplexity", {}).get("model") for n, a in arms.items()}
    if rec and warm and dom.get("minilm-recipe-0.1m") and dom.get("minilm-warmup-0.1m"):
        lower = dom["minilm-recipe-0.1m"] < dom["minilm-warmup-0.1m"]
        if lower and rec["delta"] < warm["delta"]:
            out.append(f"- **Lower masked-LM perplexity did not mean better features.** At the same 100k-token budget "
                       f"the shipped settings reached a lower held-out domain pseudo-perplexity than head-first "
                       f"({_fmt(dom['minilm-recipe-0.1m'], 0)} per word vs {_fmt(dom['minilm-warmup-0.1m'], 0)}) and "
                       "a worse NCBI-disease probe: the body moved further towards predicting masked words, and the "
                       "frozen-feature probe got worse.")
    seeds = [n for n in arms if n.startswith("minilm-warmup-") and n.endswith("-s1")]
    if not seeds:
        out.append("- **One seed per arm.** The second seed of the warm-up arm did not fit in this session; a "
                   "single seed cannot separate a recipe effect of this size from seed noise.")
    budgets = sorted({a["tokens"] for n, a in arms.items() if n.startswith("minilm-warmup-") and a["init"] is None})
    defined = sorted({ARMS[n]["tokens"] for n in ARMS if n.startswith("minilm-warmup-")})
    not_run = [t for t in defined if not any(abs(b - t) / t < 0.05 for b in budgets)]
    all_keys = {k for a in arms.values() for k in _task_keys(a)}
    met_all = [m for m in goal(arms) if len(m["scored_on"]) == len(all_keys)]
    head = ("What would make the gain firmer" if met_all else
            "What would most likely reach the goal" if goal(arms) else "What would most likely reach a significant gain")
    head += " (MiniLM)"
    more = [(n, k, t) for n, a in arms.items() if n.startswith("minilm-warmup-") and a["init"] is None
            for k, t in a.get("head_to_head", {}).items() if str(t["against"]).split("/")[-1].startswith("minilm-warmup-")]
    budget_txt = (f"run here: {', '.join(_tok(b) for b in budgets) or 'none'}"
                  + (f"; defined, not run: {', '.join(_tok(t) for t in not_run)}" if not_run else "")
                  + "; Gururangan et al.'s DAPT ran 12.5k steps of 2,048 sequences, billions of tokens")
    tokens_txt = f"more tokens with the warm-up recipe ({budget_txt})"
    finetune_txt = ("the fine-tuning protocol instead of a frozen-feature probe (DAPT changes what the body encodes; a "
                    "probe on frozen features of a sentence-embedding model measures how much of that survives, not "
                    "what a fine-tuned model can use; `benchmarks/biomed/realdata-blurb.overrides` is ready)")
    ft = [(n, name, a["tasks"][key], a["tasks"].get(probe_key)) for key, probe_key, name in FINETUNED
          for n, a in arms.items() if key in a["tasks"]]
    for n, name, t, probe in ft:
        seeds = (f"; per seed, base {', '.join(f'{x:.3f}' for x in t['baseline_seeds'])} and arm "
                 f"{', '.join(f'{x:.3f}' for x in t['model_seeds'])}") if t.get("model_seeds") and \
            t.get("baseline_seeds") else ""
        out.append(f"- **Fine-tuned instead of probed** (BLURB protocol on {name}: train on train, select on dev, "
                   f"score the full test split, 1 epoch, {len(t.get('model_seeds') or [])} seeds): `{n}` vs base "
                   f"{_fmt(t['baseline'])} -> {_fmt(t['model'])}, {_ci_str(t)}{seeds}"
                   + (f"; the probe on the same arm: {_ci_str(probe)}" if probe else "") + ".")
    if ft:
        done = sorted({name for _n, name, _t, _p in ft}, key=[f[2] for f in FINETUNED].index)
        finetune_txt = (f"the fine-tuning protocol on the other tasks (measured here on {' and '.join(done)} only, "
                        "above) and a longer fine-tuning budget than 1 epoch")
    no_more = more and not any(_verdict(t) == "better" for _n, _k, t in more)
    h2h = "; ".join(f"`{n}` vs `{str(t['against']).split('/')[-1]}` on {t['label']} {_ci_str(t)}" for n, _k, t in more)
    fresh_head = (" A base model that ships its MLM head (BERT, PubMedBERT-style) removes the fresh-head problem "
                  "altogether.")
    if ft and no_more and not any(_verdict(t) == "better" for _n, _name, t, _p in ft):
        fresh_head = ""  # this branch names the base model with its own head as the route
        s = (f"- **{head}:** fine-tuning removed the probes' gains (none of {len(ft)} fine-tuned comparisons on "
             f"{' and '.join(done)} is above 0, above) and more tokens alone did not add a measurable gain (head to "
             f"head: {h2h}). So the likeliest route is a base model that ships its MLM head (BERT, PubMedBERT-style: "
             f"no fresh head to train) with far more tokens ({budget_txt}); not run here: fine-tuning longer than "
             "1 epoch, and ChemProt/HoC under the fine-tuning protocol.")
    elif no_more:
        s = (f"- **{head}:** first {finetune_txt}; then a second seed of the larger budgets. More tokens alone did not "
             f"add a measurable gain over the budgets run here (head to head: {h2h}), so {tokens_txt} come after.")
    else:
        s = f"- **{head}:** first {tokens_txt}, then {finetune_txt}."
    out.append(s + fresh_head + " Vocabulary extension was not tested here.")
    if any(k.startswith(("ncbi/", "bc5cdr/")) and _verdict(t) == "better" for a in arms.values()
           for k, t in a["tasks"].items()):
        out.append("- **Caveat on what the gain covers.** The adaptation corpus is ten other NER corpora's sentences "
                   "(none of NCBI-disease or BC5CDR; 13-gram-decontaminated), tokenised the same way as the NER "
                   "evaluation text (\"IL - 2 ( 10 ng / ml )\"). Part of a NER gain may be adaptation to that "
                   "text style as well as to the field; the ChemProt/HoC/PubMedQA rows (raw text) separate the two "
                   "where they were scored."
                   + "".join(f" `{n}` on raw-text tasks: " + "; ".join(
                       f"{a['tasks'][k]['label']} {_ci_str(a['tasks'][k])}" for k in a["tasks"] if k.startswith("cls/"))
                       + "." for n, a in arms.items() if any(k.startswith("cls/") for k in a["tasks"])))
    out += _tapt_reading(arms)
    out += _smol_reading(arms)
    out += _minilm_form_reading(arms)
    return out


def _tok(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _ci_str(t: dict[str, Any], d: int = 3) -> str:
    return (f"{_sfmt(t['delta'], d)} [{_sfmt(t['delta_ci'][0], d)}, {_sfmt(t['delta_ci'][1], d)}] ({_verdict(t)})"
            if t.get("delta_ci") else f"{_sfmt(t.get('delta'), d)} (no CI)")


def _task_keys(a: dict[str, Any]) -> list[str]:
    return [k for k in a["tasks"] if not k.startswith(("ppl/", "pubmed/"))]


def goal(arms: dict[str, Any]) -> list[dict[str, Any]]:
    """Arms meeting the issue's goal: at least one task with a significant gain and no significant loss on any
    other task this arm was scored on. Returned with the tasks they were scored on (one task is a weak test)."""
    met = []
    for name, a in arms.items():
        keys = _task_keys(a)
        verdicts = {k: _verdict(a["tasks"][k]) for k in keys}
        if any(v == "better" for v in verdicts.values()) and not any(v == "worse" for v in verdicts.values()):
            met.append({"arm": name, "better": [a["tasks"][k]["label"] for k, v in verdicts.items() if v == "better"],
                        "scored_on": [a["tasks"][k]["label"] for k in keys]})
    return met


def _goal_lines(arms: dict[str, Any]) -> list[str]:
    """The goal stated against task coverage: an arm scored on fewer tasks than the others can only meet it on
    those, so arms scored on every task come first."""
    all_keys = {k for a in arms.values() for k in _task_keys(a)}
    labels = {k: t["label"] for a in arms.values() for k, t in a["tasks"].items()}
    met = {m["arm"]: m for m in goal(arms)}
    full = [n for n, a in arms.items() if all_keys and set(_task_keys(a)) == all_keys]
    head = "- **The issue's goal (a significant gain on a real task, no significant loss on the others):** "

    def summary(n: str) -> str:
        t = arms[n]["tasks"]
        g = [t[k]["label"] for k in _task_keys(arms[n]) if _verdict(t[k]) == "better"]
        w = [t[k]["label"] for k in _task_keys(arms[n]) if _verdict(t[k]) == "worse"]
        return f"`{n}` (gains: {', '.join(g) or 'none'}; losses: {', '.join(w) or 'none'})"

    full_met = [n for n in full if n in met]
    if full_met:
        s = head + f"met by {', '.join(summary(n) for n in full_met)}, scored on all {len(all_keys)} tasks."
    elif full:
        s = head + (f"**not met** by any arm scored on all {len(all_keys)} tasks: "
                    + "; ".join(summary(n) for n in full) + ".")
    else:
        s = head + ("**not met** by any arm." if not met else "")
    partial = [n for n in met if n not in full]
    parts = []
    for n in partial:
        a = arms[n]
        unscored = sorted(all_keys - set(_task_keys(a)))
        # a task this arm was not scored on counts against it only where an arm of the same model lost on it
        lost = [labels[k] for k in unscored if any(o["model"] == a["model"] and _verdict(o["tasks"].get(k, {})) == "worse"
                                                   for o in arms.values())]
        txt = f"`{n}` (gains on {', '.join(met[n]['better'])}; not scored on {', '.join(labels[k] for k in unscored)})"
        if lost:
            txt += f": untested where another {a['model']} arm lost ({', '.join(lost)}), so this is not the goal met"
        else:
            peers = [labels[k] for k in unscored if any(o["model"] == a["model"] and k in o["tasks"]
                                                         for o in arms.values())]
            others = (f"no other {a['model']} arm lost on the others ({', '.join(peers)} scored for another arm)"
                      if peers else f"no {a['model']} arm was scored on the others")
            txt += (f": no significant loss on the {len(_task_keys(a))} tasks it was scored on, and {others}, so the "
                    f"goal is met on those {len(_task_keys(a))} tasks")
        worse = [f"{t['label'].split(',')[0]} {_ci_str(t, 1)}" for k, t in a["tasks"].items()
                 if k.startswith(("ppl/", "pubmed/")) and _verdict(t) == "worse"]
        if worse:
            txt += " (but perplexity rose on " + "; ".join(worse) + ")"
        parts.append(txt)
    if parts:
        s += " Met on a subset of the tasks only by " + "; ".join(parts) + "."
    return [s.strip()]


def replication(arms: dict[str, Any]) -> list[str]:
    """Per task, the same recipe and budget under seed 0 and seed 1 (arm names X and X-s1)."""
    out = []
    for name, a in arms.items():
        if not name.endswith("-s1") or name[:-3] not in arms:
            continue
        b = arms[name[:-3]]
        for k in _task_keys(a):
            if k not in b["tasks"]:
                continue
            t0, t1 = b["tasks"][k], a["tasks"][k]
            n_sig = sum(_verdict(t) == "better" for t in (t0, t1))
            out.append(f"`{name[:-3]}` on {t1['label']}: seed 0 {_ci_str(t0)}, seed 1 {_ci_str(t1)}; significant "
                       f"gain in {n_sig} of 2 seeds")
    return out


def _smol_reading(arms: dict[str, Any]) -> list[str]:
    """The causal LM (SmolLM2-135M): a real next-token perplexity against the base model itself, so domain gain
    and forgetting are measured directly; replay and full training against LoRA without replay."""
    out = []
    for name, a in arms.items():
        if a["model"] != "smollm2":
            continue
        t = a["tasks"]
        parts = [f"{t[k]['label'].split(',')[0]} {_fmt(t[k]['baseline'], 1)} -> {_fmt(t[k]['model'], 1)} "
                 f"{_ci_str(t[k], 1)}"
                 for k in ("ppl/perplexity", "pubmed/perplexity", "ppl/general_perplexity") if k in t]
        tasks = [f"{t[k]['label']}{' (' + t[k]['mode'] + ')' if t[k].get('mode') else ''} {_ci_str(t[k])}"
                 for k in _task_keys(a)]
        replay = a.get("replay_fraction") or 0.0
        s = (f"- **SmolLM2-135M, `{name}`** ({a['method']}, {_tok(a['tokens'])} tokens, "
             f"{replay:.0%} WikiText-2 replay, {a['wall_s'] / 60:.0f} min): per-word perplexity against the base: "
             + "; ".join(parts) + ".")
        if tasks:
            s += " Tasks: " + "; ".join(tasks) + "."
        h2h = [f"{v['label'].split(',')[0]} {_ci_str(v, 1)}" if k.startswith(("ppl/", "pubmed/"))
               else f"{v['label']} {_ci_str(v)}"
               for k, v in a.get("head_to_head", {}).items()]
        if h2h:
            against = next(iter(a["head_to_head"].values()))["against"]
            s += f" Against `{str(against).split('/')[-1]}`: " + "; ".join(h2h) + "."
        if replay and "ppl/general_perplexity" in t:
            s += (" (The replay text is WikiText-2 valid, other articles from the same source as the WikiText-2 test "
                  "set, so its WikiText-2 gain is an upper bound on what replay keeps for other general text.)")
        out.append(s)
    out += _form_reading(arms)
    return out


def _form_reading(arms: dict[str, Any]) -> list[str]:
    """Tokenised corpus vs the same corpus detokenised (SmolLM2 LoRA): did the model learn the field or the
    spacing? Real PubMed abstracts (raw text) are the measure that tells them apart."""
    lora, detok = arms.get("smollm2-lora"), arms.get("smollm2-lora-detok")
    key = "pubmed/perplexity"
    if not lora or not detok or key not in lora["tasks"] or key not in detok["tasks"]:
        return []
    t, u = lora["tasks"], detok["tasks"]

    def ppl(tasks: dict[str, Any], k: str) -> str:
        return f"{_fmt(tasks[k]['baseline'], 1)} -> {_fmt(tasks[k]['model'], 1)}, {_ci_str(tasks[k], 1)}" \
            if k in tasks else "not scored"

    h = detok.get("head_to_head", {}).get(key)
    s = ("- **Form, not only field (SmolLM2).** The corpus is the NER corpora's word-tokenised text (\"IL - 2 ( 10 "
         "ng / ml )\"). Trained on it as is (`smollm2-lora`), per-word perplexity on real PubMed abstracts went "
         f"{ppl(t, key)}, on the held-out tokenised corpus text {ppl(t, 'ppl/perplexity')}, and on WikiText-2 (itself "
         f"word-tokenised: \"Teddy 's Story\") {ppl(t, 'ppl/general_perplexity')}. The same documents with the "
         "tokenisation undone (`smollm2-lora-detok`, `corpus prepare --detokenize`, same budget): real PubMed "
         f"abstracts {ppl(u, key)}"
         + (f"; head to head against `smollm2-lora` {_ci_str(h, 1)}" if h else "") + ".")
    if _verdict(t[key]) == "worse" and _verdict(u[key]) == "better":
        s += (" So the tokenised arm's perplexity gains were largely the spacing, and with it undone the model "
              "adapted to the field as real abstracts write it: prepare NER-derived text with `--detokenize`.")
    return [s]


def _minilm_form_reading(arms: dict[str, Any]) -> list[str]:
    """The same question for MiniLM: the head-first 300k arm on the tokenised documents vs the detokenised ones,
    on the NER probes (tokenised text) and the raw-text tasks (ChemProt, HoC, PubMedQA)."""
    tok, detok = arms.get("minilm-warmup-0.3m"), arms.get("minilm-detok-0.3m")
    if not tok or not detok:
        return []
    keys = [k for k in ("ncbi/ner", "bc5cdr/ner", *RAW_TEXT_TASKS) if k in tok["tasks"] and k in detok["tasks"]]
    if not keys:
        return []
    h2h = detok.get("head_to_head", {})
    parts = []
    for k in keys:
        h = h2h.get(k)
        parts.append(f"{tok['tasks'][k]['label']} {_ci_str(tok['tasks'][k])} -> {_ci_str(detok['tasks'][k])}"
                     + (f" (head to head {_ci_str(h)})" if h else ""))
    s = ("- **Form, not only field (MiniLM).** The head-first 300k arm on the tokenised documents "
         "(`minilm-warmup-0.3m`) and on the same documents detokenised (`minilm-detok-0.3m`), each against MiniLM: "
         + "; ".join(parts) + ".")
    raw = [k for k in RAW_TEXT_TASKS if k in keys]
    lost_tok = [k for k in raw if _verdict(tok["tasks"][k]) == "worse"]
    lost_detok = [k for k in raw if _verdict(detok["tasks"][k]) == "worse"]
    if lost_tok and not lost_detok:
        s += (f" The tokenised arm's raw-text losses ({', '.join(tok['tasks'][k]['label'] for k in lost_tok)}) are "
              "not significant with the spacing undone.")
    elif lost_detok:
        s += (f" With the spacing undone the arm still loses on {', '.join(detok['tasks'][k]['label'] for k in lost_detok)}"
              ": the raw-text cost is not the spacing alone.")
    return [s]


def _tapt_reading(arms: dict[str, Any]) -> list[str]:
    """TAPT and DAPT -> TAPT against the base and against the DAPT arm they start from."""
    out = []
    for name, what in (("minilm-tapt-ncbi", "TAPT alone"), ("minilm-dapt-tapt-ncbi", "DAPT -> TAPT")):
        a = arms.get(name)
        if not a or "ncbi/ner" not in a["tasks"]:
            continue
        h = a.get("head_to_head", {}).get("ncbi/ner")
        vs = (f"; against `{str(h['against']).split('/')[-1]}` (DAPT, {_tok(arms.get('minilm-warmup-0.3m', {}).get('tokens', 0))} "
              f"tokens) {_ci_str(h)}") if h else ""
        epochs = a["tokens"] / a["corpus_train_tokens"] if a.get("corpus_train_tokens") else float("nan")
        out.append(f"- **{what}** (`{name}`: {_tok(a['tokens'])} tokens of NCBI-disease training-split text, about "
                   f"{epochs:.1f} epoch(s); Gururangan et al. ran 100): NCBI-disease vs base "
                   f"{_ci_str(a['tasks']['ncbi/ner'])}{vs}.")
    return out


# The task rows the merge reading answers issue 29 with: the domain gain to keep, the loss to remove.
MERGE_KEEP, MERGE_REMOVE = ("bc5cdr/ner",), ("cls/pubmedqa", "pqa/pubmedqa")  # PubMedQA: in cls, or alone (pqa)


def _first(rows: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any] | None:
    return next((rows[k] for k in keys if k in rows), None)


def merge_reading(arms: dict[str, Any]) -> list[str]:
    """One verdict bullet per measured merge arm: does the merge keep its source arm's BC5CDR gain and remove
    its PubMedQA loss (each against the base on the full test split), with the merge-vs-source head to head."""
    out = []
    for name, a in arms.items():
        if "merge" not in ARMS.get(name, {}) or not a.get("merge"):
            continue
        src_name = ARMS[name]["merge"]
        src = arms.get(src_name, {"tasks": {}})
        m = a["merge"]
        parts = []
        for keys in (MERGE_KEEP, MERGE_REMOVE):
            t, s, h = _first(a["tasks"], keys), _first(src["tasks"], keys), _first(a.get("head_to_head", {}), keys)
            if not t:
                parts.append(f"{keys[0]} not scored")
                continue
            txt = f"{t['label']} vs base {_ci_str(t)}"
            if s:
                txt += f" (the adapted arm's: {_ci_str(s)})"
            if h:
                txt += f", merged - adapted {_ci_str(h)}"
            parts.append(txt)
        keep, remove = _first(a["tasks"], MERGE_KEEP), _first(a["tasks"], MERGE_REMOVE)
        answer = []
        if keep:
            answer.append("keeps the BC5CDR gain" if _verdict(keep) == "better" else "does not keep a significant "
                          "BC5CDR gain")
        if remove:
            was = _first(src["tasks"], MERGE_REMOVE)
            lost_before = was is not None and _verdict(was) == "worse"
            v = _verdict(remove)
            if v == "worse":
                answer.append("still loses PubMedQA")
            else:
                answer.append(("removes the PubMedQA loss" if lost_before else "PubMedQA not worse than the base")
                              + f" ({v})")
        losses = [t["label"] for k, t in a["tasks"].items() if not k.startswith(("ppl/", "pubmed/"))
                  and _verdict(t) == "worse"]
        out.append(f"- **Merged back into the base (issue 29), `{name}`:** `domainlm merge --select` chose weight "
                   f"{m.get('weight')} on `{src_name}` ({m.get('method')}) on dev splits only"
                   + (f" ({m['selection_verdict']})" if m.get("selection_verdict") else "") + ". On test: "
                   + "; ".join(parts) + ". So the merge " + (" and ".join(answer) or "was not scored on test")
                   + (f"; significantly worse than the base on: {', '.join(losses)}" if losses
                      else "; no task significantly worse than the base") + ".")
    return out
