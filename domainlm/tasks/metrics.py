"""Metrics from standard libraries, bootstrap confidence intervals and the BLURB-style average.

Point estimates come from the reference implementations: seqeval for entity-level F1,
scikit-learn for accuracy and micro/macro F1, scipy for Pearson and Spearman. Confidence intervals
resample test examples (the percentile bootstrap); to make 1000 resamples cheap, each metric turns
predictions into per-example statistics once (``prepare``) and a resample only sums rows
(``reduce``). For entity F1 the statistics are seqeval's own entities per sentence, so the reduced
value equals seqeval's micro F1 exactly (tests check this on the same inputs). Deltas between a
model and its baseline use a *paired* bootstrap: both are scored on the same resampled examples.

A metric is registered on ``METRICS`` (built-ins: :mod:`domainlm.tasks.builtin`) as a class with
``prepare(gold, pred, ctx) -> array`` (one row per example), ``reduce(rows) -> float`` and
``point(gold, pred, ctx) -> float``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Context:
    """What a metric needs beyond gold and predictions."""

    labels: list[str] | None = None
    negative_label: str | None = None


# --------------------------------------------------------------------------------------------------
# Entity-level F1 (seqeval)
# --------------------------------------------------------------------------------------------------

def entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """seqeval's chunks of one sentence (default, conlleval-compatible mode)."""
    from seqeval.metrics.sequence_labeling import get_entities

    return set(get_entities(list(tags)))


def _f1(tp: float, n_pred: float, n_gold: float) -> float:
    return 0.0 if n_pred + n_gold == 0 else 2.0 * tp / (n_pred + n_gold)


class EntityF1:
    """Entity-level micro F1 (seqeval): a mention counts only with exact span and type."""

    @staticmethod
    def prepare(gold, pred, ctx: Context):
        import numpy as np

        rows = []
        for g, p in zip(gold, pred, strict=False):
            ge, pe = entities(g), entities(p)
            rows.append((len(ge & pe), len(pe), len(ge)))
        return np.asarray(rows, dtype=np.float64).reshape(-1, 3)

    @staticmethod
    def reduce(rows) -> float:
        tp, n_pred, n_gold = rows.sum(axis=0)
        return _f1(tp, n_pred, n_gold)

    @staticmethod
    def point(gold, pred, ctx: Context) -> float:
        from seqeval.metrics import f1_score

        return float(f1_score([list(g) for g in gold], [list(p) for p in pred], zero_division=0))


