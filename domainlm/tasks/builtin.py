"""The built-in task formats and metrics, listed in one place (peft's explicit-mapping style).

``FORMATS`` and ``METRICS`` are filled here from two tables instead of by importing modules for
their decorators' side effects; outsiders add to the same registries with
``FORMATS.register(name, heads=...)(reader)`` (see :mod:`.registry`).

Each built-in is named by its import path and imported when first used: the schema (:mod:`.spec`) checks
names and heads against these tables, and the readers, which take a :class:`~.spec.TaskSpec`, sit above it.
"""

from __future__ import annotations

from domainlm.tasks.registry import Registry

LM = ("lm",)
CLASSIFY = ("sequence", "multilabel")
_R = "domainlm.tasks.readers."
_M = "domainlm.tasks.metrics:"

# name -> (reader, heads it can feed)
BUILTIN_FORMATS = {
    "conll": (_R + "tagging:read_conll", ("token",)),
    "pubtator": (_R + "tagging:read_pubtator", ("token",)),
    "brat": (_R + "tagging:read_brat", ("token",)),
    "sofc": (_R + "tagging:read_sofc", ("token",)),
    "pubmedqa": (_R + "labelled:read_pubmedqa", ("sequence",)),
    "hoc": (_R + "labelled:read_hoc", ("multilabel",)),
    "jsonl": (_R + "labelled:read_jsonl", ("sequence", "multilabel", "regression", "lm")),
    "csv": (_R + "labelled:read_csv", ("sequence", "multilabel", "regression", "lm")),
    "pairs": (_R + "labelled:read_pairs", ("regression", "sequence")),
    "fasta": (_R + "labelled:read_fasta", ("regression", "sequence", "lm")),
    "flip": (_R + "labelled:read_flip", ("regression",)),
    "text": (_R + "text:read_text", LM),
    "paragraphs": (_R + "text:read_paragraphs", LM),
    "pubmed-xml": (_R + "text:read_pubmed_xml", LM),
    "arxiv": (_R + "text:read_arxiv", LM),
    "pdb": (_R + "structures:read_pdb", ("contacts",)),
}

# name -> (metric class, heads it applies to, higher is better)
BUILTIN_METRICS = {
    "entity_f1": (_M + "EntityF1", ("token",), True),
    "accuracy": (_M + "Accuracy", CLASSIFY, True),
    "micro_f1": (_M + "MicroF1", CLASSIFY, True),
    "macro_f1": (_M + "MacroF1", CLASSIFY, True),
    "pearson": (_M + "Pearson", ("regression",), True),
    "spearman": (_M + "Spearman", ("regression",), True),
    "token_perplexity": (_M + "TokenPerplexity", LM, False),
    "char_perplexity": (_M + "CharPerplexity", LM, False),
    "word_perplexity": (_M + "WordPerplexity", LM, False),
    "recovery_accuracy": (_M + "RecoveryAccuracy", LM, True),
    "precision_at_l5": (_M + "PrecisionAtL5", ("contacts",), True),
    "item_mean": (_M + "ItemMean", ("sequence",), True),
}

FORMATS = Registry("task format")
METRICS = Registry("metric")
for _name, (_path, _heads) in BUILTIN_FORMATS.items():
    FORMATS.register(_name, heads=_heads)(_path)
for _name, (_path, _heads, _higher) in BUILTIN_METRICS.items():
    METRICS.register(_name, heads=_heads, higher_is_better=_higher)(_path)
