"""Foundation: CLI start-up, config schema checks, model sources and safe loading."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Literal

import pytest

from domainlm import config as cfgmod
from domainlm.cli import main
from domainlm.errors import ConfigError, SourceError
from domainlm.resources import shipped_recipes


@dataclass
class _Toy:
    lr: float = cfgmod.opt(1e-3, "learning rate")
    steps: int = cfgmod.opt(10, "steps")
    method: Literal["full", "lora"] = cfgmod.opt("full", "method")
    name: str | None = cfgmod.opt(None, "name")
    tags: list[str] = cfgmod.opt(factory=list, help="tags")

    def problems(self) -> list[str]:
        return ["'steps' must be positive"] if self.steps <= 0 else []


def test_config_reports_every_problem_at_once(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: fast\nstep: 3\nmethod: lorra\n")
    with pytest.raises(ConfigError) as err:
        cfgmod.load(_Toy, recipe)
    text = str(err.value)
    assert len(err.value.problems) == 3
    assert "did you mean 'steps'" in text
    assert "'lr': expected a number" in text
    assert "did you mean 'lora'" in text
    assert str(recipe) in text


def test_flags_override_recipe_and_combinations_checked(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: 0.5\nsteps: 4\ntags: [a, b]\n")
    cfg = cfgmod.load(_Toy, recipe, {"steps": "7", "name": "none"}, from_string={"steps", "name"})
    assert (cfg.lr, cfg.steps, cfg.name, cfg.tags) == (0.5, 7, None, ["a", "b"])
    with pytest.raises(ConfigError, match="must be positive"):
        cfgmod.load(_Toy, None, {"steps": 0})


def test_bad_yaml_names_the_line(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("lr: 1\n  steps: [\n")
    with pytest.raises(ConfigError, match="line"):
        cfgmod.read_yaml(recipe)


def test_help_is_fast_and_lists_verbs():
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "domainlm", "--help"], capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - start
    assert "adapt" in out.stdout and "corpus prepare" in out.stdout
    # No torch/transformers import on --help (those take seconds here).
    check = subprocess.run([sys.executable, "-c", "import sys, domainlm.cli; domainlm.cli._usage(); "
                            "print('torch' in sys.modules, 'transformers' in sys.modules)"],
                           capture_output=True, text=True, check=True)
    assert check.stdout.strip() == "False False"
    assert elapsed < 10


def test_every_verb_prints_its_help(capsys):
    """argparse %-formats help text: an option help with a literal '%' must not break --help."""
    from domainlm.cli import VERBS

    for verb in VERBS:
        with pytest.raises(SystemExit) as done:
            main([*verb.name.split(), "--help"])
        assert done.value.code == 0, verb.name
        assert "--" in capsys.readouterr().out


def test_unknown_verb_suggests(capsys):
    assert main(["adpat"]) == 2
    assert "did you mean 'adapt'" in capsys.readouterr().err


def test_every_shipped_recipe_validates(capsys):
    recipes = shipped_recipes()
    assert {"biogpt-style", "matscibert-style", "protein-mlm"} <= set(recipes)
    for name in recipes:
        assert main(["validate", name]) == 0, capsys.readouterr().err
    assert "OK:" in capsys.readouterr().out


def test_validate_reports_all_problems(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: tiny-llama\nlearning_rate: 1e-4\nmethod: lora\nlora_r: -1\nbatch_size: x\n")
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "learning_rate" in err and "did you mean 'lr'" in err and "batch_size" in err


def test_hub_id_offline_fails_fast_and_names_choices(monkeypatch):
    from domainlm.sources import resolve

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(SourceError) as err:
        resolve("some-org/some-model-that-is-not-cached")
    assert time.perf_counter() - start < 5
    assert "HF_HUB_OFFLINE" in str(err.value) and "tiny-llama" in str(err.value)


def test_cli_error_has_no_traceback(capsys):
    assert main(["compute", "--model", "some-org/nothing-here", "--tokens", "1000"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "offline" in err.lower()


def test_full_disk_outside_the_artifact_helpers_is_one_line(monkeypatch, capsys):
    """An ENOSPC from a write no helper wrapped (a log, a plot) still ends in one line, not a traceback."""
    import errno

    from domainlm import cli

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", "runs/x/metrics.jsonl")

    monkeypatch.setattr(cli, "run_verb", full)
    assert main(["models"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no space left" in err and "runs/x/metrics.jsonl" in err

    monkeypatch.setattr(cli, "run_verb", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "denied")))
    with pytest.raises(PermissionError):  # other OS errors are not disguised as a full disk
        main(["models"])


def test_pickle_and_remote_code_refused(tmp_path):
    from domainlm.sources import resolve

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(SourceError, match="pickle"):
        resolve(str(folder))
    assert resolve(str(folder), allow_pickle=True).kind == "masked"
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(SourceError, match="trust-remote-code"):
        resolve(str(folder), allow_pickle=True)


def test_models_lists_packaged_and_tiny(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("minilm", "smollm2", "tiny-llama", "tiny-bert", "tiny-esm"):
        assert name in out
    assert "22.7M" in out  # MiniLM's real parameter count, read from its safetensors header


def test_smollm2_packaged_perplexity_on_english_is_low():
    import math

    import torch

    from domainlm.sources import load_model, load_tokenizer

    tok = load_tokenizer("smollm2")
    model, report = load_model("HuggingFaceTB/SmolLM2-135M-Instruct")  # the Hub id resolves to the package
    assert not report.fresh_parameters
    ids = tok("The weather was warm and sunny, so the children played in the park all afternoon.",
              return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert math.isfinite(float(loss)) and math.exp(float(loss)) < 100


def test_minilm_embeddings_rank_paraphrase_above_unrelated(caplog):
    import torch

    from domainlm.sources import load_model, load_tokenizer

    tok = load_tokenizer("minilm")
    model, _ = load_model("minilm", "masked")
    encoder = model.bert

    def embed(text):
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            h = encoder(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)[0]

    a = embed("The drug lowered blood pressure in elderly patients.")
    para = embed("In older patients, the medication reduced their blood pressure.")
    other = embed("The football match was postponed because of heavy snow.")
    assert float(a @ para) > float(a @ other) + 0.2
    # and the missing masked-LM head is announced plainly
    with caplog.at_level("WARNING"):
        _, report = load_model("minilm", "masked")
    assert report.fresh_parameters and any("initialised fresh" in m for m in report.messages)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-bert", "tiny-esm"])
def test_tiny_models_train_one_step_and_reload_identically(name, tmp_path):
    import torch

    from domainlm.sources import count_parameters, load_model, load_tokenizer

    model, _ = load_model(name)
    tok = load_tokenizer(name)
    assert 100_000 < count_parameters(model) < 1_000_000
    text = "MKTAYIAKQR" if name == "tiny-esm" else "kinase inhibitors"
    ids = tok(text, return_tensors="pt")["input_ids"]
    labels = ids.clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = model(input_ids=ids, labels=labels).loss
    before.backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        after = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "m")
    reloaded, _ = load_model(str(tmp_path / "m"), "causal" if name == "tiny-llama" else "masked")
    reloaded.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, after)


def test_verbs_import_as_functions_and_corpora_submodules_stay_modules():
    """`from domainlm import prepare` is the verb; `domainlm.corpora.prepare` is always the submodule."""
    code = ("import types\nfrom domainlm.corpora import prepare as a\nimport domainlm.corpora.prepare\n"
            "from domainlm.corpora import prepare as b\nfrom domainlm import prepare, stats, download\n"
            "assert isinstance(a, types.ModuleType) and a is b\n"
            "assert all(callable(f) and not isinstance(f, types.ModuleType) for f in (prepare, stats, download))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1500:]
