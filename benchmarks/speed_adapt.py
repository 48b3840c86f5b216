"""Speed, side by side: domainlm adapt vs a Hugging Face Trainer set up like run_mlm.py / run_clm.py.

Both get the same model, packed blocks, sequence length, batch, learning rate and number of steps,
with bf16 on when the CPU runs it fast. Each configuration runs in its own process so peak RSS is
its own. Prints a table and writes benchmarks/SPEED_ADAPT.md (and .json).

    python benchmarks/speed_adapt.py                 # all cases
    python benchmarks/speed_adapt.py --cases tiny-llama --steps 10
    SPEED_OURS_KW='{"chunked_head": false}' python benchmarks/speed_adapt.py ...   # extra adapt options for ours
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
}
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
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src))
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return str(out)


def _corpus(model: str, block: int, root: Path) -> Path:
    from domainlm.corpora.prepare import prepare_card

    out = root / f"corpus-{model.lstrip('@')}-{block}"
    prepare_card("pubmed-sample", _model(model, root), out, block_size=block)
    return out


def worker_ours(case: str, steps: int, root: Path) -> dict:
    from domainlm.adapt import adapt

    model, objective, method, block, batch = CASES[case]
    corpus = _corpus(model, block, root)
    model = _model(model, root)
    os.environ["DOMAINLM_PROGRESS"] = "0"
    m = adapt(model=model, corpus=str(corpus), out=str(root / f"run-{case}"), objective=objective, method=method,
              batch_size=batch, max_steps=steps, eval_every=0, eval_batches=2, save_every=0, lr=2e-4,
              warmup_ratio=0.1, overwrite=True, log_every=1, **json.loads(os.environ.get("SPEED_OURS_KW", "{}")))
    rows = [json.loads(x) for x in (root / f"run-{case}" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["type"] == "train"]
    # Steady state, as for the Trainer: from the end of step 1 (allocations, warm-up) to the end of the last.
    # Each record's tokens_per_s is cumulative since the loop started, so its time is tokens / tokens_per_s.
    first, last = train[0], train[-1]
    t1, tn = first["tokens"] / first["tokens_per_s"], last["tokens"] / last["tokens_per_s"]
    steady = (last["tokens"] - first["tokens"]) / (tn - t1)
    peak = m["peak_flops"]
    return {"tokens_per_s": steady, "whole_run_tokens_per_s": m["tokens_per_s"],
            "mfu": steady * m["flops"]["training_per_token"] / peak if peak else None,
            "final_loss": last["loss"], "bf16": m["bf16"], "flops_per_token": m["flops"]["training_per_token"],
            "peak_flops": peak}


def worker_trainer(case: str, steps: int, root: Path) -> dict:
    """The baseline: transformers Trainer configured as the run_mlm/run_clm examples do."""
    import torch
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    from domainlm.corpora import load_prepared
    from domainlm.flops import bf16_is_fast, measure_matmul_peak, mfu, model_flops
    from domainlm.sources import load_model, load_tokenizer

    model_name, objective, method, block, batch = CASES[case]
    corpus = _corpus(model_name, block, root)
    model_name = _model(model_name, root)
    cuda = torch.cuda.is_available()
    tok = load_tokenizer(model_name)
    model, _ = load_model(model_name, "causal" if objective == "causal" else "masked")
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"))
    ds = load_prepared(corpus, "train").remove_columns(["doc_ids"])
    if objective == "causal":
        ds = ds.map(lambda b: {"labels": b["input_ids"]}, batched=True)  # run_clm: labels = input_ids
        collator = None
    else:
        collator = DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=0.15)
    bf16 = torch.cuda.is_bf16_supported() if cuda else bf16_is_fast()
    args = TrainingArguments(output_dir=str(root / f"trainer-{case}"), per_device_train_batch_size=batch,
                             max_steps=steps, learning_rate=2e-4, warmup_steps=math.ceil(0.1 * steps), lr_scheduler_type="cosine",
                             logging_steps=1, save_strategy="no", report_to=[], bf16=bf16, use_cpu=not cuda,
                             dataloader_num_workers=0, seed=0, disable_tqdm=True)
    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())

    timer = StepTimes()
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collator, callbacks=[timer])
    t0 = time.perf_counter()
    out = trainer.train()
    wall = time.perf_counter() - t0
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    # steady state: from the end of step 1 to the end of the last step (the same window as ours)
    tps = (len(timer.times) - 1) * batch * block / (timer.times[-1] - timer.times[0])
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    n_tr = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    fl = model_flops(inner, block, trainable_fraction=n_tr / n_all if method == "lora" else None)
    peak = measure_matmul_peak("bf16" if bf16 else "fp32", device="cuda" if cuda else "cpu")
    del out
    torch.set_num_threads(torch.get_num_threads())
    return {"tokens_per_s": tps, "whole_run_tokens_per_s": steps * batch * block / wall,
            "mfu": mfu(tps, fl.training_flops_per_token, peak), "final_loss": losses[-1],
            "bf16": bf16, "flops_per_token": fl.training_flops_per_token, "peak_flops": peak}


def run_case(case: str, impl: str, steps: int, root: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--cases", case, "--steps", str(steps), "--root", str(root)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{impl} {case} failed:\n{proc.stderr[-3000:]}")
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
    ap.add_argument("--worker", choices=["ours", "trainer"])
    args = ap.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="domainlm-speed-"))
    if args.arch_from:
        os.environ["ARCH_FROM"] = str(Path(args.arch_from).resolve())
    if args.worker:
        fn = worker_ours if args.worker == "ours" else worker_trainer
        res = fn(args.cases, args.steps, root)
        res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        print(json.dumps(res))
        return
    rows = []
    for case in args.cases.split(","):
        # the corpus is prepared once, outside the timed region of both workers
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(HERE)!r}); import speed_adapt as s; "
                        f"s._corpus({CASES[case][0]!r}, {CASES[case][3]}, __import__('pathlib').Path({str(root)!r}))"],
                       check=True, capture_output=True)
        base = run_case(case, "trainer", args.steps, root)
        ours = run_case(case, "ours", args.steps, root)
        rows.append({"case": case, "steps": args.steps, "trainer": base, "domainlm": ours,
                     "speedup": ours["tokens_per_s"] / base["tokens_per_s"]})
        print(f"{case}: trainer {base['tokens_per_s']:.0f} tok/s, domainlm {ours['tokens_per_s']:.0f} tok/s "
              f"({rows[-1]['speedup']:.2f}x)", flush=True)
    write_report(rows, args)


def write_report(rows: list[dict], args) -> None:
    import torch

    from domainlm.flops import cpu_name

    cpu = cpu_name()
    lines = ["| case | model, objective, method | seq len x batch | Trainer tok/s | domainlm tok/s | ratio | "
             "Trainer MFU | domainlm MFU | Trainer final loss | domainlm final loss | Trainer peak RSS | "
             "domainlm peak RSS |", "|" + "---|" * 12]
    for r in rows:
        b, o = r["trainer"], r["domainlm"]
        model, objective, method, block, batch = CASES[r["case"]]
        lines.append(f"| {r['case']} | {model}, {objective}, {method} | {block} x {batch} | {b['tokens_per_s']:.0f} | "
                     f"{o['tokens_per_s']:.0f} | **{r['speedup']:.2f}x** | {b['mfu']:.1%} | {o['mfu']:.1%} | "
                     f"{b['final_loss']:.3f} | {o['final_loss']:.3f} | {b['peak_rss_gb']:.2f} GB | "
                     f"{o['peak_rss_gb']:.2f} GB |")
    table = "\n".join(lines)
    print(table)
    peak = rows[0]["domainlm"].get("peak_flops") if rows else None
    bf16 = rows[0]["domainlm"].get("bf16") if rows else None
    md = [
        "# Adapt speed: domainlm vs a Hugging Face Trainer (run_mlm / run_clm set-up)",
        "",
        "Generated by `python benchmarks/speed_adapt.py"
        + (f" --cases {args.cases}" if args.cases != DEFAULT_CASES else "")
        + (f" --steps {args.steps}" if args.steps != 12 else "") + "` on "
        + time.strftime("%Y-%m-%d") + "; both sides in the same run, each case in its own process.",
        "",
        (f"Machine: {torch.cuda.get_device_name()}, torch {torch.__version__}. bf16 autocast on for both "
         "(fp32 master weights)." if torch.cuda.is_available() else
         f"Machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}. bf16 autocast: "
         f"{'on' if bf16 else 'off'} for both (chosen by `domainlm.flops.bf16_is_fast`, which times bf16 "
         "against fp32 matmuls; on an AVX2-only CPU bf16 has no fast path, so both run fp32).")
        + " MFU is against the matmul peak measured at start-up"
        + (f" ({peak / 1e12:.3g} TFLOP/s)" if peak else "")
        + ", FLOPs per token counted as 6N plus attention (LoRA: frozen weights cost 4N, trainable 6N).",
        "",
        "tokens/s is steady state: from the end of step 1 to the end of the last step, for both. "
        "Same model, packed blocks of the same prepared corpus (pubmed-sample), sequence length, batch, learning rate, "
        "schedule and number of steps. Loss is the last step's training loss (one batch, so noisy).",
        "",
        table,
        "",
    ]
    report = Path(args.report)
    report.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    report.write_text("\n".join(md))
    print(f"\nwrote {report} and {report.with_suffix('.json').name}")


if __name__ == "__main__":
    main()
