"""Peak memory per process: 1 process (what DDP keeps in every process) against 2 processes under FSDP2.

Builds a Llama-architecture model from a config (random weights), prepares the shipped PubMed sample with its
tokenizer at 512 tokens, and runs `domainlm adapt` for a few steps at batch 1 per process, full and LoRA, each in
fresh processes (torchrun for 2). Peak RSS of every process and its parameter + optimizer bytes (counted from
what it holds: shards under FSDP) come from the run's manifest. Writes the section "## Sharding strategy
(issue 14)" of experiments/MEMORY_ADAPT.md (other sections of that file belong to the memory benchmark).

    nice -n 10 .venv/bin/python experiments/memory_strategy.py [--hidden 768 --layers 12]

``--load-once`` measures instead what issue 32 changed: host RSS per process after adapt's set-up under 2-process
FSDP (model loaded, sharded, weights in place, optimizer built; no step), with every process loading the model
(``load_once: false``, the path before) against process 0 loading it once and broadcasting it into the shards.
Writes the section "## Loading under FSDP (issue 32)" of MEMORY_ADAPT.md and the key ``fsdp_load_once`` of
MEMORY_ADAPT.json:

    nice -n 10 .venv/bin/python experiments/memory_strategy.py --load-once --hidden 1024 --layers 24
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "experiments" / "MEMORY_ADAPT.md"
HEADING = "## Sharding strategy (issue 14)"
LOAD_HEADING = "## Loading under FSDP (issue 32)"
RSS_CAP_GB = 9.0  # both processes together; the machine's 24 GiB are shared by several agents: a run above is killed


def build_model(folder: Path, hidden: int, layers: int, vocab: int, dtype: str = "fp32") -> int:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from domainlm.sources.resolution import resolve

    tok = AutoTokenizer.from_pretrained(resolve("tiny-llama").path)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 64 * 64,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                         max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    if dtype == "bf16":
        model = model.to(torch.bfloat16)  # as Hub models ship; adapt loads them in fp32
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def run(args: list[str], nproc: int) -> tuple[dict, float]:
    env = {**os.environ, "DOMAINLM_PROGRESS": "0", "OMP_NUM_THREADS": "1" if nproc > 1 else "2",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)] if nproc > 1
                else [sys.executable])
    t0 = time.perf_counter()
    p = subprocess.run([*launcher, "-m", "domainlm", "adapt", *args], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"adapt failed ({' '.join(args)}):\n{p.stderr[-3000:]}")
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "manifest.json").read_text()), time.perf_counter() - t0


def cpu_flags() -> str:
    from domainlm.device import SIMD_FLAGS, cpu_flags, cpu_name

    present = cpu_flags()
    return f"{cpu_name()}; flags: " + ", ".join(f"{f}={'yes' if f in present else 'no'}" for f in SIMD_FLAGS)


def write_section(text: str, heading: str = HEADING) -> None:
    """Replace (or append) this benchmark's section, leaving the rest of the shared file as it is."""
    body = OUT.read_text() if OUT.is_file() else "# Adapt memory\n"
    start = body.find(heading)
    if start >= 0:
        nxt = body.find("\n## ", start + len(heading))
        body = body[:start] + text + (body[nxt + 1:] if nxt >= 0 else "")
    else:
        body = body.rstrip("\n") + "\n\n" + text
    OUT.write_text(body)


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def load_worker(model: str, corpus: str, out: str, once: bool) -> None:
    """Under torchrun: adapt's own set-up (set_up, load_data, build_model) with strategy fsdp, then this process's
    RSS: after the imports (baseline), peak (VmHWM) and current, written to OUT/rss-RANK.json."""
    import peft  # noqa: F401  - imported before the baseline, as are the model's modules, on both paths
    import torch  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401

    from domainlm.adapt import build
    from domainlm.adapt.config import AdaptConfig
    from domainlm.adapt.parallel import Dist, state_bytes

    dist = Dist()
    base = _status("VmRSS")
    t0 = time.perf_counter()
    cfg = AdaptConfig(model=model, corpus=corpus, out=out, strategy="fsdp", load_once=once, batch_size=1,
                      max_steps=1, bf16="off", eval_every=0, save_every=0, overwrite=True)
    r = build.set_up(cfg, dist)
    data = build.load_data(r)
    tr = build.build_model(r, data)
    dist.barrier()
    sb = state_bytes(tr.model, tr.optimizer)
    (Path(out) / f"rss-{dist.rank}.json").write_text(json.dumps(
        {"rank": dist.rank, "baseline": base, "peak": _status("VmHWM"), "now": _status("VmRSS"),
         "parameters": sb["parameters"], "set_up_s": time.perf_counter() - t0}))
    dist.close()


