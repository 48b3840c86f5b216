"""The paths that follow the bf16 decision, run under both answers on every machine (issue 28).

CI runs on AVX2-only CPUs, where ``bf16: auto`` is off, so without forcing the answer the bf16 branches (the frozen
base stored in bf16, bf16 autocast, QLoRA's bf16 compute, a resume and a publish after a bf16 run) would only run
on a GPU user's machine. The ``bf16_fast`` fixture (tests/conftest.py) sets ``DOMAINLM_BF16_FAST`` to each answer.
On this CPU bf16 is emulated, so the models are tiny and the runs a few steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def _losses(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["type"] == "train"]


def test_lora_run_follows_the_answer_resumes_and_publishes(bf16_fast, llama_corpus, tmp_path, monkeypatch):
    """LoRA under ``bf16: auto``: the decision, the frozen base's storage, an exact resume after SIGKILL on a
    machine that answers the other way (the interrupted run's choice wins), and a verified publish."""
    from safetensors.torch import load_file

    from domainlm.adapt import adapt
    from domainlm.publish import publish

    monkeypatch.setenv("DOMAINLM_PROGRESS", "0")
    kw = dict(model="tiny-llama", corpus=str(llama_corpus), method="lora", lora_r=4, max_steps=4, save_every=2,
              eval_every=0, batch_size=2, eval_batches=1, log_every=1, lr=3e-3, bf16="auto")
    ref = tmp_path / "ref"
    m = adapt(out=str(ref), **kw)
    assert m["bf16"] is bf16_fast
    base = json.loads((ref / "final" / "base_model.json").read_text())
    assert base["storage"] == ("bfloat16" if bf16_fast else "float32")

    cut = tmp_path / "cut"
    args = [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    killed = subprocess.run([sys.executable, "-m", "domainlm", "adapt", *args, f"--out={cut}"], capture_output=True,
                            text=True, env={**os.environ, "DOMAINLM_FAULT": "step:3"}, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    monkeypatch.setenv("DOMAINLM_BF16_FAST", "0" if bf16_fast else "1")  # the resume's machine answers otherwise
    assert adapt(out=str(cut), resume=True, **kw)["bf16"] is bf16_fast
    assert _losses(cut) == _losses(ref)
    a = load_file(str(ref / "final" / "adapter_model.safetensors"))
    b = load_file(str(cut / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    pub = publish(run_dir=str(ref), out=str(tmp_path / "pub"))  # raises unless a fresh process reproduces the probe
    v = pub["verification"]
    assert v["max_abs_diff"] <= v["tolerance_abs"] and v["dtype"] == "float32"


def test_qlora_compute_dtype_follows_the_answer_and_publishes(bf16_fast, llama_corpus, tmp_path, monkeypatch):
    """QLoRA under ``bf16: auto``: the 4-bit layers compute in bf16 where bf16 is fast, else fp32; either run
    publishes a merged model that a fresh process verifies against the trained logits."""
    pytest.importorskip("bitsandbytes")
    from domainlm.adapt import adapt
    from domainlm.publish import publish

    monkeypatch.setenv("DOMAINLM_PROGRESS", "0")
    run = tmp_path / "run"
    m = adapt(model="tiny-llama", corpus=str(llama_corpus), out=str(run), method="qlora", lora_r=4, max_steps=2,
              save_every=0, eval_every=0, batch_size=2, eval_batches=1, lr=3e-3, bf16="auto")
    assert m["bf16"] is bf16_fast
    base = json.loads((run / "final" / "base_model.json").read_text())
    assert base["storage"] == "nf4"
    assert base["quantization"]["bnb_4bit_compute_dtype"] == ("bfloat16" if bf16_fast else "float32")
    pub = publish(run_dir=str(run), out=str(tmp_path / "pub"))
    v = pub["verification"]
    assert v["max_abs_diff"] <= v["tolerance_abs"]
