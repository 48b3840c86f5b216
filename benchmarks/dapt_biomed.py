"""Does domain-adaptive pretraining help on real biomedical data? A reproducible DAPT/TAPT experiment.

    python benchmarks/dapt_biomed.py --realdata ../shared/realdata            # every arm, then the report
    python benchmarks/dapt_biomed.py --realdata ../shared/realdata --quick    # one arm (< 20 min on 2 cores)
    python benchmarks/dapt_biomed.py --realdata ../shared/realdata --report-only  # report from the cache

What it does, each stage cached in ``--work`` (default ``runs/dapt-biomed``; nothing from the real data
is written into the project, only the numbers in benchmarks/DAPT_BIOMED.{md,json,png}):

1. **Decontamination.** Every evaluation split (NCBI-disease and BC5CDR test, ChemProt, HoC, PubMedQA
   test, and the probe-training splits) is cut into word 13-grams (GPT-3's contamination check uses
   13-grams too). The share of each split's sentences that share a 13-gram with the adaptation corpus
   is reported, and every corpus document sharing one is dropped before training.
2. **Corpus.** The cleaned ``biomed_sentences.jsonl`` goes through the real ``domainlm corpus prepare``
   (JSONL reader, dedup, 5% of documents held out by a hash of their id). The held-out documents are
   the domain perplexity set. WikiText-2 valid is prepared as the replay source and WikiText-2 test is
   the general (forgetting) perplexity set. TAPT uses the evaluated task's training-split text only.
3. **Arms.** Each arm is a real ``domainlm adapt`` run (:func:`domainlm.adapt`), then scored with the
   ``domainlm bench`` code path against its base: the same task YAMLs (benchmarks/biomed, general)
   pointed at the real files with overrides, the same modes, metrics and paired bootstrap
   (:func:`domainlm.bench.report.build_report`). The base model's per-task results are computed once
   and reused for every arm (probes and perplexities are deterministic), which is what makes many arms
   affordable on a 2-core CPU.
4. **Report.** benchmarks/DAPT_BIOMED.md (verdict first), .json and .png.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DOMAINLM_PROGRESS", "0")

log = logging.getLogger("dapt_biomed")

NGRAM = 13
MINILM_BLOCK, SMOL_BLOCK = 128, 256

# ----------------------------------------------------------------------------------------------------
# The arms. Every key of "adapt" is a field of domainlm.adapt.config.AdaptConfig; tokens are the
# training-token budget (max_tokens). MiniLM: whole-word MLM (the shipped matscibert-style recipe's
# objective); the recipe's lr 3e-4 with full training is the arm the issue reported as harmful.
# ----------------------------------------------------------------------------------------------------
MLM = {"model": "minilm", "objective": "masked", "whole_word_mask": True, "mlm_probability": 0.15,
       "batch_size": 16, "warmup_ratio": 0.06, "eval_every": 0, "eval_batches": 8, "save_every": 0,
       "log_every": 10, "replay_fraction": 0.05}
def _mlm(tokens: int, *, lr: float = 3e-4, warmup: int = 0, ratio: float = 1.0, method: str = "full", seed: int = 0,
         corpus: str = "domain", init: str | None = None) -> dict[str, Any]:
    arm = {"adapt": {**MLM, "method": method, "lr": lr, "head_warmup_steps": warmup, "body_lr_ratio": ratio,
                     "seed": seed}, "tokens": tokens, "corpus": corpus}
    if tokens >= 1_000_000:  # an hour or more on one core: checkpoint, so a killed run resumes (run_arm)
        arm["adapt"]["save_every"] = 100
    if init:
        arm["init"] = init
    return arm


def _smol(method: str, lr: float, replay: float, tokens: int = 200_000, seed: int = 0) -> dict[str, Any]:
    return {"adapt": {"model": "smollm2", "method": method, "lr": lr, "batch_size": 4, "warmup_ratio": 0.05,
                      "eval_every": 0, "eval_batches": 8, "save_every": 0, "replay_fraction": replay, "seed": seed},
            "tokens": tokens, "corpus": "domain"}


# The warm-up recipe: 15 head-only steps (of 49 at 0.1M tokens), then the body at a tenth of the head's lr.
WARM = {"warmup": 15, "ratio": 0.1}
ARMS: dict[str, dict[str, Any]] = {
    # the measurement: the shipped recipe, fresh head and body at lr 3e-4 together
    "minilm-recipe-0.1m": _mlm(100_000),
    # candidate fixes at the same budget
    "minilm-headonly-0.1m": _mlm(100_000, warmup=10**9),  # body frozen throughout: the perplexity reference
    "minilm-warmup-0.1m": _mlm(100_000, **WARM),
    "minilm-warmup-0.1m-s1": _mlm(100_000, **WARM, seed=1),
    "minilm-lora-0.1m": _mlm(100_000, method="lora"),
    "minilm-lowlr-0.1m": _mlm(100_000, lr=5e-5),
    # budget trend and a second seed for the warm-up recipe
    "minilm-warmup-0.3m": _mlm(300_000, **WARM),
    "minilm-warmup-0.3m-s1": _mlm(300_000, **WARM, seed=1),
    "minilm-warmup-1m": _mlm(1_000_000, **WARM),
    "minilm-warmup-1m-s1": _mlm(1_000_000, **WARM, seed=1),
    "minilm-warmup-3m": _mlm(3_000_000, **WARM),
    # the head-first 300k arm on the detokenised documents: does MiniLM's loss on raw-text tasks come from the
    # corpus's NER spacing, as SmolLM2's real-abstract perplexity did?
    "minilm-detok-0.3m": _mlm(300_000, **WARM, corpus="domain_detok"),
    # TAPT (Gururangan et al. 2020): the evaluated task's own unlabelled training text (~1 epoch), and DAPT -> TAPT
    "minilm-tapt-ncbi": _mlm(160_000, **WARM, corpus="tapt_ncbi"),
    "minilm-dapt-tapt-ncbi": _mlm(160_000, **WARM, corpus="tapt_ncbi", init="minilm-warmup-0.3m"),
    # SmolLM2-135M causal LM: ~80-100 training tokens/s on this CPU when idle, so only small budgets fit
    "smollm2-lora": _smol("lora", 2e-4, 0.0),
    "smollm2-lora-s1": _smol("lora", 2e-4, 0.0, seed=1),
    "smollm2-lora-0.06m": _smol("lora", 2e-4, 0.0, tokens=60_000),  # what fits ~20 min of a shared core
    # the same on the corpus with its NER word tokenisation undone (real abstracts are not spaced like it)
    "smollm2-lora-detok": {**_smol("lora", 2e-4, 0.0), "corpus": "domain_detok"},
    # the detokenised corpus as reading comprehension (issue 30, AdaptLLM): each document followed by tasks mined
    # from it in the chat template; does the prompted PubMedQA score keep up while the field is learned?
    "smollm2-lora-rc": {**_smol("lora", 2e-4, 0.0), "corpus": "domain_rc"},
    "smollm2-lora-replay5": _smol("lora", 2e-4, 0.05),
    "smollm2-lora-replay25": _smol("lora", 2e-4, 0.25),
    "smollm2-full": _smol("full", 5e-5, 0.0),  # no replay, like smollm2-lora: the pair differs in method only
    # `domainlm merge --select`: each SmolLM2 arm merged back into SmolLM2 (linear), the weight chosen on dev splits
    # only (MERGE_DEV): keep the BC5CDR gain, lose neither PubMedQA nor WikiText-2 perplexity (Holm over the two)
    "smollm2-full-merged": {"merge": "smollm2-full", "method": "linear", "weights": [0.25, 0.5, 0.75]},
    "smollm2-lora-merged": {"merge": "smollm2-lora", "method": "linear", "weights": [0.25, 0.5, 0.75]},
}
# The dev splits merge --select scores (never a test file): BC5CDR's own devel file (the probe trains on its train
# file, capped), PubMedQA's 500 labelled questions outside the test ids (20% held out as dev) and WikiText-2's
# validation file. Paths are relative to --realdata.
MERGE_DEV = {"suite": "biomed,general", "domain_tasks": ["ner"], "guard_tasks": ["pubmedqa", "general_perplexity"],
             "max_examples": 500,
             "override": ["ner.train=bc5cdr_conll/train.tsv", "ner.dev=bc5cdr_conll/devel.tsv",
                          "ner.test=bc5cdr_conll/test.tsv", "pubmedqa.train=", "pubmedqa.test=pubmedqa/ori_pqal.json",
                          "pubmedqa.test_ids=pubmedqa/test_ground_truth.json", "general_perplexity.format=text",
                          "general_perplexity.dev=general_wikitext2/valid.txt",
                          "general_perplexity.test=general_wikitext2/test.txt", "general_perplexity.max_tokens=8192"]}
QUICK_ARM = "minilm-warmup-0.1m"
# Head-to-head comparisons (paired bootstrap on the same test sentences) where the question is "which recipe",
# not "better than the base": (arm, reference arm, group).
PAIRS = [("minilm-warmup-0.1m", "minilm-recipe-0.1m", "ncbi"), ("minilm-lora-0.1m", "minilm-recipe-0.1m", "ncbi"),
         ("minilm-lowlr-0.1m", "minilm-recipe-0.1m", "ncbi"),
         # more DAPT tokens, and TAPT / DAPT -> TAPT against the DAPT arm they start from (Gururangan's table 5)
         ("minilm-warmup-1m", "minilm-warmup-0.3m", "ncbi"), ("minilm-warmup-1m", "minilm-warmup-0.3m", "bc5cdr"),
         ("minilm-warmup-3m", "minilm-warmup-0.3m", "ncbi"), ("minilm-warmup-3m", "minilm-warmup-0.3m", "bc5cdr"),
         ("minilm-detok-0.3m", "minilm-warmup-0.3m", "ncbi"), ("minilm-detok-0.3m", "minilm-warmup-0.3m", "bc5cdr"),
         ("minilm-detok-0.3m", "minilm-warmup-0.3m", "cls"),
         ("minilm-tapt-ncbi", "minilm-warmup-0.3m", "ncbi"), ("minilm-dapt-tapt-ncbi", "minilm-warmup-0.3m", "ncbi"),
         # SmolLM2: what replay and full training change against LoRA without replay, on the same texts
         ("smollm2-lora-replay5", "smollm2-lora", "ppl"), ("smollm2-lora-replay5", "smollm2-lora", "ncbi"),
         ("smollm2-lora-replay25", "smollm2-lora", "ppl"),
         ("smollm2-lora-replay25", "smollm2-lora", "ncbi"), ("smollm2-full", "smollm2-lora", "ppl"),
         ("smollm2-full", "smollm2-lora", "ncbi"), ("smollm2-lora-detok", "smollm2-lora", "ppl"),
         ("smollm2-lora-detok", "smollm2-lora", "pubmed"), ("smollm2-lora-detok", "smollm2-lora", "ncbi"),
         ("smollm2-lora-rc", "smollm2-lora-detok", "cls"), ("smollm2-lora-rc", "smollm2-lora-detok", "ppl"),
         ("smollm2-lora-rc", "smollm2-lora-detok", "pubmed"), ("smollm2-lora-rc", "smollm2-lora-detok", "ncbi")]

# Evaluation groups: one bench run each (suite + tasks + overrides). Paths in overrides are relative to
# --realdata, except {work} which is the work folder. "cheap" groups run for every arm.
GROUPS: dict[str, dict[str, Any]] = {
    "ncbi": {"suite": "biomed", "tasks": ["ner"], "cheap": True, "label": "NCBI-disease NER (entity F1)",
             "override": ["ner.train=ncbi_disease_conll/devel.tsv", "ner.dev=", "ner.test=ncbi_disease_conll/test.tsv",
                          "ner.labels=Disease"]},
    "ppl": {"suite": "biomed,general", "tasks": ["perplexity", "general_perplexity"], "cheap": True,
            "label": "perplexity",
            "override": ["perplexity.format=jsonl", "perplexity.test={work}/data/heldout_docs.jsonl",
                         "perplexity.masked_max_tokens=512", "perplexity.max_tokens=8192",
                         "general_perplexity.format=text", "general_perplexity.test=general_wikitext2/test.txt",
                         "general_perplexity.masked_max_tokens=512", "general_perplexity.max_tokens=8192"]},
    "pubmed": {"suite": "biomed", "tasks": ["perplexity"], "cheap": True, "label": "real PubMed abstracts",
               "override": ["perplexity.format=jsonl", "perplexity.test={work}/data/pubmed_real.jsonl",
                            "perplexity.masked_max_tokens=512", "perplexity.max_tokens=8192"]},
    "bc5cdr": {"suite": "biomed", "tasks": ["ner"], "cheap": False, "label": "BC5CDR NER (entity F1)",
               "override": ["ner.train=bc5cdr_conll/devel.tsv", "ner.dev=", "ner.test=bc5cdr_conll/test.tsv"]},
    # BLURB's protocol instead of a probe (DAPT changes what the body encodes, and fine-tuning lets the task
    # re-shape it): train on train, select on dev, score the full test split, mean over 3 seeds. The settings
    # are realdata-blurb.overrides' own (its `ner` lines), so the base's numbers are the README's BLURB row.
    "ncbi-ft": {"suite": "biomed", "tasks": ["ner"], "cheap": False, "mode": "finetune", "seeds": 3,
                "label": "NCBI-disease NER, BLURB fine-tune (entity F1, 3 seeds)",
                "override": [f"@{ROOT}/benchmarks/biomed/realdata-blurb.overrides"]},
    # The same protocol on BC5CDR (chemicals and diseases in one model): the overrides file's `ner_pubtator` lines.
    "bc5cdr-ft": {"suite": "biomed", "tasks": ["ner_pubtator"], "cheap": False, "mode": "finetune", "seeds": 3,
                  "label": "BC5CDR NER, BLURB fine-tune (entity F1, 3 seeds)",
                  "override": [f"@{ROOT}/benchmarks/biomed/realdata-blurb.overrides"]},
    "cls": {"suite": "biomed", "tasks": ["relation", "doccls", "pubmedqa"], "cheap": False,
            "label": "ChemProt, HoC, PubMedQA", "override": [f"@{ROOT}/benchmarks/biomed/realdata.overrides"]},
}


# ----------------------------------------------------------------------------------------------------
# 1. decontamination
# ----------------------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks, so "IL-2 (10 ng/ml)" and "IL - 2 ( 10 ng / ml )" agree."""
    return _WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int = NGRAM) -> set[int]:
    return {hash(" ".join(tokens[i:i + n])) for i in range(len(tokens) - n + 1)}


