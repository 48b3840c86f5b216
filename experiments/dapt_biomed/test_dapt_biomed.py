"""experiments/dapt_biomed: the decontamination n-grams and the verdict logic (significance, the issue's goal,
seed replication, the budget trend), on synthetic arm records. No model, no real data: the real-data run is the
script itself."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from . import reading, report
from . import run as runner
from .arms import ARMS, PAIRS, arm_model, reference


def _task(label: str, delta: float, lo: float, hi: float, higher: bool = True) -> dict:
    return {"label": label, "metric": "entity_f1", "higher_is_better": higher, "against": "minilm", "model": 0.5,
            "model_ci": [0.4, 0.6], "baseline": 0.5 - delta, "delta": delta, "delta_ci": [lo, hi], "n_test": 100,
            "mode": "probe"}


def _arm(tokens: int, tasks: dict, corpus: str = "domain", init: str | None = None, seed: int = 0) -> dict:
    return {"model": "minilm", "tokens": tokens, "tasks": tasks, "corpus": corpus, "init": init, "seed": seed,
            "head_to_head": {}, "adapt_metrics": {"initial": {}, "final": {}}}


def test_decontamination_ngrams_ignore_spacing_around_punctuation(tmp_path):
    # the engine's rule (corpus prepare --decontaminate): "IL-2 (10 ng/ml)" and its NER spacing are one text
    from datatrove.data import Document

    from domainlm.corpora.steps.decontaminate import Decontaminate, build_decont_index

    sent = " ".join(f"w{i}" for i in "abcdefghijklmn")
    sizes = build_decont_index(tmp_path, {"a": [sent], "b": ["too short to have one"]}, 13)
    assert sizes == {"a": 2, "b": 0}  # 14 words: two 13-grams; fewer than 13: none
    build_decont_index(tmp_path, {"c": ["the cells were stimulated with IL-2 (10 ng/ml) for 48 h before the assay"]}, 13)
    check = Decontaminate(str(tmp_path), 13, str(tmp_path))
    assert check.filter(Document(text="the cells were stimulated with IL - 2 ( 10 ng / ml ) for 48 h before the "
                                      "assay", id="x")) is not True


def test_verdict_follows_direction():
    assert reading._verdict(_task("x", 0.02, 0.001, 0.04)) == "better"
    assert reading._verdict(_task("x", -0.02, -0.04, -0.001)) == "worse"
    assert reading._verdict(_task("x", 0.02, -0.001, 0.04)) == "within noise"
    # perplexity: lower is better, so a CI below 0 is a gain
    assert reading._verdict(_task("ppl", -5.0, -9.0, -1.0, higher=False)) == "better"
    assert reading._verdict({"delta_ci": None, "higher_is_better": True}) == "no CI"


def test_goal_needs_a_gain_and_no_loss_and_ignores_perplexity():
    arms = {
        "gain-only": _arm(1, {"ncbi/ner": _task("NCBI", 0.02, 0.01, 0.03), "bc5cdr/ner": _task("BC5", 0.0, -0.01, 0.01),
                              "ppl/perplexity": _task("ppl", 9.0, 1.0, 20.0, higher=False)}),
        "gain-and-loss": _arm(1, {"ncbi/ner": _task("NCBI", 0.02, 0.01, 0.03),
                                  "bc5cdr/ner": _task("BC5", -0.02, -0.03, -0.01)}),
        "noise": _arm(1, {"ncbi/ner": _task("NCBI", 0.01, -0.01, 0.03)}),
    }
    met = reading.goal(arms)
    assert [m["arm"] for m in met] == ["gain-only"]
    assert met[0]["better"] == ["NCBI"] and met[0]["scored_on"] == ["NCBI", "BC5"]


def test_replication_pairs_seed_arms_and_counts_significant_seeds():
    arms = {"a": _arm(1, {"ncbi/ner": _task("NCBI", 0.017, -0.002, 0.037)}),
            "a-s1": _arm(1, {"ncbi/ner": _task("NCBI", 0.021, 0.003, 0.041)}, seed=1),
            "lonely-s1": _arm(1, {"ncbi/ner": _task("NCBI", 0.05, 0.01, 0.09)}, seed=1)}
    rep = reading.replication(arms)
    assert len(rep) == 1
    assert rep[0].startswith("`a` on NCBI") and rep[0].endswith("significant gain in 1 of 2 seeds")


def test_trend_fits_domain_budgets_only():
    arms = {"minilm-warmup-a": _arm(100_000, {"ncbi/ner": _task("NCBI", 0.01, -0.01, 0.03)}),
            "minilm-warmup-b": _arm(1_000_000, {"ncbi/ner": _task("NCBI", 0.03, 0.01, 0.05)}),
            # TAPT and DAPT -> TAPT arms are another corpus: not on the budget line
            "minilm-warmup-tapt": _arm(160_000, {"ncbi/ner": _task("NCBI", 0.5, 0.4, 0.6)}, corpus="tapt_ncbi")}
    tr = reading.trend(arms)
    assert len(tr["points"]) == 2
    assert tr["fit"]["slope_per_decade"] == pytest.approx(0.02)
    # the line reaches the mean CI half-width (0.02) at 10 ** ((0.02 - icpt) / slope) tokens
    icpt = tr["fit"]["intercept"]
    assert tr["fit"]["tokens_for_significant_gain"] == pytest.approx(10 ** ((0.02 - icpt) / 0.02))
    assert math.isclose(icpt + 0.02 * 5, 0.01, abs_tol=1e-9)
    flat = reading.trend({"minilm-warmup-a": arms["minilm-warmup-a"]})
    assert flat["fit"] is None


def test_render_states_goal_not_met_without_gains():
    arms = {"minilm-warmup-0.1m": {**_arm(100_352, {"ncbi/ner": _task("NCBI-disease NER", -0.01, -0.03, 0.01)}),
                                   "arm": "minilm-warmup-0.1m", "method": "full", "lr": 3e-4, "body_lr_ratio": 0.1,
                                   "head_warmup_steps": 15, "replay_fraction": 0.05, "steps": 49, "flops": 1e12,
                                   "wall_s": 100.0, "tokens_per_s": 1000.0}}
    r = {"arms": arms, "trend_ncbi": reading.trend(arms),
         "decontamination": {"ngram": 13, "corpus_documents": 10, "dropped_documents": 1, "overlap_before_drop": {},
                             "method": "test"},
         "data": {}, "machine": {"cpu": "cpu", "cores": 2, "flags": {"avx2": True}, "note": "test",
                                 "load_avg": [1.0, 1.0, 1.0]}}
    md = report.render(r, "X")
    assert "**not met** by any arm" in md
    assert "No arm improved any task with a paired 95% CI above 0" in md
    assert "-0.010 [-0.030, +0.010] | within noise" in md
    # the merge arms, not run here, are named with what they would measure and said to be unmeasured
    assert "`smollm2-full-merged`, `smollm2-lora-merged`" in md and "were not measured" in md


def test_goal_line_does_not_count_an_arm_untested_where_its_recipe_lost():
    arms = {"full": _arm(1, {"ncbi/ner": _task("NCBI", 0.02, 0.01, 0.03), "cls/doccls": _task("HoC", -0.03, -0.06, -0.01)}),
            "partial": _arm(1, {"ncbi/ner": _task("NCBI", 0.02, 0.01, 0.03)})}
    line = reading._goal_lines(arms)[0]
    assert "**not met** by any arm scored on all 2 tasks" in line and "losses: HoC" in line
    assert "Met on a subset of the tasks only by `partial`" in line and "not scored on HoC" in line
    arms["full"]["tasks"]["cls/doccls"] = _task("HoC", 0.0, -0.02, 0.02)
    assert "met by `full`" in reading._goal_lines(arms)[0]


def test_reading_reports_the_fine_tuned_comparison_with_its_seeds():
    ft = {**_task("NCBI-disease NER (fine-tuned)", -0.013, -0.03, 0.004), "mode": "finetune",
          "model_seeds": [0.719, 0.708, 0.718], "baseline_seeds": [0.73, 0.72, 0.735]}
    arms = {"minilm-warmup-0.3m": _arm(300_000, {"ncbi/ner": _task("NCBI", 0.017, -0.002, 0.037),
                                                 "ncbi-ft/ner": ft})}
    lines = reading._reading(arms)
    (line,) = [s for s in lines if s.startswith("- **Fine-tuned instead of probed**")]
    assert "3 seeds" in line and "-0.013 [-0.030, +0.004] (within noise)" in line
    assert "base 0.730, 0.720, 0.735 and arm 0.719, 0.708, 0.718" in line
    assert "the probe on the same arm: +0.017" in line
    # once fine-tuning was measured, the advice no longer asks for it as the first step on NCBI
    assert any("the fine-tuning protocol on the other tasks (measured here on NCBI-disease only" in s for s in lines)
    # BC5CDR fine-tuned: its own line, beside its own probe, and the advice names both datasets
    arms["minilm-warmup-0.3m"]["tasks"]["bc5cdr/ner"] = _task("BC5CDR", 0.012, 0.007, 0.017)
    arms["minilm-warmup-0.3m"]["tasks"]["bc5cdr-ft/ner_pubtator"] = {
        **_task("BC5CDR NER (fine-tuned)", 0.004, -0.002, 0.01), "mode": "finetune",
        "model_seeds": [0.73, 0.72, 0.74], "baseline_seeds": [0.72, 0.72, 0.73]}
    lines = reading._reading(arms)
    ft_lines = [s for s in lines if s.startswith("- **Fine-tuned instead of probed**")]
    assert len(ft_lines) == 2 and "on NCBI-disease:" in ft_lines[0] and "on BC5CDR:" in ft_lines[1]
    assert "+0.004 [-0.002, +0.010] (within noise)" in ft_lines[1] and "the probe on the same arm: +0.012" in ft_lines[1]
    assert any("measured here on NCBI-disease and BC5CDR only" in s for s in lines)
    # fine-tuned everywhere without a gain, and more tokens without one either: the advice moves on
    arms["minilm-warmup-1m"] = _arm(1_000_000, {"ncbi/ner": _task("NCBI", 0.02, -0.004, 0.046)})
    arms["minilm-warmup-1m"]["head_to_head"] = {"ncbi/ner": {**_task("NCBI", 0.005, -0.017, 0.026),
                                                             "against": "runs/minilm-warmup-0.3m"}}
    (advice,) = [s for s in reading._reading(arms) if s.startswith("- **What would")]
    assert "fine-tuning removed the probes' gains (none of 2 fine-tuned comparisons" in advice
    assert "a base model that ships its MLM head" in advice and advice.endswith("Vocabulary extension was not tested here.")
    assert any(s.startswith("- **Caveat on what the gain covers") for s in reading._reading(arms))  # the rest still follows


def test_reference_is_the_base_except_minilm_perplexities():
    assert reference("minilm-warmup-0.3m", "ncbi") == "minilm"
    assert reference("minilm-warmup-0.3m", "ppl") == "minilm-headonly-0.1m"
    assert reference("smollm2-lora", "ppl") == "smollm2"  # a causal LM has its own head: scored against itself
    assert reference("smollm2-lora-replay25", "ncbi") == "smollm2"


def _write_arm(work: Path, arm: str, model: str, reports: dict[str, dict]) -> None:
    """A finished arm's run manifest and the bench reports `collect` reads, as the real run leaves them."""
    import json

    run = work / "runs" / arm
    (run / "final").mkdir(parents=True)
    cfg = {"model": model, "lr": 2e-4, "seed": 0}
    man = {"kind": "run", "config": cfg, "method": "lora", "steps": 10, "tokens_trained": 10_240,
           "flops": {"total": 1e12}, "wall_time_s": 600.0, "tokens_per_s": 90.0,
           "stream": {"replay_fraction_actual": 0.25 if "replay" in arm else 0.0},
           "metrics": {"initial": {}, "final": {}}}
    (run / "manifest.json").write_text(json.dumps(man))
    for against_group, rep in reports.items():
        out = work / "bench" / f"{arm}-vs-{against_group}"
        out.mkdir(parents=True)
        (out / "report.json").write_text(json.dumps(rep))


