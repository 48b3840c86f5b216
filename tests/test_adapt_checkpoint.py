"""Checkpoint save/load on a small module, in one process: the optimizer state round-trips exactly, including
parameters that never had a gradient (a head the objective does not reach)."""

from __future__ import annotations

import torch

from domainlm.adapt.checkpoint import load_checkpoint, save_checkpoint


class _TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(4, 4)
        self.used = torch.nn.Linear(4, 2)
        self.unused = torch.nn.Linear(4, 2)  # trainable, but the loss never reaches it

    def forward(self, x):
        return self.used(torch.relu(self.body(x))).pow(2).mean()


def _step(model, opt, seed):
    g = torch.Generator().manual_seed(seed)
    model(torch.randn(3, 4, generator=g)).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _fresh(seed=0):
    torch.manual_seed(seed)
    model = _TwoHeads()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def test_resume_with_a_parameter_that_never_had_a_gradient_equals_the_uninterrupted_run(tmp_path):
    cpu = torch.device("cpu")
    ref, ref_opt = _fresh()
    for s in range(4):
        _step(ref, ref_opt, s)

    model, opt = _fresh()
    for s in range(2):
        _step(model, opt, s)
    ck = save_checkpoint(tmp_path, 2, model, opt, {"step": 2}, keep_last=2, rank=0, world=1, device=cpu)

    resumed, resumed_opt = _fresh(seed=1)  # other initial weights: all must come from the checkpoint
    load_checkpoint(ck, resumed, resumed_opt, rank=0, world=1, device=cpu)
    assert not any(p in resumed_opt.state for p in resumed.unused.parameters())  # no placeholder moments
    for s in range(2, 4):
        _step(resumed, resumed_opt, s)
    for (name, a), b in zip(ref.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert resumed_opt.state[resumed.body.weight]["step"] == ref_opt.state[ref.body.weight]["step"]
