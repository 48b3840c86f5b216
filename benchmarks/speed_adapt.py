"""Speed, side by side: domainlm adapt vs a Hugging Face Trainer set up like run_mlm.py / run_clm.py.

Both get the same model, packed blocks, sequence length, batch, learning rate and number of steps,
with bf16 on when the CPU runs it fast. Each configuration runs in its own process so peak RSS is
its own. Prints a table and writes benchmarks/SPEED_ADAPT.md (and .json).

    python benchmarks/speed_adapt.py                 # all cases
    python benchmarks/speed_adapt.py --cases tiny-llama --steps 10
"""

from __future__ import annotations

import argparse
import json
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
}


def _corpus(model: str, block: int, root: Path) -> Path:
    from domainlm.corpora.cards import prepare_card

    out = root / f"corpus-{model}-{block}"
    prepare_card("pubmed-sample", model, out, block_size=block)
    return out


def worker_ours(case: str, steps: int, root: Path) -> dict:
    from domainlm.adapt import adapt

    model, objective, method, block, batch = CASES[case]
    corpus = _corpus(model, block, root)
    os.environ["DOMAINLM_PROGRESS"] = "0"
    m = adapt(model=model, corpus=str(corpus), out=str(root / f"run-{case}"), objective=objective, method=method,
              batch_size=batch, max_steps=steps, eval_every=0, eval_batches=2, save_every=0, lr=2e-4,
              warmup_ratio=0.1, overwrite=True, log_every=1)
    rows = [json.loads(x) for x in (root / f"run-{case}" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["type"] == "train"]
    # steady-state throughput: skip the first step (allocations, warm-up)
    t_steps = [r for r in train if r["step"] > 1]
    return {"tokens_per_s": m["tokens_per_s"], "mfu": m["mfu"], "final_loss": train[-1]["loss"],
            "steady_tokens_per_s": t_steps[-1]["tokens_per_s"] if t_steps else None, "bf16": m["bf16"],
            "flops_per_token": m["flops"]["training_per_token"]}


def worker_trainer(case: str, steps: int, root: Path) -> dict:
    """The baseline: transformers Trainer configured as the run_mlm/run_clm examples do."""
    import torch
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from domainlm.corpora import load_prepared
    from domainlm.flops import bf16_is_fast, measure_matmul_peak, mfu, model_flops
    from domainlm.sources import load_model, load_tokenizer

    model_name, objective, method, block, batch = CASES[case]
    corpus = _corpus(model_name, block, root)
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
    bf16 = bf16_is_fast()
    args = TrainingArguments(output_dir=str(root / f"trainer-{case}"), per_device_train_batch_size=batch,
                             max_steps=steps, learning_rate=2e-4, warmup_ratio=0.1, lr_scheduler_type="cosine",
                             logging_steps=1, save_strategy="no", report_to=[], bf16=bf16, use_cpu=True,
                             dataloader_num_workers=0, seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collator)
    t0 = time.perf_counter()
    out = trainer.train()
    wall = time.perf_counter() - t0
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    tps = steps * batch * block / wall
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    n_tr = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    fl = model_flops(inner, block, trainable_fraction=n_tr / n_all if method == "lora" else None)
    peak = measure_matmul_peak("bf16" if bf16 else "fp32")
    del out
    torch.set_num_threads(torch.get_num_threads())
    return {"tokens_per_s": tps, "mfu": mfu(tps, fl.training_flops_per_token, peak), "final_loss": losses[-1],
            "bf16": bf16, "flops_per_token": fl.training_flops_per_token}


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
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--root", default=None)
    ap.add_argument("--worker", choices=["ours", "trainer"])
    args = ap.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="domainlm-speed-"))
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
    lines = ["| case | steps | Trainer tok/s | domainlm tok/s | ratio | Trainer MFU | domainlm MFU | Trainer final loss "
             "| domainlm final loss | Trainer peak RSS | domainlm peak RSS |", "|" + "---|" * 11]
    for r in rows:
        b, o = r["trainer"], r["domainlm"]
        lines.append(f"| {r['case']} | {r['steps']} | {b['tokens_per_s']:.0f} | {o['tokens_per_s']:.0f} | "
                     f"{r['speedup']:.2f}x | {b['mfu']:.1%} | {o['mfu']:.1%} | {b['final_loss']:.3f} | "
                     f"{o['final_loss']:.3f} | {b['peak_rss_gb']:.2f} GB | {o['peak_rss_gb']:.2f} GB |")
    table = "\n".join(lines)
    print(table)
    (HERE / "SPEED_ADAPT.json").write_text(json.dumps(rows, indent=2))
    print(f"\nwrote {HERE / 'SPEED_ADAPT.json'}")


if __name__ == "__main__":
    main()