def _report(name: str, base: float, model: float, lo: float, hi: float, against: str, higher: bool = False) -> dict:
    return {"baseline": against, "tasks": [{"name": name, "metric": "ppl_per_word", "higher_is_better": higher,
                                            "model": {"score": model, "ci": None}, "baseline": {"score": base},
                                            "delta": model - base, "delta_ci": [lo, hi], "n_test": 50, "mode": None}]}


def test_collect_keeps_a_replay_head_to_head_apart_from_the_base_comparison(tmp_path, monkeypatch):
    # Both reports of the replay arm are on the same group and task; the one against the base is its task row,
    # the one against the LoRA arm a head-to-head (before, the later one silently replaced the base's).
    monkeypatch.setattr(report, "read_run", lambda run_dir: __import__("json").loads((run_dir / "manifest.json").read_text()))
    _write_arm(tmp_path, "smollm2-lora-replay25", "smollm2", {
        "smollm2/ppl": _report("general_perplexity", 40.0, 42.0, 1.0, 3.0, "smollm2"),
        "smollm2-lora/ppl": _report("general_perplexity", 45.0, 42.0, -4.0, -2.0, "runs/smollm2-lora")})
    arms = report.collect(tmp_path)
    a = arms["smollm2-lora-replay25"]
    assert a["tasks"]["ppl/general_perplexity"]["baseline"] == 40.0
    assert a["head_to_head"]["ppl/general_perplexity"]["baseline"] == 45.0
    line = reading._smol_reading(arms)[0]
    assert "25% WikiText-2 replay" in line
    assert "WikiText-2 test 40.0 -> 42.0 +2.0 [+1.0, +3.0] (worse)" in line
    assert "Against `smollm2-lora`: WikiText-2 test -3.0 [-4.0, -2.0] (better)" in line
    assert "upper bound on what replay keeps" in line  # replay and monitor share a source: said beside the number