def _conll_sentences(path: Path) -> list[str]:
    out, cur = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if cur:
                out.append(" ".join(cur))
                cur = []
            continue
        cur.append(line.split("\t")[0].split(" ")[0])
    if cur:
        out.append(" ".join(cur))
    return out


def _split_sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def eval_splits(realdata: Path) -> dict[str, list[str]]:
    """Sentences of every evaluation split (test splits, and the splits the probes train on)."""
    r = realdata
    splits = {
        "NCBI-disease test": _conll_sentences(r / "ncbi_disease_conll/test.tsv"),
        "NCBI-disease devel (probe train)": _conll_sentences(r / "ncbi_disease_conll/devel.tsv"),
        "BC5CDR test": _conll_sentences(r / "bc5cdr_conll/test.tsv"),
        "BC5CDR devel (probe train)": _conll_sentences(r / "bc5cdr_conll/devel.tsv"),
    }
    chem = [json.loads(x)["text"] for x in (r / "chemprot/test.jsonl").read_text(encoding="utf-8").splitlines()
            if x.strip()]
    splits["ChemProt test"] = [re.sub(r"<<|>>|\[\[|\]\]", " ", t) for t in chem]
    hoc = []
    for f in sorted((r / "hoc/text").glob("*.txt")):
        hoc += [s for s in f.read_text(encoding="utf-8").splitlines() if s.strip()]
    splits["HoC"] = hoc
    pq = json.loads((r / "pubmedqa/ori_pqal.json").read_text(encoding="utf-8"))
    test_ids = json.loads((r / "pubmedqa/test_ground_truth.json").read_text(encoding="utf-8"))
    sents = []
    for pmid in test_ids:
        rec = pq[pmid]
        sents.append(rec["QUESTION"])
        for ctx in rec["CONTEXTS"]:
            sents += _split_sentences(ctx)
    splits["PubMedQA test"] = sents
    return splits


