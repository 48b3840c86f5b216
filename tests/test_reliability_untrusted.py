"""Untrusted files: pickle weights and remote code are refused unless opted in, configs that lie about the
weights and damaged weights give a clear SourceError, hostile XML reads no local file, and a Hub token in
the environment reaches no output, log or message.

The trials live in tests/harness/untrusted.py (the report's numbers come from the same functions).
"""

from __future__ import annotations

import logging

import pytest
from harness.marks import needs_fork
from harness.procs import FAKE_TOKEN, warm_imports
from harness.untrusted import Evil, secrets_trial, tiny_folder, untrusted_trials

from domainlm.cli import main

EXPECTED = {"pickle-only weights", "safetensors beside a pickle", "remote code (config.json)",
            "remote code (tokenizer_config.json)", "config lies: hidden_size", "config lies: intermediate_size",
            "config lies: vocab_size", "config lies: num_key_value_heads", "config lies: num_attention_heads",
            "config lies: num_hidden_layers", "config lies: model_type", "config lies: fewer layers",
            "damaged weights (truncated)", "damaged weights (garbage header)", "hostile XML (XXE.xml)",
            "hostile XML (laughs.xml)"}


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return {t.name: t for t in untrusted_trials(tmp_path_factory.mktemp("untrusted"), cli=False)}


def test_every_untrusted_case_is_refused_or_harmless(rows):
    assert set(rows) == EXPECTED
    failed = [f"{t.name}: {t.outcome}" for t in rows.values() if not t.ok]
    assert not failed, "\n".join(failed)


def test_refusals_say_why(rows):
    assert "can execute arbitrary code" in rows["pickle-only weights"].outcome
    assert "--allow-pickle" in rows["pickle-only weights"].outcome
    assert "pass --trust-remote-code only if you trust its author" in rows["remote code (config.json)"].outcome
    lie = rows["config lies: hidden_size"].outcome
    assert "config.json does not match the weights" in lie and "[260, 64] in the weights but [260, 32]" in lie
    assert "describes 6 layers but the weights hold 4" in rows["config lies: num_hidden_layers"].outcome
    assert "no document contains the local file's text" in rows["hostile XML (XXE.xml)"].outcome


def test_cli_refuses_a_pickle_folder_in_one_line(tmp_path, capsys):
    import torch

    folder = tiny_folder(tmp_path / "pickled")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    torch.save({"w": Evil(marker)}, folder / "pytorch_model.bin")
    (tmp_path / "none").mkdir()  # an existing (empty) folder passes validation, so the model is what gets refused
    rc = main(["adapt", "--model", str(folder), "--corpus", str(tmp_path / "none"), "--out", str(tmp_path / "run"),
               "--max-steps", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and not marker.exists()
    assert err.strip().splitlines()[-1].startswith("domainlm adapt: error: ") and "pickle" in err


def test_fake_token_never_reaches_outputs_logs_or_errors(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", FAKE_TOKEN)
    caplog.set_level(logging.DEBUG)
    corpus, run = tmp_path / "corpus", tmp_path / "run"
    assert main(["corpus", "prepare", "--card", "pubmed-sample", "--model", "tiny-llama", "--block-size", "64",
                 "--out", str(corpus)]) == 0
    assert main(["adapt", "--model", "tiny-llama", "--corpus", str(corpus), "--out", str(run), "--max-steps", "1",
                 "--batch-size", "2", "--eval-batches", "1", "--save-every", "0", "--bf16", "off"]) == 0
    assert main(["adapt", "--model", "someone/not-a-cached-model", "--corpus", str(corpus), "--out",
                 str(tmp_path / "err"), "--max-steps", "1"]) == 1
    assert main(["publish", str(run), "--out", str(tmp_path / "pub"), "--push", "someone/tiny-model"]) == 2
    captured = capsys.readouterr()
    text = captured.out + captured.err + caplog.text
    assert "HF_HUB_OFFLINE" in captured.err  # the error paths ran and said why
    assert FAKE_TOKEN not in text
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and FAKE_TOKEN.encode() in p.read_bytes()]
    assert not leaked and (run / "manifest.json").is_file()


@pytest.mark.slow
@needs_fork
def test_untrusted_folders_through_the_cli(tmp_path):
    warm_imports()
    failed = [f"{t.name}: {t.outcome}" for t in untrusted_trials(tmp_path, cli=True) if not t.ok]
    assert not failed, "\n".join(failed)


@pytest.mark.slow
@needs_fork
def test_fake_token_through_prepare_adapt_publish_and_failures(tmp_path):
    warm_imports()
    t = secrets_trial(tmp_path)
    assert t.ok, t.outcome
    assert "token found in 0" in t.outcome
