"""Peak memory of one adapt training step per memory setting, beside the planner's estimate (issue 15).

A Llama-architecture model of ~0.47B parameters is built from a config (random weights: memory does not depend
on their values) and saved once; every configuration then runs in its own subprocess, so each peak RSS is
clean: the subprocess imports torch and transformers, records its RSS (the baseline), loads the model through
adapt's own ``prepare_model`` and ``apply_features``, materialises AdamW's state with a zero-gradient step at
lr 0, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``) and runs one real training step
(forward, backward, optimizer step) through adapt's loss (``lm_loss.loss_sum`` with the fused chunked head, two
packed documents per row). "net" is the peak minus the baseline, which the planner (``domainlm.memory``,
device 'cpu') is compared with; RssAnon and RssFile are sampled beside it (file-backed pages apart).

Usage (each configuration runs in its own process, one at a time; rows already in --out are kept):
    nice -n 10 python experiments/memory_adapt.py --size 0.47b --seqs 1024,2048 [--only 'QLoRA;full'] \
        [--model-dir /tmp/m047] [--out experiments/MEMORY_ADAPT.json]
    python experiments/memory_adapt.py --mapping --model-dir /tmp/m047   # QLoRA's RSS after loading, fix off/on
    python experiments/memory_adapt.py --md                               # the markdown section from --out
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# ~0.47B parameters: 24 layers of hidden 1024 with a 4096 SwiGLU MLP, untied 32k vocabulary.
MODEL = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
             num_key_value_heads=16, vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False)
# ~0.13B (SmolLM2-sized): what fits the memory actually free on the shared machine (the 0.47B runs were killed by
# the kernel's OOM killer while other agents held ~17 of the 24 GiB); --size 0.47b selects the model above
SMALL = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
             num_key_value_heads=12, vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False)
RSS_CAP_GB = 15.0  # 14 GiB: this task's share of the machine (24 GiB shared by several agents); a run above is killed

# (name, method, bf16, gradient_checkpointing)
CONFIGS = [
    ("full", "full", False, False),
    ("full + checkpointing", "full", False, True),
    ("LoRA, fp32 base (before this round)", "lora", False, False),
    ("LoRA, bf16 base", "lora", True, False),
    ("QLoRA", "qlora", False, False),
    ("QLoRA + checkpointing", "qlora", False, True),
]


def _status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def _mapped(pattern: str = ".safetensors") -> dict:
    """GB resident in this process's mappings of files whose path contains ``pattern`` (/proc/self/smaps): all of
    it, and the part that is anonymous (private copy-on-write copies, e.g. weights the optimizer has written)."""
    total = {"rss": 0, "anonymous": 0, "count": 0}
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split(maxsplit=1)[0]
        if "-" in first and not first.endswith(":"):  # a mapping's header line
            inside = pattern in line
            total["count"] += inside
        elif inside and first in ("Rss:", "Anonymous:"):
            total[first[:-1].lower()] += int(line.split()[1]) * 1024
    return {"mapped_rss_gb": total["rss"] / 1e9, "mapped_anon_gb": total["anonymous"] / 1e9,
            "mappings": total["count"]}


class _Sampler:
    """Samples RssAnon and RssFile every 20 ms: the kernel keeps a peak (VmHWM) for their sum only."""

    def __init__(self) -> None:
        self.peak_anon = self.peak_file = 0.0
        self.run = True
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while self.run:
            self.sample()
            time.sleep(0.02)

    def sample(self) -> None:
        self.peak_anon = max(self.peak_anon, _status("RssAnon"))
        self.peak_file = max(self.peak_file, _status("RssFile"))

    def reset(self) -> None:
        self.peak_anon = self.peak_file = 0.0
        self.sample()


def one(model_dir: str, method: str, bf16: bool, ckpt: bool, seq: int) -> dict:
    """Runs in the subprocess: one training step, returns the measured peaks (GB)."""
    import torch
    import transformers  # noqa: F401

    baseline = _status("VmRSS")
    base_anon, base_file = _status("RssAnon"), _status("RssFile")
    from domainlm.adapt.config import AdaptConfig
    from domainlm.adapt.features import apply_features
    from domainlm.adapt.setup import prepare_model
    from domainlm.lm_loss import causal_labels, loss_sum, split_head

    cfg = AdaptConfig(model=model_dir, method=method, bf16="on" if bf16 else "off", gradient_checkpointing=ckpt,
                      lora_r=16)
    t0 = time.perf_counter()
    prepared = prepare_model(cfg)
    model = apply_features(prepared.model, cfg, bf16=bf16, device=torch.device("cpu"))
    load_s = time.perf_counter() - t0
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.0, foreach=True)  # adapt's optimizer on CPU (foreach)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()  # lr 0: creates the two moments, changes nothing
    opt.zero_grad(set_to_none=True)
    for g in opt.param_groups:
        g["lr"] = 1e-5
    gc.collect()
    before = _status("VmRSS")
    mem = {"baseline_anon_gb": base_anon, "baseline_file_gb": base_file, "before_step_anon_gb": _status("RssAnon"),
           "before_step_file_gb": _status("RssFile"), "checkpoint": _mapped()}
    sampler = _Sampler()
    sampler.thread.start()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (peak RSS) to the current RSS
    sampler.reset()
    if bf16:
        # bf16 is emulated on this CPU (~0.5 GFLOP/s, ~3 CPU-minutes for even 32 tokens of this model on a machine
        # shared 8 ways): the bf16-base row measures the stored state (frozen weights + adapters + AdamW), no step
        sampler.run = False
        return {**mem, "baseline_gb": baseline, "before_step_gb": before, "peak_gb": before,
                "net_gb": before - baseline, "peak_anon_gb": mem["before_step_anon_gb"],
                "net_anon_gb": mem["before_step_anon_gb"] - base_anon,
                "step_s": 0.0, "load_s": load_s, "tokens": 0, "loss": None,
                "trainable": sum(p.numel() for p in params), "stored_params": sum(p.numel() for p in model.parameters())}
    gen = torch.Generator().manual_seed(0)
    tokens = seq
    ids = torch.randint(3, int(model.get_input_embeddings().num_embeddings), (1, tokens), generator=gen)
    doc_ids = torch.zeros(1, tokens, dtype=torch.long)
    doc_ids[:, tokens // 3:] = 1  # two packed documents
    labels = causal_labels(ids, doc_ids)
    split = split_head(model, "causal")
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = loss_sum(model, "causal", ids, labels, doc_ids, scale=1.0 / max(1, int((labels != -100).sum())),
                        split=split, compute_dtype=torch.bfloat16 if bf16 else torch.float32)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    step_s = time.perf_counter() - t0
    peak = _status("VmHWM")
    sampler.run = False
    sampler.sample()
    n_train = sum(p.numel() for p in params)
    n_all = sum(p.numel() for p in model.parameters())
    return {**mem, "baseline_gb": baseline, "before_step_gb": before, "peak_gb": peak, "net_gb": peak - baseline,
            "peak_anon_gb": sampler.peak_anon, "net_anon_gb": sampler.peak_anon - base_anon,
            "peak_file_gb": sampler.peak_file, "step_s": step_s, "load_s": load_s, "tokens": tokens, "loss": float(loss),
            "trainable": n_train, "stored_params": n_all}


def loaded_state(model_dir: str, release: bool) -> dict:
    """Runs in a subprocess: RSS after loading a QLoRA model through ``prepare_model``, with or without
    ``quant.release_checkpoint_mapping`` (without: what QLoRA held before the fix, the fp32 checkpoint mapped)."""
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import domainlm.quant as quant
    from domainlm.adapt.config import AdaptConfig
    from domainlm.adapt.setup import prepare_model

    base = {k: _status(k) for k in ("VmRSS", "RssAnon", "RssFile")}
    if not release:
        quant.release_checkpoint_mapping = lambda model: 0
    prepared = prepare_model(AdaptConfig(model=model_dir, method="qlora", bf16="off", lora_r=16))
    gc.collect()
    after = {k: _status(k) - base[k] for k in base}
    return {"release": release, "net_rss_gb": after["VmRSS"], "net_anon_gb": after["RssAnon"],
            "net_file_gb": after["RssFile"], "checkpoint": _mapped(), "params": sum(
                p.numel() for p in prepared.model.parameters())}


def _planner(method: str, bf16: bool, ckpt: bool, seq: int, model: dict | None = None) -> dict:
    from transformers import LlamaConfig

    from domainlm.memory import estimate, shape_from_config

    shape = shape_from_config(LlamaConfig(**(model or MODEL)))
    est = estimate(shape, method=method, strategy="ddp", gpus=1, seq_len=seq, batch=1,
                   gradient_checkpointing=ckpt, bf16=bf16, device="cpu")
    return {k: v / 1e9 if isinstance(v, float) else v for k, v in est.as_dict().items() if k != "settings"}


def _run_child(model_dir: str, name: str, method: str, bf16: bool, ckpt: bool, seq: int) -> dict:
    cmd = [sys.executable, __file__, "--one", json.dumps([model_dir, method, bf16, ckpt, seq])]
    # glibc's dynamic mmap threshold keeps freed multi-MB blocks in the heap, so RSS would count memory that
    # is free again; a fixed threshold returns them at once, making RSS follow live tensors (what a GPU allocator
    # reports and the planner estimates)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", MALLOC_MMAP_THRESHOLD_="65536",
               MALLOC_TRIM_THRESHOLD_="131072")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    killed = {"why": None}

    def watch():
        import psutil

        try:
            ps = psutil.Process(proc.pid)
            while proc.poll() is None:
                if ps.memory_info().rss / 1e9 > RSS_CAP_GB:
                    killed["why"] = f"killed above the {RSS_CAP_GB:g} GB cap of this shared machine"
                    proc.kill()
                time.sleep(0.2)
        except psutil.NoSuchProcess:
            pass

    threading.Thread(target=watch, daemon=True).start()
    out, err = proc.communicate()
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    lines = [x for x in err.strip().splitlines() if "warn" not in x.lower()] or ["no output"]
    return {"error": killed["why"] or f"exit code {proc.returncode}: {lines[-1][:300]}"}


def bf16_base_perplexity(model: str = "tiny-llama", steps: int = 40) -> dict:
    """Held-out perplexity after a short LoRA run under bf16 autocast: fp32 frozen base vs bf16 frozen base.

    The bf16-base run is adapt as it is now; the fp32-base run is the same with ``store_frozen_bf16`` turned off
    (what adapt did before this round). Same seed, data and steps.
    """
    import domainlm.adapt.features as features
    from domainlm.adapt import adapt

    out = {}
    original = features.store_frozen_bf16
    with tempfile.TemporaryDirectory(prefix="bf16-base-") as tmp:
        for name, store in (("fp32 base", lambda m: 0), ("bf16 base", original)):
            features.store_frozen_bf16 = store
            try:
                t0 = time.perf_counter()
                res = adapt(model=model, corpus="pubmed-sample", out=f"{tmp}/{name.split()[0]}", method="lora",
                            bf16="on", max_steps=steps, batch_size=8, lr=2e-3, eval_every=0, save_every=0,
                            log_every=10, eval_batches=8, block_size=128, seed=0, lora_dropout=0.0)
            finally:
                features.store_frozen_bf16 = original
            fin, init = res["metrics"]["final"], res["metrics"]["initial"]
            out[name] = {"initial_ppl": init.get("domain_ppl"), "final_ppl": fin.get("domain_ppl"),
                         "wall_s": time.perf_counter() - t0}
            print(name, out[name], flush=True)
    return out


def _row(results: dict, name: str, seq: int) -> dict | None:
    row = next((r for r in results.get("runs", []) if r["name"] == name and r["seq"] == seq), None)
    return row if row and "peak_gb" in row else None


def planner_at_7b() -> list[str]:
    """The planner's QLoRA / LoRA ratio where weights matter more: a Llama-shaped 7B on a GPU at 2048 tokens."""
    from domainlm.memory import estimate, shape_from_params

    shape = shape_from_params(7e9)
    out = ["Planner, 7B Llama-shaped (`--params 7e9`), one GPU, 2048 tokens, batch 1, bf16 autocast, flash/flex "
           "attention (no dense mask); today's LoRA (fp32 frozen base under bf16 autocast) is the planner's bf16 "
           "LoRA plus 2 bytes per frozen parameter:", ""]
    for ckpt in (False, True):
        kw = dict(gpus=1, seq_len=2048, batch=1, bf16=True, device="cuda", gradient_checkpointing=ckpt,
                  dense_doc_mask=False)
        lora = estimate(shape, method="lora", **kw)
        today = lora.total + 2.0 * shape.params
        q = estimate(shape, method="qlora", **kw).total
        out.append(f"- {'with' if ckpt else 'without'} checkpointing on both: QLoRA {q / 1e9:.1f} GB, today's LoRA "
                   f"{today / 1e9:.1f} GB, LoRA with the bf16 base {lora.total / 1e9:.1f} GB: QLoRA = "
                   f"**{q / today:.0%}** of today's LoRA")
    return out


