"""Perplexity parity: our numbers equal exp(mean token loss) from the Hugging Face model's own loss."""

from __future__ import annotations

import math

import pytest
import torch

from domainlm.bench.loading import load_for_eval
from domainlm.bench.perplexity import (
    causal_scores,
    causal_windows,
    masked_scores,
    plain_perplexity,
    special_wrap,
    summarise,
)

TEXT = "Aspirin reduced the risk of stroke in adults with atrial fibrillation."


@pytest.fixture(scope="module")
def llama():
    return load_for_eval("tiny-llama")


@pytest.fixture(scope="module")
def esm():
    return load_for_eval("tiny-esm")


def test_causal_perplexity_equals_hf_loss(llama):
    tok = llama.tokenizer
    ids = torch.tensor([[tok.bos_token_id] + tok(TEXT, add_special_tokens=False).input_ids])
    ours = summarise(causal_scores(llama.model, tok, [TEXT], window=512))
    assert ours["tokens"] == ids.shape[1] - 1  # every text token scored, BOS only as context
    assert ours["per_token"] == pytest.approx(plain_perplexity(llama.model, ids), rel=1e-5)


def test_causal_sliding_window_scores_each_token_once(llama):
    assert causal_windows(list(range(10)), window=4, stride=2) == [(0, 4, 4), (2, 6, 2), (4, 8, 2), (6, 10, 2)]
    tok = llama.tokenizer
    ids = [tok.bos_token_id] + tok(TEXT, add_special_tokens=False).input_ids
    windowed = causal_scores(llama.model, tok, [TEXT], window=16, stride=8)[0]
    assert windowed.tokens == len(ids) - 1
    # Reference: for each window, the model's own loss over its new tokens, summed by hand.
    nll = 0.0
    for begin, end, new in causal_windows(ids, 16, 8):
        x = torch.tensor([ids[begin:end]])
        labels = x.clone()
        labels[0, :end - begin - min(new, end - begin - 1)] = -100
        with torch.inference_mode():
            loss = llama.model(input_ids=x, labels=labels).loss
        nll += float(loss) * int((labels[0, 1:] != -100).sum())
    assert windowed.nll == pytest.approx(nll, rel=1e-5)


def test_masked_pseudo_perplexity_equals_one_at_a_time_hf_loss(esm):
    seq = "MKTAYIAKQRQI"
    tok = esm.tokenizer
    ours = masked_scores(esm.model, tok, [seq], window=64)[0]
    prefix, suffix = special_wrap(tok)
    content = tok(seq, add_special_tokens=False).input_ids
    full = prefix + content + suffix
    losses = []
    for i in range(len(content)):
        x = torch.tensor([full])
        x[0, len(prefix) + i] = tok.mask_token_id
        labels = torch.full_like(x, -100)
        labels[0, len(prefix) + i] = full[len(prefix) + i]
        with torch.inference_mode():
            losses.append(float(esm.model(input_ids=x, labels=labels).loss))
    assert ours.tokens == len(content) == len(seq)
    assert math.exp(ours.nll / ours.tokens) == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-5)
    assert 0 <= ours.correct <= ours.tokens


def test_normalisations_and_budget(esm, llama):
    s = summarise(causal_scores(llama.model, llama.tokenizer, [TEXT, "Short text."], window=64))
    assert s["chars"] == len(TEXT) + len("Short text.")
    assert s["words"] == len(TEXT.split()) + 2
    assert s["per_word"] == pytest.approx(math.exp(s["nll"] / s["words"]))
    assert s["bits_per_char"] == pytest.approx(s["nll"] / s["chars"] / math.log(2))
    # A budget cuts the second document and leaves an empty row for the third (kept aligned).
    scores = masked_scores(esm.model, esm.tokenizer, ["MKTAYIAK", "MKVLAAGIVGLLLA", "MDE"], window=32, max_tokens=12)
    assert [x.tokens for x in scores] == [8, 4, 0]
    assert [x.chars for x in scores] == [8, 4, 0]
