"""The model card: ``README.md`` with Hub metadata, written with huggingface_hub's card classes.

Metadata (``ModelCardData``) carries the base model, library, pipeline tag, corpus, tags, license
and a ``model-index`` whose results are this model's scores (bench report, plus the held-out
perplexity adapt measured). The base model's scores on the same tasks sit beside them in the card's
comparison table, not in ``model-index``: the Hub and leaderboards read every ``model-index`` entry as
a result of *this* model.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Hub task ids for a bench metric (the report names the metric; the head is implied by it).
METRIC_TASK = {
    "entity_f1": "token-classification", "micro_f1": "text-classification", "macro_f1": "text-classification",
    "accuracy": "text-classification", "pearson": "sentence-similarity", "spearman": "sentence-similarity",
    "recovery_accuracy": "fill-mask", "precision_at_l5": "other",
}
HEAD_TASK = {"token": "token-classification", "sequence": "text-classification", "multilabel": "text-classification",
             "regression": "text-classification", "contacts": "other"}
# Metrics where lower is better, for reports that do not say (bench reports carry higher_is_better).
LOWER_IS_BETTER = ("perplexity", "word_perplexity", "token_perplexity", "loss")
LICENSE_TODO = ("**License: not known.** The base model's license could not be determined, so this card does "
                "not state one. Fill in the `license:` field of this card's metadata (and this paragraph) "
                "before sharing the model; it must be compatible with the base model's and the training "
                "corpus's terms.")


@dataclass
class CardInputs:
    """Everything the card says, gathered by the publish engine."""

    model_name: str
    run: dict[str, Any]  # the run manifest
    objective: str
    method: str
    export: dict[str, Any]  # what export_merged/export_adapter returned
    verification: dict[str, Any]
    dtype: str
    base_name: str
    base_hub_id: str | None
    base_description: str = ""
    base_from_gguf: str | None = None
    license: str | None = None
    license_source: str = ""
    bench: dict[str, Any] | None = None
    added_tokens: int = 0
    repo_id: str | None = None
    images: dict[str, str] = field(default_factory=dict)  # role -> file name beside the card
    corpus_license: str | None = None
    gguf: list[dict[str, Any]] = field(default_factory=list)  # what publish.gguf.write_gguf_files returned

    @property
    def adapter_method(self) -> str | None:
        """'LoRA' or 'QLoRA' for runs that trained an adapter (qlora: over a 4-bit base), else None.

        A merged run (`domainlm merge`) is a full model whose training method is its source run's."""
        method = (self.run.get("config") or {}).get("method") if self.run.get("merge") else self.method
        return {"lora": "LoRA", "qlora": "QLoRA"}.get(method)


# ----------------------------------------------------------------------------------------------------
# numbers
# ----------------------------------------------------------------------------------------------------

def _num(x: Any, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if not math.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) >= 1e6 or abs(x) < 1e-3):
        return f"{x:.3g}"
    return f"{x:.{digits}g}"


def _round(x: Any) -> Any:
    return round(float(x), 4) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else x


def _score(entry: Any) -> float | None:
    """The number in a bench score entry: ``{"score": ...}``, a perplexity entry (word perplexity first:
    unlike per-token perplexity it compares models with different tokenizers), or a bare number."""
    if isinstance(entry, (int, float)) and not isinstance(entry, bool):
        return float(entry)
    if isinstance(entry, dict) and not entry.get("skipped"):
        for key in ("score", "per_word", "per_token", "perplexity", "ppl", "value"):
            if isinstance(entry.get(key), (int, float)) and not isinstance(entry.get(key), bool):
                return float(entry[key])
    return None


def _ci(entry: Any) -> str:
    if isinstance(entry, dict) and isinstance(entry.get("ci"), (list, tuple)) and len(entry["ci"]) == 2:
        lo, hi = entry["ci"]
        return f" [{_num(lo)}, {_num(hi)}]"
    return ""


def _seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    if s < 120:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


