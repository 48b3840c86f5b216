"""publish: export LoRA (extended vocabulary) and full runs of tiny models, verify, refuse bad input.

Run folders come from the real ``domainlm corpus prepare`` and ``domainlm adapt`` (3 steps on a few
dozen generated documents), so the whole chain prepare -> adapt -> publish -> reload is exercised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness.runs import make_run, shared_full_run, shared_lora_run, shared_published_full

HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------------------------
# run folders
# ----------------------------------------------------------------------------------------------------

def write_bench(folder: Path) -> Path:
    """A bench report in the bench engineer's schema (hand-written numbers)."""
    folder.mkdir(parents=True, exist_ok=True)
    report = {
        "model": "runs/tiny", "baseline": "tiny-llama", "suite": "biomed",
        "tasks": [
            {"name": "ncbi_disease", "family": "ner", "metric": "entity_f1", "mode": "probe",
             "model": {"score": 0.612, "ci": [0.58, 0.64]}, "baseline": {"score": 0.571, "ci": [0.54, 0.60]},
             "delta": 0.041, "delta_ci": [0.01, 0.07]},
            {"name": "hoc", "family": "classification", "metric": "micro_f1", "mode": "probe",
             "model": {"score": 0.70, "ci": [0.66, 0.74]}, "baseline": None, "delta": None, "delta_ci": None},
        ],
        "perplexity": {"domain": {"model": {"score": 31.5, "ci": [30.1, 33.0]},
                                  "baseline": {"score": 42.0, "ci": [40.2, 44.1]}}},
    }
    (folder / "report.json").write_text(json.dumps(report, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.bar(["base", "adapted"], [0.571, 0.612])
    fig.savefig(folder / "comparison.png")
    plt.close(fig)
    return folder


@pytest.fixture(scope="session")
def lora_run(session_dir: Path) -> Path:
    return shared_lora_run(session_dir)


@pytest.fixture(scope="session")
def full_run(session_dir: Path) -> Path:
    return shared_full_run(session_dir)


@pytest.fixture(scope="session")
def published_lora(lora_run: Path, session_dir: Path) -> Path:
    from domainlm.publish import publish

    out = session_dir / "publish" / "published-lora"
    if not (out / "manifest.json").is_file():
        publish(run_dir=str(lora_run), out=str(out), bench=str(write_bench(session_dir / "publish" / "bench")))
    return out


@pytest.fixture(scope="session")
def published_full(session_dir: Path) -> Path:
    return shared_published_full(session_dir)


# Reload folders in one fresh interpreter with plain transformers and recompute each probe's logits.
RELOAD = r'''
import json, sys
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
out = []
for folder, probe in zip(sys.argv[1::2], sys.argv[2::2]):
    p = load_file(probe)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        logits = model(input_ids=p["input_ids"]).logits
    out.append({"max_diff": float((logits - p["logits"]).abs().max()), "len_tok": len(tok),
                "rows": model.get_input_embeddings().weight.shape[0], "ids": tok("proteasome kinase")["input_ids"]})
print(json.dumps({"results": out, "domainlm": [m for m in sys.modules if m.startswith("domainlm")]}))
'''


def reload_fresh(*pairs: tuple[Path, Path]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [str(x) for pair in pairs for x in pair]
    proc = subprocess.run([sys.executable, "-c", RELOAD, *args], capture_output=True, text=True, env=env, timeout=300,
                          cwd=str(pairs[0][0]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------
# tier 2: publish tiny runs end to end
# ----------------------------------------------------------------------------------------------------

def test_published_folders_reload_in_a_fresh_process_with_identical_logits(published_lora, lora_run,
                                                                           published_full, full_run):
    """Independently of publish's own check: plain transformers in a new interpreter, no domainlm."""
    got = reload_fresh((published_lora, lora_run / "final" / "probe.safetensors"),
                       (published_full, full_run / "final" / "probe.safetensors"))
    assert got["domainlm"] == []
    lora, full = got["results"]
    assert lora["max_diff"] < 1e-4 and full["max_diff"] < 1e-4
    # The extended vocabulary survived: 256 bytes + 4 specials + 3 domain words, each one token.
    assert lora["len_tok"] == lora["rows"] == 263
    assert len(lora["ids"]) == 3 and all(i >= 260 for i in lora["ids"][::2])
    assert full["len_tok"] == full["rows"] == 260


def test_lora_publish_is_a_merged_verified_model(published_lora: Path):
    from domainlm.artifacts import read_manifest

    files = {p.name for p in published_lora.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md",
            "manifest.json", "curves.png", "comparison.png", "bench_report.json"} <= files
    assert not any(n.startswith("adapter_") for n in files), "a merged export must not ship the adapter"
    man = read_manifest(published_lora, "published")
    assert man["export"]["kind"] == "merged" and man["export"]["vocab_size"] == 263
    v = man["verification"]
    assert v["passed"] and v["fresh_process"] and v["domainlm_modules"] == [] and v["tokenizer_matches"]
    assert v["max_abs_diff"] <= 1e-4 and v["top1_agreement"] == 1.0
    assert oct(published_lora.stat().st_mode & 0o777) != "0o700", "the folder must not stay owner-only"


def test_full_publish_has_generation_config_and_kv_cache(published_full: Path):
    from domainlm.artifacts import read_manifest

    assert read_manifest(published_full, "published")["export"]["kind"] == "full"
    gen = json.loads((published_full / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2 and gen["pad_token_id"] == 0
    assert json.loads((published_full / "config.json").read_text())["use_cache"] is True


def test_manifest_lists_every_file_with_hash(published_full: Path):
    from domainlm.artifacts import read_manifest, sha256_file

    man = read_manifest(published_full, "published")
    listed = {f["path"]: f["sha256"] for f in man["files"]}
    on_disk = {p.name for p in published_full.iterdir() if p.name != "manifest.json"}
    assert set(listed) == on_disk
    assert all(sha256_file(published_full / p) == h for p, h in listed.items())


@pytest.mark.slow
def test_adapter_only_export_loads_with_peft(lora_run: Path, tmp_path: Path):
    from domainlm.publish import publish

    out = tmp_path / "adapter"
    m = publish(run_dir=str(lora_run), out=str(out), merge=False)
    assert m["export"]["kind"] == "adapter" and m["verification"]["passed"]
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["task_type"] == "CAUSAL_LM" and cfg["inference_mode"] is True
    assert set(cfg["modules_to_save"]) == {"model.embed_tokens", "lm_head"}
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft"
    assert "PeftModel.from_pretrained" in card.text and "resize_token_embeddings" in card.text


@pytest.mark.slow
def test_bfloat16_export_gets_the_looser_tolerance(full_run: Path, tmp_path: Path):
    import torch
    from safetensors import safe_open

    from domainlm.publish import publish

    out = tmp_path / "bf16"
    m = publish(run_dir=str(full_run), out=str(out), dtype="bfloat16")
    v = m["verification"]
    assert v["passed"] and v["loaded_dtype"] == "bfloat16"
    assert v["tolerance_relative"] == 6e-2 and v["max_abs_diff"] > 0
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------

def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_incomplete_run_is_refused(full_run: Path, tmp_path: Path):
    from domainlm.errors import IncompleteArtifactError
    from domainlm.publish import publish

    run = _copy_run(full_run, tmp_path / "run")
    man = json.loads((run / "manifest.json").read_text())
    man["complete"] = False
    (run / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(IncompleteArtifactError, match="not a finished run.*--resume"):
        publish(run_dir=str(run), out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_run_without_final_checkpoint_is_refused(full_run: Path, tmp_path: Path):
    import shutil

    from domainlm.errors import IncompleteArtifactError
    from domainlm.publish import publish

    run = _copy_run(full_run, tmp_path / "run")
    shutil.rmtree(run / "final")
    with pytest.raises(IncompleteArtifactError, match="final model folder .* is missing"):
        publish(run_dir=str(run), out=str(tmp_path / "out"))
    run2 = _copy_run(full_run, tmp_path / "run2")
    (run2 / "final" / "manifest.json").unlink()
    with pytest.raises(IncompleteArtifactError, match="not complete"):
        publish(run_dir=str(run2), out=str(tmp_path / "out"))


def test_non_empty_out_needs_overwrite_and_all_problems_come_at_once(full_run: Path, tmp_path: Path,
                                                                     monkeypatch):
    from domainlm.errors import ConfigError
    from domainlm.publish import publish

    monkeypatch.delenv("HF_TOKEN", raising=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError) as exc:
        publish(run_dir=str(full_run), out=str(out), push="me/model", bench=str(tmp_path / "nobench"),
                merge=False)
    text = str(exc.value)
    # The session runs with HF_HUB_OFFLINE=1, which would also block the upload: a fifth problem.
    assert "5 problem(s)" in text
    # a folder domainlm did not write is never replaced, so the advice is another folder, not --overwrite
    assert "did not write" in text and "token" in text and "report.json" in text and "--no-merge" in text
    assert "HF_HUB_OFFLINE" in text
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_overwrite_replaces_out(full_run: Path, tmp_path: Path):
    from domainlm.artifacts import write_manifest
    from domainlm.publish import publish

    out = tmp_path / "out"
    write_manifest(out, "published")  # an earlier publication: --overwrite replaces only what domainlm wrote
    (out / "old.txt").write_text("old")
    publish(run_dir=str(full_run), out=str(out), overwrite=True)
    assert not (out / "old.txt").exists() and (out / "model.safetensors").is_file()


@pytest.mark.slow
def test_failed_verification_writes_nothing(full_run: Path, tmp_path: Path):
    """A probe the export cannot reproduce (tampered here) must leave no folder that looks complete."""
    import torch
    from safetensors.torch import load_file, save_file

    from domainlm.errors import DomainLMError
    from domainlm.publish import publish

    run = _copy_run(full_run, tmp_path / "run")
    probe = load_file(str(run / "final" / "probe.safetensors"))
    probe["logits"] = probe["logits"] + 0.5 * torch.randn_like(probe["logits"])
    save_file(probe, str(run / "final" / "probe.safetensors"))
    with pytest.raises(DomainLMError, match="failed verification.*exceeds the float32 tolerance"):
        publish(run_dir=str(run), out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")], "temporary folder left behind"


def test_cli_refuses_a_non_empty_out(full_run: Path, tmp_path: Path, capsys):
    from domainlm.artifacts import write_manifest
    from domainlm.cli import main

    (tmp_path / "x.txt").write_text("x")
    assert main(["publish", str(full_run), "--out", str(tmp_path)]) == 2
    assert "never deletes folders it did not write" in capsys.readouterr().err
    write_manifest(tmp_path, "published")  # an earlier publication: replaced only when asked
    assert main(["publish", str(full_run), "--out", str(tmp_path)]) == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_publish(full_run: Path, tmp_path: Path, capsys):
    from huggingface_hub import ModelCard

    from domainlm.cli import main

    out = tmp_path / "cli-out"
    assert main(["publish", str(full_run), "--out", str(out), "--model-name", "tiny-domain", "--license", "mit"]) == 0
    assert "verified in a fresh process" in capsys.readouterr().out
    card = ModelCard.load(out / "README.md")
    assert card.data.model_name == "tiny-domain" and card.data.license == "mit"


@pytest.mark.slow
def test_masked_run_publishes_as_a_fill_mask_model(session_dir: Path, tmp_path: Path):
    from huggingface_hub import ModelCard

    from domainlm.publish import publish

    run = make_run(session_dir / "publish" / "bert-run", method="full", model="tiny-bert", general=False)
    m = publish(run_dir=str(run), out=str(tmp_path / "bert"))
    assert m["verification"]["passed"] and m["verification"]["loaded_class"] == "BertForMaskedLM"
    assert not (tmp_path / "bert" / "generation_config.json").exists()
    card = ModelCard.load(tmp_path / "bert" / "README.md")
    assert card.data.pipeline_tag == "fill-mask" and "masked-lm" in card.data.tags


@pytest.mark.slow
def test_run_without_probe_is_verified_against_the_run_model(lora_run: Path, tmp_path: Path):
    from domainlm.publish import publish

    run = _copy_run(lora_run, tmp_path / "run")
    (run / "final" / "probe.safetensors").unlink()
    m = publish(run_dir=str(run), out=str(tmp_path / "out"))
    assert m["verification"]["passed"] and m["verification"]["reference"].startswith("the run's model")


def test_relative_paths_are_verified_from_the_fresh_process(full_run: Path, tmp_path: Path, monkeypatch):
    """The verifying process runs in an empty folder: run and out given relative to cwd must still work."""
    from domainlm.publish import publish

    monkeypatch.chdir(tmp_path)
    publish(run_dir=os.path.relpath(full_run, tmp_path), out="rel-out")
    assert (tmp_path / "rel-out" / "model.safetensors").is_file()


def test_bench_generate_and_publish_load_a_run_identically_and_qlora_like_lora(lora_run: Path, tmp_path: Path):
    """One loader (domainlm.loading) for bench, generate and publish: the same weights from each, for a LoRA run
    and for the same adapter marked as a qlora run."""
    import torch
    from safetensors.torch import load_file

    from domainlm.bench.loading import load_for_eval
    from domainlm.generate.run import load_causal
    from domainlm.loading import load_run_model, read_run

    probe = load_file(str(lora_run / "final" / "probe.safetensors"))
    with torch.no_grad():
        got = load_for_eval(str(lora_run)).model(input_ids=probe["input_ids"]).logits
    assert torch.allclose(got, probe["logits"], atol=1e-4)
    run = _copy_run(lora_run, tmp_path / "qlora-run")
    man = json.loads((run / "manifest.json").read_text())
    man["method"], man["config"]["method"] = "qlora", "qlora"
    (run / "manifest.json").write_text(json.dumps(man))
    info = read_run(run)
    assert info.method == "qlora" and info.is_adapter and info.objective == "causal"
    loaded = load_for_eval(str(run))
    assert "QLoRA" in loaded.origin and loaded.base_model == info.base_model["model"]
    models = [loaded.model, load_causal(str(run))[0], load_run_model(info)[0]]
    with torch.no_grad():
        outs = [m(input_ids=probe["input_ids"]).logits for m in models]
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_adapter_export_is_verified_on_the_base_as_the_run_held_it(lora_run: Path, tmp_path: Path):
    """A run that held its frozen base in another precision (here bf16; qlora: NF4) records it in base_model.json;
    an adapter-only export is verified on exactly those values, not on the fp32 checkpoint."""
    import torch
    from safetensors.torch import load_file

    from domainlm.loading import base_source, read_run
    from domainlm.publish.run import _held_base

    info = read_run(lora_run)
    assert _held_base(info, tmp_path) == base_source(info).path  # fp32-held: the checkpoint itself
    run = _copy_run(lora_run, tmp_path / "bf16-run")
    meta = json.loads((run / "final" / "base_model.json").read_text())
    (run / "final" / "base_model.json").write_text(json.dumps({**meta, "storage": "bfloat16"}))
    held = Path(_held_base(read_run(run), tmp_path))
    original = load_file(str(next(Path(base_source(info).path).glob("*.safetensors"))))
    rebuilt = {k: v for f in held.glob("*.safetensors") for k, v in load_file(str(f)).items()}
    name = next(k for k in original if k.endswith("q_proj.weight"))
    assert rebuilt[name].dtype == torch.float32 and not torch.equal(rebuilt[name], original[name])
    assert torch.equal(rebuilt[name], original[name].to(torch.bfloat16).float())
