"""lm-evaluation-harness inside bench: the shipped local task YAMLs end to end on tiny models, parity
of our zero-shot scoring with lm-eval's item by item, and the refusals (masked model, missing extra)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from domainlm.bench import bench
from domainlm.bench.harness import split_suite
from domainlm.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
HARNESS = REPO / "benchmarks" / "harness"


def test_split_suite():
    assert split_suite("biomed") == ("biomed", [])
    assert split_suite("harness:pubmedqa,medmcqa") == ("", ["pubmedqa", "medmcqa"])
    assert split_suite("biomed,general,harness:multimedqa") == ("biomed,general", ["multimedqa"])


def test_masked_model_and_missing_extra_are_refused_before_loading(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="does not support.*native suites"):
        bench(model="tiny-bert", suite="harness:pubmedqa_local", harness_include=str(HARNESS), out=str(tmp_path / "a"))
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"pip install 'domainlm\[harness\]'"):
        bench(model="tiny-llama", suite="harness:pubmedqa_local", out=str(tmp_path / "b"))
    with pytest.raises(ConfigError, match="apply to harness tasks only"):
        bench(model="tiny-llama", suite="biomed", num_fewshot=2, out=str(tmp_path / "c"))


@pytest.fixture(scope="module")
def other_llama(tmp_path_factory):
    from domainlm.sources import build_tiny

    return str(build_tiny("tiny-llama", tmp_path_factory.mktemp("llama") / "seed1", seed=1))


def test_harness_and_native_tasks_in_one_report(tmp_path, other_llama):
    """Shipped local YAMLs (a group of two tasks) + a native task, model vs baseline, one report."""
    out = tmp_path / "report"
    report = bench(model="tiny-llama", baseline=other_llama, suite="biomed,harness:multimedqa_local",
                   tasks=["pubmedqa"], harness_include=str(HARNESS), max_examples=8, bootstrap=200, out=str(out))
    tasks = {t["name"]: t for t in report["tasks"]}
    assert set(tasks) == {"pubmedqa", "harness:pubmedqa_local", "harness:medmcqa_local"}
    for name in ("harness:pubmedqa_local", "harness:medmcqa_local"):
        t = tasks[name]
        assert t["backend"] == "lm-evaluation-harness" and t["n_test"] == 8 and t["mode"] == "harness"
        m, b = t["model"], t["baseline"]
        assert m["ci"][0] <= m["score"] <= m["ci"][1] and b["ci"][0] <= b["score"] <= b["ci"][1]
        assert t["delta"] == pytest.approx(m["score"] - b["score"])
        assert t["delta_ci"][0] <= t["delta"] <= t["delta_ci"][1] and t["verdict"] in ("better", "worse",
                                                                                         "within noise")
        # our per-item rows reproduce lm-eval's own aggregate
        assert m["score"] == pytest.approx(m["extras"]["lm_eval_acc"])
        assert sum(m["priors"]["predicted"].values()) == 8 and 0 <= m["priors"]["macro_f1"] <= 1
        assert 0 <= m["priors"]["acc_calibrated"] <= 1 and m["priors"]["acc_norm"] == pytest.approx(
            m["extras"]["lm_eval_acc_norm"])
        assert t["calibrated"]["delta_ci"] is not None
    assert set(tasks["harness:medmcqa_local"]["gold_distribution"]) <= {"A", "B", "C", "D"}
    assert tasks["pubmedqa"]["backend"] == "domainlm" and tasks["pubmedqa"]["model"]["priors"]["acc_norm"] is not None
    md = (out / "report.md").read_text()
    assert "| harness:pubmedqa_local | accuracy | harness |" in md and "## Answer priors" in md
    manifest = json.loads((out / "manifest.json").read_text())
    assert any(i["path"].endswith("pubmedqa_local.yaml") for i in manifest["inputs"])


def test_our_zeroshot_equals_lm_eval_item_by_item():
    """Tier-3 parity on the shipped PubMedQA items: same log-likelihoods, same answers."""
    from domainlm.bench import harness
    from domainlm.bench.modes import RunContext
    from domainlm.bench.modes.zeroshot import run_zeroshot
    from domainlm.loading import load_for_eval
    from domainlm.tasks.data import load_data
    from domainlm.tasks.suites import load_suite

    loaded = load_for_eval("tiny-llama", "causal")
    spec = load_suite("biomed", ["pubmedqa"])[0]
    data = load_data(spec, needs_train=False)
    data.splits["test"] = data.test[:10]
    ours = run_zeroshot(loaded, spec, data, RunContext())
    theirs = harness.evaluate(harness.plan(["pubmedqa_local"], include=str(HARNESS), limit=10), loaded.model,
                              loaded.tokenizer)["pubmedqa_local"]
    ids = [json.loads(line)["pubid"] for line in (HARNESS / "data" / "pubmedqa_local_test.jsonl").open()][:10]
    assert ids == [ex.id for ex in data.test]  # the same items in the same order
    for a, b in zip(ours.choice_scores, theirs.choice_scores, strict=True):
        assert a == pytest.approx(b, abs=2e-3)
    assert ours.predictions[0] == theirs.predictions
