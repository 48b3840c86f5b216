"""Answer priors (predicted labels, acc_norm, batch calibration) and the Holm family-wise verdict,
against hand-computed values on constructed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from domainlm.bench.report import family_verdicts
from domainlm.tasks.metrics import bootstrap
from domainlm.tasks.priors import (
    answer_priors,
    bootstrap_p_value,
    calibrated_predictions,
    holm,
    macro_f1,
    verdict,
)


def test_holm_on_a_constructed_case():
    # m = 5; sorted p: .001 <= .05/5, .01 <= .05/4 = .0125, .02 > .05/3 = .0167 -> stop; .03 and .04 kept too
    p = {"a": 0.01, "b": 0.04, "c": 0.001, "d": 0.02, "e": 0.03}
    assert holm(p) == {"c": True, "a": True, "d": False, "e": False, "b": False}
    # each of these is "significant" alone (p < .05): only Holm's step-down protects the family
    assert all(v < 0.05 for v in p.values())
    assert holm({"x": 0.2, "y": 0.001}) == {"y": True, "x": False}


def test_family_verdict_only_beyond_three_tasks_and_keeps_direction():
    def task(name, delta, p, higher=True):
        return {"name": name, "delta": delta, "p_value": p, "higher_is_better": higher}

    three = [task("a", 0.1, 0.001), task("b", 0.1, 0.2), task("c", -0.1, 0.3)]
    assert family_verdicts(three) is None
    tasks = three + [task("ppl", -5.0, 0.004, higher=False), task("d", 0.05, 0.03)]
    fw = family_verdicts(tasks)
    # sorted p: a .001 <= .01, ppl .004 <= .0125, d .03 > .0167 -> stop
    assert fw["verdicts"] == {"a": "better", "b": "within noise", "c": "within noise", "ppl": "better",
                              "d": "within noise"}
    assert fw["better"] == ["a", "ppl"] and fw["worse"] == [] and fw["tasks_compared"] == 5
    assert verdict(0.05, [0.01, 0.09], True) == "better"  # the per-task column stays as it was
    assert verdict(0.05, [-0.01, 0.09], True) == "within noise"
    assert verdict(-2.0, [-3.0, -1.0], False) == "better"


def test_bootstrap_p_value_is_the_dual_of_the_percentile_interval():
    rng = np.random.default_rng(0)
    for shift in (0.0, 0.08, 0.3):
        model = (rng.random(200) < 0.5 + shift).astype(float).reshape(-1, 1)
        base = (rng.random(200) < 0.5).astype(float).reshape(-1, 1)
        out = bootstrap([model], lambda r: float(r[:, 0].mean()), [base], n_boot=400, seed=1)
        lo, hi = out["delta_ci"]
        assert (out["p_value"] < 0.05) == (lo > 0 or hi < 0)
    assert bootstrap_p_value([0.1, 0.2, 0.3, -0.1]) == pytest.approx(0.5)
    assert bootstrap_p_value([]) == 1.0


def test_answer_priors_hand_computed():
    choices = ["yes", "no"]
    # the model prefers "no" by 1 nat on average; item evidence is +-0.5 around it (margins .5, 1.5, .5, 1.5)
    scores = [[-1.0, -0.5], [-1.0, 0.5], [-2.0, -1.5], [-2.0, -0.5]]
    gold = ["yes", "no", "yes", "no"]
    out = answer_priors(scores, choices, gold)
    assert out["acc"] == pytest.approx(0.5)  # always "no"
    # batch calibration divides out the mean probability of each answer: the two "yes" items have the
    # smallest no-margin and flip to yes
    assert calibrated_predictions(scores) == [0, 1, 0, 1]
    assert out["acc_calibrated"] == 1.0 and out["calibrated_hits"] == [1.0, 1.0, 1.0, 1.0]
    # acc_norm divides by the choice's characters: yes (3) and no (2)
    norm = [max(range(2), key=lambda j, r=r: r[j] / len(choices[j])) for r in scores]
    assert out["acc_norm"] == pytest.approx(sum(choices[p] == g for p, g in zip(norm, gold, strict=True)) / 4)
    assert macro_f1(gold, ["no"] * 4) == pytest.approx((0 + 2 * 2 / (4 + 2)) / 2)
    # a shift of the prior alone (same constant added to one answer everywhere) changes nothing calibrated
    shifted = [[a + 3.0, b] for a, b in scores]
    assert calibrated_predictions(shifted) == calibrated_predictions(scores)
    assert not math.isnan(answer_priors(shifted, choices, gold)["acc_norm"])


def test_quickstart_says_when_a_test_set_cannot_see_two_points():
    from domainlm.quickstart.summary import detectable, render_summary

    small = {"metric": "ner (entity_f1)", "base": 0.4, "adapted": 0.45, "delta": 0.05, "delta_ci": [-0.05, 0.15],
             "higher_is_better": True, "n_test": 80}
    large = dict(small, metric="ner_real (entity_f1)", delta_ci=[0.035, 0.065], n_test=4797)
    ppl = dict(small, metric="domain perplexity (per word)", delta_ci=[-40.0, -20.0])
    assert detectable(small) == "no (±0.10)" and detectable(large) == "yes (±0.01)" and detectable(ppl) == "-"
    text = render_summary([small, large], [])
    assert "no (±0.10)  within noise" in text and "yes (±0.01)  better" in text
    assert "too small to tell a 2-point change" in text
