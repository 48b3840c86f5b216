"""Foundation: CLI start-up, config schema checks, model sources and safe loading."""

from __future__ import annotations

import glob
import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Literal

import pytest

from domainlm import config as cfgmod
from domainlm.cli import main, parse_config, verb_named
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


def test_every_verb_is_a_typed_function_that_domainlm_exports():
    """One verb table: each verb's function says what it takes (its config class) and returns, and `domainlm`
    exports exactly the verbs the table names, under the table's names, plus the model loaders."""
    import importlib
    import inspect
    from pathlib import Path

    import domainlm
    from domainlm.cli import VERBS, _load

    for verb in VERBS:
        fn = _load(verb.target)
        params = list(inspect.signature(fn).parameters.values())
        assert params and params[0].name == "config", verb.name
        if verb.config:
            assert verb.config.rpartition(":")[2] in str(params[0].annotation), (verb.name, params[0].annotation)
        assert inspect.signature(fn).return_annotation is not inspect.Signature.empty, verb.name
        assert fn.__doc__, verb.name  # the docstring is the verb's --help
    exported = {v.python_name for v in VERBS if v.python_name}
    folders = {n for n in exported if (Path(domainlm.__file__).parent / n).is_dir()}  # imported from the folder
    assert set(domainlm.__all__) == (exported - folders) | {"resolve", "load_model", "load_tokenizer"}
    for name in domainlm.__all__:  # what `from domainlm import NAME` gives is the function, never a package
        assert callable(getattr(domainlm, name)), name
    for name in folders:
        assert callable(getattr(importlib.import_module(f"domainlm.{name}"), name)), name
    assert len(exported) == len([v for v in VERBS if v.python_name])  # no two verbs under one name


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
    from domainlm.sources.resolution import resolve

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
    from domainlm.sources.resolution import resolve

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

    from domainlm.sources.load import load_model, load_tokenizer

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

    from domainlm.sources.load import load_model, load_tokenizer

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
    # The missing masked-LM head is announced plainly, once; transformers' own table only under --verbose.
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    hf_logger = logging.getLogger("transformers.modeling_utils")
    hf_logger.addHandler(handler)
    try:
        with caplog.at_level("WARNING"):
            _, report = load_model("minilm", "masked")
        assert report.fresh_parameters and any("initialised fresh" in m for m in report.messages)
        assert not [r for r in records if "LOAD REPORT" in r.getMessage()]
        main(["--verbose"])  # the global flag (no verb: prints the usage)
        load_model("minilm", "masked")
        assert any("LOAD REPORT" in r.getMessage() and "MISSING" in r.getMessage() for r in records)
    finally:
        hf_logger.removeHandler(handler)
        logging.getLogger("domainlm").setLevel(logging.NOTSET)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-bert", "tiny-esm"])