def entity_report(gold, pred) -> dict[str, float]:
    """seqeval precision, recall and F1 (micro), and F1 per entity type when there are several."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    g, p = [list(x) for x in gold], [list(x) for x in pred]
    out = {"entity_precision": float(precision_score(g, p, zero_division=0)),
           "entity_recall": float(recall_score(g, p, zero_division=0)),
           "entity_f1": float(f1_score(g, p, zero_division=0))}
    types = sorted({t[2:] for sent in g for t in sent if t != "O"})
    if len(types) > 1:  # per entity type (BLURB scores BC5CDR's chemicals and diseases apart)
        from seqeval.metrics import classification_report

        per = classification_report(g, p, output_dict=True, zero_division=0)
        out.update({f"entity_f1_{t}": float(per[t]["f1-score"]) for t in types if t in per})
    return out


# --------------------------------------------------------------------------------------------------
# Classification (scikit-learn)
# --------------------------------------------------------------------------------------------------

def _as_matrix(values, labels: list[str]):
    """Single labels or label lists -> a 0/1 indicator matrix over ``labels``."""
    import numpy as np

    index = {label: i for i, label in enumerate(labels)}
    out = np.zeros((len(values), len(labels)), dtype=np.int8)
    for r, v in enumerate(values):
        for label in ([v] if isinstance(v, str) else v):
            if label in index:
                out[r, index[label]] = 1
    return out


def _labels(gold, pred, ctx: Context) -> list[str]:
    if ctx.labels is not None:
        return list(ctx.labels)
    seen: set[str] = set()
    for v in list(gold) + list(pred):
        seen.update([v] if isinstance(v, str) else v)
    return sorted(seen)


def _confusion_rows(gold, pred, ctx: Context):
    """Per example and label: true positive, predicted, gold (works for single and multi-label)."""
    import numpy as np

    labels = _labels(gold, pred, ctx)
    g, p = _as_matrix(gold, labels), _as_matrix(pred, labels)
    return np.concatenate([g & p, p, g], axis=1).astype(np.float64)


def _positive_mask(ctx: Context, labels: list[str]):
    import numpy as np

    return np.array([label != ctx.negative_label for label in labels], dtype=bool)


class Accuracy:
    """Accuracy (scikit-learn): exact match of the label (the whole label set for multilabel)."""

    @staticmethod
    def prepare(gold, pred, ctx: Context):
        import numpy as np

        hits = [[float(_norm(g) == _norm(p))] for g, p in zip(gold, pred, strict=True)]
        return np.asarray(hits, dtype=np.float64).reshape(-1, 1)

    @staticmethod
    def reduce(rows) -> float:
        return float(rows[:, 0].mean()) if len(rows) else 0.0

    @staticmethod
    def point(gold, pred, ctx: Context) -> float:
        from sklearn.metrics import accuracy_score

        if gold and not isinstance(gold[0], str):
            labels = _labels(gold, pred, ctx)
            return float(accuracy_score(_as_matrix(gold, labels), _as_matrix(pred, labels)))
        return float(accuracy_score(list(gold), list(pred)))


def _norm(v):
    return v if isinstance(v, str) else tuple(sorted(v))


class _F1Base:
    average = "micro"

    @classmethod
    def prepare(cls, gold, pred, ctx: Context):
        rows = _confusion_rows(gold, pred, ctx)
        labels = _labels(gold, pred, ctx)
        keep = _positive_mask(ctx, labels)
        k = len(labels)
        import numpy as np

        cols = np.concatenate([np.flatnonzero(keep) + j * k for j in range(3)])
        return rows[:, cols]

    @classmethod
    def reduce(cls, rows) -> float:
        import numpy as np

        k = rows.shape[1] // 3
        s = rows.sum(axis=0)
        tp, n_pred, n_gold = s[:k], s[k:2 * k], s[2 * k:]
        if cls.average == "micro":
            return _f1(tp.sum(), n_pred.sum(), n_gold.sum())
        # scikit-learn's macro average runs over the labels present in gold or predictions.
        present = (n_pred + n_gold) > 0
        if not present.any():
            return 0.0
        per_label = zip(tp[present], n_pred[present], n_gold[present], strict=True)
        return float(np.mean([_f1(t, p, g) for t, p, g in per_label]))

    @classmethod
    def point(cls, gold, pred, ctx: Context) -> float:
        from sklearn.metrics import f1_score

        labels = _labels(gold, pred, ctx)
        scored = [label for label in labels if label != ctx.negative_label]
        if gold and not isinstance(gold[0], str):
            g, p = _as_matrix(gold, labels), _as_matrix(pred, labels)
            cols = [labels.index(label) for label in scored]
            g, p = g[:, cols], p[:, cols]
            if cls.average == "macro":
                present = (g.sum(axis=0) + p.sum(axis=0)) > 0
                g, p = g[:, present], p[:, present]
            return float(f1_score(g, p, average=cls.average, zero_division=0))
        if cls.average == "macro":
            present = sorted(set(gold) | set(pred))
            scored = [label for label in present if label != ctx.negative_label]
        return float(f1_score(list(gold), list(pred), labels=scored, average=cls.average, zero_division=0))


class MicroF1(_F1Base):
    """Micro-averaged F1 (scikit-learn); ``negative_label`` is left out (ChemProt/DDI convention)."""

    average = "micro"


class MacroF1(_F1Base):
    """Macro-averaged F1 (scikit-learn) over the labels present in gold or predictions."""

    average = "macro"


# --------------------------------------------------------------------------------------------------
# Correlation (scipy)
# --------------------------------------------------------------------------------------------------

class _CorrBase:
    fn = "pearsonr"

    @staticmethod
    def prepare(gold, pred, ctx: Context):
        import numpy as np

        return np.stack([np.asarray(gold, dtype=np.float64), np.asarray(pred, dtype=np.float64)], axis=1)

    @classmethod
    def reduce(cls, rows) -> float:
        import numpy as np
        from scipy import stats

        if len(rows) < 2 or np.std(rows[:, 0]) == 0 or np.std(rows[:, 1]) == 0:
            return 0.0  # correlation undefined on a constant column; count it as no agreement
        return float(getattr(stats, cls.fn)(rows[:, 0], rows[:, 1])[0])

    @classmethod
    def point(cls, gold, pred, ctx: Context) -> float:
        return cls.reduce(cls.prepare(gold, pred, ctx))


class Pearson(_CorrBase):
    """Pearson correlation (scipy.stats.pearsonr)."""

    fn = "pearsonr"


class Spearman(_CorrBase):
    """Spearman rank correlation (scipy.stats.spearmanr)."""

    fn = "spearmanr"


# --------------------------------------------------------------------------------------------------
# Language modelling and proteins: per-document sums
# --------------------------------------------------------------------------------------------------

class _PerplexityBase:
    """Rows are per document: (negative log-likelihood in nats, tokens, characters, words)."""

    column = 1

    @staticmethod
    def prepare(gold, pred, ctx: Context):
        import numpy as np

        return np.asarray(pred, dtype=np.float64).reshape(-1, 4)

    @classmethod
    def reduce(cls, rows) -> float:
        # the one perplexity formula (overflow and empty cases included); imported here because lm_loss
        # imports torch and task validation should not
        from domainlm.lm_loss import perplexity

        s = rows.sum(axis=0)
        return perplexity(float(s[0]), float(s[cls.column]))

    @classmethod
    def point(cls, gold, pred, ctx: Context) -> float:
        return cls.reduce(cls.prepare(gold, pred, ctx))


class TokenPerplexity(_PerplexityBase):
    """exp(mean negative log-likelihood per token); comparable only between models sharing a tokenizer."""

    column = 1


class CharPerplexity(_PerplexityBase):
    """exp(total NLL / characters): tokenizer-independent."""

    column = 2


class WordPerplexity(_PerplexityBase):
    """exp(total NLL / whitespace words), as lm-evaluation-harness reports for wikitext."""

    column = 3


class RecoveryAccuracy:
    """Masked-token recovery: share of positions whose original token is the top prediction."""

    @staticmethod
    def prepare(gold, pred, ctx: Context):
        import numpy as np

        return np.asarray(pred, dtype=np.float64).reshape(-1, 2)  # (correct, scored) per document

    @staticmethod
    def reduce(rows) -> float:
        s = rows.sum(axis=0)
        return float(s[0] / s[1]) if s[1] else 0.0

    @classmethod
    def point(cls, gold, pred, ctx: Context) -> float:
        return cls.reduce(cls.prepare(gold, pred, ctx))


def precision_at_k(scores, contacts, *, min_separation: int, k: int | None = None) -> float:
    """Precision of the top-``k`` scored residue pairs with ``|i - j| >= min_separation``.

    ``k`` defaults to L/5 (L = sequence length), the headline number of Rao et al. 2020.
    """
    import numpy as np

    length = contacts.shape[0]
    k = k if k is not None else max(1, length // 5)
    i, j = np.triu_indices(length, k=min_separation)
    if len(i) == 0:
        return 0.0
    order = np.argsort(-scores[i, j], kind="stable")[:k]
    return float(contacts[i[order], j[order]].mean())


# --------------------------------------------------------------------------------------------------
# Aggregation: seeds, bootstrap, BLURB-style macro average
# --------------------------------------------------------------------------------------------------

def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    import statistics

    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def bootstrap(model_rows: list[Any], reduce: Callable[[Any], float], baseline_rows: list[Any] | None = None, *,
              n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Percentile bootstrap over examples of the seed-averaged metric, paired with a baseline.

    ``model_rows`` holds one statistics array per seed (same examples, same order). Returns
    ``{"ci": [lo, hi]}`` and, with a baseline, ``"baseline_ci"``, ``"delta_ci"`` (model minus
    baseline on the same resamples) and ``"p_value"`` (two-sided, of "no difference"; the dual of
    the percentile interval, used by the Holm-corrected family-wise verdict).
    """
    import numpy as np

    n = len(model_rows[0])
    rng = np.random.default_rng(seed)
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    model_b, base_b = np.empty(n_boot), np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, n, size=n)
        model_b[b] = np.mean([reduce(r[idx]) for r in model_rows])
        if baseline_rows is not None:
            base_b[b] = np.mean([reduce(r[idx]) for r in baseline_rows])

    def pct(x) -> list[float]:
        x = x[np.isfinite(x)]
        return [float(np.percentile(x, lo_q)), float(np.percentile(x, hi_q))] if len(x) else [math.nan, math.nan]

    out: dict[str, Any] = {"ci": pct(model_b)}
    if baseline_rows is not None:
        from domainlm.tasks.priors import bootstrap_p_value

        out["baseline_ci"] = pct(base_b)
        out["delta_ci"] = pct(model_b - base_b)
        out["p_value"] = bootstrap_p_value(model_b - base_b)
    return out


