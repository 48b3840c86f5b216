"""What the DAPT experiment trains and how each arm is scored: the arms, the evaluation groups, the head-to-head
pairs and merge --select's dev splits. Data, and the two lookups on it that every stage shares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

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
# file, capped), PubMedQA's 500 labelled questions outside the test ids (all of them: a zero-shot task trains on nothing) and WikiText-2's
# validation file. Paths are relative to --realdata.
MERGE_DEV = {"suite": "biomed,general", "domain_tasks": ["ner"], "guard_tasks": ["pubmedqa", "general_perplexity"],
             "max_examples": 500,
             "override": ["ner.train=bc5cdr_conll/train.tsv", "ner.dev=bc5cdr_conll/devel.tsv",
                          "ner.test=bc5cdr_conll/test.tsv", "pubmedqa.train=", "pubmedqa.dev=", "pubmedqa.test=pubmedqa/ori_pqal.json",
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
         ("smollm2-lora-rc", "smollm2-lora-detok", "pubmed"), ("smollm2-lora-rc", "smollm2-lora-detok", "ncbi"),
         # each merge against the adapted arm it came from: what merging back gave up, and what it got back
         *[(f"{src}-merged", src, g) for src in ("smollm2-full", "smollm2-lora")
           for g in ("ncbi", "ppl", "pubmed", "bc5cdr", "cls", "pqa")]]

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
    # are realdata-blurb.overrides' own (its `ner` lines), so the base's numbers are docs/dapt-biomed.md's BLURB row.
    "ncbi-ft": {"suite": "biomed", "tasks": ["ner"], "cheap": False, "mode": "finetune", "seeds": 3,
                "label": "NCBI-disease NER, BLURB fine-tune (entity F1, 3 seeds)",
                "override": [f"@{ROOT}/benchmarks/biomed/realdata-blurb.overrides"]},
    # The same protocol on BC5CDR (chemicals and diseases in one model): the overrides file's `ner_pubtator` lines.
    "bc5cdr-ft": {"suite": "biomed", "tasks": ["ner_pubtator"], "cheap": False, "mode": "finetune", "seeds": 3,
                  "label": "BC5CDR NER, BLURB fine-tune (entity F1, 3 seeds)",
                  "override": [f"@{ROOT}/benchmarks/biomed/realdata-blurb.overrides"]},
    "cls": {"suite": "biomed", "tasks": ["relation", "doccls", "pubmedqa"], "cheap": False,
            "label": "ChemProt, HoC, PubMedQA", "override": [f"@{ROOT}/benchmarks/biomed/realdata.overrides"]},
    # PubMedQA alone (cls's third task, the same settings): the merge arms' guard on test, where ChemProt and HoC
    # (about 20 min of one core per model with the probe) did not fit a session; never "cheap", named explicitly
    "pqa": {"suite": "biomed", "tasks": ["pubmedqa"], "cheap": False, "label": "PubMedQA",
            "override": [f"@{ROOT}/benchmarks/biomed/realdata.overrides"]},
}


def arm_model(arm: str) -> str:
    spec = ARMS[arm]
    return arm_model(spec["merge"]) if "merge" in spec else spec["adapt"]["model"]


def reference(arm: str, group: str) -> str:
    """What an arm is scored against on a group: its base model, except MiniLM's perplexities, which are
    scored against the head-only arm (the base ships no masked-LM head, so the base's own is a random one).
    Any other comparison in WORK/bench is a head-to-head between recipes (PAIRS)."""
    model = arm_model(arm)
    return "minilm-headonly-0.1m" if model == "minilm" and group in ("ppl", "pubmed") else model