# ----------------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------------

@dataclass
class Row:
    """One comparison-table row and, through :meth:`eval_result`, one model-index entry."""

    task: str
    dataset_type: str
    dataset_name: str
    split: str
    task_type: str
    metric: str
    adapted: float | None
    base: float | None
    adapted_ci: str = ""
    base_ci: str = ""
    delta_ci: str = ""
    source: str = ""
    lower_is_better: bool = False

    def eval_result(self):
        from huggingface_hub import EvalResult

        return EvalResult(task_type=self.task_type, dataset_type=self.dataset_type, dataset_name=self.dataset_name,
                          dataset_split=self.split, metric_type=self.metric, metric_value=_round(self.adapted),
                          metric_name=f"{self.metric} ({self.source})", task_name=self.task)


def result_rows(inp: CardInputs) -> list[Row]:
    """Base vs adapted results: held-out perplexity from the run, then the bench report's tasks."""
    lm_task = "text-generation" if inp.objective == "causal" else "fill-mask"
    rows: list[Row] = []
    metrics = inp.run.get("metrics") or {}
    init, fin = metrics.get("initial") or {}, metrics.get("final") or {}
    corpus = (inp.run.get("corpus") or {}).get("name") or "domain corpus"
    general = (inp.run.get("config") or {}).get("general_eval") or (inp.run.get("config") or {}).get("replay_corpus")
    if isinstance(general, str) and "/" in general:
        general = Path(general).name  # a prepared folder: its name, not a machine-specific path
    ppl = "perplexity" if inp.objective == "causal" else "pseudo-perplexity (masked tokens)"
    for key, ds, label in (("domain_ppl", corpus, f"{corpus} (held-out)"),
                           ("general_ppl", general or "general text", f"{general or 'general text'} (forgetting check)")):
        if fin.get(key) is not None:
            rows.append(Row(f"{ppl}: {label}", ds, label, "validation", lm_task, "perplexity", fin.get(key),
                            init.get(key), source="domainlm adapt, held-out split", lower_is_better=True))
    bench = inp.bench or {}
    suite = bench.get("suite") or "bench"
    tasks = [t for t in bench.get("tasks") or [] if isinstance(t, dict)]
    task_names = {t.get("name") for t in tasks}
    for role, entry in (bench.get("perplexity") or {}).items():
        # The bench lists perplexity tasks among its tasks too; this section only adds ones it does not.
        if not isinstance(entry, dict) or entry.get("task") in task_names or _score(entry.get("model")) is None:
            continue
        which = "word perplexity" if isinstance(entry.get("model"), dict) and "per_word" in entry["model"] else \
            "perplexity"
        rows.append(Row(f"{which}: {role} text ({entry.get('task') or 'bench'})", f"{suite}-{role}",
                        f"{suite} {role} text", "test", lm_task, "perplexity", _score(entry.get("model")),
                        _score(entry.get("baseline")), _ci(entry.get("model")), _ci(entry.get("baseline")),
                        source="domainlm bench", lower_is_better=True))
    for task in tasks:
        if _score(task.get("model")) is None:
            continue
        metric = str(task.get("metric") or "score")
        head = task.get("head") or ""
        task_type = lm_task if head == "lm" else HEAD_TASK.get(head, METRIC_TASK.get(metric, "other"))
        name = str(task.get("name") or "task")
        delta_ci = ""
        if isinstance(task.get("delta_ci"), (list, tuple)) and len(task["delta_ci"]) == 2:
            delta_ci = f" [{_num(task['delta_ci'][0])}, {_num(task['delta_ci'][1])}]"
        mode = task.get("mode") or (task.get("model") or {}).get("mode")
        lower = task.get("higher_is_better") is False or metric in LOWER_IS_BETTER
        rows.append(Row(name, name, f"{name} ({suite}" + (f", {mode})" if mode else ")"), "test", task_type, metric,
                        _score(task.get("model")), _score(task.get("baseline")), _ci(task.get("model")),
                        _ci(task.get("baseline")), delta_ci, source="domainlm bench", lower_is_better=lower))
    return rows


