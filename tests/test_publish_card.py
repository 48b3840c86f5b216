"""The model card: Hub metadata that parses back with huggingface_hub, eval results, license, sections.

Tier 1: the card is rendered from hand-written run manifests and bench reports, no model involved.
"""

from __future__ import annotations

from pathlib import Path

import pytest

RUN = {
    "kind": "run", "objective": "causal", "method": "lora", "steps": 200, "tokens_trained": 1_638_400,
    "global_batch": 32, "block_size": 256, "world_size": 1, "bf16": True, "hardware": "AMD EPYC 7B13, 2 threads",
    "wall_time_s": 5400.0, "tokens_per_s": 303.4, "mfu": 0.21,
    "config": {"model": "smollm2", "corpus": "pubmed-sample", "lr": 2e-4, "schedule": "cosine", "warmup_ratio": 0.05,
               "lora_r": 16, "lora_alpha": 32, "replay_corpus": "general-english-sample"},
    "base": {"name": "smollm2", "kind": "causal", "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
             "license": "apache-2.0", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
    "corpus": {"name": "pubmed-sample", "counts": {"documents": 2000, "tokens": 540_000},
               "splits": {"train": {"documents": 1800}, "validation": {"documents": 200}}},
    "parameters": {"total": 134_515_008, "trainable": 4_884_480},
    "flops": {"training_per_token": 3.1e8, "total": 5.08e14},
    "stream": {"domain_sequences": 6080, "replay_sequences": 320, "replay_fraction_actual": 0.05,
               "replay_corpus": "general-english-sample"},
    "metrics": {"initial": {"domain_ppl": 21.4, "general_ppl": 17.0},
                "final": {"domain_ppl": 12.9, "general_ppl": 17.9, "general_ppl_rise": 0.0529}},
    "warnings": [], "versions": {"domainlm": "0.1.0", "transformers": "5.24.0"},
}
BENCH = {
    "model": "runs/smol", "baseline": "smollm2", "suite": "biomed",
    "tasks": [{"name": "ncbi_disease", "family": "ner", "metric": "entity_f1", "mode": "probe",
               "model": {"score": 0.6123, "ci": [0.58, 0.64]}, "baseline": {"score": 0.5712, "ci": [0.54, 0.60]},
               "delta": 0.0411, "delta_ci": [0.01, 0.07]},
              {"name": "pubmedqa", "family": "qa", "metric": "accuracy", "mode": "zeroshot",
               "model": {"score": 0.55}, "baseline": {"score": 0.57}, "delta": -0.02},
              {"name": "pubmed_heldout", "metric": "word_perplexity", "higher_is_better": False, "head": "lm",
               "mode": "perplexity", "model": {"score": 25.0}, "baseline": {"score": 30.0}, "delta": -5.0},
              {"name": "skipped_task", "metric": "accuracy", "model": {"score": None, "skipped": "no data"}}],
    # The bench repeats perplexity tasks here (domain) and may add roles it has no task entry for (general).
    "perplexity": {"domain": {"task": "pubmed_heldout", "model": {"per_token": 9.1, "per_word": 25.0},
                              "baseline": {"per_token": 11.0, "per_word": 30.0}},
                   "general": {"task": "wiki", "model": {"per_token": 7.0, "per_word": 18.2},
                               "baseline": {"per_word": 17.1}}},
}
EXPORT = {"kind": "merged", "parameters": 134_515_008, "tokenizer_size": 49152, "architecture": "LlamaForCausalLM"}
VERIFY = {"tokens": 64, "max_abs_diff": 2.1e-6, "tolerance_abs": 2.4e-3, "top1_agreement": 1.0}


def _inputs(**kw):
    from domainlm.publish.card import CardInputs

    base = dict(model_name="smollm2-pubmed", run=RUN, objective="causal", method="lora", export=EXPORT,
                verification=VERIFY, dtype="float32", base_name="smollm2",
                base_hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", license="apache-2.0",
                license_source="inherited from the base model", base_from_gguf=RUN["base"]["gguf_file"], bench=BENCH,
                repo_id="lab/smollm2-pubmed", images={"curves": "curves.png", "comparison": "comparison.png"})
    base.update(kw)
    return CardInputs(**base)


def _load(text: str, tmp_path: Path):
    from huggingface_hub import ModelCard

    path = tmp_path / "README.md"
    path.write_text(text)
    return ModelCard.load(path)


def test_card_metadata_parses_and_eval_results_round_trip(tmp_path):
    from domainlm.publish.card import render

    card = _load(render(_inputs()), tmp_path)
    d = card.data
    assert d.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and d.license == "apache-2.0"
    assert d.library_name == "transformers" and d.pipeline_tag == "text-generation"
    assert d.datasets == ["pubmed-sample"] and {"domainlm", "lora", "causal-lm"} <= set(d.tags)
    assert d.model_name == "smollm2-pubmed" and d.to_dict()["base_model_relation"] == "finetune"
    results = {(r.dataset_type, r.metric_type): r.metric_value for r in d.eval_results}
    assert results == {("pubmed-sample", "perplexity"): 12.9, ("general-english-sample", "perplexity"): 17.9,
                       ("biomed-general", "perplexity"): 18.2, ("ncbi_disease", "entity_f1"): 0.6123,
                       ("pubmedqa", "accuracy"): 0.55, ("pubmed_heldout", "word_perplexity"): 25.0}
    assert len(d.eval_results) == 6, "the domain perplexity must not be listed twice"
    tasks = {r.dataset_type: r.task_type for r in d.eval_results}
    assert tasks["ncbi_disease"] == "token-classification" and tasks["pubmedqa"] == "text-classification"


def test_card_body_compares_base_and_adapted_and_says_what_it_is(tmp_path):
    from domainlm.publish.card import render

    text = _load(render(_inputs()), tmp_path).text
    for section in ("## Model details", "## Evaluation", "## Training details", "## Intended use", "## Limitations",
                    "## How to load", "## Verification"):
        assert section in text
    assert "| ncbi_disease | entity_f1 | 0.5712 [0.54, 0.6] | 0.6123 [0.58, 0.64] | +0.0411 [0.01, 0.07] (better) |" \
        in text
    assert "| pubmedqa | accuracy | 0.57 | 0.55 | -0.02 (worse) |" in text
    assert "| pubmed_heldout | word_perplexity | 30 | 25 | -5 (better) |" in text
    assert "| word perplexity: general text (wiki) | perplexity | 17.1 | 18.2 | +1.1 (worse) |" in text
    assert "| 21.4 | 12.9 | -8.5 (better) |" in text  # held-out domain perplexity: lower is better
    # training details: corpus documents and tokens, steps, FLOPs, hardware, wall time
    for fact in ("| corpus documents | 2,000 |", "| corpus tokens | 540,000 |", "| steps | 200 |", "5.08e+14 FLOPs",
                 "AMD EPYC 7B13", "| wall time | 1.5 h", "MFU 21%"):
        assert fact in text, fact
    assert "17 (base) to 17.9 (this model), a change of +5.3%" in text  # forgetting, measured
    assert "dequantised from the GGUF file" in text
    assert "![training loss and held-out perplexity](curves.png)" in text and "(comparison.png)" in text
    assert 'AutoModelForCausalLM.from_pretrained("lab/smollm2-pubmed")' in text
    assert "max |difference| 2.1e-06" in text


def test_unknown_license_is_left_for_the_user_and_said_plainly(tmp_path):
    from domainlm.publish.card import render

    card = _load(render(_inputs(license=None, license_source="", base_hub_id=None, base_name="tiny-llama")), tmp_path)
    assert card.data.license is None and card.data.base_model is None
    assert "**License: not known.**" in card.text and "Fill in the `license:` field" in card.text
    assert "not a Hugging Face Hub model" in card.text


def test_card_without_bench_uses_the_runs_held_out_perplexity(tmp_path):
    from domainlm.publish.card import render

    run = {**RUN, "metrics": {"initial": {"domain_ppl": 30.0}, "final": {"domain_ppl": 20.0}}}
    card = _load(render(_inputs(bench=None, run=run, images={})), tmp_path)
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [("perplexity", 20.0)]
    assert "Forgetting was not measured" in card.text and "No `domainlm bench` report" in card.text
    assert "comparison.png" not in card.text


@pytest.mark.parametrize("objective,tag", [("masked", "fill-mask"), ("protein", "fill-mask")])
def test_masked_models_get_fill_mask_cards(tmp_path, objective, tag):
    from domainlm.publish.card import render

    card = _load(render(_inputs(objective=objective, bench=None)), tmp_path)
    assert card.data.pipeline_tag == tag and 'pipeline("fill-mask"' in card.text
    assert "generate" not in card.text.split("## How to load")[1].split("##")[0]


def test_adapter_card_explains_loading_with_peft(tmp_path):
    from domainlm.publish.card import render

    export = {"kind": "adapter", "parameters": 4_884_480, "tokenizer_size": 49155,
              "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    card = _load(render(_inputs(export=export, added_tokens=3)), tmp_path)
    assert card.data.library_name == "peft" and card.data.to_dict()["base_model_relation"] == "adapter"
    assert 'base = AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")' in card.text
    assert "base.resize_token_embeddings(len(tokenizer))" in card.text
    assert "An adapter applied to the original release will not reproduce" in card.text
    assert "of which 3 were added to the base tokenizer" in card.text


def test_license_is_read_from_a_base_folder_card(tmp_path):
    from domainlm.publish.run import _license_from_folder

    (tmp_path / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n# a model\n")
    assert _license_from_folder(str(tmp_path)) == "cc-by-4.0"
    assert _license_from_folder(str(tmp_path / "missing")) is None
    (tmp_path / "README.md").write_text("no metadata at all")
    assert _license_from_folder(str(tmp_path)) is None


def test_qlora_run_is_described_as_an_adapter_over_a_4bit_base(tmp_path):
    from domainlm.publish.card import render

    text = render(_inputs(method="qlora", run={**RUN, "method": "qlora"}))
    d = _load(text, tmp_path).data
    assert {"lora", "qlora"} <= set(d.tags)
    assert "| method | QLoRA (r=16, alpha=32, base held in 4-bit NF4 while training) |" in text
    assert "QLoRA training" in text and "with the LoRA matrices" in text
    full = render(_inputs(method="full"))
    assert "qlora" not in full.lower() and "| method | full fine-tuning of all weights |" in full
    adapter = render(_inputs(method="qlora", export={"kind": "adapter", "base_model_name_or_path": "org/base"}))
    assert 'bnb_4bit_quant_type="nf4"' in adapter and 'base = AutoModelForCausalLM.from_pretrained("org/base")' in adapter
