"""Fine-tune a task head with the whole model for a fixed small budget, once per seed.

The head is a linear layer on the model's hidden states (the first piece of each word for token
tasks, pooled states for sequence tasks), so any ``AutoModel`` body works, causal or bidirectional,
and a LoRA run merged by :func:`~domainlm.bench.loading.load_for_eval` needs no extra code. The
budget is a fixed number of AdamW steps (``finetune_steps``) with 10% linear warm-up and linear
decay, the schedule BERT fine-tuning uses. Seeds change the head initialisation, dropout and batch
order; the report gives mean +- std over them.
"""

from __future__ import annotations

import copy
import logging
import random
from typing import Any

from domainlm.bench.data import TaskData
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
from domainlm.bench.modes import ModeResult, RunContext, finish
from domainlm.bench.tasks import TaskSpec

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


def run_finetune(loaded: LoadedModel, spec: TaskSpec, data: TaskData, ctx: RunContext) -> ModeResult:
    import numpy as np
    import torch
    import torch.nn.functional as F

    result = ModeResult(mode="finetune")
    labels = _label_space(spec, data)
    index = {label: i for i, label in enumerate(labels)}
    train, test = data.train, data.test
    enc_train, enc_test = _encode(loaded, spec, train), _encode(loaded, spec, test)
    pad = ensure_pad(loaded.tokenizer)
    n_out = 1 if spec.head == "regression" else len(labels)
    if spec.head == "regression":
        y = np.asarray([ex.label for ex in train], dtype=np.float64)
        mu, sd = float(y.mean()), float(y.std() or 1.0)
    steps, warm = spec.finetune_steps, max(1, spec.finetune_steps // 10)

    def schedule(step: int) -> float:
        return min((step + 1) / warm, max(0.0, (steps - step) / max(1, steps - warm)))

    preds = []
    for seed in range(ctx.seeds):
        torch.manual_seed(seed)
        rng = random.Random(seed)
        model = copy.deepcopy(loaded.model).to(ctx.device)
        model.train()
        head = torch.nn.Linear(model.config.hidden_size, n_out).to(ctx.device)
        params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
        opt = torch.optim.AdamW(params, lr=spec.finetune_lr, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        order: list[int] = []
        for _ in range(steps):
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
        model.eval()
        pred: list[Any] = [None] * len(test)
        with torch.inference_mode(), autocast(ctx.device, ctx.bf16):
            for idx, batch in batches(enc_test, spec.batch_size, pad, ctx.device):
                rows = [enc_test[i] for i in idx]
                out, picks = _outputs(spec, model, head, batch, rows)
                out = out.float().cpu()
                if spec.head == "token":
                    sent = {i: ["O"] * len(test[i].tokens) for i in idx}
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
        preds.append(pred)
        del model, head, opt
        log.info("task %s: seed %d fine-tuned for %d steps", spec.task_name, seed, steps)
    result.n_examples = ctx.seeds * (steps * spec.finetune_batch_size + len(test))
    gold = [ex.tags if spec.head == "token" else ex.label for ex in test]
    result.notes.append(f"{steps} steps x batch {spec.finetune_batch_size}, lr {spec.finetune_lr}, "
                        f"{ctx.seeds} seed(s)")
    return finish(spec, data, gold, preds, result)