def _results_table(rows: list[Row], base_name: str) -> str:
    lines = [f"| task | metric | base ({base_name}) | this model | change |", "|---|---|---|---|---|"]
    for r in rows:
        if r.adapted is not None and r.base is not None:
            delta = r.adapted - r.base
            better = (delta < 0) if r.lower_is_better else (delta > 0)
            change = f"{delta:+.4g}{r.delta_ci}" + (" (better)" if better else " (worse)" if delta else "")
        else:
            change = "n/a"
        lines.append(f"| {r.task} | {r.metric} | {_num(r.base)}{r.base_ci} | {_num(r.adapted)}{r.adapted_ci} | "
                     f"{change} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# the card
# ----------------------------------------------------------------------------------------------------

def card_data(inp: CardInputs, rows: list[Row]):
    from huggingface_hub import ModelCardData

    corpus = (inp.run.get("corpus") or {}).get("name")
    adapter = inp.export.get("kind") == "adapter"
    tags = ["domainlm", "domain-adaptation", "continued-pretraining",
            {"causal": "causal-lm", "masked": "masked-lm", "protein": "protein-language-model"}[inp.objective]]
    if inp.adapter_method:
        tags += ["lora"] + (["qlora"] if inp.method == "qlora" else [])
    if inp.objective == "protein":
        tags.append("biology")
    extra: dict[str, Any] = {}
    if inp.base_hub_id:
        # How this model relates to its base on the Hub's model tree.
        extra["base_model_relation"] = "adapter" if adapter else "finetune"
    return ModelCardData(
        model_name=inp.model_name, base_model=inp.base_hub_id, license=inp.license,
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation" if inp.objective == "causal" else "fill-mask",
        datasets=[corpus] if corpus else None, tags=tags,
        eval_results=[r.eval_result() for r in rows if r.adapted is not None] or None, **extra)


def _load_snippet(inp: CardInputs) -> str:
    where = inp.repo_id or "path/to/this/folder"
    if inp.export.get("kind") == "adapter":
        base = inp.export.get("base_model_name_or_path") or inp.base_hub_id or "BASE_MODEL"
        auto = "AutoModelForCausalLM" if inp.objective == "causal" else "AutoModelForMaskedLM"
        resize = ("\n# The adapter was trained with an extended vocabulary: size the base to the tokenizer first.\n"
                  "base.resize_token_embeddings(len(tokenizer))") if inp.added_tokens else ""
        return (f"```python\nfrom peft import PeftModel\nfrom transformers import {auto}, AutoTokenizer\n\n"
                f'tokenizer = AutoTokenizer.from_pretrained("{where}")\n'
                + ("# QLoRA: the adapter was trained against the base held in 4-bit NF4; loading it that way\n"
                   "# (quantization_config=transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="
                   "\"nf4\")) reproduces the run most closely.\n" if inp.method == "qlora" else "")
                + f'base = {auto}.from_pretrained("{base}"){resize}\n'
                f'model = PeftModel.from_pretrained(base, "{where}")\n```')
    if inp.objective == "causal":
        return (f"```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f'tokenizer = AutoTokenizer.from_pretrained("{where}")\n'
                f'model = AutoModelForCausalLM.from_pretrained("{where}")\n'
                'inputs = tokenizer("The protein kinase", return_tensors="pt")\n'
                "out = model.generate(**inputs, max_new_tokens=40, do_sample=True, top_p=0.95)\n"
                "print(tokenizer.decode(out[0], skip_special_tokens=True))\n```\n\n"
                f"or from the command line: `domainlm generate --model {where} --prompt \"...\"`.")
    mask = "<mask>" if inp.objective == "protein" else "[MASK]"
    example = "MKTAYIAK<mask>RQISFVKSHFSRQ" if inp.objective == "protein" else f"The patient was treated with {mask}."
    return (f"```python\nfrom transformers import pipeline\n\n"
            f'fill = pipeline("fill-mask", model="{where}")\n'
            f'print(fill("{example}"))\n```')


def _training_section(inp: CardInputs) -> str:
    run = inp.run
    cfg = run.get("config") or {}
    corpus = run.get("corpus") or {}
    counts = corpus.get("counts") or {}
    flops = run.get("flops") or {}
    stream = run.get("stream") or {}
    params = run.get("parameters") or {}
    lines = ["| | |", "|---|---|",
             f"| corpus | {corpus.get('name') or 'n/a'} |"]
    if inp.corpus_license:
        lines.append(f"| corpus license | {inp.corpus_license} |")
    for key, value in counts.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            lines.append(f"| corpus {key.replace('_', ' ')} | {_num(value)} |")
    for split, info in (corpus.get("splits") or {}).items():
        if isinstance(info, dict):
            desc = ", ".join(f"{_num(v)} {k}" for k, v in info.items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "files")
            lines.append(f"| {split} split | {desc} |")
    lines += [
        f"| objective | {inp.objective}" + (" (masked-token prediction)" if inp.objective != "causal" else
                                            " (next-token prediction)") + " |",
        f"| method | {inp.adapter_method or 'full fine-tuning of all weights'}"
        + (f" (r={cfg.get('lora_r')}, alpha={cfg.get('lora_alpha')}"
           + (", base held in 4-bit NF4 while training" if inp.method == "qlora" else "")
           + (", embeddings trained fully" if cfg.get("train_embeddings") else "") + ")" if inp.adapter_method else "")
        + " |",
        f"| steps | {_num(run.get('steps'))} |",
        f"| tokens trained | {_num(run.get('tokens_trained'))} (sequences of {_num(run.get('block_size'))} tokens, "
        f"global batch {_num(run.get('global_batch'))}) |",
        f"| learning rate | {cfg.get('lr', 'n/a')} ({cfg.get('schedule', 'n/a')}, warmup {cfg.get('warmup_ratio', 'n/a')})"
        " |",
    ]
    merge = run.get("merge")
    if merge:  # the published weights are the adapted model merged back into its base (domainlm merge)
        how = "chosen on dev splits by `merge --select`" if merge.get("selection") else "set by hand"
        lines.append(f"| merged back into the base | {merge.get('method')}, weight {_num(merge.get('weight'))} on the "
                     f"adapted model and the rest on {merge.get('other')} ({merge.get('engine')}; weight {how}) |")
    if stream.get("replay_sequences"):
        lines.append(f"| replay | {_num(stream.get('replay_fraction_actual'))} of sequences from "
                     f"{stream.get('replay_corpus')} (against forgetting) |")
    if params:
        extra = ""
        if inp.adapter_method:
            extra = " (with the LoRA matrices" + (" and the trained copies of fully trained modules"
                                                  if run.get("lora_modules_to_save") else "") + ")"
        lines.append(f"| parameters in training | {_num(params.get('total'))}{extra}, "
                     f"{_num(params.get('trainable'))} trained |")
    lines += [
        f"| training compute | {_num(flops.get('total'))} FLOPs ({_num(flops.get('training_per_token'))} per token) |",
        f"| hardware | {run.get('hardware', 'n/a')}" + (f" x {run['world_size']}" if (run.get("world_size") or 1) > 1
                                                       else "") + (", bf16 autocast" if run.get("bf16") else "") + " |",
        f"| wall time | {_seconds(run.get('wall_time_s'))} ({_num(run.get('tokens_per_s'))} tokens/s"
        + (f", MFU {run['mfu']:.0%} of measured peak" if isinstance(run.get("mfu"), (int, float)) else "") + ") |",
    ]
    return "\n".join(lines)


def _limitations(inp: CardInputs) -> list[str]:
    run = inp.run
    metrics = run.get("metrics") or {}
    init, fin = metrics.get("initial") or {}, metrics.get("final") or {}
    out = []
    if fin.get("general_ppl") is not None and init.get("general_ppl") is not None:
        rise = fin.get("general_ppl_rise")
        if rise is None and init["general_ppl"]:
            rise = fin["general_ppl"] / init["general_ppl"] - 1
        out.append(f"**Forgetting.** Perplexity on general text went from {_num(init['general_ppl'])} (base) to "
                   f"{_num(fin['general_ppl'])} (this model), a change of {rise:+.1%}. "
                   + ("It is worse at general text than its base." if rise > 0 else
                      "General-text perplexity did not rise."))
    else:
        out.append("**Forgetting was not measured** (the run tracked no general corpus): expect this model to be "
                   "somewhat worse than its base outside its domain.")
    for w in run.get("warnings") or []:
        out.append(f"Training warning: {w}")
    corpus = (run.get("corpus") or {}).get("name") or "the corpus"
    out.append(f"It has seen {_num(run.get('tokens_trained'))} tokens of {corpus}; its knowledge of the field is "
               "limited to what that text covers, and it repeats that text's biases and errors.")
    if inp.objective == "causal":
        out.append("Generated text can be fluent and wrong. Do not use it for medical, legal or safety decisions "
                   "without expert review.")
    if inp.base_from_gguf:
        out.append(f"The base weights were dequantised from the GGUF file `{Path(inp.base_from_gguf).name}`, "
                   "not the original full-precision checkpoint, so they differ slightly from the Hub release of "
                   f"{inp.base_hub_id or 'the base model'}."
                   + (" An adapter applied to the original release will not reproduce these numbers exactly; "
                      "use a merged export for that." if inp.export.get("kind") == "adapter" else ""))
    if not inp.base_hub_id:
        out.append(f"The base model ({inp.base_name}) is not a Hugging Face Hub model, so `base_model` is not set "
                   "in the metadata.")
    return out


def _gguf_section(inp: CardInputs) -> list[str]:
    """The GGUF files beside the safetensors: sizes, their verification, and the Ollama commands."""
    lines = ["## GGUF for llama.cpp, Ollama and LM Studio", "",
             "Written with llama.cpp's own converter, then each file was loaded in a fresh Python process with "
             "transformers' GGUF loader (which dequantises it) and compared with the trained model on the same "
             f"{inp.gguf[0]['verification'].get('tokens')} held-out tokens. The tokenizer and chat template are inside "
             "each file; its ids were checked against the run's tokenizer on a sentence with accents, non-Latin "
             "scripts and digits.", "",
             "| file | type | size | max \\|logit diff\\| | allowed | top-1 agreement | tokenizer |", "|---|---|---|---|---|---|---|"]
    for f in inp.gguf:
        v = f["verification"]
        lines.append(f"| `{f['file']}` | {f['type']} | {f['bytes'] / 1e6:.1f} MB | {_num(v.get('max_abs_diff'))} | "
                     f"{_num(v.get('tolerance_abs'))} | {v.get('top1_agreement', 0):.0%} | "
                     + ("same ids" if v.get("tokenizer_round_trip") else "differs") + " |")
    first = inp.gguf[0]
    name = inp.model_name.lower().replace(" ", "-")
    lines += ["", "With [Ollama](https://ollama.com), from this folder (each file has its Modelfile beside it):", "",
              "```sh", f"ollama create {name} -f {first['modelfile']}", f"ollama run {name}", "```", "",
              f"With llama.cpp: `llama-cli -m {first['file']} -p \"The protein kinase\"`.", ""]
    return lines


def render(inp: CardInputs) -> str:
    """The card text (YAML metadata + Markdown) for ``inp``."""
    from huggingface_hub import ModelCard

    rows = result_rows(inp)
    data = card_data(inp, rows)
    run = inp.run
    corpus = (run.get("corpus") or {}).get("name") or "a domain corpus"
    method = inp.adapter_method or "full"
    kind = {"merged": "the LoRA adapter merged into the base weights, a standalone model",
            "full": "all weights, a standalone model",
            "adapter": "the LoRA adapter alone: load it on top of the base model with peft"}[inp.export["kind"]]
    base_ref = f"[{inp.base_hub_id}](https://huggingface.co/{inp.base_hub_id})" if inp.base_hub_id else f"`{inp.base_name}`"
    v = inp.verification
    parts = [f"# {inp.model_name}", "",
             f"{inp.model_name} is {base_ref} adapted to **{corpus}** by continued pretraining "
             f"({inp.objective} language modelling, {method} training) with "
             "domainlm. This folder holds " + kind + ".", ""]
    parts += ["## Model details", "", "| | |", "|---|---|", f"| base model | {base_ref}"
              + (f" ({inp.base_description})" if inp.base_description else "") + " |",
              f"| architecture | {inp.export.get('architecture') or inp.export.get('kind')} |",
              f"| export | {inp.export['kind']}, {inp.dtype} safetensors |",
              f"| vocabulary | {_num(inp.export.get('tokenizer_size'))} tokens"
              + (f", of which {inp.added_tokens} were added to the base tokenizer for the domain"
                 if inp.added_tokens else "") + " |",
              f"| parameters | {_num(inp.export.get('parameters'))}"
              + (" (adapter only)" if inp.export["kind"] == "adapter" else "") + " |",
              f"| license | {inp.license + (f' ({inp.license_source})' if inp.license_source else '') if inp.license else 'not known: see below'} |",
              ""]
    if not inp.license:
        parts += [LICENSE_TODO, ""]
    parts += ["## Evaluation", ""]
    if rows:
        parts += ["Scores of this model and of its base on the same data (bench results with 95% bootstrap "
                  "intervals in brackets where measured). Perplexity: lower is better.", "",
                  _results_table(rows, inp.base_name), ""]
    else:
        parts += ["No evaluation results were recorded for this run.", ""]
    if not inp.bench:
        parts += ["No `domainlm bench` report was given to `publish`; the numbers above are the held-out "
                  "perplexities measured during training.", ""]
    if "comparison" in inp.images:
        parts += [f"![base vs adapted on the bench tasks]({inp.images['comparison']})", ""]
    parts += ["## Training details", "", _training_section(inp), ""]
    if "curves" in inp.images:
        parts += [f"![training loss and held-out perplexity]({inp.images['curves']})", ""]
    parts += ["## Intended use", "",
              f"Research and prototyping on {corpus}-like text: "
              + ("continuing or scoring domain text, and as a starting point for fine-tuning on domain tasks."
                 if inp.objective == "causal" else
                 "features and a starting point for fine-tuning on domain tasks (classification, entity "
                 "recognition, property prediction)."), ""]
    parts += ["## Limitations", ""] + [f"- {x}" for x in _limitations(inp)] + [""]
    parts += ["## How to load", "", _load_snippet(inp), ""]
    if inp.gguf:
        parts += _gguf_section(inp)
    if v:
        parts += ["## Verification", "",
                  f"`domainlm publish` reloaded this folder in a fresh Python process with plain transformers "
                  f"and compared its logits with the trained model's on {v.get('tokens')} held-out tokens: "
                  f"max |difference| {_num(v.get('max_abs_diff'))} (allowed {_num(v.get('tolerance_abs'))} for "
                  f"{inp.dtype}), the same top-1 token at "
                  + (f"{v['top1_agreement']:.0%}" if isinstance(v.get("top1_agreement"), (int, float)) else "n/a")
                  + " of positions.", ""]
    cfg = run.get("config") or {}
    parts += ["<details><summary>The <code>domainlm adapt</code> configuration of this run</summary>", "",
              "```json", json.dumps(cfg, indent=2, sort_keys=True, default=str), "```", "", "</details>", ""]
    versions = run.get("versions") or {}
    if versions:
        parts += ["Trained with " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", ""]
    text = "---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(parts)
    return str(ModelCard(text))