def decontaminate(realdata: Path, work: Path) -> dict[str, Any]:
    """Write WORK/data/corpus_clean.jsonl (corpus minus documents sharing a 13-gram with any evaluation
    split) and return the overlap statistics.

    Hand-written rather than `corpus prepare --decontaminate` because that option did not exist when this
    experiment was written; the rule is the one GPT-3 (Brown et al. 2020, appendix C) used: word 13-grams.
    """
    out_path = work / "data" / "corpus_clean.jsonl"
    stats_path = work / "data" / "decontamination.json"
    if out_path.is_file() and stats_path.is_file():
        return json.loads(stats_path.read_text())
    t0 = time.perf_counter()
    splits = eval_splits(realdata)
    split_grams = {name: [ngrams(words(s)) for s in sents] for name, sents in splits.items()}
    all_eval: set[int] = set().union(*(g for gs in split_grams.values() for g in gs))
    corpus_path = realdata / "biomed_corpus/biomed_sentences.jsonl"
    corpus_grams: set[int] = set()
    kept, dropped, dropped_ids = 0, 0, []
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp")
    with corpus_path.open(encoding="utf-8") as fin, tmp.open("w", encoding="utf-8") as fout:
        for line in fin:
            if not line.strip():
                continue
            rec = json.loads(line)
            grams = ngrams(words(rec["text"]))
            corpus_grams |= grams
            if grams & all_eval:
                dropped += 1
                dropped_ids.append(rec["id"])
                continue
            kept += 1
            fout.write(json.dumps({"id": rec["id"], "text": rec["text"]}) + "\n")
    tmp.replace(out_path)
    overlap = {}
    for name, gs in split_grams.items():
        hit = sum(1 for g in gs if g & corpus_grams)
        overlap[name] = {"sentences": len(gs), "sharing_13gram": hit, "share": hit / max(1, len(gs)),
                         "sentences_with_13_words": sum(1 for g in gs if g)}
    stats = {"ngram": NGRAM, "corpus_documents": kept + dropped, "dropped_documents": dropped,
             "kept_documents": kept, "dropped_ids_first": dropped_ids[:20], "overlap_before_drop": overlap,
             "seconds": time.perf_counter() - t0,
             "method": "hand-written word 13-gram check in benchmarks/dapt_biomed.py"}
    stats_path.write_text(json.dumps(stats, indent=2))
    return stats


