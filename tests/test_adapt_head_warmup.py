"""Head-first warm-up and a lower body learning rate (issue 17): a fresh masked-LM head's random gradients
must not reach the pretrained body while ``head_warmup_steps`` last, and ``body_lr_ratio`` scales the body's
updates only. Tiny BERT built from a config, real adapt loop, a few steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from domainlm.adapt import adapt
from domainlm.adapt.build import _head_param_ids, _param_groups
from domainlm.adapt.config import AdaptConfig
from domainlm.adapt.setup import prepare_model

FAST = dict(batch_size=4, eval_batches=1, log_every=1, seed=0, eval_every=0, save_every=0, warmup_ratio=0.0,
            whole_word_mask=True)


@pytest.fixture(scope="module")
def bert_corpus(tmp_path_factory) -> Path:
    from domainlm.corpora.run import prepare_card

    out = tmp_path_factory.mktemp("corpus") / "mat-tiny-bert"
    prepare_card("arxiv-materials-sample", "tiny-bert", out, block_size=64)
    return out


def _initial_state() -> dict[str, torch.Tensor]:
    # prepare_model seeds before building, so this is exactly the model adapt starts from.
    model = prepare_model(AdaptConfig(model="tiny-bert", seed=0)).model
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _final_state(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "final" / "model.safetensors"))


def _delta(a: dict, b: dict, head: bool) -> float:
    keys = [k for k in a if k in b and k.startswith("cls.") == head and a[k].is_floating_point()]
    assert keys, "no parameters compared"
    return sum(float((a[k] - b[k]).float().norm() ** 2) for k in keys) ** 0.5


def test_head_and_body_are_split_by_the_base_model_prefix():
    model = prepare_model(AdaptConfig(model="tiny-bert", seed=0)).model
    head = _head_param_ids(model)
    names = {n for n, p in model.named_parameters() if id(p) in head}
    assert names and all(n.startswith("cls.") for n in names)
    assert not any(id(p) in head for n, p in model.named_parameters() if n.startswith("bert."))
    groups = _param_groups(model, 0.01, 0.25, head)
    scales = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert all(scales[id(p)] == (1.0 if id(p) in head else 0.25) for p in model.parameters() if p.requires_grad)
    # the default keeps the historical two groups (decay, no decay), so old checkpoints still resume
    assert len(_param_groups(model, 0.01)) == 2


def test_head_warmup_leaves_the_body_untouched(bert_corpus, tmp_path):
    init = _initial_state()
    adapt(model="tiny-bert", corpus=str(bert_corpus), out=str(tmp_path / "frozen"), max_steps=3,
          head_warmup_steps=3, lr=3e-3, **FAST)
    frozen = _final_state(tmp_path / "frozen")
    assert _delta(frozen, init, head=False) == 0.0
    assert _delta(frozen, init, head=True) > 0.0
    # after the warm-up the body trains
    adapt(model="tiny-bert", corpus=str(bert_corpus), out=str(tmp_path / "thawed"), max_steps=3,
          head_warmup_steps=1, lr=3e-3, **FAST)
    assert _delta(_final_state(tmp_path / "thawed"), init, head=False) > 0.0


def test_body_lr_ratio_scales_only_the_body_update(bert_corpus, tmp_path):
    init = _initial_state()
    # One AdamW step moves each weight by about lr (m / sqrt(v) = +-1 on the first step), so the body's
    # update halves with body_lr_ratio 0.5 while the head's stays the same.
    runs = {}
    for ratio in (1.0, 0.5):
        out = tmp_path / f"r{ratio}"
        adapt(model="tiny-bert", corpus=str(bert_corpus), out=str(out), max_steps=1, lr=1e-3, body_lr_ratio=ratio,
              max_grad_norm=0.0, **FAST)
        runs[ratio] = _final_state(out)
    body = _delta(runs[0.5], init, head=False) / _delta(runs[1.0], init, head=False)
    head = _delta(runs[0.5], init, head=True) / _delta(runs[1.0], init, head=True)
    assert body == pytest.approx(0.5, rel=0.02)
    assert head == pytest.approx(1.0, rel=0.02)


def test_bad_values_are_refused():
    problems = AdaptConfig(head_warmup_steps=-1, body_lr_ratio=0.0).problems()
    assert any("head_warmup_steps" in p for p in problems) and any("body_lr_ratio" in p for p in problems)
