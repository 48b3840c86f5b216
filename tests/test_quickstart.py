"""The quickstart chains prepare -> adapt -> bench -> publish; checked on a reduced budget. Each domain's YAML over
its recipe gives every stage the values the quickstart had; --fresh deletes only a folder a quickstart wrote."""

from __future__ import annotations

import json

import pytest

from domainlm.quickstart.summary import render_summary, summary_rows


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
    from domainlm.quickstart.summary import add_merged

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


# What quickstart.py's DOMAINS dict held before quickstart/<domain>.yaml (a shipped recipe + overrides) replaced it
# (issue 36, main at 9cb5676), and how the stages read it: the YAMLs must give every stage exactly these values.
BEFORE = {
    "biomed": {
        "corpus": "pubmed-sample", "suite": "biomed,general",
        "adapt": dict(model="smollm2", objective="causal", method="lora", block_size=128, lr=5e-4, warmup_ratio=0.1,
                      batch_size=4, grad_accum=1, max_steps=16, eval_every=8, save_every=8, eval_batches=4,
                      replay_corpus="general-english-sample", replay_fraction=0.05),
        "bench_max_examples": 80,
        "merge": dict(method="linear", weights=[0.25, 0.5, 0.75], domain_tasks=["perplexity"],
                      guard_tasks=["pubmedqa", "general_perplexity"], max_examples=200),
    },
    "materials": {
        "corpus": "arxiv-materials-sample", "suite": "materials,general",
        "adapt": dict(model="minilm", objective="masked", method="full", block_size=128, whole_word_mask=True,
                      lr=3e-4, warmup_ratio=0.06, batch_size=16, max_steps=80, eval_every=20, save_every=40,
                      eval_batches=8, replay_corpus="general-english-sample", replay_fraction=0.05),
    },
    "protein": {
        "corpus": "uniprot-sample", "suite": "protein",
        "adapt": dict(model="tiny-esm", objective="protein", from_scratch=True, method="full", block_size=256,
                      lr=1e-3, warmup_ratio=0.05, batch_size=16, max_steps=150, eval_every=50, save_every=50,
                      eval_batches=8, replay_fraction=0.0),
    },
}


def _stages_before(domain, model=None, max_steps=None, max_examples=None, merge=True):
    """The stages' values as quickstart.py computed them from BEFORE (its code at 9cb5676, step for step)."""
    preset = BEFORE[domain]
    adapt_kwargs = dict(preset["adapt"])
    if model:
        adapt_kwargs["model"] = model
    if max_steps:
        adapt_kwargs["max_steps"] = max_steps
        adapt_kwargs["eval_every"] = max(1, max_steps // 2)
        adapt_kwargs["save_every"] = max(1, max_steps // 2)
    return {"prepare": (preset["corpus"], adapt_kwargs["model"], adapt_kwargs["block_size"]),
            "adapt": {k: v for k, v in adapt_kwargs.items() if k != "block_size"},
            "bench": (preset["suite"], max_examples or preset.get("bench_max_examples")),
            "merge": dict(preset["merge"]) if preset.get("merge") and merge else None}


@pytest.mark.parametrize("domain", sorted(BEFORE))
@pytest.mark.parametrize("options", [{}, {"model": "tiny-llama", "max_steps": 4, "max_examples": 20},
                                     {"max_steps": 1, "merge": False}])
def test_each_domain_yaml_over_its_recipe_gives_every_stage_the_values_it_had(domain, options, tmp_path):
    from domainlm.adapt import AdaptConfig
    from domainlm.config import build, to_dict
    from domainlm.quickstart import QuickstartConfig
    from domainlm.quickstart.run import plan_stages

    plan = plan_stages(QuickstartConfig(domain=domain, **options))
    before = _stages_before(domain, **options)
    assert (plan.corpus, plan.model, plan.block_size) == before["prepare"]
    # adapt: the same config, key for key (the recipe's other keys are adapt's defaults), from the same call
    call = dict(corpus="pubmed-sample", out=str(tmp_path / "run"), resume=False)
    assert to_dict(build(AdaptConfig, {**plan.adapt, **call})) == to_dict(build(AdaptConfig, {**before["adapt"], **call}))
    assert {k: plan.adapt[k] for k in before["adapt"]} == before["adapt"]
    assert (plan.suite, plan.max_examples) == before["bench"]
    assert plan.merge == before["merge"]


def test_every_shipped_domain_is_a_choice_of_the_command():
    import typing

    from domainlm.quickstart import QuickstartConfig
    from domainlm.quickstart.config import shipped_domains

    choices = typing.get_args(typing.get_type_hints(QuickstartConfig)["domain"])
    assert set(choices) == set(shipped_domains()) == set(BEFORE)


def test_a_domain_yaml_is_checked_whole_before_any_stage(tmp_path, monkeypatch):
    from domainlm.errors import ConfigError
    from domainlm.quickstart import QuickstartConfig, quickstart
    from domainlm.quickstart import run as qs_run

    bad = tmp_path / "biomed.yaml"
    bad.write_text("recipe: biogpt-style\nsuite: biomed\nadapt: {lr: fast, max_step: 3}\n"
                   "merge: {out: x, weights: [0.5], methd: linear}\n")
    monkeypatch.setattr(qs_run, "shipped_domains", lambda: {"biomed": bad})
    with pytest.raises(ConfigError) as err:
        qs_run.plan_stages(QuickstartConfig())
    message = str(err.value)
    assert "'lr'" in message and "did you mean 'max_steps'" in message and "biogpt-style.yaml" in message
    assert "'out' is set by the quickstart itself" in message and "did you mean 'method'" in message
    with pytest.raises(ConfigError):
        quickstart(merge=True, max_steps=1, out=str(tmp_path / "qs"), model="tiny-llama")
    assert not (tmp_path / "qs").exists()


def test_fresh_deletes_only_a_folder_a_quickstart_wrote(tmp_path, monkeypatch):
    """--fresh follows artifacts.why_not_replace, the one "may I replace this folder" rule of every verb."""
    from domainlm.errors import ConfigError
    from domainlm.quickstart import quickstart
    from domainlm.quickstart.run import start_fresh

    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "thesis.tex").write_text("mine")
    with pytest.raises(ConfigError, match="never deletes folders it did not write"):
        quickstart(out="d", fresh=True)
    assert (tmp_path / "d" / "thesis.tex").read_text() == "mine"
    with pytest.raises(ConfigError, match="working directory"):
        quickstart(out=".", fresh=True)
    model = tmp_path / "qs2" / "my-model"  # a local --model inside OUT is an input: never deleted
    model.mkdir(parents=True)
    (tmp_path / "qs2" / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds the input"):
        quickstart(out="qs2", fresh=True, model=str(model))
    # a quickstart's folder, even one stopped while preparing its corpus, is deleted
    for marker in ("summary.json", "corpus/manifest.json", "corpus/.work/config.json"):
        (tmp_path / "qs" / marker).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "qs" / marker).write_text("{}")
        start_fresh(tmp_path / "qs")
        assert not (tmp_path / "qs").exists()
    start_fresh(tmp_path / "absent")