# ----------------------------------------------------------------------------------------------------
# 2. corpora and evaluation text
# ----------------------------------------------------------------------------------------------------

def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def prepare_data(realdata: Path, work: Path, models: list[str]) -> dict[str, Any]:
    """Prepared corpora (domain, replay, TAPT) per model, the held-out and PubMed perplexity files."""
    from domainlm import prepare
    from domainlm.corpora import load_documents, read_corpus_manifest

    data = work / "data"
    info: dict[str, Any] = {}
    # TAPT text: the NCBI-disease training split's sentences, labels dropped (Gururangan's TAPT uses the
    # task's own unlabelled training text; 8 sentences per pseudo-document like the domain corpus).
    tapt = data / "tapt_ncbi.jsonl"
    if not tapt.is_file():
        sents = _conll_sentences(realdata / "ncbi_disease_conll/train.tsv")
        _write_jsonl(tapt, [{"id": f"ncbi-train/{i // 8}", "text": " ".join(sents[i:i + 8])}
                            for i in range(0, len(sents), 8)])
    # Real PubMed abstracts for domain perplexity: every record under realdata/pubmed, read by the
    # corpus readers (MEDLINE text and PubMed XML).
    pub = data / "pubmed_real.jsonl"
    if not pub.is_file():
        from domainlm.documents.readers import InputFile, ReadContext, ReaderOptions, SkipLog
        from domainlm.documents.registry import get_reader

        rows, seen = [], set()
        for f in sorted((realdata / "pubmed").rglob("*")):
            if not f.is_file():
                continue
            fmt = "medline" if f.suffix == ".txt" else "pubmed-xml" if ".xml" in f.name else None
            if fmt is None:
                continue
            ctx = ReadContext(ReaderOptions(), SkipLog(), InputFile(f, fmt, f.stat().st_size, f.name), 0)
            for d in get_reader(fmt).read(f, ctx):
                if d.text and d.id not in seen:
                    seen.add(d.id)
                    rows.append({"id": str(d.id), "text": d.text})
        _write_jsonl(pub, rows)
    for model in models:
        block = MINILM_BLOCK if model == "minilm" else SMOL_BLOCK
        specs = {
            "domain": dict(inputs=[str(data / "corpus_clean.jsonl")], format="jsonl"),
            # the NER corpora's word tokenisation undone ("IL - 2 ( 10 ng / ml )" -> "IL-2 (10 ng/ml)"), so a
            # model adapts to the field in the form real abstracts have, not to the spacing
            "domain_detok": dict(inputs=[str(data / "corpus_clean.jsonl")], format="jsonl", detokenize=True),
            "replay": dict(inputs=[str(realdata / "general_wikitext2/valid.txt")], format="text",
                           near_dup=False),
            "tapt_ncbi": dict(inputs=[str(tapt)], format="jsonl"),
        }
        if model != "minilm":  # reading comprehension is for the causal chat model (the chat template)
            specs["domain_rc"] = dict(inputs=[str(data / "corpus_clean.jsonl")], format="jsonl", detokenize=True,
                                      reading_comprehension=True)
        for name, kw in specs.items():
            out = work / "corpora" / f"{name}-{model}"
            if not (out / "manifest.json").is_file():
                t0 = time.perf_counter()
                prepare(model=model, block_size=block, out=str(out), validation_fraction=0.05, **kw)
                log.info("prepared %s in %.0f s", out, time.perf_counter() - t0)
            man = read_corpus_manifest(out)
            info[f"{name}-{model}"] = {"path": str(out), "splits": man.get("splits"), "counts": man.get("counts")}
    # Held-out domain documents: the 5% validation split of the prepared domain corpus (same for every
    # tokenizer: the split is a hash of the document id).
    held = data / "heldout_docs.jsonl"
    if not held.is_file():
        first = work / "corpora" / f"domain-{models[0]}"
        val_ids = {r["id"] for r in load_documents(first) if r["split"] == "validation"}
        rows = []
        with (data / "corpus_clean.jsonl").open(encoding="utf-8") as fin:
            for line in fin:
                rec = json.loads(line)
                if rec["id"] in val_ids:
                    rows.append(rec)
        _write_jsonl(held, rows)
    info["heldout_documents"] = sum(1 for _ in held.open(encoding="utf-8"))
    info["pubmed_abstracts"] = sum(1 for _ in pub.open(encoding="utf-8"))
    return info