def test_goal_line_counts_an_unscored_task_only_against_arms_of_the_same_model():
    arms = {"minilm-a": _arm(1, {"ncbi/ner": _task("NCBI", 0.02, 0.01, 0.03),
                                 "ncbi-ft/ner": _task("NCBI fine-tuned", -0.01, -0.02, -0.005)}),
            "smol": {**_arm(1, {"ncbi/ner": _task("NCBI", 0.02, 0.01, 0.03),
                                "pubmed/perplexity": _task("real PubMed abstracts, ppl/word", 20.0, 7.6, 33.3,
                                                           higher=False)}), "model": "smollm2"},
            "minilm-b": _arm(1, {"ncbi/ner": _task("NCBI", 0.02, 0.01, 0.03)})}
    line = reading._goal_lines(arms)[0]
    assert "`minilm-b` (gains on NCBI; not scored on NCBI fine-tuned): untested where another minilm arm lost" in line
    assert ("`smol` (gains on NCBI; not scored on NCBI fine-tuned): no significant loss on the 1 tasks it was scored "
            "on, and no smollm2 arm was scored on the others, so the goal is met on those 1 tasks") in line
    assert "(but perplexity rose on real PubMed abstracts +20.0 [+7.6, +33.3] (worse))" in line
    # an unscored task that another arm of the model was scored on without a loss is said as such
    arms["minilm-a"]["tasks"]["ncbi-ft/ner"] = _task("NCBI fine-tuned", 0.0, -0.01, 0.01)
    line = reading._goal_lines(arms)[0]
    assert ("`minilm-b` (gains on NCBI; not scored on NCBI fine-tuned): no significant loss on the 1 tasks it was "
            "scored on, and no other minilm arm lost on the others (NCBI fine-tuned scored for another arm)") in line


