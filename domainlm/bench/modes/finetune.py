"""Fine-tune a task head with the whole model, once per seed: the BLURB protocol when a dev split exists.

The head is a linear layer on the model's hidden states (the first piece of each word for token
tasks, pooled states for sequence tasks), so any ``AutoModel`` body works, causal or bidirectional,
and a LoRA run merged by :func:`~domainlm.bench.loading.load_for_eval` needs no extra code. (This is
why it is not transformers' ``Trainer`` with an ``AutoModelFor*Classification``: those reload the
weights from a folder and have no head for every body bench can load.) The budget is
``finetune_steps`` AdamW steps, or ``finetune_epochs`` passes over the train split, with 10% linear
warm-up and linear decay, the schedule BERT fine-tuning uses: transformers' ``get_linear_schedule_with_warmup``,
as adapt uses transformers' schedules (the warm-up starts at lr 0 on the first step, as transformers' does).

With a dev split (train / dev / test, as BLURB): dev is scored ``finetune_evals`` times, evenly
over the budget, the checkpoint with the best dev score is kept, and the full test split is scored
with it. Seeds change the head initialisation, dropout and batch order; the report gives mean +-
std over them and a bootstrap interval over test items of the seed-averaged score.

From Python (e.g. an experiment script)::

    from domainlm.bench import bench
    report = bench(model="runs/dapt", baseline="minilm", suite="biomed", tasks=["ner"], mode="finetune",
                   seeds=3, data_root="../shared/realdata",
                   override=["@benchmarks/biomed/realdata-blurb.overrides"], out="runs/blurb")
    report["tasks"][0]["model"]["score"], report["tasks"][0]["model"]["std"]
"""

from __future__ import annotations

import copy
import logging
import math
import random
from typing import Any

from domainlm.bench.features import (
    autocast,
    batches,
    encode_sequences,
    encode_words,
    ensure_pad,
    hidden,
    pool,
    use_spacing,
)
from domainlm.bench.loading import LoadedModel
from domainlm.bench.modes.result import ModeResult, RunContext, finish
from domainlm.tasks.data import TaskData
from domainlm.tasks.spec import TaskSpec

log = logging.getLogger(__name__)


def _label_space(spec: TaskSpec, data: TaskData) -> list[str]:
    if spec.head == "token":
        return ["O"] + [f"{p}-{t}" for t in data.labels for p in ("B", "I")]
    return list(data.labels or [])


def _encode(loaded: LoadedModel, spec: TaskSpec, examples):
    if spec.head == "token":
        return encode_words(loaded, examples, spec.max_length)[0]
    return encode_sequences(loaded, examples, spec.max_length, use_spacing(spec, loaded))[0]


def _outputs(spec: TaskSpec, model, head, batch, rows: list[Any]):
    """Head outputs for a batch: [words, labels] for token tasks (with row/word index), else [batch, out]."""
    import torch

    h = hidden(model, batch)
    if spec.head == "token":
        picks = [(r, w, p) for r, enc in enumerate(rows) for w, p in enumerate(enc.word_pos) if p >= 0]
        if not picks:
            return head(h[:0, 0]), picks
        r_idx = torch.tensor([p[0] for p in picks], device=h.device)
        t_idx = torch.tensor([p[2] for p in picks], device=h.device)
        return head(h[r_idx, t_idx]), picks
    return head(pool(h, batch, spec.pooling)), None


def _budget(spec: TaskSpec, n_train: int) -> int:
    if spec.finetune_epochs is None:
        return spec.finetune_steps
    return max(1, math.ceil(spec.finetune_epochs * n_train / spec.finetune_batch_size))


def _predict(spec: TaskSpec, model, head, examples, encoded, labels: list[str], pad: int, ctx: RunContext,
             mu: float, sd: float) -> list[Any]:
    """Predictions of the current model + head on ``examples`` (tags per word, a label, labels or a number)."""
    import torch

    n_out = len(labels) if spec.head != "regression" else 1
    pred: list[Any] = [None] * len(examples)
    model.eval()
    with torch.inference_mode(), autocast(ctx.device, ctx.bf16):
        for idx, batch in batches(encoded, spec.batch_size, pad, ctx.device):
            rows = [encoded[i] for i in idx]
            out, picks = _outputs(spec, model, head, batch, rows)
            out = out.float().cpu()
            if spec.head == "token":
                sent = {i: ["O"] * len(examples[i].tokens) for i in idx}
                for k, (r, w, _) in enumerate(picks):
                    sent[idx[r]][w] = labels[int(out[k].argmax())]
                for i in idx:
                    pred[i] = sent[i]
                continue
            for r, i in enumerate(idx):
                if spec.head == "multilabel":
                    pred[i] = [labels[j] for j in range(n_out) if out[r, j] > 0]
                elif spec.head == "regression":
                    pred[i] = float(out[r, 0]) * sd + mu
                else:
                    pred[i] = labels[int(out[r].argmax())]
    model.train()
    return pred


def _gold(spec: TaskSpec, examples) -> list[Any]:
    return [ex.tags if spec.head == "token" else ex.label for ex in examples]