# ----------------------------------------------------------------------------------------------------
# 3. arms: a real `domainlm adapt` run each
# ----------------------------------------------------------------------------------------------------

def arm_model(arm: str) -> str:
    spec = ARMS[arm]
    return arm_model(spec["merge"]) if "merge" in spec else spec["adapt"]["model"]


def read_run(run_dir: Path) -> dict[str, Any]:
    """The manifest of a finished adapt run (refuses unfinished ones)."""
    from domainlm.artifacts import read_manifest

    man = read_manifest(run_dir, "run")
    if not (run_dir / "final").is_dir():
        raise FileNotFoundError(f"{run_dir}/final")
    return man


MERGE_NOT_RUN = (
    "The merge arms ({arms}) are `domainlm merge --select` on their source arm: a linear merge back into SmolLM2 at "
    "weights 0.25, 0.5 and 0.75, chosen on dev splits only (BC5CDR devel as the domain task; PubMedQA's labelled "
    "questions outside its test ids, 20% held out, and WikiText-2 valid as guards, Holm over the guards), then "
    "scored like every arm. They need their source runs (~40 min of one core each) and were not measured, so "
    "whether a merge keeps the BC5CDR gain while removing the PubMedQA loss is still open.")


def merge_arm(arm: str, work: Path, realdata: Path) -> dict[str, Any]:
    """A merge arm: its source arm trained (or reused), then `domainlm merge --select` on MERGE_DEV's dev splits
    into WORK/runs/ARM, a run folder scored like every arm (test scoring is evaluate_arm's, as for the others)."""
    from domainlm.merge import merge

    spec = ARMS[arm]
    run_arm(spec["merge"], work, realdata)
    run_dir = work / "runs" / arm
    if (run_dir / "manifest.json").is_file():
        try:
            return read_run(run_dir)
        except Exception:  # an interrupted merge left nothing that looks complete: merge again
            pass
    merge(model=str(work / "runs" / spec["merge"]), out=str(run_dir), overwrite=True, select=True, test=False,
          method=spec["method"], weights=spec["weights"], data_root=str(realdata), threads=1,
          **{k: v for k, v in MERGE_DEV.items()})
    return read_run(run_dir)