def load_once_rows(model_dir: Path, corpus: Path, root: Path) -> list[dict]:
    import psutil

    rows = []
    for once in (True, False):
        out = root / f"load-{'once' if once else 'every'}"
        out.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "DOMAINLM_PROGRESS": "0", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "MALLOC_MMAP_THRESHOLD_": "65536"}
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", __file__,
                                 "--load-worker", json.dumps([str(model_dir), str(corpus), str(out), once])],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        parent = psutil.Process(proc.pid)
        killed = None
        while proc.poll() is None:
            try:
                total = sum(c.memory_info().rss for c in parent.children(recursive=True)) / 1e9
            except psutil.NoSuchProcess:
                total = 0.0
            if total > RSS_CAP_GB:
                killed = f"killed above {RSS_CAP_GB:g} GB (both processes) on this shared machine"
                for c in parent.children(recursive=True):
                    c.kill()
                proc.kill()
            time.sleep(0.2)
        _, err = proc.communicate()
        if killed or proc.returncode != 0:
            raise SystemExit(killed or f"load worker failed:\n{err[-3000:]}")
        ranks = [json.loads((out / f"rss-{k}.json").read_text()) for k in (0, 1)]
        rows.append({"load_once": once, "wall_s": time.perf_counter() - t0, "ranks": ranks})
        print(rows[-1], flush=True)
    return rows


def write_load_once(rows: list[dict], n: int, model_bytes: int, a) -> None:
    res = {"date": time.strftime("%Y-%m-%d"), "params": n, "model_bytes_fp32": model_bytes,
           "model": {"hidden": a.hidden, "layers": a.layers, "vocab": a.vocab}, "rows": rows,
           "shared_machine": "2 cores and 24 GiB shared by 8 agents, nice -n 10"}
    js = OUT.with_suffix(".json")
    data = json.loads(js.read_text()) if js.is_file() else {}
    runs = data.setdefault("fsdp_load_once", {})
    runs[f"{a.checkpoint_dtype}_checkpoint"] = res
    js.write_text(json.dumps(data, indent=2) + "\n")
    lines = [LOAD_HEADING, ""]
    for key in ("bf16_checkpoint", "fp32_checkpoint"):
        if key in runs:
            lines += _load_once_table(runs[key], key.split("_")[0])
    write_section("\n".join(lines), LOAD_HEADING)
    print("\n".join(lines))


