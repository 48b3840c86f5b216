"""Prove a published folder reproduces the run: reload it in a fresh process, compare logits.

The check runs in a new interpreter that imports only torch, safetensors and transformers (and peft
for an adapter-only export), never domainlm, so it sees exactly what a user's ``from_pretrained``
sees: no state left in this process, no domainlm code papering over a missing file. The reference is
``final/probe.safetensors``, the trained in-memory model's fp32 logits written by adapt.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from domainlm.errors import DomainLMError

log = logging.getLogger(__name__)

# Largest allowed max |logit difference| as a fraction of max(1, max |reference logit|). fp32 only
# differs by summation order (merging W + BA vs Wx + BAx: ~1e-6 measured); half precisions round each
# weight and activation (bf16 keeps 8 significant bits, fp16 11), measured at 1.5% and 0.6% of the
# logit scale on a tiny Llama, so their limits leave room for deeper models.
DEFAULT_TOLERANCE = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 6e-2}

# Runs as `python -c SCRIPT ARGS_JSON`. Imports nothing from domainlm; prints one JSON line.
VERIFY_SCRIPT = r'''
import json, sys, time
t0 = time.perf_counter()
args = json.loads(sys.argv[1])
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoTokenizer

torch.manual_seed(0)
folder = args["folder"]
probe = load_file(args["probe"])
ids, ref = probe["input_ids"].long(), probe["logits"].float()
auto = getattr(transformers, args["auto_class"])
tok = AutoTokenizer.from_pretrained(folder)
if args["adapter"]:
    from peft import PeftModel
    base = auto.from_pretrained(args["base_path"], dtype=torch.float32)
    if len(tok) > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(len(tok), mean_resizing=False)
    model = PeftModel.from_pretrained(base, folder)
    if args["dtype"] != "float32":
        model = model.to(getattr(torch, args["dtype"]))
else:
    model = auto.from_pretrained(folder, dtype="auto")
model.eval()
with torch.no_grad():
    logits = model(input_ids=ids).logits.float()
out = {"loaded_class": type(model).__name__, "loaded_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
       "tokens": int(ids.numel()), "shape_ok": list(logits.shape) == list(ref.shape),
       "logits_shape": list(logits.shape), "reference_shape": list(ref.shape)}
if out["shape_ok"]:
    diff = (logits - ref).abs()
    out.update(max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()), ref_max_abs=float(ref.abs().max()),
               top1_agreement=float((logits.argmax(-1) == ref.argmax(-1)).float().mean()))
ref_tok = AutoTokenizer.from_pretrained(args["reference_tokenizer"])
out["tokenizer_size"] = len(tok)
out["tokenizer_matches"] = tok.get_vocab() == ref_tok.get_vocab()
out["model_vocab"] = int(model.get_input_embeddings().weight.shape[0])
if args.get("check_generation"):
    out["has_generation_config"] = getattr(model, "generation_config", None) is not None
out["domainlm_modules"] = sorted(m for m in sys.modules if m == "domainlm" or m.startswith("domainlm."))
out["transformers"] = transformers.__version__
out["seconds"] = time.perf_counter() - t0
print("VERIFY_RESULT " + json.dumps(out))
'''


def auto_class_name(objective: str) -> str:
    return "AutoModelForCausalLM" if objective == "causal" else "AutoModelForMaskedLM"


def write_reference(model: Any, input_ids: Any, path: Path) -> Path:
    """Compute fp32 reference logits in this process (for runs without a probe) and save them."""
    import torch
    from safetensors.torch import save_file

    model.eval()
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits.float()
    save_file({"input_ids": input_ids.cpu().contiguous(), "logits": logits.cpu().contiguous()}, str(path))
    return path



def run_fresh(script: str, args: dict[str, Any], *, cwd: str, timeout: int, timeout_text: str, failure_text: str,
              secrets: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run a verification ``script`` (it prints one ``VERIFY_RESULT {json}`` line) in a fresh interpreter that
    cannot reach the network nor see Hub tokens, and return that JSON; a timeout or a failed load raises
    :class:`DomainLMError` with ``timeout_text`` / ``failure_text`` and the tail of its stderr (``secrets`` scrubbed).
    Shared by the safetensors check and the GGUF check (publish/gguf.py)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    # The fresh process must never reach the network (the folder and base are local) nor print progress bars.
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1",
               TOKENIZERS_PARALLELISM="false")
    try:
        proc = subprocess.run([sys.executable, "-c", script, json.dumps(args)], capture_output=True,
                              text=True, timeout=timeout, env=env, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise DomainLMError(timeout_text) from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("VERIFY_RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-12:])
        for s in secrets:
            if s:
                tail = tail.replace(s, "***")
        raise DomainLMError(f"{failure_text}. Its error:\n{tail}")
    return json.loads(lines[-1][len("VERIFY_RESULT "):])

def verify_folder(folder: Path, *, probe: Path, objective: str, dtype: str, reference_tokenizer: Path,
                  adapter: bool = False, base_path: str | None = None, tolerance: float | None = None,
                  timeout: int = 900, secrets: tuple[str, ...] = ()) -> dict[str, Any]:
    """Reload ``folder`` in a fresh interpreter and compare its logits with ``probe``.

    Returns the measurements with ``passed``; raises :class:`DomainLMError` when the fresh process
    cannot load the folder at all. ``secrets`` are scrubbed from any error text.
    """
    rel_tol = tolerance if tolerance is not None else DEFAULT_TOLERANCE[dtype]
    # The fresh process runs in an empty folder, so every local path it gets must be absolute.
    if base_path is not None and Path(base_path).exists():
        base_path = str(Path(base_path).resolve())
    args = {"folder": str(Path(folder).resolve()), "probe": str(Path(probe).resolve()),
            "auto_class": auto_class_name(objective), "adapter": adapter, "base_path": base_path, "dtype": dtype,
            "reference_tokenizer": str(Path(reference_tokenizer).resolve()),
            "check_generation": objective == "causal"}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="domainlm-verify-") as cwd:
        # cwd is an empty folder so `import domainlm` could not succeed by accident from a checkout.
        result = run_fresh(VERIFY_SCRIPT, args, cwd=cwd, timeout=timeout, secrets=secrets,
                           timeout_text=f"verification of {folder} did not finish in {timeout} s; raise "
                                        "--verify-timeout (the export was not put in place)",
                           failure_text="a fresh Python process could not load the exported folder with plain "
                                        "transformers, so the export was not put in place")
    result["wall_s"] = time.perf_counter() - t0
    scale = max(1.0, result.get("ref_max_abs", 0.0))
    result.update(tolerance_relative=rel_tol, tolerance_abs=rel_tol * scale, dtype=dtype,
                  reference=str(probe.name), fresh_process=True)
    reasons = []
    if not result["shape_ok"]:
        reasons.append(f"logits shape {result['logits_shape']} differs from the run's {result['reference_shape']} "
                       "(the vocabulary did not survive the export)")
    elif result["max_abs_diff"] > result["tolerance_abs"]:
        reasons.append(f"max |logit difference| {result['max_abs_diff']:.3g} exceeds the {dtype} tolerance "
                       f"{result['tolerance_abs']:.3g} ({rel_tol:g} x max(1, max |logit| = {scale:.3g}))")
    if not result["tokenizer_matches"]:
        reasons.append("the reloaded tokenizer's vocabulary differs from the run's")
    if result["tokenizer_size"] > result["model_vocab"]:
        reasons.append(f"the tokenizer has {result['tokenizer_size']} tokens but the model only "
                       f"{result['model_vocab']} embedding rows")
    if result["domainlm_modules"]:
        reasons.append(f"the check imported domainlm ({result['domainlm_modules'][:3]}), so it does not prove a "
                       "plain transformers load")
    result["passed"] = not reasons
    result["failures"] = reasons
    return result