def run_arm(arm: str, work: Path, realdata: Path | None = None) -> dict[str, Any]:
    """Train one arm (reused when its run folder is complete) and return its run manifest."""
    from domainlm.adapt import adapt

    spec = ARMS[arm]
    if "merge" in spec:
        return merge_arm(arm, work, realdata or ROOT.parent / "shared" / "realdata")
    run_dir = work / "runs" / arm
    lock = run_dir.with_name(arm + ".lock")
    while lock.is_file() and _alive(int(lock.read_text() or 0)):  # another process of this script trains it
        time.sleep(20)
    if (run_dir / "manifest.json").is_file():
        try:
            return read_run(run_dir)
        except Exception:  # unfinished: resumed from its newest checkpoint below, or started again
            pass
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(str(os.getpid()))
    model = arm_model(arm)
    kw = dict(spec["adapt"])
    corpus = spec.get("corpus", "domain")
    kw["corpus"] = str(work / "corpora" / f"{corpus}-{model}")
    kw["replay_corpus"] = str(work / "corpora" / f"replay-{model}")
    kw["general_eval"] = str(work / "corpora" / f"replay-{model}")
    if "init" in spec:  # DAPT -> TAPT: continue from another arm's final model
        run_arm(spec["init"], work)
        kw["model"] = str(work / "runs" / spec["init"] / "final")
    # A run killed part-way (a session's end) continues from its newest complete checkpoint: adapt's resume
    # is bitwise (tests/test_adapt_checkpoint.py), so the arm's result is the uninterrupted run's.
    from domainlm.adapt.checkpoint import complete_checkpoints

    ckpts = complete_checkpoints(run_dir)  # [] when the run folder or its checkpoints folder is absent
    if ckpts:
        log.info("arm %s: resuming from %s", arm, ckpts[-1].name)
    kw.update(max_tokens=spec["tokens"], max_steps=None, out=str(run_dir), overwrite=not ckpts, resume=bool(ckpts))
    t0 = time.perf_counter()
    try:
        adapt(**kw)
    finally:
        lock.unlink(missing_ok=True)
    log.info("arm %s trained in %.0f s", arm, time.perf_counter() - t0)
    return read_run(run_dir)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return pid > 0


# ----------------------------------------------------------------------------------------------------
# 4. scoring through the bench code path, the base scored once
# ----------------------------------------------------------------------------------------------------

def _bench_config(model: str, baseline: str | None, group: str, realdata: Path, work: Path, out: Path):
    from domainlm.bench import BenchConfig

    g = GROUPS[group]
    return BenchConfig(model=model, baseline=baseline, suite=g["suite"], tasks=list(g["tasks"]),
                       data_root=str(realdata), override=[o.replace("{work}", str(work)) for o in g["override"]],
                       out=str(out), seeds=g.get("seeds", 1), mode=g.get("mode"), threads=1, bootstrap=1000,
                       device="cpu")


def score(model_spec: str, key: str, group: str, realdata: Path, work: Path) -> dict[str, Any]:
    """{task: ModeResult} for one model on one group, cached in WORK/scores/KEY/GROUP.pkl."""
    cache = work / "scores" / key / f"{group}.pkl"
    if cache.is_file():
        return pickle.loads(cache.read_bytes())
    import torch

    from domainlm.bench.loading import load_for_eval
    from domainlm.bench.modes import RunContext, run_task
    from domainlm.bench.runner import load_all, warm_imports

    cfg = _bench_config(model_spec, None, group, realdata, work, work / "bench" / key / group)
    specs, data = load_all(cfg)
    warm_imports()
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    ctx = RunContext(device="cpu", bf16=False, seeds=cfg.seeds, force_mode=cfg.mode)
    loaded = load_for_eval(model_spec)
    results = {}
    for spec in specs:
        t0 = time.perf_counter()
        results[spec.task_name] = run_task(loaded, spec, data[spec.task_name], ctx)
        log.info("%s %s/%s: %.1f s", key, group, spec.task_name, time.perf_counter() - t0)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(pickle.dumps(results))
    return results