def test_tiny_models_train_one_step_and_reload_identically(name, tmp_path):
    import torch

    from domainlm.sources.load import count_parameters, load_model, load_tokenizer

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
    """`from domainlm import prepare` is the verb; `domainlm.corpora.run` is always the submodule."""
    code = ("import types\nfrom domainlm.corpora import run as a\nimport domainlm.corpora.run\n"
            "from domainlm.corpora import run as b\nfrom domainlm import prepare, stats, download\n"
            "assert isinstance(a, types.ModuleType) and a is b\n"
            "assert all(callable(f) and not isinstance(f, types.ModuleType) for f in (prepare, stats, download))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1500:]


# --------------------------------------------------------------------------------------------------
# List flags: argparse's nargs="+" / action="extend" conventions (a test per form)
# --------------------------------------------------------------------------------------------------

def test_list_flag_takes_several_words_repeats_and_commas():
    cfg = parse_config(verb_named("scaling sweep"), ["--sizes", "2x64", "4x64", "--tokens", "1e6,2e6",
                                                    "--tokens", "3000000", "--sizes", "6x128"])
    assert cfg.sizes == ["2x64", "4x64", "6x128"]  # several words, then the flag again: nothing dropped
    assert cfg.tokens == [1_000_000, 2_000_000, 3_000_000]  # commas split; each item coerced to int


def test_unquoted_shell_glob_reaches_a_list_flag_whole(tmp_path):
    for name in ("a.xml.gz", "b.xml.gz", "c.xml.gz"):
        (tmp_path / name).write_bytes(b"")
    words = sorted(glob.glob(str(tmp_path / "*.xml.gz")))  # what the shell passes for an unquoted glob
    cfg = parse_config(verb_named("corpus prepare"), ["--inputs", *words, "--model", "tiny-llama", "--out",
                                                      str(tmp_path / "out")])
    assert cfg.inputs == words and cfg.model == "tiny-llama"


def test_repeated_override_keeps_every_entry_and_commas_inside_a_value(tmp_path):
    from domainlm.tasks.suites import parse_overrides

    cfg = parse_config(verb_named("bench"), ["--model", "tiny-bert", "--override", "ner.format=conll",
                                             "--override", "ner.train=data/a=b.tsv", "ner.labels=A,B,C",
                                             "--tasks", "ner,qa"])
    assert cfg.override == ["ner.format=conll", "ner.train=data/a=b.tsv", "ner.labels=A,B,C"]
    assert cfg.tasks == ["ner", "qa"]
    parsed = parse_overrides(cfg.override)["ner"]
    assert parsed["format"] == "conll" and parsed["labels"] == "A,B,C"
    assert parsed["files"]["train"] == "data/a=b.tsv"  # split on the first '=' only


def test_verbose_flag_after_the_verb(tmp_path, capsys):
    try:
        assert main(["validate", str(next(iter(shipped_recipes().values()))), "--verbose"]) == 0
        assert logging.getLogger("domainlm").isEnabledFor(logging.DEBUG)
    finally:
        logging.getLogger("domainlm").setLevel(logging.NOTSET)


# --------------------------------------------------------------------------------------------------
# Hub ids: the kind comes from the repo's config.json (a Hub cache made here, HF_HUB_OFFLINE=1)
# --------------------------------------------------------------------------------------------------

def _hub_cache(root, repos: dict[str, dict]):
    """A Hugging Face Hub cache (HF_HUB_CACHE layout) holding only config.json for each repo."""
    for repo_id, config in repos.items():
        repo = root / ("models--" + repo_id.replace("/", "--"))
        snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text(json.dumps(config))
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(snapshot.name)
    return root


BERT = {"model_type": "bert", "architectures": ["BertForMaskedLM"]}
LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
ESM = {"model_type": "esm", "architectures": ["EsmForMaskedLM"]}
REMOTE = {"model_type": "custom", "auto_map": {"AutoModel": "modeling.Custom"}}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = _hub_cache(tmp_path / "hub", {"org/bert-x": BERT, "org/llama-x": LLAMA, "org/esm-x": ESM,
                                          "org/remote-x": REMOTE})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # read once, at import
    return cache


def test_hub_id_kind_comes_from_its_config_offline(hub_cache):
    from domainlm.sources.resolution import resolve

    kinds = {spec: resolve(spec) for spec in ("org/bert-x", "org/llama-x", "org/esm-x")}
    assert {s: src.kind for s, src in kinds.items()} == {"org/bert-x": "masked", "org/llama-x": "causal",
                                                         "org/esm-x": "protein"}
    assert kinds["org/bert-x"].origin == "hub (local cache)" and kinds["org/bert-x"].hub_id == "org/bert-x"
    with pytest.raises(SourceError, match="auto_map"):
        resolve("org/remote-x")


def test_hub_id_kind_comes_from_its_config_online(hub_cache, monkeypatch):
    """Online, the id stays the path (from_pretrained downloads the weights) but config.json still sets the kind
    (it used to be 'causal' for every Hub id, so a BERT was trained on next-token prediction)."""
    import huggingface_hub

    from domainlm.sources import resolution

    real = huggingface_hub.hf_hub_download
    fetched = []

    def download(repo_id, filename, **kw):  # the Hub stand-in: this test's cache, so no network is needed
        fetched.append((repo_id, filename, kw.get("local_files_only")))
        return real(repo_id, filename, local_files_only=True)

    monkeypatch.setattr(resolution, "hub_offline", lambda: False)
    monkeypatch.setattr(resolution, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    src = resolution.resolve("org/bert-x")
    assert (src.kind, src.origin, src.path) == ("masked", "hub", "org/bert-x")
    assert fetched == [("org/bert-x", "config.json", False)]
    assert resolution.resolve("org/llama-x").kind == "causal"
    with pytest.raises(SourceError, match="trust-remote-code"):
        resolution.resolve("org/remote-x")
    assert resolution.resolve("org/remote-x", trust_remote_code=True).kind == "masked"


def test_hub_endpoint_and_offline_follow_huggingface_hub(monkeypatch):
    import huggingface_hub.constants

    from domainlm.sources.hub import hub_endpoint, hub_offline, hub_reachable

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9/")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert hub_endpoint() == "http://127.0.0.1:9" and hub_offline()
    assert not hub_reachable(timeout=2)  # port 9 (discard) on this machine refuses: the probe used HF_ENDPOINT


def test_at_least_words_every_bound_check_one_way():
    cfg = _Toy(steps=0)
    assert cfgmod.at_least(cfg, steps=1, lr=0.0) == ["'steps' must be at least 1, got 0"]
    assert cfgmod.at_least(_Toy(), steps=1) == [] and cfgmod.at_least(_Toy(name=None), name=1) == []
