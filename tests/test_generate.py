"""generate: streamed sampling from published tiny models and run folders, --compare, refusing masked models."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.runs import shared_lora_run, shared_published_full


@pytest.fixture(scope="session")
def published_full(session_dir: Path) -> Path:
    return shared_published_full(session_dir)


@pytest.fixture
def chunks(monkeypatch) -> list[str]:
    """Every piece of text the streamer hands to the terminal, in order."""
    from transformers import TextStreamer

    seen: list[str] = []
    original = TextStreamer.on_finalized_text

    def record(self, text, stream_end=False):
        seen.append(text)
        return original(self, text, stream_end=stream_end)

    monkeypatch.setattr(TextStreamer, "on_finalized_text", record)
    return seen


def _plain_greedy(folder: Path, prompt: str, n: int) -> str:
    """The reference: plain transformers, greedy decoding."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_greedy_generation_on_a_published_model_matches_plain_transformers(published_full, capsys, chunks):
    from domainlm.generate import generate

    result = generate(model=str(published_full), prompt="The kinase", max_new_tokens=12, temperature=0)
    out = capsys.readouterr().out
    assert result["tokens"] == 12
    assert result["continuation"] == _plain_greedy(published_full, "The kinase", 12)
    assert "".join(chunks) == result["continuation"], "the streamer printed something else than was generated"
    assert f"=== {published_full} ===\nThe kinase" in out and "[12 tokens" in out


def test_sampling_is_seeded_and_compare_prints_both(published_full, capsys):
    from domainlm.generate import generate

    kw = dict(model=str(published_full), prompt="protein", max_new_tokens=8, temperature=1.0, top_p=0.9)
    a = generate(seed=3, **kw)
    b = generate(seed=3, compare="tiny-llama", **kw)
    c = generate(seed=4, **kw)
    assert a["continuation"] == b["continuation"]
    assert a["continuation"] != c["continuation"]
    assert b["compare"]["model"] == "tiny-llama (for comparison)" and b["compare"]["tokens"] == 8
    out = capsys.readouterr().out
    assert "=== tiny-llama (for comparison) ===\nprotein" in out


def test_generate_from_a_lora_run_folder_merges_on_the_fly(session_dir, capsys):
    from domainlm.generate import generate

    result = generate(model=str(shared_lora_run(session_dir)), prompt="proteasome", max_new_tokens=4, temperature=0)
    assert result["tokens"] == 4


def test_masked_model_is_refused_before_anything_is_generated(published_full, capsys):
    from domainlm.errors import ConfigError
    from domainlm.generate import generate

    with pytest.raises(ConfigError, match="no generation head.*causal language model"):
        generate(model="tiny-bert", prompt="hello")
    with pytest.raises(ConfigError, match="'compare': 'tiny-esm' is a protein language model"):
        generate(model=str(published_full), prompt="hello", compare="tiny-esm")
    assert "===" not in capsys.readouterr().out


def test_bad_sampling_settings_are_reported_together():
    from domainlm.errors import ConfigError
    from domainlm.generate import generate

    with pytest.raises(ConfigError) as exc:
        generate(model="tiny-llama", prompt="", temperature=-1, top_p=0, max_new_tokens=0)
    assert "4 problem(s)" in str(exc.value)


def test_cli_generate(published_full, capsys):
    from domainlm.cli import main

    assert main(["generate", "--model", str(published_full), "--prompt", "cell", "--max-new-tokens", "3",
                 "--temperature", "0"]) == 0
    assert "[3 tokens" in capsys.readouterr().out
    assert main(["generate", "--model", "tiny-bert", "--prompt", "cell"]) == 2
    assert "no generation head" in capsys.readouterr().err


@pytest.mark.slow
def test_generate_streams_from_packaged_smollm2(capsys, chunks):
    from domainlm.generate import generate

    result = generate(model="smollm2", prompt="Mitochondria are", max_new_tokens=24, temperature=0)
    assert result["tokens"] > 5 and len(result["continuation"].split()) > 3
    assert len(chunks) > 3, "tokens should reach the terminal as they are generated, not all at the end"
    assert "".join(chunks) == result["continuation"]
