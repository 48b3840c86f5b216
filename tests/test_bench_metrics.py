"""bench metrics: hand-computed values, parity with seqeval / scikit-learn / scipy, bootstrap, BLURB average."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from domainlm.tasks.builtin import METRICS
from domainlm.tasks.metrics import (
    Accuracy,
    Context,
    EntityF1,
    MacroF1,
    MicroF1,
    Pearson,
    Spearman,
    TokenPerplexity,
    WordPerplexity,
    blurb_macro,
    bootstrap,
    mean_std,
    precision_at_k,
)


def test_entity_f1_hand_computed():
    gold = [["B-Disease", "I-Disease", "O", "B-Chemical"], ["O", "B-Chemical", "O"]]
    pred = [["B-Disease", "I-Disease", "O", "O"], ["O", "B-Chemical", "B-Disease"]]
    # gold entities: D(0-1), C(3), C(1) = 3; predicted: D(0-1), C(1), D(2) = 3; correct: 2.
    # P = 2/3, R = 2/3, F1 = 2/3.
    rows = EntityF1.prepare(gold, pred, Context())
    assert rows.tolist() == [[1, 1, 2], [1, 2, 1]]
    assert EntityF1.reduce(rows) == pytest.approx(2 / 3)
    assert EntityF1.point(gold, pred, Context()) == pytest.approx(2 / 3)


def test_entity_f1_matches_seqeval_on_random_tags():
    from seqeval.metrics import f1_score

    rng = random.Random(0)
    tags = ["O", "O", "O", "B-Disease", "I-Disease", "B-Chemical", "I-Chemical"]
    for _ in range(20):
        gold = [[rng.choice(tags) for _ in range(rng.randint(1, 12))] for _ in range(15)]
        pred = [[rng.choice(tags) if rng.random() < 0.4 else t for t in g] for g in gold]
        # Partial spans, I- without B-, type changes: the reduced counts must equal seqeval exactly.
        assert EntityF1.reduce(EntityF1.prepare(gold, pred, Context())) == pytest.approx(f1_score(gold, pred))


def test_classification_hand_computed():
    gold = ["a", "a", "b", "c", "c", "c"]
    pred = ["a", "b", "b", "c", "c", "a"]
    ctx = Context(labels=["a", "b", "c"])
    assert Accuracy.point(gold, pred, ctx) == pytest.approx(4 / 6)
    # per class: a P=1/2 R=1/2 F=1/2; b P=1/2 R=1 F=2/3; c P=1 R=2/3 F=4/5
    assert MacroF1.point(gold, pred, ctx) == pytest.approx((1 / 2 + 2 / 3 + 4 / 5) / 3)
    assert MicroF1.point(gold, pred, ctx) == pytest.approx(4 / 6)
    # ChemProt convention: 'a' as the negative class is left out of micro-F1.
    neg = Context(labels=["a", "b", "c"], negative_label="a")
    # b, c: tp = 1 + 2 = 3, predicted = 2 + 2 = 4, gold = 1 + 3 = 4 -> F1 = 6/8
    assert MicroF1.point(gold, pred, neg) == pytest.approx(6 / 8)
    assert MicroF1.reduce(MicroF1.prepare(gold, pred, neg)) == pytest.approx(6 / 8)


def test_classification_matches_sklearn():
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(1)
    labels = ["INHIBITOR", "ACTIVATOR", "SUBSTRATE", "NONE"]
    for _ in range(10):
        gold = list(rng.choice(labels, 40))
        pred = [g if rng.random() < 0.5 else str(rng.choice(labels)) for g in gold]
        ctx = Context(labels=labels, negative_label="NONE")
        pos = labels[:3]
        assert MicroF1.reduce(MicroF1.prepare(gold, pred, ctx)) == pytest.approx(
            f1_score(gold, pred, labels=pos, average="micro"))
        plain = Context(labels=labels)
        assert MacroF1.reduce(MacroF1.prepare(gold, pred, plain)) == pytest.approx(
            f1_score(gold, pred, average="macro"))
        assert Accuracy.reduce(Accuracy.prepare(gold, pred, plain)) == pytest.approx(accuracy_score(gold, pred))


def test_multilabel_matches_sklearn():
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import MultiLabelBinarizer

    labels = ["x", "y", "z", "w"]
    gold = [["x"], ["x", "y"], [], ["z"], ["y"], []]
    pred = [["x"], ["y"], ["z"], ["z", "x"], [], []]
    ctx = Context(labels=labels)
    mlb = MultiLabelBinarizer(classes=labels)
    g, p = mlb.fit_transform(gold), mlb.transform(pred)
    assert MicroF1.point(gold, pred, ctx) == pytest.approx(f1_score(g, p, average="micro"))
    assert MicroF1.reduce(MicroF1.prepare(gold, pred, ctx)) == pytest.approx(f1_score(g, p, average="micro"))
    # macro over labels present in gold or predictions ('w' never occurs)
    present = [0, 1, 2]
    expect = f1_score(g[:, present], p[:, present], average="macro", zero_division=0)
    assert MacroF1.point(gold, pred, ctx) == pytest.approx(expect)
    assert MacroF1.reduce(MacroF1.prepare(gold, pred, ctx)) == pytest.approx(expect)
    assert Accuracy.point(gold, pred, ctx) == pytest.approx(2 / 6)  # exact set match


def test_correlations_match_scipy_and_hand_values():
    from scipy import stats

    gold = [1.0, 2.0, 3.0, 4.0]
    assert Pearson.point(gold, [2.0, 4.0, 6.0, 8.0], Context()) == pytest.approx(1.0)
    assert Spearman.point(gold, [1.0, 3.0, 2.0, 4.0], Context()) == pytest.approx(0.8)  # 1 - 6*2/(4*15)
    rng = np.random.default_rng(2)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    assert Pearson.point(x, y, Context()) == pytest.approx(stats.pearsonr(x, y)[0])
    assert Spearman.point(x, y, Context()) == pytest.approx(stats.spearmanr(x, y)[0])
    assert Pearson.point(gold, [1.0, 1.0, 1.0, 1.0], Context()) == 0.0  # constant prediction


def test_perplexity_rows_and_precision_at_l5():
    rows = [(math.log(4) * 3, 3, 10, 2), (math.log(4) * 1, 1, 5, 1)]
    assert TokenPerplexity.point(None, rows, Context()) == pytest.approx(4.0)
    assert WordPerplexity.point(None, rows, Context()) == pytest.approx(math.exp(4 * math.log(4) / 3))
    contacts = np.zeros((10, 10), dtype=bool)
    contacts[0, 9] = contacts[1, 8] = True
    scores = np.zeros((10, 10))
    scores[0, 9], scores[1, 8], scores[0, 7] = 0.9, 0.2, 0.5
    # L/5 = 2 top pairs with |i-j| >= 6: (0,9) hit, (0,7) miss -> 0.5
    assert precision_at_k(scores, contacts, min_separation=6) == 0.5
    assert precision_at_k(scores, contacts, min_separation=6, k=1) == 1.0


def test_bootstrap_ci_and_paired_delta():
    rng = np.random.default_rng(3)
    gold = list(rng.choice(["a", "b"], 200))
    good = [g if rng.random() < 0.9 else ("b" if g == "a" else "a") for g in gold]
    bad = [g if rng.random() < 0.6 else ("b" if g == "a" else "a") for g in gold]
    ctx = Context(labels=["a", "b"])
    m, b = Accuracy.prepare(gold, good, ctx), Accuracy.prepare(gold, bad, ctx)
    out = bootstrap([m], Accuracy.reduce, [b], n_boot=500, seed=0)
    lo, hi = out["ci"]
    assert lo < Accuracy.reduce(m) < hi and hi - lo < 0.15
    dlo, dhi = out["delta_ci"]
    assert 0 < dlo < Accuracy.reduce(m) - Accuracy.reduce(b) < dhi
    same = bootstrap([m], Accuracy.reduce, [m], n_boot=100)
    assert same["delta_ci"] == [0.0, 0.0]  # paired: identical models never differ


def test_mean_std_and_blurb_macro():
    assert mean_std([0.5]) == (0.5, 0.0)
    mean, std = mean_std([0.2, 0.4, 0.6])
    assert mean == pytest.approx(0.4) and std == pytest.approx(0.2)
    # BLURB: average within families first: ner (0.8, 0.6) -> 0.7; qa 0.5 -> macro 0.6 (not 0.633).
    out = blurb_macro([("ner", 0.8), ("ner", 0.6), ("qa", 0.5)])
    assert out["families"] == {"ner": pytest.approx(0.7), "qa": 0.5}
    assert out["score"] == pytest.approx(0.6)


def test_metric_registry_did_you_mean_and_duplicates():
    from domainlm.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown metric 'entity_f' \(did you mean 'entity_f1'\?\); known:"):
        METRICS.get("entity_f")
    with pytest.raises(ValueError, match="already registered"):
        METRICS.register("accuracy", heads=("sequence",))(Accuracy)
