"""experiments/promptability_quickstart.py: each arm is the quickstart's biomed chain with only its two changes, and
the verdict rule (no task row significantly worse, domain perplexity significantly better), on synthetic rows."""

from __future__ import annotations

import promptability_quickstart as pq  # experiments/, beside this file (pytest puts it on sys.path)

from domainlm.quickstart import QuickstartConfig
from domainlm.quickstart.run import plan_stages


def test_arms_are_the_quickstart_chain_with_their_own_changes_only():
    preset = plan_stages(QuickstartConfig(domain="biomed"))
    quick = dict(preset.adapt)
    assert pq.arm_settings("raw", preset) == ({}, quick)
    prep, kw = pq.arm_settings("rc", preset)
    assert prep == {"reading_comprehension": True} and kw == quick
    prep, kw = pq.arm_settings("rc-replay", preset)
    assert prep == {"reading_comprehension": True}
    assert {k: v for k, v in kw.items() if k not in ("replay_corpus", "replay_fraction", "general_eval")} == \
        {k: v for k, v in quick.items() if k not in ("replay_corpus", "replay_fraction")}
    assert kw["replay_corpus"] == "instructions-sample" and kw["replay_fraction"] == pq.INSTRUCTION_REPLAY
    assert kw["general_eval"] == preset.adapt["replay_corpus"]  # the forgetting monitor stays the same


def _row(metric, delta, lo, hi, higher=True):
    return {"metric": metric, "base": 0.5, "adapted": 0.5 + delta, "delta": delta, "delta_ci": [lo, hi],
            "higher_is_better": higher}


def test_an_arm_qualifies_only_without_a_significant_loss_and_with_the_domain_gain():
    domain = _row("domain perplexity (per word)", -30.0, -36.0, -22.0, higher=False)
    ok = [_row("pubmedqa (accuracy)", -0.02, -0.08, 0.04), _row("pubmedqa (calibrated accuracy)", 0.01, -0.05, 0.07),
          domain]
    assert pq.qualifies(ok)[0]
    cal_loss = ok[:1] + [_row("pubmedqa (calibrated accuracy)", -0.11, -0.19, -0.05), domain]
    assert pq.qualifies(cal_loss) == (False, "significantly worse on pubmedqa (calibrated accuracy)")
    no_gain = ok[:2] + [_row("domain perplexity (per word)", -3.0, -9.0, 2.0, higher=False)]
    assert pq.qualifies(no_gain) == (False, "no significant domain-perplexity gain")
    # a perplexity that rises is not a task loss (it is the domain rule's business)
    worse_general = ok + [_row("general perplexity (per word)", 5.0, 2.0, 8.0, higher=False)]
    assert pq.qualifies(worse_general)[0]