def run_finetune(loaded: LoadedModel, spec: TaskSpec, data: TaskData, ctx: RunContext) -> ModeResult:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import get_linear_schedule_with_warmup

    from domainlm.tasks.builtin import METRICS
    from domainlm.tasks.metrics import Context

    result = ModeResult(mode="finetune")
    labels = _label_space(spec, data)
    index = {label: i for i, label in enumerate(labels)}
    train, test, dev = data.train, data.test, data.splits.get("dev") or []
    enc_train, enc_test = _encode(loaded, spec, train), _encode(loaded, spec, test)
    enc_dev = _encode(loaded, spec, dev) if dev else []
    pad = ensure_pad(loaded.tokenizer)
    n_out = 1 if spec.head == "regression" else len(labels)
    mu, sd = 0.0, 1.0
    if spec.head == "regression":
        y = np.asarray([ex.label for ex in train], dtype=np.float64)
        mu, sd = float(y.mean()), float(y.std() or 1.0)
    steps = _budget(spec, len(train))
    warm = max(1, steps // 10)
    metric = METRICS.get(spec.metric)
    better = 1.0 if metric.meta.get("higher_is_better", True) else -1.0
    mctx = Context(labels=data.labels, negative_label=spec.negative_label)
    # dev checkpoints evenly over the budget, the last at the final step
    evals = sorted({max(1, round(steps * (k + 1) / spec.finetune_evals)) for k in range(spec.finetune_evals)}) \
        if dev else []

    preds, dev_scores, chosen = [], [], []
    for seed in range(ctx.seeds):
        torch.manual_seed(seed)
        rng = random.Random(seed)
        model = copy.deepcopy(loaded.model).to(ctx.device)
        model.train()
        head = torch.nn.Linear(model.config.hidden_size, n_out).to(ctx.device)
        params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
        opt = torch.optim.AdamW(params, lr=spec.finetune_lr, weight_decay=0.01)
        sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=warm, num_training_steps=steps)
        order: list[int] = []
        best: tuple[float, int, Any] | None = None  # (dev score, step, (model state, head state) on CPU)
        seed_dev = []
        for step in range(1, steps + 1):
            if len(order) < spec.finetune_batch_size:
                more = list(range(len(train)))
                rng.shuffle(more)
                order.extend(more)
            pick, order = order[:spec.finetune_batch_size], order[spec.finetune_batch_size:]
            sub = [enc_train[i] for i in pick]
            idx, batch = next(batches(sub, len(sub), pad, ctx.device))
            rows = [sub[i] for i in idx]
            exs = [train[pick[i]] for i in idx]
            with autocast(ctx.device, ctx.bf16):
                out, picks = _outputs(spec, model, head, batch, rows)
            out = out.float()
            if spec.head == "token":
                target = torch.tensor([index[exs[r].tags[w]] for r, w, _ in picks], device=out.device)
                loss = F.cross_entropy(out, target) if len(picks) else out.sum() * 0
            elif spec.head == "multilabel":
                target = torch.zeros(len(exs), n_out, device=out.device)
                for r, ex in enumerate(exs):
                    for label in ex.label:
                        target[r, index[label]] = 1.0
                loss = F.binary_cross_entropy_with_logits(out, target)
            elif spec.head == "regression":
                target = torch.tensor([(ex.label - mu) / sd for ex in exs], device=out.device, dtype=torch.float32)
                loss = F.mse_loss(out.squeeze(-1), target)
            else:
                target = torch.tensor([index[ex.label] for ex in exs], device=out.device)
                loss = F.cross_entropy(out, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            if step in evals:
                score = float(metric.fn.point(_gold(spec, dev),
                                              _predict(spec, model, head, dev, enc_dev, labels, pad, ctx, mu, sd), mctx))
                seed_dev.append((step, score))
                log.info("task %s: seed %d step %d/%d dev %s %.4f", spec.task_name, seed, step, steps, spec.metric,
                         score)
                if best is None or better * score > better * best[0]:
                    state = ({k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
                             {k: v.detach().to("cpu", copy=True) for k, v in head.state_dict().items()})
                    best = (score, step, state)
        if best is not None and best[1] != steps:
            model.load_state_dict(best[2][0])
            head.load_state_dict(best[2][1])
        if best is not None:
            dev_scores.append(best[0])
            chosen.append(best[1])
            result.selection.append({"seed": seed, "dev": [list(x) for x in seed_dev], "chosen_step": best[1]})
            result.notes.append(f"seed {seed}: dev {spec.metric} " + ", ".join(f"step {k} {v:.4f}"
                                                                           for k, v in seed_dev)
                                + f"; step {best[1]} chosen")
        preds.append(_predict(spec, model, head, test, enc_test, labels, pad, ctx, mu, sd))
        del model, head, opt, best
        log.info("task %s: seed %d fine-tuned for %d steps", spec.task_name, seed, steps)
    result.n_examples = ctx.seeds * (steps * spec.finetune_batch_size + len(test) + len(evals) * len(dev))
    budget = f"{spec.finetune_epochs:g} epoch(s) = {steps} steps" if spec.finetune_epochs is not None else \
        f"{steps} steps"
    result.notes.append(f"{budget} x batch {spec.finetune_batch_size}, lr {spec.finetune_lr}, max_length "
                        f"{spec.max_length}, {ctx.seeds} seed(s); " +
                        (f"checkpoint chosen on dev ({len(dev)} records, {len(evals)} evaluations), test scored "
                         "with it" if dev else "no dev split: the last step is scored"))
    if dev_scores:
        result.extras["dev_best"] = sum(dev_scores) / len(dev_scores)
    out = finish(spec, data, _gold(spec, test), preds, result)
    if dev_scores:
        out.extras["dev_best"] = sum(dev_scores) / len(dev_scores)
    return out
