"""bench end to end on tiny models: probe, fine-tune, zero-shot, perplexity, contacts, report files, CLI,
run-folder loading. The real MiniLM runs are in the slow tier."""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import pytest

from domainlm.bench import BenchConfig, bench
from domainlm.errors import ConfigError, IncompleteArtifactError

FIX = Path(__file__).parent / "fixtures" / "bench"
SUITE = str(FIX / "suite")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def probe_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "report"
    report = bench(model="tiny-bert", baseline="tiny-llama", suite=SUITE, tasks=["ner", "relation", "qa", "ppl"],
                   out=str(out), bootstrap=50)
    return out, report


def test_report_files_and_schema(probe_report):
    out, report = probe_report
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "comparison.png", "manifest.json"}
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["model"] == "tiny-bert" and on_disk["baseline"] == "tiny-llama"
    tasks = {t["name"]: t for t in on_disk["tasks"]}
    assert set(tasks) == {"ner", "relation", "qa", "ppl"}
    for t in tasks.values():
        assert {"name", "family", "metric", "mode", "model", "baseline", "delta", "delta_ci", "wall_s",
                "examples_per_s", "n_test"} <= set(t)
        assert {"score", "ci", "seeds"} <= set(t["model"])
        assert t["delta"] == pytest.approx(t["model"]["score"] - t["baseline"]["score"])
        assert t["wall_s"] > 0 and t["examples_per_s"] > 0
    ner = tasks["ner"]
    assert 0 <= ner["model"]["score"] <= 1 and ner["model"]["ci"][0] <= ner["model"]["score"] <= ner["model"]["ci"][1]
    assert {"entity_precision", "entity_recall", "entity_f1"} <= set(ner["model"]["extras"])
    assert {k for k in ner["model"]["extras"] if k.startswith("entity_f1_")} <= {"entity_f1_Chemical",
                                                                                 "entity_f1_Disease"}
    # qa: the masked model falls back to the probe, the causal baseline is scored zero-shot.
    assert tasks["qa"]["model"]["mode"] == "probe" and tasks["qa"]["baseline"]["mode"] == "zeroshot"
    assert not tasks["ppl"]["higher_is_better"]
    ppl = on_disk["perplexity"]["general"]
    assert ppl["task"] == "ppl" and ppl["model"]["method"] == "masked pseudo-perplexity"
    assert ppl["baseline"]["method"] == "causal sliding window" and ppl["baseline"]["per_word"] > 1
    macro = on_disk["aggregate"]["blurb_style_macro"]
    assert set(macro["families"]) == {"ner", "relation", "qa"}  # perplexity is not a BLURB family
    assert macro["model"] == pytest.approx(sum(v["model"] for v in macro["families"].values()) / 3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "bench" and manifest["complete"]
    assert any(i["split"] == "test" and len(i["sha256"]) == 64 for i in manifest["inputs"])
    md = (out / "report.md").read_text()
    assert "| ner | entity_f1 |" in md and "BLURB-style macro average" in md
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_replaces_report_but_refuses_foreign_folder(tmp_path, probe_report):
    out, _ = probe_report
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not a bench report folder"):
        bench(model="tiny-bert", suite=SUITE, tasks=["relation"], out=str(foreign), bootstrap=0)
    assert (foreign / "keep.txt").read_text() == "mine"
    report = bench(model="tiny-bert", suite=SUITE, tasks=["relation"], out=str(out), bootstrap=0)
    assert [t["name"] for t in report["tasks"]] == ["relation"] and report["tasks"][0]["model"]["ci"] is None
    assert json.loads((out / "report.json").read_text())["baseline"] is None


def test_finetune_mode_over_seeds(tmp_path):
    steps = [f"{t}.{k}={v}" for t in ("ner", "doccls", "similarity")
             for k, v in (("finetune_steps", 2), ("finetune_batch_size", 4))]
    report = bench(model="tiny-bert", suite=SUITE, tasks=["ner", "doccls", "similarity"], mode="finetune", seeds=2,
                   override=steps + ["ner.finetune_lr=1e-3"], max_examples=4, out=str(tmp_path / "ft"),
                   bootstrap=20)
    for t in report["tasks"]:
        assert t["mode"] == "finetune"
        assert len(t["model"]["seeds"]) == 2 and t["model"]["std"] >= 0
        assert t["model"]["score"] == pytest.approx(sum(t["model"]["seeds"]) / 2)


def test_finetune_protocol_selects_on_dev_and_scores_test_over_three_seeds(tmp_path):
    """BLURB protocol on the shipped NER data (train / dev / test): budget in epochs, the checkpoint with the
    best dev score is the one scored on test, 3 seeds -> mean +- std and a CI over test items."""
    report = bench(model="tiny-bert", suite="biomed", tasks=["ner"], mode="finetune", seeds=3, max_examples=24,
                   override=["ner.finetune_epochs=2", "ner.finetune_batch_size=8", "ner.finetune_evals=3",
                             "ner.finetune_lr=3e-3", "ner.max_length=64"], out=str(tmp_path / "blurb"), bootstrap=100)
    t = report["tasks"][0]
    m = t["model"]
    assert t["mode"] == "finetune" and len(m["seeds"]) == 3 and t["n_test"] == 24
    assert m["score"] == pytest.approx(sum(m["seeds"]) / 3) and m["std"] >= 0
    assert m["ci"][0] <= m["score"] <= m["ci"][1]
    assert len(m["selection"]) == 3
    for sel in m["selection"]:
        steps = [s for s, _ in sel["dev"]]
        assert steps == [2, 4, 6]  # 2 epochs of 24 records at batch 8 = 6 steps, dev scored 3 times
        best = max(sel["dev"], key=lambda x: x[1])  # first maximum wins a tie
        assert sel["chosen_step"] == best[0]
    assert m["extras"]["dev_best"] == pytest.approx(sum(max(v for _, v in s["dev"]) for s in m["selection"]) / 3)
    assert any("checkpoint chosen on dev" in n for n in m["notes"])


def test_protein_contacts_property_and_recovery_on_tiny_esm(tmp_path):
    report = bench(model="tiny-esm", suite="protein", out=str(tmp_path / "p"), max_examples=4, bootstrap=20,
                   override=["recovery.masked_max_tokens=60", "perplexity.masked_max_tokens=60"])
    tasks = {t["name"]: t for t in report["tasks"]}
    assert 0 <= tasks["contacts"]["model"]["score"] <= 1 and tasks["contacts"]["metric"] == "precision_at_l5"
    assert -1 <= tasks["property"]["model"]["score"] <= 1
    assert 0 <= tasks["recovery"]["model"]["score"] <= 1
    assert report["perplexity"]["domain"]["model"]["tokens"] == 60
    assert tasks["perplexity"]["model"]["score"] == pytest.approx(report["perplexity"]["domain"]["model"]["per_token"])


def test_contacts_without_attention_outputs_is_a_clear_error():
    from domainlm.bench.loading import LoadedModel
    from domainlm.bench.modes import RunContext
    from domainlm.bench.modes.contacts import attention_features
    from domainlm.tasks.data import TaskData
    from domainlm.tasks.suites import load_task

    class NoAttention:
        config = types.SimpleNamespace(max_position_embeddings=512, model_type="mamba")

        def __call__(self, **kwargs):
            return types.SimpleNamespace(attentions=None, logits=None)

    spec = load_task(REPO / "benchmarks" / "protein" / "contacts.yaml")
    loaded = LoadedModel(NoAttention(), load_tokenizer_esm(), "protein", "no-attention-model", "test")
    assert TaskData  # (imported for the type only)
    with pytest.raises(ConfigError) as err:
        attention_features(loaded, spec, "MKTAYIAK", RunContext())
    text = str(err.value)
    assert "contacts.yaml" in text and "returned no attention outputs" in text and "Fix:" in text


def load_tokenizer_esm():
    from domainlm import sources

    return sources.load_tokenizer("tiny-esm")


def test_bad_model_argument_fails_before_any_loading(tmp_path):
    with pytest.raises(ConfigError, match=r"'baseline': model 'no-such-model' is not a folder"):
        bench(model="tiny-bert", baseline="no-such-model", suite=SUITE, tasks=["relation"], out=str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="'seeds' must be at least 1"):
        BenchConfig(model="m") and bench(model="tiny-bert", seeds=0)


def test_cli_prints_the_table(tmp_path, capsys):
    from domainlm.cli import main

    rc = main(["bench", "--model", "tiny-bert", "--suite", SUITE, "--tasks", "relation,similarity", "--out",
               str(tmp_path / "cli"), "--bootstrap", "0"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "bench: tiny-bert on" in out and "relation" in out and "similarity" in out and "BLURB-style" in out
    rc = main(["bench", "--model", "tiny-bert", "--suite", SUITE, "--tasks", "relaton", "--out", str(tmp_path / "c2")])
    assert rc == 2 and "did you mean 'relation'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Run folders (adapt's output): full model and LoRA adapter
# --------------------------------------------------------------------------------------------------

def _run_folder(tmp_path: Path, name: str) -> Path:
    from domainlm.artifacts import write_manifest

    run = tmp_path / name
    (run / "final").mkdir(parents=True)
    write_manifest(run / "final", "final")  # adapt writes it last; the shared loader (domainlm.loading) checks it
    write_manifest(run, "run", config={"model": "tiny-llama", "objective": "causal"})
    return run


def test_load_for_eval_full_and_lora_run_folders(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    from domainlm import sources
    from domainlm.bench.loading import load_for_eval

    ids = torch.tensor([[1, 40, 41, 42, 43]])
    base, _ = sources.load_model("tiny-llama")
    tok = sources.load_tokenizer("tiny-llama")
    # Full model saved by a run.
    full = _run_folder(tmp_path, "full")
    base.save_pretrained(full / "final")
    tok.save_pretrained(full / "final")
    loaded = load_for_eval(str(full))
    assert loaded.kind == "causal" and loaded.run_folder == str(full) and loaded.base_model == "tiny-llama"
    with torch.inference_mode():
        assert torch.allclose(loaded.model(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-5)
    # LoRA adapter with non-zero weights: merged output equals the peft model's output.
    lora = _run_folder(tmp_path, "lora")
    torch.manual_seed(0)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    peft_model.save_pretrained(lora / "final")
    tok.save_pretrained(lora / "final")
    (lora / "final" / "base_model.json").write_text(json.dumps({"model": "tiny-llama"}))
    with torch.inference_mode():
        expect = peft_model(input_ids=ids).logits
    merged = load_for_eval(str(lora))
    assert "LoRA" in merged.origin and not hasattr(merged.model, "peft_config")
    with torch.inference_mode():
        assert torch.allclose(merged.model(input_ids=ids).logits, expect, atol=1e-4)
    # An unfinished run is refused with the fix.
    broken = _run_folder(tmp_path, "broken")
    shutil.rmtree(broken / "final")
    with pytest.raises(IncompleteArtifactError, match="has no final/ folder"):
        load_for_eval(str(broken))


# --------------------------------------------------------------------------------------------------
# Slow tier: the real MiniLM on the shipped suites and on real data
# --------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("suite", ["biomed", "materials"])
def test_minilm_on_shipped_suite(tmp_path, suite, capsys):
    report = bench(model="minilm", suite=suite, out=str(tmp_path / suite), bootstrap=200)
    out = capsys.readouterr().out
    for t in report["tasks"]:
        assert t["model"]["score"] is not None and t["name"] in out
    if suite == "biomed":
        ner = next(t for t in report["tasks"] if t["name"] == "ner")
        assert ner["model"]["score"] > 0.3  # a linear probe on MiniLM finds most shipped mentions


@pytest.mark.slow
def test_minilm_probe_on_real_ncbi_disease(tmp_path, realdata):
    report = bench(model="minilm", suite="biomed", tasks=["ner"], data_root=str(realdata),
                   override=["ner.train=ncbi_disease_conll/devel.tsv", "ner.dev=",
                             "ner.test=ncbi_disease_conll/test.tsv", "ner.labels=Disease"],
                   out=str(tmp_path / "ncbi"), bootstrap=200)
    ner = report["tasks"][0]
    assert ner["n_test"] == 940 and ner["model"]["score"] > 0.3


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_bench_reads_an_adapt_run_folder(tmp_path, method):
    """adapt -> bench: the run folder's final model (or merged LoRA adapter) beats its base on held-out PubMed."""
    from domainlm.adapt import adapt

    run = tmp_path / f"run-{method}"
    adapt(model="tiny-llama", corpus="pubmed-sample", max_steps=5, eval_every=0, method=method, out=str(run))
    report = bench(model=str(run), baseline="tiny-llama", suite="biomed", tasks=["perplexity"],
                   out=str(tmp_path / "bench"), bootstrap=100)
    ppl = report["perplexity"]["domain"]
    assert ppl["model"]["per_token"] < ppl["baseline"]["per_token"]
    assert report["tasks"][0]["delta_ci"][1] < 0  # the paired interval excludes "no improvement"


def test_zeroshot_shared_context_scores_equal_one_pass_per_choice():
    """Choices that share a context are scored from one forward pass; the sums equal one pass per choice."""
    import torch

    from domainlm.bench.loading import load_for_eval
    from domainlm.bench.modes.zeroshot import choice_requests, loglikelihoods

    loaded = load_for_eval("tiny-llama", "causal")
    requests = []
    for prompt in ["Question: does the kinase bind? Answer:", "Is it so?", "A much longer context " * 5 + "Answer:"]:
        requests += choice_requests(loaded.tokenizer, prompt, ["yes", "no", "maybe"], 64)  # several tokens each
        ctx = list(loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        requests += [(ctx + [t], 1) for t in (40, 41, 42)]  # one-token choices after the same context
    assert {n for _, n in requests} > {1}
    got = loglikelihoods(loaded, requests, batch_size=3, device="cpu", bf16=False)
    with torch.inference_mode():
        for (seq, n), value in zip(requests, got, strict=True):
            logp = torch.log_softmax(loaded.model(input_ids=torch.tensor([seq])).logits[0].float(), -1)
            want = float(sum(logp[len(seq) - n - 1 + k, seq[len(seq) - n + k]] for k in range(n)))
            assert value == pytest.approx(want, abs=1e-4)
