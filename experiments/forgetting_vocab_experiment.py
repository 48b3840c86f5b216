"""Replay and vocabulary extension against forgetting: four ways to adapt SmolLM2-135M to PubMed.

Arms, all on the shipped PubMed sample (corpus card ``pubmed-sample``), with the same training-token
budget (steps x batch x block), the same seed and the same data order:

  a  LoRA, no replay
  b  LoRA with replay of general English (corpus card ``general-english-sample``, adapt's default
     fraction for text, 5%)
  c  LoRA + vocabulary extension (``domainlm vocab extend``) + trainable embeddings, no replay
  d  full training, no replay (lr 5e-5, the usual rate for full training of a pretrained 100M+ model)

Every model (the base, the extended base before training, and each arm) is scored on the held-out
PubMed abstracts (``pubmed_heldout_sample.xml``) and held-out general English
(``general_english_heldout.jsonl``). Per-token perplexities under different tokenizers are not
comparable, so the table gives perplexity per character and per whitespace word (exp of the total
negative log-likelihood over characters or words of the same text) and bits per character, from
``domainlm.bench.perplexity``. adapt's own forgetting monitor (per-token, on its validation blocks)
is reported next to them.

Run (CPU: about 1.5 hours on 2 shared cores, one thread):
    .venv/bin/python experiments/forgetting_vocab_experiment.py --out runs/forgetting_vocab
Smoke test in a minute:
    .venv/bin/python experiments/forgetting_vocab_experiment.py --model tiny-llama --steps 2 --out /tmp/fv

Finished arms and evaluations are kept in OUT and skipped when the script is run again, so an
interrupted run continues where it stopped. The script prints numbers and writes OUT/results.json,
OUT/results.md and OUT/forgetting_vocab.png; it asserts nothing about them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DOMAIN_CARD = "pubmed-sample"
GENERAL_CARD = "general-english-sample"
DOMAIN_HELD = REPO / "corpora" / "samples" / "pubmed_heldout_sample.xml"
GENERAL_HELD = REPO / "corpora" / "samples" / "general_english_heldout.jsonl"

ARMS = {
    "a": "LoRA, no replay",
    "b": "LoRA + replay",
    "c": "LoRA + vocab extension + trainable embeddings",
    "d": "full training",
    "e": "LoRA + vocab extension + only the new embedding rows",
}


def _arm_config(arm: str, args: argparse.Namespace, vocab_dir: Path, run_dir: Path) -> dict[str, Any]:
    common = dict(corpus=DOMAIN_CARD, out=str(run_dir), max_steps=args.steps, batch_size=args.batch_size,
                  block_size=args.block_size, seed=args.seed, eval_every=0, eval_batches=args.eval_batches,
                  save_every=0, log_every=5, general_eval=GENERAL_CARD, replay_fraction=0.0, overwrite=True)
    if arm == "a":
        return {**common, "model": args.model, "method": "lora"}
    if arm == "b":
        cfg = {**common, "model": args.model, "method": "lora", "replay_corpus": GENERAL_CARD}
        cfg.pop("replay_fraction")  # adapt's default for text (0.05)
        if args.replay_fraction is not None:
            cfg["replay_fraction"] = args.replay_fraction
        return cfg
    if arm == "c":
        return {**common, "model": str(vocab_dir), "method": "lora", "train_embeddings": True, "embedding_rows": "all"}
    if arm == "e":  # peft trainable_token_indices: the added rows train, the base's 49k rows stay as they were
        return {**common, "model": str(vocab_dir), "method": "lora", "train_embeddings": True, "embedding_rows": "new"}
    if arm == "d":
        return {**common, "model": args.model, "method": "full", "lr": args.full_lr}
    raise ValueError(arm)


def _done(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "manifest.json").read_text()).get("complete", False)
    except (OSError, ValueError):
        return False


def _texts(path: Path) -> list[str]:
    from domainlm.vocab.texts import read_texts

    return read_texts(str(path)).texts


def _score(spec: str, texts: dict[str, list[str]], window: int) -> dict[str, Any]:
    """Per-character and per-word perplexity of ``spec`` (a model or run folder) on each text set."""
    import torch

    from domainlm.bench.loading import load_for_eval
    from domainlm.bench.perplexity import causal_scores, summarise

    loaded = load_for_eval(spec, "causal")
    out: dict[str, Any] = {"vocab_size": len(loaded.tokenizer)}
    with torch.inference_mode():
        for name, docs in texts.items():
            # stride = window: every token is scored once; abstracts mostly fit in one window.
            scores = causal_scores(loaded.model, loaded.tokenizer, docs, window=window, stride=window, batch_size=4)
            out[name] = summarise(scores)
            # Per-document sums, for paired bootstrap intervals over documents.
            out[name]["docs"] = {"nll": [d.nll for d in scores], "chars": [d.chars for d in scores]}
    del loaded
    return out


def _save_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def _table(results: dict[str, Any]) -> str:
    rows = [("base", "base model (no training)"), ("vocab0", "base + vocab extension, before training")]
    rows += [(k, f"({k}) {v}") for k, v in ARMS.items()]
    head = ("| model | vocab | domain ppl/char | domain ppl/word | domain bits/char | general ppl/char | "
            "general ppl/word | general bits/char | monitor: general ppl/token start -> end | replay seqs | "
            "train wall s |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for key, label in rows:
        ev = results.get("eval", {}).get(key)
        if ev is None:
            continue
        d, g = ev["domain"], ev["general"]
        run = results.get("runs", {}).get(key, {})
        mon = run.get("monitor", {})
        mon_s = (f"{mon['initial']:.2f} -> {mon['final']:.2f}" if mon.get("initial") is not None
                 and mon.get("final") is not None else "")
        wall = f"{run['wall_time_s']:.0f}" if run else ""
        lines.append(f"| {label} | {ev['vocab_size']:,} | {d['per_char']:.4f} | {d['per_word']:.2f} | "
                     f"{d['bits_per_char']:.4f} | {g['per_char']:.4f} | {g['per_word']:.2f} | "
                     f"{g['bits_per_char']:.4f} | {mon_s} | {run.get('replay_sequences', '')} | "
                     f"{wall} |")
    return "\n".join(lines)


def bootstrap_diff(results: dict[str, Any], key: str, ref: str, part: str, n: int = 2000,
                   seed: int = 0) -> tuple[float, float, float] | None:
    """Bits per character of ``key`` minus ``ref`` on ``part``, with a paired 95% bootstrap over documents.

    Both models score the same documents, so documents are resampled together; the interval says how
    much the difference depends on which held-out abstracts happened to be in the sample.
    """
    import numpy as np

    ev = results.get("eval", {})
    if key not in ev or ref not in ev or "docs" not in ev[key][part] or "docs" not in ev[ref][part]:
        return None
    x, r = ev[key][part]["docs"], ev[ref][part]["docs"]
    nx, nr, ch = np.array(x["nll"]), np.array(r["nll"]), np.array(x["chars"], dtype=float)
    if not np.array_equal(ch, np.array(r["chars"], dtype=float)):
        return None  # not the same characters scored (should not happen without max_tokens)
    ln2 = np.log(2)
    diff = (nx.sum() - nr.sum()) / ch.sum() / ln2
    idx = np.random.default_rng(seed).integers(0, len(ch), size=(n, len(ch)))
    boot = (nx[idx].sum(1) - nr[idx].sum(1)) / ch[idx].sum(1) / ln2
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(diff), float(lo), float(hi)


def _diff_table(results: dict[str, Any]) -> str:
    lines = ["| comparison | domain bits/char difference [95% CI] | general bits/char difference [95% CI] |",
             "|---|---|---|"]
    pairs = [("vocab0", "base"), ("a", "base"), ("b", "a"), ("c", "a"), ("d", "a"), ("e", "a"), ("e", "c")]
    names = {"base": "base", "vocab0": "vocab ext. (untrained)", **{k: f"({k})" for k in ARMS}}
    for key, ref in pairs:
        cells = []
        for part in ("domain", "general"):
            d = bootstrap_diff(results, key, ref, part)
            cells.append("" if d is None else f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]")
        if any(cells):
            lines.append(f"| {names[key]} minus {names[ref]} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("base", "vocab0", "a", "b", "c", "e", "d") if k in results.get("eval", {})]
    labels = {"base": "base", "vocab0": "vocab\next.", "a": "(a)\nLoRA", "b": "(b)\n+replay",
              "c": "(c) vocab\nall rows", "e": "(e) vocab\nnew rows", "d": "(d)\nfull"}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    for ax, part, title in ((axes[0], "domain", "held-out PubMed"), (axes[1], "general", "held-out general English")):
        vals = [results["eval"][k][part]["bits_per_char"] for k in keys]
        bars = ax.bar(range(len(keys)), vals, color=["#888888", "#bbbbbb", "#1f77b4", "#2ca02c", "#ff7f0e",
                                                     "#9467bd", "#d62728"][:len(keys)])
        base = results["eval"]["base"][part]["bits_per_char"] if "base" in results["eval"] else None
        if base is not None:
            ax.axhline(base, color="black", lw=0.8, ls="--", label="base")
        for b, v in zip(bars, vals, strict=True):
            ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(keys)), [labels[k] for k in keys], fontsize=8)
        ax.set_ylabel("bits per character (lower is better)")
        ax.set_title(title)
        lo, hi = min(vals), max(vals)
        ax.set_ylim(lo - 0.15 * (hi - lo + 1e-3) - 0.02, hi + 0.15 * (hi - lo + 1e-3) + 0.02)
    fig.suptitle(f"{results['config']['model']}: {results['config']['tokens_per_arm']:,} training tokens per arm")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--out", default="runs/forgetting_vocab")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--eval-batches", type=int, default=4, help="adapt's own validation micro-batches per eval")
    p.add_argument("--eval-window", type=int, default=256)
    p.add_argument("--add", type=int, default=100, help="words vocab extend adds (arm c)")
    p.add_argument("--min-frequency", type=int, default=3)
    p.add_argument("--domain-vocab-size", type=int, default=8000)
    p.add_argument("--replay-fraction", type=float, default=None, help="arm b; default: adapt's (0.05)")
    p.add_argument("--full-lr", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arms", default="abcde")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; on a shared, oversubscribed CPU one thread was 3.6x faster than two "
                        "for a SmolLM2 training step (OpenMP threads wait on each other)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)

    os.environ.setdefault("DOMAINLM_PROGRESS", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for name in ("httpx", "urllib3", "filelock", "datasets", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.WARNING)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results["config"] = {**vars(args), "tokens_per_arm": args.steps * args.batch_size * args.block_size}
    results.setdefault("runs", {})
    results.setdefault("eval", {})

    vocab_dir = out / "vocab"
    if not (vocab_dir / "manifest.json").is_file():
        from domainlm.vocab import extend

        extend(model=args.model, corpus=DOMAIN_CARD, add=args.add, min_frequency=args.min_frequency,
               domain_vocab_size=args.domain_vocab_size, out=str(vocab_dir), overwrite=True)
    vm = json.loads((vocab_dir / "manifest.json").read_text())
    results["vocab"] = {"added": vm["counts"]["added"], "candidates": vm["counts"]["candidates"],
                        "fragmentation_held_out": {k: vm["fragmentation"]["held_out"][k]["pieces_per_word"]
                                                   for k in ("before", "after")},
                        "token_counts": vm["token_counts"], "tied": vm["embeddings"]["tied"],
                        "examples": [a["token"] for a in vm["added"][:20]]}
    _save_json(results_path, results)

    from domainlm.adapt import adapt

    for arm in args.arms:
        run_dir = out / "runs" / arm
        if not _done(run_dir):
            logging.info("arm %s: %s", arm, ARMS[arm])
            t0 = time.perf_counter()
            adapt(**_arm_config(arm, args, vocab_dir, run_dir))
            logging.info("arm %s took %.0f s", arm, time.perf_counter() - t0)
        m = json.loads((run_dir / "manifest.json").read_text())
        init, fin = m["metrics"]["initial"], m["metrics"]["final"]
        results["runs"][arm] = {
            "label": ARMS[arm], "method": m["method"], "tokens_trained": m["tokens_trained"], "steps": m["steps"],
            "wall_time_s": m["wall_time_s"], "tokens_per_s": m["tokens_per_s"],
            "trainable_parameters": m["parameters"]["trainable"], "lr": m["config"]["lr"],
            "replay_sequences": m["stream"]["replay_sequences"], "domain_sequences": m["stream"]["domain_sequences"],
            "replay_fraction_actual": m["stream"]["replay_fraction_actual"],
            "monitor": {"initial": init.get("general_ppl"), "final": fin.get("general_ppl"),
                        "rise": fin.get("general_ppl_rise")},
            "domain_ppl_per_token": {"initial": init.get("domain_ppl"), "final": fin.get("domain_ppl")},
            "warnings": m.get("warnings", [])}
        _save_json(results_path, results)

    texts = {"domain": _texts(DOMAIN_HELD), "general": _texts(GENERAL_HELD)}
    results["eval_texts"] = {k: {"documents": len(v), "characters": sum(len(t) for t in v),
                                 "words": sum(len(t.split()) for t in v)} for k, v in texts.items()}
    specs = {"base": args.model, "vocab0": str(vocab_dir)}
    specs.update({arm: str(out / "runs" / arm) for arm in args.arms})
    for key, spec in specs.items():
        if key in results["eval"]:
            continue
        t0 = time.perf_counter()
        results["eval"][key] = _score(spec, texts, args.eval_window)
        logging.info("scored %s in %.0f s: %s", key, time.perf_counter() - t0,
                     {k: round(results["eval"][key][k]["per_char"], 4) for k in texts})
        _save_json(results_path, results)

    table = _table(results) + "\n\nPaired differences (negative: lower bits per character than the reference):\n\n"
    table += _diff_table(results)
    (out / "results.md").write_text(table + "\n")
    _plot(results, out / "forgetting_vocab.png")
    print(table)
    print(f"\nresults: {results_path}, plot: {out / 'forgetting_vocab.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
