"""Speed, side by side: domainlm adapt vs a Hugging Face Trainer set up like run_mlm.py / run_clm.py.

Both get the same model, packed blocks, sequence length, batch, learning rate and number of steps,
with bf16 on when the CPU runs it fast. Each configuration runs in its own process so peak RSS is
its own. Prints a table and writes experiments/SPEED_ADAPT.md (and .json).

    python experiments/speed_adapt.py                 # all cases
    python experiments/speed_adapt.py --cases tiny-llama --steps 10
    python experiments/speed_adapt.py --compile      # torch.compile on both sides (ours per block, Trainer torch_compile)
    python experiments/speed_adapt.py --variants '{"full-logits": {"chunked_head": false}}'   # extra rows of ours
    SPEED_OURS_KW='{"chunked_head": false}' python experiments/speed_adapt.py ...   # extra adapt options for ours
    python experiments/speed_adapt.py --curves ...   # every step's loss on both sides, plotted beside the report

The GPU comparison of issue 32 (ours with varlen attention + the fused head + per-block compile against the Trainer
at its best, both cases in one call, loss curves): the command is in experiments/SPEED_ADAPT_GPU.md.

The Trainer runs with its best settings for the machine: bf16 when fast, SDPA attention, fused AdamW
(``adamw_torch_fused``), Liger Kernel (``use_liger_kernel``) when it is installed and, with ``--compile``,
``torch_compile``. Neither side synchronises with the GPU
between the first and the last step (both log only there), so GPU queueing is not broken by the measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = {
    # name: (model, objective, method, block, batch)
    "minilm-mlm": ("minilm", "masked", "full", 128, 16),
    "smollm2-lora": ("smollm2", "causal", "lora", 512, 4),
    "tiny-llama": ("tiny-llama", "causal", "full", 256, 16),
    # GPU case: SmolLM2-135M's architecture and tokenizer with fresh weights (folder given by --arch-from),
    # full training at sequence length 1024. Not in the default CPU run (minutes per step there).
    "smollm2-arch-full": ("@smollm2-arch", "causal", "full", 1024, 16),
    # GPU case: a ~1.1B Llama (16 layers, hidden 2048, GQA 32/8 heads, SwiGLU 8192, tied embeddings; the shape of
    # TinyLlama/Llama-3.2-1B) with SmolLM2's tokenizer, built from a config with fresh weights, at 2048 tokens.
    "llama-1b": ("@llama-1b", "causal", "full", 2048, 8),
}
LLAMA_1B = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                intermediate_size=8192, max_position_embeddings=4096, rope_theta=500000.0, tie_word_embeddings=True)
DEFAULT_CASES = "minilm-mlm,smollm2-lora,tiny-llama"


def _model(name: str, root: Path) -> str:
    """A model name, or for '@NAME' a folder of fresh weights built from ARCH_FROM's config and tokenizer."""
    if not name.startswith("@"):
        return name
    out = root / name[1:]
    if not (out / "model.safetensors").is_file():
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        src = os.environ["ARCH_FROM"]
        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(src)
        if name == "@llama-1b":
            from transformers import LlamaConfig

            tok = AutoTokenizer.from_pretrained(src)
            config = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                 **LLAMA_1B)
        model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return str(out)


def _corpus(model: str, block: int, root: Path) -> Path:
    from domainlm.corpora.run import prepare_card

    out = root / f"corpus-{model.lstrip('@')}-{block}"
    if (out / "manifest.json").is_file():
        # prepared earlier (on this machine, or here and carried to a GPU machine without the corpus engine)
        return out
    prepare_card("pubmed-sample", _model(model, root), out, block_size=block)
    return out