def _load_once_table(res: dict, dtype: str) -> list[str]:
    gb = 1e9
    n, model_bytes, rows, m = res["params"], res["model_bytes_fp32"], res["rows"], res["model"]
    lines = [f"### Checkpoint stored in {dtype}" + (" (as Hub models ship; adapt loads it in fp32)" if dtype == "bf16"
                                                     else ""), "",
             f"Generated by `nice -n 10 python experiments/memory_strategy.py --load-once --hidden {m['hidden']} "
             f"--layers {m['layers']} --checkpoint-dtype {dtype}` on {res['date']}. A Llama-architecture model built "
             f"from a config (random weights, saved once as {dtype} safetensors): {n / 1e9:.3f}B parameters (hidden "
             f"{m['hidden']}, {m['layers']} layers, vocabulary {m['vocab']}, untied), **{model_bytes / gb:.2f} GB** in "
             "fp32. Two processes under torchrun (gloo, CPU), "
             "`--strategy fsdp`, adapt's own set-up (`build.set_up`, `load_data`, `build_model`: model loaded, "
             "sharded, weights in place, AdamW built; no training step). RSS per process is net of its RSS after "
             "`import torch, transformers, peft` and the Llama modules (the baseline), read from /proc (VmHWM for "
             "the peak, VmRSS after set-up).", "",
             "| loading | process | baseline | peak RSS during set-up (net) | RSS after set-up (net) | parameters held "
             "(its shards) | set-up wall |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        for rk in row["ranks"]:
            lines.append(f"| {'once (process 0 reads, broadcast into shards)' if row['load_once'] else 'every process (before)'} "
                         f"| {rk['rank']} | {rk['baseline'] / gb:.2f} GB | **{(rk['peak'] - rk['baseline']) / gb:.2f} GB** "
                         f"| {(rk['now'] - rk['baseline']) / gb:.2f} GB | {rk['parameters'] / gb:.2f} GB "
                         f"| {rk['set_up_s']:.0f} s |")
    once = next(r for r in rows if r["load_once"])
    every = next(r for r in rows if not r["load_once"])
    peak = {k: sum(rk["peak"] - rk["baseline"] for rk in r["ranks"]) for k, r in (("once", once), ("every", every))}
    r1 = {k: r["ranks"][1]["peak"] - r["ranks"][1]["baseline"] for k, r in (("once", once), ("every", every))}
    lines += ["", f"Process 1's net peak: {r1['every'] / gb:.2f} GB when it loads the model itself, {r1['once'] / gb:.2f} "
              f"GB when it builds on the meta device and receives its shards (**{r1['once'] / model_bytes:.0%} of one "
              f"fp32 copy**, against {r1['every'] / model_bytes:.0%}). Both processes together: {peak['every'] / gb:.2f} "
              f"-> {peak['once'] / gb:.2f} GB of net peaks. With N processes per machine the saving grows with N: "
              "every process but one keeps only its shard (1/N of the model) plus one tensor in flight "
              "(`set_model_state_dict` broadcasts tensor by tensor); process 0 still holds one full copy while it "
              "broadcasts. Set-up times are on a shared 2-core machine (pessimistic). GPU: not measured in this round "
              "(no GPU lent)."]
    if dtype == "fp32":
        lines += ["", "An fp32 checkpoint is loaded without conversion, as views of the memory-mapped file: a process "
                  "that loads it keeps resident only the file pages it touched (its own half, when it copies out its "
                  "shard), and those pages are the machine's one page cache, shared by the processes though counted "
                  "in each one's RSS. So with an fp32 checkpoint every-process loading was already cheaper than one "
                  "copy per process; a bf16 checkpoint (the table above) is converted to fp32 tensors of each "
                  "process's own, which is where one copy per process cost real memory."]
    lines.append("")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--load-once", action="store_true", help="measure FSDP set-up RSS: load once vs every process")
    ap.add_argument("--checkpoint-dtype", choices=["fp32", "bf16"], default="bf16",
                    help="--load-once: how the checkpoint is stored (adapt always loads it in fp32)")
    ap.add_argument("--load-worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.load_worker:
        model, corpus, out, once = json.loads(a.load_worker)
        load_worker(model, corpus, out, once)
        return
    if a.load_once:
        with tempfile.TemporaryDirectory(prefix="memory-load-once-") as tmp:
            root = Path(tmp)
            n = build_model(root / "model", a.hidden, a.layers, a.vocab, a.checkpoint_dtype)
            from domainlm.corpora.run import prepare_card

            prepare_card("pubmed-sample", str(root / "model"), root / "corpus", block_size=a.seq)
            rows = load_once_rows(root / "model", root / "corpus", root)
        write_load_once(rows, n, 4 * n, a)
        return
    gib = 1 << 30
    with tempfile.TemporaryDirectory(prefix="memory-strategy-") as tmp:
        root = Path(tmp)
        n = build_model(root / "model", a.hidden, a.layers, a.vocab)
        from domainlm.corpora.run import prepare_card

        prepare_card("pubmed-sample", str(root / "model"), root / "corpus", block_size=a.seq)
        rows = []
        for method in ("full", "lora"):
            for nproc, strategy in ((1, "ddp"), (2, "fsdp")):
                out = root / f"{method}-{nproc}"
                args = ["--model", str(root / "model"), "--corpus", str(root / "corpus"), "--out", str(out),
                        "--method", method, "--strategy", strategy, "--batch-size", "1", "--max-steps",
                        str(a.steps), "--eval-sequences", "2", "--eval-every", "0", "--save-every", "0",
                        "--bf16", "off"]
                m, wall = run(args, nproc)
                peaks = [p["peak_rss_bytes"] for p in m["peak_memory"]]
                train_peaks = [p.get("peak_rss_bytes_training", 0) for p in m["peak_memory"]]
                rows.append((method, nproc, m["strategy"], max(train_peaks), max(peaks), m["state_bytes_per_process"],
                             wall))
                print(rows[-1], flush=True)
    lines = [HEADING, "",
             f"Peak resident memory per process for a Llama-architecture model built from a config (random weights): "
             f"{n / 1e6:.0f}M parameters (hidden {a.hidden}, {a.layers} layers, vocabulary {a.vocab}), sequence "
             f"{a.seq}, batch 1 per process, {a.steps} optimizer step(s), fp32, AdamW, "
             "`experiments/memory_strategy.py`. 1 process is what DDP keeps in every process; FSDP runs 2 processes "
             "under torchrun (gloo). Parameter and optimizer bytes are counted from what each process holds.",
             "",
             f"Smaller than the issue's 0.5B: on this machine (2 cores shared with other jobs, 24 GiB RAM shared) a "
             f"0.5B step at 512 tokens takes minutes; the ratios do not depend on the size. Timings are pessimistic "
             f"(shared machine, run under nice). CPU: {cpu_flags()}.", "",
             "| method | processes | strategy | peak RSS / process, training | peak RSS / process, whole run "
             "| parameters / process | optimizer / process | wall |", "|---|---|---|---|---|---|---|---|"]
    for method, nproc, strategy, train_peak, peak, sb, wall in rows:
        lines.append(f"| {method} | {nproc} | {strategy} | {train_peak / gib:.2f} GiB | {peak / gib:.2f} GiB "
                     f"| {sb['parameters'] / gib:.3f} GiB | {sb['optimizer'] / gib:.3f} GiB | {wall:.0f} s |")
    lines += ["", "'training' is the peak at the end of the training loop; 'whole run' adds the final evaluation and "
              "the gathering of the full model into process 0 for `final/`. Both include the Python/torch runtime, "
              "the full model each process loads before sharding it (no meta-device initialisation yet) and "
              "activations, so at this size RSS falls by much less than the sharded state, which halves. "
              "GPU: not measured in this round.", ""]
    write_section("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
