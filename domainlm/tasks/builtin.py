"""The built-in task formats and metrics, listed in one place (peft's explicit-mapping style).

``FORMATS`` and ``METRICS`` are filled here from two tables instead of by importing modules for
their decorators' side effects; outsiders add to the same registries with
``FORMATS.register(name, heads=...)(reader)`` (see :mod:`.registry`).
"""

from __future__ import annotations

from domainlm.bench import metrics as m
from domainlm.bench import readers as r
from domainlm.bench.registry import Registry

LM = ("lm",)
CLASSIFY = ("sequence", "multilabel")

# name -> (reader, heads it can feed)
BUILTIN_FORMATS = {
    "conll": (r.read_conll, ("token",)),
    "pubtator": (r.read_pubtator, ("token",)),
    "brat": (r.read_brat, ("token",)),
    "sofc": (r.read_sofc, ("token",)),
    "pubmedqa": (r.read_pubmedqa, ("sequence",)),
    "hoc": (r.read_hoc, ("multilabel",)),
    "jsonl": (r.read_jsonl, ("sequence", "multilabel", "regression", "lm")),
    "csv": (r.read_csv, ("sequence", "multilabel", "regression", "lm")),
    "pairs": (r.read_pairs, ("regression", "sequence")),
    "fasta": (r.read_fasta, ("regression", "sequence", "lm")),
    "flip": (r.read_flip, ("regression",)),
    "text": (r.read_text, LM),
    "paragraphs": (r.read_paragraphs, LM),
    "pubmed-xml": (r.read_pubmed_xml, LM),
    "arxiv": (r.read_arxiv, LM),
    "pdb": (r.read_pdb, ("contacts",)),
}

# name -> (metric class, heads it applies to, higher is better)
BUILTIN_METRICS = {
    "entity_f1": (m.EntityF1, ("token",), True),
    "accuracy": (m.Accuracy, CLASSIFY, True),
    "micro_f1": (m.MicroF1, CLASSIFY, True),
    "macro_f1": (m.MacroF1, CLASSIFY, True),
    "pearson": (m.Pearson, ("regression",), True),
    "spearman": (m.Spearman, ("regression",), True),
    "token_perplexity": (m.TokenPerplexity, LM, False),
    "char_perplexity": (m.CharPerplexity, LM, False),
    "word_perplexity": (m.WordPerplexity, LM, False),
    "recovery_accuracy": (m.RecoveryAccuracy, LM, True),
    "precision_at_l5": (m.PrecisionAtL5, ("contacts",), True),
    "item_mean": (m.ItemMean, ("sequence",), True),
}

FORMATS = Registry("task format")
METRICS = Registry("metric")
for _name, (_fn, _heads) in BUILTIN_FORMATS.items():
    FORMATS.register(_name, heads=_heads)(_fn)
for _name, (_cls, _heads, _higher) in BUILTIN_METRICS.items():
    METRICS.register(_name, heads=_heads, higher_is_better=_higher)(_cls)