def blurb_macro(tasks: list[tuple[str, float]]) -> dict[str, Any]:
    """BLURB's score: average the tasks within each family, then average the family means.

    ``tasks`` is a list of (family, score). Returns {"score", "families": {family: mean}}.
    """
    families: dict[str, list[float]] = {}
    for family, score in tasks:
        if score is not None and not math.isnan(score):
            families.setdefault(family, []).append(float(score))
    means = {f: sum(v) / len(v) for f, v in sorted(families.items())}
    return {"score": (sum(means.values()) / len(means)) if means else None, "families": means}


def extras(head: str, gold, pred, ctx: Context) -> dict[str, float]:
    """The standard secondary numbers for a head (point estimates)."""
    if head == "token":
        return entity_report(gold, pred)
    if head in ("sequence", "multilabel"):
        return {"accuracy": Accuracy.point(gold, pred, ctx), "micro_f1": MicroF1.point(gold, pred, ctx),
                "macro_f1": MacroF1.point(gold, pred, ctx)}
    if head == "regression":
        return {"pearson": Pearson.point(gold, pred, ctx), "spearman": Spearman.point(gold, pred, ctx)}
    return {}


class ItemMean:
    """Mean of a per-item score (lm-evaluation-harness tasks whose per-item metric is not accuracy)."""

    @staticmethod
    def prepare(gold, pred, ctx: Context):
        import numpy as np

        return np.asarray(pred, dtype=np.float64).reshape(-1, 1)

    @staticmethod
    def reduce(rows) -> float:
        return float(rows[:, 0].mean()) if len(rows) else 0.0

    @classmethod
    def point(cls, gold, pred, ctx: Context) -> float:
        return cls.reduce(cls.prepare(gold, pred, ctx))


class PrecisionAtL5(ItemMean):
    """Long-range contact precision at L/5, averaged over proteins (Rao et al. 2020): the item is a protein,
    its score the precision that :func:`precision_at_k` computed for it."""