def test_form_reading_tells_spacing_from_field_on_real_abstracts():
    def ppl(delta, lo, hi):
        return _task("real PubMed abstracts, ppl/word", delta, lo, hi, higher=False)

    arms = {"smollm2-lora": {**_arm(1, {"pubmed/perplexity": ppl(20.0, 7.6, 33.3)}), "model": "smollm2"},
            "smollm2-lora-detok": {**_arm(1, {"pubmed/perplexity": ppl(-29.8, -43.6, -20.8)}), "model": "smollm2"}}
    (line,) = reading._form_reading(arms)
    assert "real PubMed abstracts went -19.5 -> 0.5, +20.0 [+7.6, +33.3] (worse)" in line
    assert "-29.8 [-43.6, -20.8] (better)" in line and "prepare NER-derived text with `--detokenize`" in line
    arms["smollm2-lora-detok"]["tasks"]["pubmed/perplexity"] = ppl(1.0, -5.0, 7.0)
    assert "--detokenize`." not in reading._form_reading(arms)[0]  # no advice where the numbers do not carry it
    assert reading._form_reading({"smollm2-lora": arms["smollm2-lora"]}) == []


def test_run_arm_resumes_a_killed_run_from_its_checkpoint_and_starts_a_fresh_one_over(tmp_path, monkeypatch):
    # A long arm killed part-way (a session's end) must continue from its newest checkpoint, not start again;
    # an arm with no checkpoint starts fresh. adapt itself is stubbed: its resume is tested in test_adapt_checkpoint.
    import domainlm.adapt
    import domainlm.adapt.checkpoint as ck

    calls = []

    def fake_adapt(**kw):
        calls.append(kw)
        out = Path(kw["out"])
        (out / "final").mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").write_text("{}")

    monkeypatch.setattr(domainlm.adapt, "adapt", fake_adapt)
    monkeypatch.setattr(runner, "read_run", lambda run_dir: {"dir": str(run_dir)})
    assert ARMS["minilm-warmup-3m"]["adapt"]["save_every"] > 0  # long arms checkpoint; short ones need not
    assert ARMS["minilm-warmup-0.3m"]["adapt"]["save_every"] == 0

    killed = tmp_path / "runs" / "minilm-warmup-3m" / "checkpoints" / "step-00000100"
    killed.mkdir(parents=True)
    monkeypatch.setattr(ck, "complete_checkpoints", lambda run_dir: [killed] if killed.parent.parent == run_dir else [])
    runner.run_arm("minilm-warmup-3m", tmp_path)
    runner.run_arm("minilm-warmup-1m", tmp_path)
    assert (calls[0]["resume"], calls[0]["overwrite"]) == (True, False)
    assert (calls[1]["resume"], calls[1]["overwrite"]) == (False, True)
    assert calls[0]["max_tokens"] == 3_000_000 and calls[0]["save_every"] == 100
    runner.run_arm("minilm-warmup-3m", tmp_path)  # finished now: reused, not trained again
    assert len(calls) == 2


