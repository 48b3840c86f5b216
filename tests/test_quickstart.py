"""The quickstart chains prepare -> adapt -> bench -> publish; checked on a reduced budget."""

from __future__ import annotations

import json

import pytest

from domainlm.quickstart import render_summary, summary_rows


def test_summary_rows_are_the_bench_numbers():
    report = {"tasks": [{"name": "ner", "metric": "entity_f1", "mode": "probe", "higher_is_better": True,
                         "model": {"score": 0.5}, "baseline": {"score": 0.4}, "delta": 0.1, "delta_ci": [0.0, 0.2]},
                        {"name": "perplexity", "metric": "word_perplexity", "mode": "perplexity",
                         "model": {"score": 90.0}, "baseline": {"score": 120.0}, "delta": -30.0,
                         "delta_ci": [-40.0, -20.0]},
                        {"name": "relation", "metric": "micro_f1", "mode": "probe", "higher_is_better": True,
                         "model": {"score": 0.7}, "baseline": {"score": 0.8}, "delta": -0.1, "delta_ci": [-0.2, -0.01]}],
              "perplexity": {"domain": {"task": "perplexity", "model": {"per_token": 20.0, "per_word": 90.0},
                                        "baseline": {"per_token": 25.0, "per_word": 120.0}}}}
    rows = summary_rows(report)
    assert [r["metric"] for r in rows] == ["ner (entity_f1)", "relation (micro_f1)", "domain perplexity (per token)",
                                           "domain perplexity (per word)"]
    assert rows[2]["delta"] == -5.0 and rows[0]["delta"] == 0.1
    assert rows[3]["delta_ci"] == [-40.0, -20.0] and rows[2]["delta_ci"] is None
    text = render_summary(rows, [("model card", "x/README.md")])
    verdicts = [line.rsplit("  ", 1)[-1] for line in text.splitlines()[2:6]]
    # ner's interval touches 0: within noise; relation is significantly worse; per-word perplexity better
    assert verdicts == ["within noise", "worse", "lower", "better"] and "model card" in text


def test_summary_with_a_merged_model_has_three_columns():
    from domainlm.quickstart import add_merged

    base_adapted = [{"metric": "pubmedqa (accuracy)", "base": 0.54, "adapted": 0.41, "delta": -0.13,
                     "delta_ci": [-0.2, -0.05], "higher_is_better": True, "holm": "worse"}]
    base_merged = [{"metric": "pubmedqa (accuracy)", "base": 0.54, "adapted": 0.52, "delta": -0.02,
                    "delta_ci": [-0.04, 0.0], "higher_is_better": True, "holm": "within noise"}]
    rows = add_merged(base_adapted, base_merged)
    assert rows[0]["merged"] == 0.52 and rows[0]["merged_delta_ci"] == [-0.04, 0.0]
    text = render_summary(rows, [])
    header, line = text.splitlines()[0], text.splitlines()[2]
    assert header.split()[:4] == ["metric", "base", "adapted", "merged"]
    assert "0.410" in line and "0.520" in line and "worse (Holm: worse)" in line
    assert line.rstrip().endswith("within noise (Holm: within noise)")


@pytest.mark.slow
def test_quickstart_reduced_budget_writes_every_output(tmp_path):
    from domainlm.quickstart import quickstart

    out = tmp_path / "qs"
    summary = quickstart(domain="biomed", model="tiny-llama", max_steps=4, max_examples=20, out=str(out))
    for rel in ("corpus/manifest.json", "run/manifest.json", "run/curves.png", "run/final/probe.safetensors",
                "bench/report.json", "bench/report.md", "bench/comparison.png", "published/README.md",
                "published/manifest.json", "published/model.safetensors", "summary.json", "summary.txt",
                "merged/manifest.json", "merged/selection.json", "merged/pareto.png", "merged/test_bench/report.json"):
        assert (out / rel).is_file(), rel
    # the published model is the merge chosen on dev; the summary has base, adapted and merged columns
    published = json.loads((out / "published/manifest.json").read_text())
    assert published["inputs"]["run_dir"] == str((out / "merged").resolve())
    selection = json.loads((out / "merged/selection.json").read_text())
    assert selection["chosen_weight"] in (0.25, 0.5, 0.75) and selection["split"] == "dev"
    merged_report = json.loads((out / "merged/test_bench/report.json").read_text())
    merged_scores = {t["name"]: t["model"]["score"] for t in merged_report["tasks"]}
    for row in summary["rows"]:
        name = row["metric"].split(" (")[0]
        if name in merged_scores:
            assert row["merged"] == merged_scores[name]
    assert summary["merge"]["chosen_weight"] == selection["chosen_weight"]
    assert "merged - base" in (out / "summary.txt").read_text()
    report = json.loads((out / "bench/report.json").read_text())
    by_name = {t["name"]: t for t in report["tasks"]}
    for row in summary["rows"]:
        name = row["metric"].split(" (")[0]
        if name in by_name:
            assert row["adapted"] == by_name[name]["model"]["score"]
            assert row["base"] == by_name[name]["baseline"]["score"]
    dom = report["perplexity"]["domain"]
    assert dom["model"]["per_token"] < dom["baseline"]["per_token"]  # adapted beats base on held-out text
    # re-running reuses every finished stage
    again = quickstart(domain="biomed", model="tiny-llama", max_steps=4, max_examples=20, out=str(out))
    assert again["rows"] == summary["rows"]
    assert again["timings_s"]["adapt"] < 5 and again["timings_s"]["bench"] < 5 and again["timings_s"]["merge"] < 5