def worker_ours(case: str, steps: int, root: Path, compile: bool = False, variant: str = "{}",
                curves: bool = False) -> dict:
    from domainlm.adapt import adapt

    model, objective, method, block, batch = CASES[case]
    corpus = _corpus(model, block, root)
    model = _model(model, root)
    os.environ["DOMAINLM_PROGRESS"] = "0"
    # log_every=steps: records at step 1 and the last step only (each record reads the loss, a GPU sync)
    kw = {"compile": compile, **json.loads(os.environ.get("SPEED_OURS_KW", "{}")), **json.loads(variant)}
    m = adapt(model=model, corpus=str(corpus), out=str(root / f"run-{case}"), objective=objective, method=method,
              batch_size=batch, max_steps=steps, eval_every=0, eval_batches=2, save_every=0, lr=2e-4,
              warmup_ratio=0.1, overwrite=True, log_every=1 if curves else steps, **kw)
    rows = [json.loads(x) for x in (root / f"run-{case}" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["type"] == "train"]
    # Steady state, as for the Trainer: from the end of step 1 (allocations, warm-up) to the end of the last.
    # Each record's tokens_per_s is cumulative since the loop started, so its time is tokens / tokens_per_s.
    first, last = train[0], train[-1]
    t1, tn = first["tokens"] / first["tokens_per_s"], last["tokens"] / last["tokens_per_s"]
    steady = (last["tokens"] - first["tokens"]) / (tn - t1)
    peak = m["peak_flops"]
    import torch

    return {"tokens_per_s": steady, "whole_run_tokens_per_s": m["tokens_per_s"],
            "mfu": steady * m["flops"]["training_per_token"] / peak if peak else None,
            "final_loss": last["loss"], "bf16": m["bf16"], "flops_per_token": m["flops"]["training_per_token"],
            "peak_flops": peak, "compile_s": (m.get("memory_features") or {}).get("compile_s"),
            "attention": (m.get("memory_features") or {}).get("attention"), "settings": kw,
            "losses": [r["loss"] for r in train] if curves else None,
            "gpu_peak_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}


def _liger_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


def worker_trainer(case: str, steps: int, root: Path, compile: bool = False, curves: bool = False) -> dict:
    """The baseline: transformers Trainer configured as the run_mlm/run_clm examples do."""
    import torch
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    from domainlm.corpora import load_prepared
    from domainlm.device import bf16_is_fast
    from domainlm.flops import measure_matmul_peak, mfu, model_flops
    from domainlm.sources.load import load_model, load_tokenizer

    model_name, objective, method, block, batch = CASES[case]
    corpus = _corpus(model_name, block, root)
    model_name = _model(model_name, root)
    cuda = torch.cuda.is_available()
    tok = load_tokenizer(model_name)
    model, _ = load_model(model_name, "causal" if objective == "causal" else "masked", attn_implementation="sdpa")
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"))
    ds = load_prepared(corpus, "train").to_dataset().remove_columns(["doc_ids"])  # the Trainer wants a Dataset
    if objective == "causal":
        ds = ds.map(lambda b: {"labels": b["input_ids"]}, batched=True)  # run_clm: labels = input_ids
        collator = None
    else:
        collator = DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=0.15)
    bf16 = torch.cuda.is_bf16_supported() if cuda else bf16_is_fast()
    args = TrainingArguments(output_dir=str(root / f"trainer-{case}"), per_device_train_batch_size=batch,
                             max_steps=steps, learning_rate=2e-4, warmup_steps=math.ceil(0.1 * steps), lr_scheduler_type="cosine",
                             logging_steps=1 if curves else steps, save_strategy="no", report_to=[], bf16=bf16,
                             use_cpu=not cuda, use_liger_kernel=cuda and _liger_installed(),
                             optim="adamw_torch_fused", torch_compile=compile, dataloader_num_workers=0, seed=0,
                             disable_tqdm=True, dataloader_pin_memory=cuda)

    class StepTimes(TrainerCallback):
        """Times the end of step 1 and of the last step; waits for the GPU only there, as ours does."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (1, steps):
                if cuda:
                    torch.cuda.synchronize()
                self.times.append(time.perf_counter())

    timer = StepTimes()
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collator, callbacks=[timer])
    t0 = time.perf_counter()
    out = trainer.train()
    wall = time.perf_counter() - t0
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    # steady state: from the end of step 1 to the end of the last step (the same window as ours)
    tps = (steps - 1) * batch * block / (timer.times[-1] - timer.times[0])
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    n_tr = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    fl = model_flops(inner, block, trainable_fraction=n_tr / n_all if method == "lora" else None)
    peak = measure_matmul_peak("bf16" if bf16 else "fp32", device="cuda" if cuda else "cpu")
    del out
    torch.set_num_threads(torch.get_num_threads())
    return {"tokens_per_s": tps, "whole_run_tokens_per_s": steps * batch * block / wall,
            "mfu": mfu(tps, fl.training_flops_per_token, peak), "final_loss": losses[-1],
            "bf16": bf16, "flops_per_token": fl.training_flops_per_token, "peak_flops": peak,
            "settings": {"optim": "adamw_torch_fused", "attn_implementation": "sdpa", "torch_compile": compile,
                         "use_liger_kernel": cuda and _liger_installed()},
            "losses": losses if curves else None,
            "gpu_peak_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def run_case(case: str, impl: str, steps: int, root: Path, compile: bool = False, variant: str = "{}",
             timeout: float | None = None, curves: bool = False) -> dict:
    """One side of one case in its own process; a failure (or a timeout) is returned as a row, not raised."""
    cmd = [sys.executable, __file__, "--worker", impl, "--cases", case, "--steps", str(steps), "--root", str(root),
           "--variant-kw", variant] + (["--compile"] if compile else []) + (["--curves"] if curves else [])
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"failed": f"timed out after {timeout:.0f} s", "wall_s": time.perf_counter() - t0}
    if proc.returncode != 0:
        print(f"{impl} {case} failed:\n{proc.stderr[-3000:]}", file=sys.stderr, flush=True)
        return {"failed": proc.stderr.strip().splitlines()[-1][-300:] if proc.stderr.strip() else f"exit {proc.returncode}",
                "wall_s": time.perf_counter() - t0}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t0
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", default=DEFAULT_CASES)
    ap.add_argument("--report", default=str(HERE / "SPEED_ADAPT.md"), help="where to write the table (.md, .json beside)")
    ap.add_argument("--arch-from", default=None, help="folder with config.json + tokenizer for '@' cases")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--root", default=None)
    ap.add_argument("--compile", action="store_true", help="torch.compile on both sides")
    ap.add_argument("--variants", default='{"domainlm": {}}',
                    help="JSON {label: adapt options}: one row of ours per label, each beside the same Trainer run")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per process (a timed-out side is a row)")
    ap.add_argument("--datasheet-peak", type=float, default=None,
                    help="the accelerator's dense bf16 peak in FLOP/s (H100/H200 SXM: 989e12), for a second MFU")
    ap.add_argument("--curves", action="store_true", help="log every step's loss on both sides (a GPU sync per step "
                    "on both) and plot the curves beside the report")
    ap.add_argument("--worker", choices=["ours", "trainer"])
    ap.add_argument("--variant-kw", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="domainlm-speed-"))
    if args.arch_from:
        os.environ["ARCH_FROM"] = str(Path(args.arch_from).resolve())
    if args.worker:
        if args.worker == "ours":
            res = worker_ours(args.cases, args.steps, root, args.compile, args.variant_kw, args.curves)
        else:
            res = worker_trainer(args.cases, args.steps, root, args.compile, args.curves)
        res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        print(json.dumps(res))
        return
    variants = json.loads(args.variants)
    rows = []
    for case in args.cases.split(","):
        # the corpus is prepared once, outside the timed region of both workers
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(HERE)!r}); import speed_adapt as s; "
                        f"s._corpus({CASES[case][0]!r}, {CASES[case][3]}, __import__('pathlib').Path({str(root)!r}))"],
                       check=True, capture_output=True)
        base = run_case(case, "trainer", args.steps, root, args.compile, timeout=args.timeout, curves=args.curves)
        for label, kw in variants.items():
            ours = run_case(case, "ours", args.steps, root, args.compile, json.dumps(kw), timeout=args.timeout,
                            curves=args.curves)
            ok = "failed" not in base and "failed" not in ours
            rows.append({"case": case, "variant": label, "steps": args.steps, "compile": args.compile,
                         "trainer": base, "domainlm": ours,
                         "speedup": ours["tokens_per_s"] / base["tokens_per_s"] if ok else None})
            print(f"{case} [{label}]: trainer {base.get('tokens_per_s', base.get('failed'))} tok/s, "
                  f"domainlm {ours.get('tokens_per_s', ours.get('failed'))} tok/s"
                  + (f" ({rows[-1]['speedup']:.2f}x)" if ok else ""), flush=True)
            write_report(rows, args)  # after every row: a run cut short keeps what it measured


def _fmt(side: dict, key: str, spec: str, unit: str = "") -> str:
    v = side.get(key)
    return "-" if v is None else f"{v:{spec}}{unit}"


def write_report(rows: list[dict], args) -> None:
    import torch

    from domainlm.device import cpu_flags, cpu_name

    cuda = torch.cuda.is_available()
    dpk = args.datasheet_peak
    head = ["case", "model, objective, method", "seq len x batch", "ours: variant", "Trainer tok/s", "domainlm tok/s",
            "ratio", "Trainer MFU", "domainlm MFU"] + (["Trainer MFU (datasheet)", "domainlm MFU (datasheet)"] if dpk else []) + [
            "Trainer final loss", "domainlm final loss", "Trainer peak " + ("GPU mem" if cuda else "RSS"),
            "domainlm peak " + ("GPU mem" if cuda else "RSS"), "domainlm compile s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    mem = "gpu_peak_gb" if cuda else "peak_rss_gb"
    failures = []
    for r in rows:
        b, o = r["trainer"], r["domainlm"]
        model, objective, method, block, batch = CASES[r["case"]]
        for who, side in (("Trainer", b), (f"domainlm [{r['variant']}]", o)):
            if "failed" in side:
                failures.append(f"- {r['case']}, {who}: failed: `{side['failed']}`")
        cells = [r["case"], f"{model}, {objective}, {method}", f"{block} x {batch}",
                 f"{r['variant']} `{json.dumps(o.get('settings', {}))}`" + (f", {o['attention']}" if o.get("attention") else "")
                 if o.get("settings") else r["variant"],
                 _fmt(b, "tokens_per_s", ".0f"), _fmt(o, "tokens_per_s", ".0f"),
                 f"**{r['speedup']:.2f}x**" if r.get("speedup") else "-", _fmt(b, "mfu", ".1%"), _fmt(o, "mfu", ".1%")]
        if dpk:
            cells += [f"{s['tokens_per_s'] * s['flops_per_token'] / dpk:.1%}" if "tokens_per_s" in s else "-" for s in (b, o)]
        cells += [_fmt(b, "final_loss", ".3f"), _fmt(o, "final_loss", ".3f"), _fmt(b, mem, ".2f", " GB"),
                  _fmt(o, mem, ".2f", " GB"), _fmt(o, "compile_s", ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines + ([""] + failures if failures else []))
    print(table)
    ok = [r for r in rows if "failed" not in r["domainlm"]]
    peak = ok[0]["domainlm"].get("peak_flops") if ok else None
    bf16 = ok[0]["domainlm"].get("bf16") if ok else None
    cmd = ("python experiments/speed_adapt.py" + (f" --cases {args.cases}" if args.cases != DEFAULT_CASES else "")
           + (f" --steps {args.steps}" if args.steps != 12 else "") + (" --compile" if args.compile else "")
           + (f" --variants '{args.variants}'" if args.variants != '{"domainlm": {}}' else "")
           + (" --curves" if args.curves else ""))
    md = [
        "# Adapt speed: domainlm vs a Hugging Face Trainer (run_mlm / run_clm set-up)",
        "",
        f"Generated by `{cmd}` on " + time.strftime("%Y-%m-%d") + "; both sides in the same run, each side in its own "
        "process.",
        "",
        (f"Machine: {torch.cuda.get_device_name()}, torch {torch.__version__}. bf16 autocast on for both "
         "(fp32 master weights)." if cuda else
         f"Machine: {cpu_name()}, {os.cpu_count()} cores, CPU flags: {' '.join(cpu_flags()) or 'unknown'}, torch "
         f"{torch.__version__}. bf16 autocast: {'on' if bf16 else 'off'} for both (chosen by "
         "`domainlm.device.bf16_is_fast`, which times bf16 against fp32 matmuls; on an AVX2-only CPU bf16 has no fast "
         "path, so both run fp32).")
        + " MFU is against the matmul peak measured at start-up"
        + (f" ({peak / 1e12:.3g} TFLOP/s)" if peak else "")
        + (f" and, in the datasheet columns, against the dense bf16 peak of {dpk / 1e12:.0f} TFLOP/s" if dpk else "")
        + "; FLOPs per token counted as 6N plus attention (LoRA: frozen weights cost 4N, trainable 6N).",
        "",
        "Trainer settings: bf16 when fast, `attn_implementation='sdpa'`, `optim='adamw_torch_fused'`"
        + (", `torch_compile=True`" if args.compile else "") + ", run_clm/run_mlm data (labels = input_ids; "
        "documents attend across their boundaries in a packed block, which ours masks). Ours: `domainlm adapt`"
        + (" with `compile: true` (per transformer block)" if args.compile else "") + " plus the variant's options.",
        "",
        "tokens/s is steady state: from the end of step 1 to the end of the last step, for both, the GPU "
        "synchronised only at those two points; our compile time is subtracted (and shown), the Trainer's compile "
        "happens inside step 1. Same model, packed blocks of the same prepared corpus (pubmed-sample), sequence "
        "length, batch, learning rate, schedule and number of steps. Loss is the last step's training loss (one "
        "batch, so noisy).",
        "",
        table,
        "",
    ]
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    if plot_losses(rows, report.with_suffix(".png")):
        md += [f"Loss per step, both sides: `{report.with_suffix('.png').name}`.", ""]
    report.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    report.write_text("\n".join(md))
    print(f"\nwrote {report} and {report.with_suffix('.json').name}")


def plot_losses(rows: list[dict], out: Path) -> bool:
    """Every step's training loss of the Trainer and of each variant of ours, one panel per case (``--curves``)."""
    cases = [c for c in dict.fromkeys(r["case"] for r in rows)
             if any((r["trainer"].get("losses") or r["domainlm"].get("losses")) for r in rows if r["case"] == c)]
    if not cases:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cases), figsize=(6 * len(cases), 4), squeeze=False)
    for ax, case in zip(axes[0], cases, strict=True):
        mine = [r for r in rows if r["case"] == case]
        if mine[0]["trainer"].get("losses"):
            ys = mine[0]["trainer"]["losses"]
            ax.plot(range(1, len(ys) + 1), ys, label="Trainer (documents attend across)", color="black")
        for r in mine:
            if r["domainlm"].get("losses"):
                ys = r["domainlm"]["losses"]
                ax.plot(range(1, len(ys) + 1), ys, label=f"domainlm [{r['variant']}]")
        model, _, _, block, batch = CASES[case]
        ax.set(title=f"{case} ({block} x {batch})", xlabel="optimizer step", ylabel="training loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


if __name__ == "__main__":
    main()