def test_minilm_form_reading_says_whether_raw_text_losses_go_with_the_spacing():
    tok = _arm(300_000, {"bc5cdr/ner": _task("BC5CDR NER", 0.012, 0.007, 0.017),
                         "cls/doccls": _task("HoC", -0.035, -0.065, -0.003)})
    detok = _arm(300_000, {"bc5cdr/ner": _task("BC5CDR NER", 0.008, 0.003, 0.013),
                           "cls/doccls": _task("HoC", -0.005, -0.03, 0.02)}, corpus="domain_detok")
    detok["head_to_head"] = {"cls/doccls": _task("HoC", 0.03, 0.001, 0.06)}
    arms = {"minilm-warmup-0.3m": tok, "minilm-detok-0.3m": detok}
    (line,) = reading._minilm_form_reading(arms)
    assert "HoC -0.035 [-0.065, -0.003] (worse) -> -0.005 [-0.030, +0.020] (within noise)" in line
    assert "(head to head +0.030 [+0.001, +0.060] (better))" in line
    assert "BC5CDR NER +0.012" in line and "are not significant with the spacing undone" in line
    detok["tasks"]["cls/doccls"] = _task("HoC", -0.04, -0.07, -0.01)
    assert "still loses on HoC: the raw-text cost is not the spacing alone" in reading._minilm_form_reading(arms)[0]
    assert reading._minilm_form_reading({"minilm-warmup-0.3m": tok}) == []