def compare(arm_key: str, arm_spec: str, base_key: str, base_spec: str, group: str, realdata: Path,
            work: Path) -> dict[str, Any]:
    """The bench report (paired bootstrap against the base) of one arm on one group; written to
    WORK/bench/ARM-vs-BASE/GROUP like any `domainlm bench --model ARM --baseline BASE` report."""
    from domainlm.bench.report import build_report, write_report
    from domainlm.bench.runner import load_all

    out = work / "bench" / f"{arm_key}-vs-{base_key}" / group
    if (out / "report.json").is_file():
        return json.loads((out / "report.json").read_text())
    results = {"model": score(arm_spec, arm_key, group, realdata, work),
               "baseline": score(base_spec, base_key, group, realdata, work)}
    cfg = _bench_config(arm_spec, base_spec, group, realdata, work, out)
    specs, data = load_all(cfg)
    report = build_report(cfg, specs, data, results, n_boot=cfg.bootstrap, device="cpu", bf16=False)
    report["wall_s"] = sum(r.wall_s for side in results.values() for r in side.values())
    write_report(out, report, cfg, specs, data)
    return report


def evaluate_arm(arm: str, realdata: Path, work: Path, full: bool, groups: list[str] | None = None) -> dict[str, Any]:
    """Every group's report for one arm: against the base model, and (MiniLM) against the head-only arm,
    whose body is the base's, for perplexities (the base has no MLM head to score with)."""
    model = arm_model(arm)
    run_dir = str(work / "runs" / arm)
    out: dict[str, Any] = {}
    for group, g in GROUPS.items():
        if not (g["cheap"] or full) or (groups is not None and group not in groups):
            continue
        if arm == "minilm-headonly-0.1m":  # the reference itself: its perplexities only (its body is the base's,
            if group in ("ppl", "pubmed"):  # so its probe features and scores are the base's exactly)
                out[group] = {"tasks": [], "self": {t: _ppl(r) for t, r in
                                                    score(run_dir, arm, group, realdata, work).items()}}
            continue
        ref = reference(arm, group)
        if ref != model:  # a reference arm: trained first (reused when finished)
            run_arm(ref, work)
        ref_spec = model if ref == model else str(work / "runs" / ref)
        out[group] = compare(arm, run_dir, ref, ref_spec, group, realdata, work)
    return out


def reference(arm: str, group: str) -> str:
    """What an arm is scored against on a group: its base model, except MiniLM's perplexities, which are
    scored against the head-only arm (the base ships no masked-LM head, so the base's own is a random one).
    Any other comparison in WORK/bench is a head-to-head between recipes (PAIRS)."""
    model = arm_model(arm)
    return "minilm-headonly-0.1m" if model == "minilm" and group in ("ppl", "pubmed") else model


def _ppl(result) -> dict[str, Any] | None:
    return result.perplexity


# ----------------------------------------------------------------------------------------------------
# 5. the report: verdict first, then every number it rests on
# ----------------------------------------------------------------------------------------------------

TASK_LABELS = {("ncbi", "ner"): "NCBI-disease NER", ("ncbi-ft", "ner"): "NCBI-disease NER (fine-tuned)",
               ("bc5cdr-ft", "ner_pubtator"): "BC5CDR NER (fine-tuned)",
               ("bc5cdr", "ner"): "BC5CDR NER", ("cls", "relation"): "ChemProt",
               ("cls", "doccls"): "HoC", ("cls", "pubmedqa"): "PubMedQA",
               ("ppl", "perplexity"): "held-out corpus docs, ppl/word",
               ("ppl", "general_perplexity"): "WikiText-2 test, ppl/word",
               ("pubmed", "perplexity"): "real PubMed abstracts, ppl/word"}


# The fine-tuned task keys, the probe each replaces, and the dataset's name in the report.
FINETUNED = [("ncbi-ft/ner", "ncbi/ner", "NCBI-disease"), ("bc5cdr-ft/ner_pubtator", "bc5cdr/ner", "BC5CDR")]
# The tasks scored on raw (not word-tokenised) text.
RAW_TEXT_TASKS = ("cls/relation", "cls/doccls", "cls/pubmedqa")


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
    keys = ["ncbi/ner", "bc5cdr/ner", *RAW_TEXT_TASKS]
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
    fig.suptitle("DAPT on real biomedical text (MiniLM, SmolLM2-135M): task deltas with paired 95% CIs")
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


