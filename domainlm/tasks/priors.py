"""Answer priors of classification and multiple-choice tasks, and the family-wise verdict.

A small model's zero-shot accuracy is dominated by its answer prior (base SmolLM2 answers "no" to
385 of the 500 PubMedQA test questions), so adaptation that only shifts the prior moves accuracy.
For every classification task the report therefore shows, beside the headline score:

* the distribution of predicted labels (and of the gold labels);
* macro-F1, which a constant answer cannot inflate;
* for multiple choice scored by log-likelihood, two prior-corrected accuracies:
  ``acc_norm``, lm-evaluation-harness's length normalisation (log-likelihood per character of the
  choice), and ``acc_calibrated``, batch calibration (Zhou et al. 2024, "Batch Calibration:
  Rethinking Calibration for In-Context Learning and Prompt Engineering"): the model's mean
  probability of each choice over the test items is its prior, and each item's choice
  probabilities are divided by it. It needs no extra forward pass (contextual calibration would
  need content-free prompts) and removes exactly the effect described above: a constant shift
  towards one answer.

The family-wise verdict: with many tasks some paired intervals exclude zero by chance. Holm's
step-down procedure (Holm 1979) over the tasks' paired-bootstrap p-values keeps the probability of
any false "better"/"worse" at or below ``alpha``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any


def label_distribution(values: Sequence[Any]) -> dict[str, int]:
    """Counts of each label, most common first."""
    return dict(Counter(str(v) for v in values).most_common())


def _logsumexp(row: Sequence[float]) -> float:
    top = max(row)
    if not math.isfinite(top):
        return top
    return top + math.log(sum(math.exp(x - top) for x in row))


def calibrated_predictions(scores: Sequence[Sequence[float]]) -> list[int]:
    """Batch calibration: argmax of log p(choice | item) - log mean_items p(choice | item).

    ``scores`` holds each item's log-likelihood per choice; the probabilities are normalised over the
    choices of an item first.
    """
    if not scores:
        return []
    k = len(scores[0])
    logp = [[x - _logsumexp(row) for x in row] for row in scores]
    prior = [_logsumexp([row[j] for row in logp]) - math.log(len(logp)) for j in range(k)]
    return [max(range(k), key=lambda j, row=row: row[j] - prior[j]) for row in logp]


def answer_priors(scores: Sequence[Sequence[float]], choices: Sequence[str], gold: Sequence[str],
                  choice_lengths: Sequence[Sequence[int]] | None = None) -> dict[str, Any]:
    """Prior-aware numbers for multiple choice scored by log-likelihood.

    Args:
        scores: per item, the log-likelihood of each choice (same order as ``choices``).
        choices: the choice labels (answer strings, or lm-eval's choice texts).
        gold: the gold choice label per item.
        choice_lengths: per item, the characters of each choice's text (lm-eval's acc_norm divides the
            log-likelihood by it); default: the length of each choice label.

    Returns:
        ``acc``, ``acc_norm``, ``acc_calibrated`` (fractions), the per-item hits of the calibrated
        predictions (``calibrated_hits``, for a paired interval), and ``calibrated_predictions``.
    """
    n = len(scores)
    if n == 0:
        return {}
    lengths = choice_lengths or [[len(c) for c in choices]] * n
    raw = [max(range(len(row)), key=row.__getitem__) for row in scores]
    norm = [max(range(len(row)), key=lambda j, row=row, ln=ln: row[j] / max(1, ln[j]))
            for row, ln in zip(scores, lengths, strict=True)]
    cal = calibrated_predictions(scores)
    hits = [float(choices[c] == g) for c, g in zip(cal, gold, strict=True)]
    return {
        "acc": sum(choices[p] == g for p, g in zip(raw, gold, strict=True)) / n,
        "acc_norm": sum(choices[p] == g for p, g in zip(norm, gold, strict=True)) / n,
        "acc_calibrated": sum(hits) / n,
        "calibrated_hits": hits,
        "calibrated_predictions": [choices[c] for c in cal],
    }


def macro_f1(gold: Sequence[str], pred: Sequence[str]) -> float:
    """scikit-learn's macro-F1 over the labels present in gold or predictions."""
    from sklearn.metrics import f1_score

    labels = sorted({str(x) for x in gold} | {str(x) for x in pred})
    return float(f1_score([str(x) for x in gold], [str(x) for x in pred], labels=labels, average="macro",
                          zero_division=0))


# --------------------------------------------------------------------------------------------------
# Family-wise verdict
# --------------------------------------------------------------------------------------------------

def bootstrap_p_value(deltas: Sequence[float]) -> float:
    """Two-sided p-value of "delta = 0" from paired bootstrap deltas (the percentile-interval dual).

    It is twice the smaller share of resampled deltas on either side of zero, so it is below 0.05
    exactly when the 95% percentile interval excludes zero.
    """
    finite = [d for d in deltas if math.isfinite(d)]
    if not finite:
        return 1.0
    below = sum(d <= 0 for d in finite) / len(finite)
    above = sum(d >= 0 for d in finite) / len(finite)
    return min(1.0, 2.0 * min(below, above))


def holm(p_values: dict[str, float], alpha: float = 0.05) -> dict[str, bool]:
    """Holm's step-down procedure: which hypotheses are rejected at family-wise level ``alpha``.

    Sort the m p-values ascending; reject while ``p_(i) <= alpha / (m - i)`` (i from 0), stop at the
    first that fails (Holm 1979). Returns name -> rejected.
    """
    order = sorted(p_values, key=lambda k: p_values[k])
    m = len(order)
    out = {k: False for k in order}
    for i, name in enumerate(order):
        if p_values[name] <= alpha / (m - i):
            out[name] = True
        else:
            break
    return out


def verdict(delta: float | None, ci: Sequence[float] | None, higher_is_better: bool) -> str:
    """'better'/'worse' only when the paired interval excludes 0, else 'within noise' ('-' without one)."""
    if delta is None or not ci or ci[0] is None:
        return "-"
    if ci[0] <= 0 <= ci[1]:
        return "within noise"
    return "better" if (delta > 0) == higher_is_better else "worse"
