"""The training stream: replay fraction, determinism, masks, schedule."""

from __future__ import annotations

import math

import pytest
import torch

from domainlm.adapt.build import make_schedule
from domainlm.adapt.config import AdaptConfig
from domainlm.adapt.data import Masker, SequenceStream, replay_draws, sequence_generator, word_start_table
from domainlm.lm_loss import IGNORE
from domainlm.sources.load import load_tokenizer


def test_replay_fraction_matches_config_within_sampling_error():
    n, f = 20000, 0.05
    share = replay_draws(0, n, seed=3, fraction=f).mean()
    sigma = math.sqrt(f * (1 - f) / n)
    assert abs(share - f) < 4 * sigma
    assert not replay_draws(0, 100, seed=3, fraction=0.0).any()


def test_stream_is_deterministic_and_resumable():
    a = SequenceStream.replay(50, 30, seed=1, replay_fraction=0.2)
    full = a.take(40) + a.take(40)
    b = SequenceStream.replay(50, 30, seed=1, replay_fraction=0.2)
    first = b.take(40)
    state = b.state_dict()
    c = SequenceStream.replay(50, 30, seed=1, replay_fraction=0.2)
    c.load_state_dict(state)
    assert first + c.take(40) == full
    domain_rows = [r for s, r in full if s == "domain"]
    assert len(set(domain_rows[:50])) == min(50, len(domain_rows))  # one epoch visits each block once


def test_masking_rate_specials_and_determinism():
    tok = load_tokenizer("tiny-bert")
    masker = Masker(tok, 0.15, whole_word=False)
    ids = torch.tensor([tok("a protein kinase phosphorylates its substrate " * 6)["input_ids"][:64]] * 8)
    gens = [sequence_generator(0, i) for i in range(8)]
    masked, labels = masker(ids, None, gens)
    chosen = labels != IGNORE
    assert 0.08 < chosen.float().mean() < 0.25
    special = torch.tensor([t in tok.all_special_ids for t in ids.view(-1).tolist()]).view(ids.shape)
    assert not (chosen & special).any()
    masked2, labels2 = masker(ids, None, [sequence_generator(0, i) for i in range(8)])
    assert torch.equal(masked, masked2) and torch.equal(labels, labels2)
    assert (masked[chosen] == tok.mask_token_id).float().mean() > 0.6


def test_whole_word_masking_masks_all_pieces_of_a_word():
    tok = load_tokenizer("minilm")
    text = "phosphorylation of tyrosine kinases " * 10
    enc = tok(text)["input_ids"][:60]
    ids = torch.tensor([enc])
    masker = Masker(tok, 0.3, whole_word=True)
    table = word_start_table(tok)
    _, labels = masker(ids, None, [sequence_generator(5, 0)])
    pieces = tok.convert_ids_to_tokens(enc)
    # every '##' continuation is masked exactly when the piece before it is
    for i in range(1, len(enc)):
        if not table[enc[i]] and pieces[i].startswith("##"):
            assert (labels[0, i] != IGNORE) == (labels[0, i - 1] != IGNORE), pieces[i - 1:i + 1]
    assert (labels != IGNORE).any()


def test_lr_schedule_warms_then_decays():
    def factors(schedule: str, total: int = 100) -> list[float]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make_schedule(opt, AdaptConfig(schedule=schedule, warmup_ratio=0.1, min_lr_ratio=0.1), total)
        out = []
        for _ in range(total):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    lrs = factors("cosine")  # warmup: 10 steps from 0.1 (never a step at lr 0), then cosine down to 0.1
    assert lrs[0] == pytest.approx(0.1) and lrs[10] == pytest.approx(1.0) and lrs[5] == pytest.approx(0.55)
    assert lrs[-1] == pytest.approx(0.1, abs=0.01) and all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert factors("linear")[55] == pytest.approx(0.55)  # halfway through the decay: 1 - 0.9 / 2
    assert factors("constant")[10:] == [1.0] * 90