def render_md(results: dict) -> str:
    """The measured section of MEMORY_ADAPT.md from the JSON (targets computed, never typed in).

    The planner column is recomputed from today's ``domainlm.memory`` (the JSON also keeps what the planner said
    when each row ran, under ``planner_gb``).
    """
    order = [c[0] for c in CONFIGS]
    results["runs"] = sorted(results.get("runs", []), key=lambda r: (-r["seq"], order.index(r["name"])))
    for r in results["runs"]:
        r["planner_now_gb"] = _planner(r["method"], r["bf16"], r["gradient_checkpointing"], r["seq"],
                                       results["model"])
    lines = ["## Peak memory per setting (issue 15)", "",
             f"Generated by `nice -n 10 python experiments/memory_adapt.py --size 0.47b` on {results.get('date', '?')} "
             f"(rows run one process at a time, in parts). Machine: {results.get('cpu')}, {results.get('threads')} "
             f"threads, torch {results.get('torch')}; CPU flags: {' '.join(results.get('cpu_flags', []))} (no "
             f"AVX512/AMX: bf16 is emulated). **Shared machine**: {results.get('shared_machine')}, so step times "
             "are pessimistic (load average 6-7 on 2 cores during these runs); memory is not affected.", "",
             f"Model: Llama architecture from a config, {results.get('parameters', 0) / 1e9:.3f}B parameters "
             f"({results['model']['num_hidden_layers']} layers, hidden {results['model']['hidden_size']}, SwiGLU "
             f"{results['model']['intermediate_size']}, untied 32k vocabulary), random weights. One training "
             "step (forward, backward, AdamW step) through adapt's own `prepare_model`, `apply_features` and "
             "`lm_loss.loss_sum` (fused chunked head, two packed documents per row, LoRA r 16 with dropout 0.05), "
             "batch 1, each configuration in its own process. **net RSS** is the process's peak RSS during the "
             "step (VmHWM, reset after loading and after AdamW's state exists) minus its RSS after `import torch, "
             "transformers` (~0.25 GB); **net anon** is the same for RssAnon (sampled every 20 ms), i.e. without "
             "file-backed pages; **file** is the peak of file-backed resident pages (RssFile: the libraries, "
             "~0.1 GB, and under LoRA with an fp32 base the frozen weights themselves, which stay views of the "
             "memory-mapped checkpoint). The planner (`domainlm compute --memory`, device cpu) is compared with "
             "net RSS.", "",
             "| setting | seq | net RSS | net anon | file | planner | planner / net RSS | planner: weights + "
             "optimizer + max(activations, gradients + max(step temporaries, backward tail)) | step s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results.get("runs", []):
        plan = r["planner_now_gb"]
        brk = (f"{plan['weights']:.2f} + {plan['optimizer']:.2f} + max({plan['activations']:.2f}, "
               f"{plan['gradients']:.2f} + max({plan['step_working']:.2f}, {plan.get('backward_tail', 0.0):.2f}))")
        file_gb = r.get("peak_file_gb", r.get("before_step_file_gb", float("nan")))
        if "peak_gb" in r and not r["tokens"]:  # stored state only (bf16 base): planner weights + optimizer
            stored = plan["weights"] + plan["optimizer"]
            lines.append(f"| {r['name']} | no step | {r['net_gb']:.2f} GB | {r['net_anon_gb']:.2f} GB | "
                         f"{file_gb:.2f} GB | {stored:.2f} GB (weights + optimizer) | {stored / r['net_gb']:.2f} | "
                         f"{brk} | - |")
        elif "peak_gb" in r:
            lines.append(f"| {r['name']} | {r['seq']} | {r['net_gb']:.2f} GB | {r['net_anon_gb']:.2f} GB | "
                         f"{file_gb:.2f} GB | {plan['total']:.2f} GB | {plan['total'] / r['net_gb']:.2f} | {brk} | "
                         f"{r['step_s']:.0f} |")
        else:
            lines.append(f"| {r['name']} | {r['seq']} | - | - | - | {plan['total']:.2f} GB | - | {brk} | "
                         f"{r.get('error', 'not run')} |")
    lines += ["", "### Targets", ""]
    for seq in (1024, 2048):
        lora, q, qc, f, fc = (_row(results, n, seq) for n in ("LoRA, fp32 base (before this round)", "QLoRA",
                                                              "QLoRA + checkpointing", "full",
                                                              "full + checkpointing"))
        if lora and q:
            lines.append(f"- QLoRA peak <= 40% of today's LoRA peak, seq {seq}: QLoRA {q['net_gb']:.2f} / LoRA "
                         f"{lora['net_gb']:.2f} GB net RSS = **{q['net_gb'] / lora['net_gb']:.0%}**"
                         + (f"; QLoRA + checkpointing **{qc['net_gb'] / lora['net_gb']:.0%}**" if qc else ""))
        for name, a, b in (("QLoRA", q, qc), ("full", f, fc)):
            if a and b:
                act_a = a["peak_gb"] - a["before_step_gb"]
                act_b = b["peak_gb"] - b["before_step_gb"]
                what = ("activation = peak minus the RSS before the step" if name == "QLoRA" else
                        "peak minus the RSS before the step; with checkpointing that peak is the optimizer step "
                        "(all gradients + foreach AdamW's temporaries), not activations")
                lines.append(f"- checkpointing cuts activation memory >= 3x, seq {seq} ({name}; {what}): "
                             f"{act_a:.2f} -> {act_b:.2f} GB = **{act_a / act_b:.1f}x**")
    ratios = [r["planner_now_gb"]["total"] / r["net_gb"] for r in results.get("runs", []) if r.get("tokens")]
    if ratios:
        lines.append(f"- planner within +-25% of the measured net peak: planner / net RSS from {min(ratios):.2f} to "
                     f"{max(ratios):.2f} over the {len(ratios)} measured steps")
    loaded = {r["release"]: r for r in results.get("qlora_loaded", [])}
    if False in loaded and True in loaded:
        a, b = loaded[False], loaded[True]
        lines.append(f"- QLoRA after loading (`--mapping`, RSS after `prepare_model` minus the imports): keeping the "
                     f"checkpoint mapped (before this fix) RSS {a['net_rss_gb']:.2f} GB = anon {a['net_anon_gb']:.2f} "
                     f"+ file-backed {a['net_file_gb']:.2f} GB; releasing it (now) RSS {b['net_rss_gb']:.2f} GB = "
                     f"anon {b['net_anon_gb']:.2f} + file-backed {b['net_file_gb']:.2f} GB")
    lines += ["", *planner_at_7b()]
    ppl = results.get("bf16_base_perplexity")
    if ppl:
        lines += ["", "### bf16 frozen base: held-out perplexity", "",
                  "tiny-llama, LoRA, 40 steps of 8 x 128 tokens of pubmed-sample under bf16 autocast, same seed; "
                  "the only difference is how the frozen base is stored.", "",
                  "| frozen base | held-out ppl before | after | wall s |", "|---|---|---|---|"]
        for name, v in ppl.items():
            lines.append(f"| {name} | {v['initial_ppl']:.2f} | {v['final_ppl']:.2f} | {v['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one")
    ap.add_argument("--loaded", help="internal: [model_dir, release] for --mapping")
    ap.add_argument("--mapping", action="store_true",
                    help="only QLoRA's resident memory after loading, with and without releasing the checkpoint "
                         "mapping (needs --model-dir holding the checkpoint)")
    ap.add_argument("--ppl", action="store_true", help="only the bf16-base perplexity check (tiny-llama)")
    ap.add_argument("--md", action="store_true", help="only print the markdown section from --out's JSON")
    ap.add_argument("--seqs", default="1024,2048")
    ap.add_argument("--size", choices=("0.47b", "0.13b"), default="0.47b")
    ap.add_argument("--only", default="", help="';'-separated config names, run in this order (default: all)")
    ap.add_argument("--model-dir", default="", help="keep the random-weight checkpoint here and reuse it")
    ap.add_argument("--out", default=str(REPO / "experiments" / "MEMORY_ADAPT.json"))
    args = ap.parse_args()
    if args.one:
        res = one(*json.loads(args.one))
        print("RESULT " + json.dumps(res), flush=True)
        return
    if args.loaded:
        print("RESULT " + json.dumps(loaded_state(*json.loads(args.loaded))), flush=True)
        return
    if args.mapping:
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", MALLOC_MMAP_THRESHOLD_="65536",
                   MALLOC_TRIM_THRESHOLD_="131072")
        rows = []
        for release in (False, True):
            out = subprocess.run([sys.executable, __file__, "--loaded", json.dumps([args.model_dir, release])],
                                 capture_output=True, text=True, env=env).stdout
            rows += [json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")]
            print(rows[-1] if rows else out[-500:], flush=True)
        path = Path(args.out)
        old = json.loads(path.read_text()) if path.is_file() else {}
        old["qlora_loaded"] = rows
        path.write_text(json.dumps(old, indent=2) + "\n")
        return
    if args.md:
        print(render_md(json.loads(Path(args.out).read_text())))
        return
    if args.ppl:
        res = bf16_base_perplexity()
        path = Path(args.out)
        old = json.loads(path.read_text()) if path.is_file() else {}
        old["bf16_base_perplexity"] = res
        path.write_text(json.dumps(old, indent=2) + "\n")
        return
    global MODEL
    if args.size == "0.13b":
        MODEL = SMALL
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from domainlm.device import cpu_flags, cpu_name
    from domainlm.sources.tiny import byte_level_tokenizer

    flags = cpu_flags()
    results = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "cpu_flags": flags, "threads": torch.get_num_threads(), "model": MODEL,
               "torch": torch.__version__, "shared_machine": "2 cores and 24 GiB shared by 8 agents, nice -n 10",
               "runs": []}
    out_path = Path(args.out)
    if out_path.is_file():  # keep earlier rows (runs can be done in parts)
        old = json.loads(out_path.read_text())
        results["runs"] = old.get("runs", [])
    with tempfile.TemporaryDirectory(prefix="memory-adapt-") as tmp:
        if args.model_dir:  # reuse a checkpoint saved by an earlier run of the same size (saves minutes)
            tmp = args.model_dir
        if not (Path(tmp) / "model.safetensors").is_file() or json.loads(
                (Path(tmp) / "config.json").read_text())["hidden_size"] != MODEL["hidden_size"]:
            Path(tmp).mkdir(parents=True, exist_ok=True)
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(LlamaConfig(**MODEL))
            model.save_pretrained(tmp)
            byte_level_tokenizer("causal").save_pretrained(tmp)
            del model
            gc.collect()
        with torch.device("meta"):
            n = sum(p.numel() for p in AutoModelForCausalLM.from_config(LlamaConfig(**MODEL)).parameters())
        results["parameters"] = n
        print(f"model: {n / 1e9:.3f}B parameters in {tmp}", flush=True)
        only = [s.strip() for s in args.only.split(";") if s.strip()]
        by_name = {c[0]: c for c in CONFIGS}
        for seq in (int(s) for s in args.seqs.split(",")):
            for name, method, bf16, ckpt in ([by_name[n] for n in only] if only else CONFIGS):
                plan = _planner(method, bf16, ckpt, seq)
                row = {"name": name, "method": method, "bf16": bf16, "gradient_checkpointing": ckpt, "seq": seq,
                       "planner_gb": plan}
                if plan["total"] > RSS_CAP_GB:
                    row["error"] = (f"not run: the planner expects {plan['total']:.1f} GB, above what this shared "
                                    "machine allows")
                else:
                    row.update(_run_child(tmp, name, method, bf16, ckpt, seq))
                results["runs"] = [r for r in results["runs"] if (r["name"], r["seq"]) != (name, seq)] + [row]
                print(json.dumps(row), flush=True)
                out_path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