def test_merge_arm_trains_its_source_then_selects_on_dev_splits_only(tmp_path, monkeypatch):
    # merge itself is stubbed (tests/test_merge.py runs it on tiny models); this checks the arm's wiring: source
    # arm first, --select on MERGE_DEV's dev files with the real-data root, no test scoring inside, reuse when done.
    import domainlm.merge

    trained, merges = [], []
    monkeypatch.setattr(runner, "run_arm", (lambda real: lambda arm, work, realdata=None: (
        trained.append(arm) if "merge" not in ARMS[arm] else None) or real(arm, work, realdata))(runner.run_arm))
    monkeypatch.setattr(runner, "read_run", lambda run_dir: {"dir": str(run_dir)} if (run_dir / "manifest.json").is_file()
                        else (_ for _ in ()).throw(FileNotFoundError(run_dir)))

    def fake_adapt(**kw):
        (Path(kw["out"]) / "final").mkdir(parents=True, exist_ok=True)
        (Path(kw["out"]) / "manifest.json").write_text("{}")

    def fake_merge(**kw):
        merges.append(kw)
        Path(kw["out"]).mkdir(parents=True, exist_ok=True)
        (Path(kw["out"]) / "manifest.json").write_text("{}")

    import domainlm.adapt

    monkeypatch.setattr(domainlm.adapt, "adapt", fake_adapt)
    monkeypatch.setattr(domainlm.merge, "merge", fake_merge)
    for arm in ("smollm2-full-merged", "smollm2-lora-merged"):
        assert arm_model(arm) == "smollm2"
        runner.run_arm(arm, tmp_path, tmp_path / "realdata")
    assert trained == ["smollm2-full", "smollm2-lora"]
    kw = merges[0]
    assert kw["select"] and kw["test"] is False and kw["model"].endswith("runs/smollm2-full")
    assert kw["data_root"] == str(tmp_path / "realdata") and kw["weights"] == [0.25, 0.5, 0.75]
    assert kw["domain_tasks"] == ["ner"] and set(kw["guard_tasks"]) == {"pubmedqa", "general_perplexity"}
    # every scored split is a dev one: each task gets a dev file, or (PubMedQA) only records outside its test ids
    assert "ner.dev=bc5cdr_conll/devel.tsv" in kw["override"]
    assert "general_perplexity.dev=general_wikitext2/valid.txt" in kw["override"]
    assert "pubmedqa.test_ids=pubmedqa/test_ground_truth.json" in kw["override"]
    runner.run_arm("smollm2-full-merged", tmp_path, tmp_path / "realdata")  # finished: reused, not merged again
    assert len(merges) == 2


def test_reading_comprehension_arm_differs_from_the_detokenised_arm_only_in_its_corpus(tmp_path, monkeypatch):
    # issue 30: smollm2-lora-rc is smollm2-lora-detok's recipe on the detokenised corpus converted to reading
    # comprehension, compared head to head with it on PubMedQA/ChemProt/HoC, perplexity and the NER probe.
    import domainlm.adapt

    rc, detok = ARMS["smollm2-lora-rc"], ARMS["smollm2-lora-detok"]
    assert rc["adapt"] == detok["adapt"] and rc["tokens"] == detok["tokens"] and rc["corpus"] == "domain_rc"
    assert {g for a, ref, g in PAIRS if (a, ref) == ("smollm2-lora-rc", "smollm2-lora-detok")} == \
        {"cls", "ppl", "pubmed", "ncbi"}
    calls = []

    def fake_adapt(**kw):
        calls.append(kw)
        (Path(kw["out"]) / "final").mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(domainlm.adapt, "adapt", fake_adapt)
    monkeypatch.setattr(runner, "read_run", lambda run_dir: {"dir": str(run_dir)})
    runner.run_arm("smollm2-lora-rc", tmp_path)
    assert calls[0]["corpus"] == str(tmp_path / "corpora" / "domain_rc-smollm2")
    assert calls[0]["replay_fraction"] == 0.0 and calls[0]["model"] == "smollm2"


