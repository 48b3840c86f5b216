"""Does domain-adaptive pretraining help on real biomedical data? A reproducible DAPT/TAPT experiment.

    python experiments/dapt_biomed --realdata ../shared/realdata            # every arm, then the report
    python experiments/dapt_biomed --realdata ../shared/realdata --quick    # one arm (< 20 min on 2 cores)
    python experiments/dapt_biomed --realdata ../shared/realdata --report-only  # report from the cache

What it does, each stage cached in ``--work`` (default ``runs/dapt-biomed``; nothing from the real data
is written into the project, only the numbers in experiments/DAPT_BIOMED.{md,json,png}):

1. **Decontamination.** Every evaluation split (NCBI-disease and BC5CDR test, ChemProt, HoC, PubMedQA
   test, and the probe-training splits) is written out as text, and ``domainlm corpus prepare
   --decontaminate`` (the engine's datatrove n-gram filter, word 13-grams as GPT-3's check) drops every
   corpus document that shares a 13-gram with one of them. The share of each split's sentences that share
   a 13-gram with the corpus is reported, measured with the same index and filter.
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
4. **Report.** experiments/DAPT_BIOMED.md (verdict first), .json and .png.

The modules: :mod:`.arms` (what is trained and how each is scored: ARMS, GROUPS, PAIRS, MERGE_DEV), :mod:`.data`
(stages 1 and 2), :mod:`.run` (stage 3: training, merging, scoring), :mod:`.reading` (what the numbers say:
verdicts, the issue's goal, trends) and :mod:`.report` (stage 4: the Markdown, JSON and picture);
``__main__`` is the command line.

Cache layout in ``--work``: ``data/`` (the decontaminated corpus, evaluation texts, decontamination.json),
``corpora/`` (prepared corpora), ``runs/`` (one adapt or merge run per arm), ``scores/`` (per-task results,
one pickle per model and group) and ``bench/`` (bench reports, arm vs reference). Every stage reuses what it
finds there, so a run killed part-way continues and ``--report-only`` reports an existing cache.
"""