def render(r: dict[str, Any], stem: str) -> str:
    arms = r["arms"]
    L: list[str] = ["# Does domain-adaptive pretraining help? Real biomedical data, real tasks, a forgetting bill", ""]
    L += ["Written by `python benchmarks/dapt_biomed.py --realdata ../shared/realdata` (numbers in "
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
              "on the idle machine, benchmarks/SPEED_ADAPT.md); SmolLM2 LoRA trains at "
              + (f"{_fmt(smol_tps, 0)} tokens/s on one thread of the idle machine (the arms above)"
                 if (smol_tps := _mean_tps(arms, "smollm2")) else "about 90-140 tokens/s (benchmarks/SPEED_ADAPT.md)")
              + ". Each runs, with its evaluation, by:", "", "```",
              "python benchmarks/dapt_biomed.py --realdata ../shared/realdata --arms " + ",".join(missing)
              + " --full-eval all", "```", ""]
        merges = [a for a in missing if "merge" in ARMS[a]]
        if merges:
            L += [MERGE_NOT_RUN.format(arms=", ".join(f"`{a}`" for a in merges)), ""]
    gaps = {n: [g for g in GROUPS if not any(k.startswith(g + "/") for k in a["tasks"])]
            for n, a in arms.items() if n != "minilm-headonly-0.1m"}
    gaps = {n: g for n, g in gaps.items() if g}
    if gaps:
        L += ["Arms run but not scored on every evaluation group (each fills in, reusing the trained arm, by "
              "`python benchmarks/dapt_biomed.py --realdata ../shared/realdata --arms ARM --full-eval ARM --groups "
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
    L += ["## Decontamination", "",
          f"Word {d['ngram']}-grams (lower-cased words and punctuation marks). Of {d['corpus_documents']:,} corpus "
          f"pseudo-documents, **{d['dropped_documents']}** shared a {d['ngram']}-gram with an evaluation split and were "
          f"dropped before `corpus prepare`. Share of each split's sentences sharing a {d['ngram']}-gram with the "
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


# ----------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realdata", default=str(ROOT.parent / "shared" / "realdata"),
                    help="folder with the real datasets (see its SOURCES.md)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "dapt-biomed"), help="cache of corpora, runs, scores")
    ap.add_argument("--arms", default=None, help="comma-separated arms to run (default: all MiniLM arms)")
    ap.add_argument("--full-eval", default=None,
                    help="comma-separated arms that also get BC5CDR, the fine-tuned NER (NCBI-disease, BC5CDR), "
                         "ChemProt, HoC and PubMedQA "
                         "(default: minilm-warmup-0.3m; 'all' for every arm)")
    ap.add_argument("--groups", default=None, help=f"evaluate only these groups ({', '.join(GROUPS)})")
    ap.add_argument("--quick", action="store_true", help=f"one arm ({QUICK_ARM}), cheap tasks only")
    ap.add_argument("--report-only", action="store_true", help="write the report from what is cached")
    ap.add_argument("--no-report", action="store_true", help="run arms only (several processes can share --work)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per process (1 is fastest on a shared 2-core machine)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "DAPT_BIOMED"), help="report path without suffix")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    realdata, work = Path(args.realdata).resolve(), Path(args.work).resolve()
    if not (realdata / "biomed_corpus" / "biomed_sentences.jsonl").is_file():
        print(f"error: {realdata} has no biomed_corpus/biomed_sentences.jsonl; pass --realdata with the real "
              "datasets (see benchmarks/DAPT_BIOMED.md for where each comes from)", file=sys.stderr)
        return 2
    if args.quick:
        arms = [QUICK_ARM]
    elif args.arms:
        arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    else:
        arms = [a for a in ARMS if a.startswith("minilm")]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        print(f"error: unknown arm(s) {unknown}; known: {', '.join(ARMS)}", file=sys.stderr)
        return 2
    full = set(ARMS) if args.full_eval == "all" else set((args.full_eval or "minilm-warmup-0.3m").split(","))
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    decon = decontaminate(realdata, work)
    models = sorted({arm_model(a) for a in arms} | {"minilm"}, key=lambda m: m != "minilm")
    data_info = prepare_data(realdata, work, models)
    if not args.report_only:
        for arm in arms:
            run_arm(arm, work, realdata)
            evaluate_arm(arm, realdata, work, full=arm in full and not args.quick,
                         groups=args.groups.split(",") if args.groups else None)
    if args.no_report:
        return 0
    for arm, ref, group in PAIRS:
        if all((work / "scores" / a / f"{group}.pkl").is_file() for a in (arm, ref)):
            compare(arm, str(work / "runs" / arm), ref, str(work / "runs" / ref), group, realdata, work)
    write_all(Path(args.out), work, realdata, decon, data_info, quick=args.quick,
              wall_s=time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