def test_merge_report_answers_keep_the_gain_and_remove_the_loss(tmp_path, monkeypatch):
    # issue 29's question, from a merge arm's records as collect builds them (selection.json read from the run)
    import json

    monkeypatch.setattr(report, "read_run", lambda run_dir: json.loads((run_dir / "manifest.json").read_text()))
    bc5 = lambda d, lo, hi, base="smollm2": {**_report("ner", 0.674, 0.674 + d, lo, hi, base, higher=True)}  # noqa: E731
    _write_arm(tmp_path, "smollm2-full", "smollm2", {"smollm2/bc5cdr": bc5(0.020, 0.014, 0.026),
                                                     "smollm2/cls": {**_report("pubmedqa", 0.436, 0.408, -0.058,
                                                                               -0.002, "smollm2", higher=True)}})
    _write_arm(tmp_path, "smollm2-full-merged", "smollm2", {
        "smollm2/bc5cdr": bc5(0.015, 0.009, 0.021),
        "smollm2/cls": _report("pubmedqa", 0.436, 0.430, -0.030, 0.018, "smollm2", higher=True),
        "smollm2-full/cls": _report("pubmedqa", 0.408, 0.430, 0.002, 0.040, "runs/smollm2-full", higher=True)})
    run = tmp_path / "runs" / "smollm2-full-merged"
    man = json.loads((run / "manifest.json").read_text())
    man["merge"] = {"method": "linear", "weight": 0.5, "other": "smollm2",
                    "selection": {"file": "selection.json", "verdict": "v"}}
    (run / "manifest.json").write_text(json.dumps(man))
    dev = {"ner": {"role": "domain", "delta": 0.01, "delta_ci": [0.004, 0.016], "verdict": "better"},
           "pubmedqa": {"role": "guard", "delta": -0.1, "delta_ci": [-0.16, -0.04], "verdict": "worse", "holm": "worse"}}
    (run / "selection.json").write_text(json.dumps({
        "verdict": "weight 0.5 keeps a significant domain gain", "weights": [0.5, 0.75],
        "points": [{"weight": 0.5, "allowed": True, "tasks": {**dev, "pubmedqa": {**dev["pubmedqa"], "holm": "within noise"}}},
                   {"weight": 0.75, "allowed": False, "tasks": dev}]}))
    arms = report.collect(tmp_path)
    (line,) = reading.merge_reading(arms)
    assert "chose weight 0.5 on `smollm2-full`" in line and "weight 0.5 keeps a significant domain gain" in line
    assert "BC5CDR NER vs base +0.015 [+0.009, +0.021] (better) (the adapted arm's: +0.020" in line
    assert "merged - adapted +0.022 [+0.002, +0.040] (better)" in line
    assert "keeps the BC5CDR gain and removes the PubMedQA loss (within noise)" in line
    assert line.endswith("no task significantly worse than the base.")
    md = "\n".join(report._merge_section(arms))
    assert "| 0.5 **(chosen)** | +0.010 [+0.004, +0.016] better | -0.100 [-0.160, -0.040] within noise | yes |" in md
    assert "| 0.75 | +0.010 [+0.004, +0.016] better | -0.100 [-0.160, -0.040] worse | no |" in md
    assert "| PubMedQA | 0.436 | 0.408 | 0.430 | -0.006 [-0.030, +0.018] within noise | +0.022 [+0.002, +0.040] better |" in md
    # the merge still losing PubMedQA is said as such
    arms["smollm2-full-merged"]["tasks"]["cls/pubmedqa"]["delta_ci"] = [-0.05, -0.01]
    assert "still loses PubMedQA" in reading.merge_reading(arms)[0]
