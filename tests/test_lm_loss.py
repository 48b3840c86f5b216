"""Loss numerics: document masking, fused head parity, causal labels, positions, perplexity."""

from __future__ import annotations

import math

import pytest
import torch

from domainlm.lm_loss import (
    IGNORE,
    bidirectional_doc_mask,
    causal_doc_mask,
    causal_labels,
    fused_head_refusal,
    fused_linear_cross_entropy,
    loss_sum,
    perplexity,
    positions_from_doc_ids,
    split_head,
)
from domainlm.sources.load import load_model


def test_positions_restart_at_each_document():
    docs = torch.tensor([[5, 5, 5, 9, 9, 11, 11, 11]])
    assert positions_from_doc_ids(docs).tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    mask = bidirectional_doc_mask(docs)[0, 0]
    assert mask[0, 2] and not mask[2, 3] and mask[3, 4] and not mask[4, 5]


def test_causal_doc_mask_is_block_diagonal_and_causal():
    mask = causal_doc_mask(torch.tensor([[0, 0, 0, 1, 1]]))[0, 0]
    expect = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]])
    assert torch.equal(mask, expect.bool())


def test_fused_head_refused_for_soft_capped_and_unknown_families():
    from transformers import Gemma2Config, Gemma3TextConfig, LlamaConfig, OPTConfig

    assert "soft-caps its final logits" in fused_head_refusal(Gemma2Config())
    assert fused_head_refusal(Gemma3TextConfig()) is None  # Gemma 3 ships without final soft-capping
    assert fused_head_refusal(LlamaConfig()) is None
    assert "not among the families" in fused_head_refusal(OPTConfig())


def test_causal_labels_do_not_cross_documents():
    ids = torch.tensor([[10, 11, 12, 20, 21]])
    docs = torch.tensor([[1, 1, 1, 2, 2]])
    assert causal_labels(ids, docs).tolist() == [[11, 12, IGNORE, 21, IGNORE]]


def _tiny(name):
    model, _ = load_model(name, attn_implementation="sdpa")
    return model.eval()


@pytest.mark.parametrize("name,objective", [("tiny-llama", "causal"), ("tiny-bert", "masked"), ("tiny-esm", "masked")])
def test_token_loss_unchanged_by_unrelated_document_in_front(name, objective):
    """The packing test of the adapt issue: prepend another document, the target document's losses stay."""
    torch.manual_seed(0)
    model = _tiny(name)
    vocab = model.config.vocab_size
    low = 5 if name != "tiny-esm" else 4
    target = torch.randint(low, min(vocab, 200) if name != "tiny-esm" else 24, (1, 12))
    other = torch.randint(low, min(vocab, 200) if name != "tiny-esm" else 24, (1, 7))

    def per_token_losses(ids, docs, start):
        if objective == "causal":
            labels = causal_labels(ids, docs)
        else:
            labels = torch.full_like(ids, IGNORE)
            labels[0, start + 3] = ids[0, start + 3]
            labels[0, start + 8] = ids[0, start + 8]
        out = []
        for pos in (labels[0] != IGNORE).nonzero().squeeze(1).tolist():
            if pos < start:
                continue
            one = torch.full_like(labels, IGNORE)
            one[0, pos] = labels[0, pos]
            out.append(float(loss_sum(model, objective, ids, one, docs, split=split_head(model, objective)).detach()))
        return out

    alone = per_token_losses(target, torch.zeros_like(target), 0)
    packed_ids = torch.cat([other, target], dim=1)
    packed_docs = torch.cat([torch.zeros_like(other), torch.ones_like(target)], dim=1)
    packed = per_token_losses(packed_ids, packed_docs, other.shape[1])
    assert len(alone) == len(packed) > 0
    assert packed == pytest.approx(alone, abs=1e-5)
    # Without document masking the unrelated document leaks in (so the check above can fail).
    leaked = float(loss_sum(model, objective, packed_ids, causal_labels(packed_ids, packed_docs) if objective == "causal"
                            else _mlm_labels(packed_ids, other.shape[1]), packed_docs, document_mask=False))
    masked = float(loss_sum(model, objective, packed_ids, causal_labels(packed_ids, packed_docs) if objective == "causal"
                            else _mlm_labels(packed_ids, other.shape[1]), packed_docs, document_mask=True))
    assert leaked != pytest.approx(masked, abs=1e-6)


def _mlm_labels(ids, start):
    labels = torch.full_like(ids, IGNORE)
    labels[0, start + 3] = ids[0, start + 3]
    labels[0, start + 8] = ids[0, start + 8]
    return labels


def test_fused_head_matches_model_loss_and_gradients():
    torch.manual_seed(0)
    model = _tiny("tiny-llama").train()
    ids = torch.randint(5, 200, (2, 16))
    labels = causal_labels(ids, None)
    reference = model(input_ids=ids, labels=ids).loss  # HF's own shifted mean loss
    count = int((labels != IGNORE).sum())
    ours = loss_sum(model, "causal", ids, labels, None, scale=1.0 / count, split=split_head(model, "causal"))
    assert float(ours) == pytest.approx(float(reference), rel=1e-5)
    ours.backward()
    g_ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    reference.backward()
    for n, p in model.named_parameters():
        assert torch.allclose(g_ours[n], p.grad, atol=1e-6, rtol=1e-4), n


def test_fused_cross_entropy_chunks_agree():
    torch.manual_seed(1)
    h = torch.randn(37, 8, requires_grad=True)
    w = torch.randn(50, 8, requires_grad=True)
    labels = torch.randint(0, 50, (37,))
    labels[5] = IGNORE
    full = torch.nn.functional.cross_entropy(h @ w.t(), labels, ignore_index=IGNORE, reduction="sum")
    chunked = fused_linear_cross_entropy(h, w, None, labels, 1.0, max_logit_elements=50 * 4)
    assert float(chunked) == pytest.approx(float(full), rel=1e-5)
    gh, gw = torch.autograd.grad(full, (h, w))
    ch, cw = torch.autograd.grad(chunked, (h, w))
    assert torch.allclose(gh, ch, atol=1e-5) and torch.allclose(gw, cw, atol=1e-5)


@pytest.mark.parametrize("backend", ["chunked", "compiled:aot_eager"])
def test_fused_cross_entropy_backends_equal_full_logits(backend):
    """The CPU-runnable fused heads against the full-logits loss: the eager chunked head, and the chunk under
    torch.compile (fullgraph; 'aot_eager' traces and differentiates it as inductor would, without a C++ build). The
    chunk size leaves a short last chunk, a second shape. Liger's head needs Triton on CUDA (test below)."""
    torch.manual_seed(2)
    h = torch.randn(45, 16, requires_grad=True)
    w = torch.randn(70, 16, requires_grad=True)
    b = torch.randn(70, requires_grad=True)
    labels = torch.randint(0, 70, (45,))
    labels[[0, 7, 44]] = IGNORE
    full = torch.nn.functional.cross_entropy(h @ w.t() + b, labels, ignore_index=IGNORE, reduction="sum") * 0.5
    fused = fused_linear_cross_entropy(h, w, b, labels, 0.5, max_logit_elements=70 * 8, backend=backend)
    assert float(fused) == pytest.approx(float(full), rel=1e-6)
    for a, c in zip(torch.autograd.grad(full, (h, w, b)), torch.autograd.grad(fused, (h, w, b)), strict=True):
        assert torch.allclose(a, c, atol=1e-6, rtol=1e-5)


def test_fused_backend_choice(monkeypatch):
    import domainlm.lm_loss as lm_loss

    assert lm_loss.fused_backend("cpu") == "chunked"
    monkeypatch.setattr(lm_loss, "_liger_installed", lambda: False)
    assert lm_loss.fused_backend("cuda") == "compiled"
    monkeypatch.setattr(lm_loss, "_liger_installed", lambda: True)
    assert lm_loss.fused_backend("cuda") == "liger"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Liger Kernel and inductor's Triton kernels run on CUDA only")
@pytest.mark.parametrize("backend", ["liger", "compiled"])
def test_fused_cross_entropy_on_cuda(backend):
    if backend == "liger":
        pytest.importorskip("liger_kernel")
    torch.manual_seed(3)
    h = torch.randn(2048, 256, device="cuda", requires_grad=True)
    w = torch.randn(4096, 256, device="cuda", requires_grad=True)
    labels = torch.randint(0, 4096, (2048,), device="cuda")
    labels[::7] = IGNORE
    full = torch.nn.functional.cross_entropy((h.bfloat16() @ w.bfloat16().t()).float(), labels, ignore_index=IGNORE,
                                             reduction="sum")
    fused = fused_linear_cross_entropy(h, w, None, labels, 1.0, compute_dtype=torch.bfloat16, backend=backend)
    assert float(fused) == pytest.approx(float(full), rel=1e-3)
    for a, c in zip(torch.autograd.grad(full, (h, w)), torch.autograd.grad(fused, (h, w)), strict=True):
        assert torch.allclose(a, c, atol=5e-2, rtol=5e-2)


def test_mlm_head_only_at_masked_positions_matches_full_head():
    torch.manual_seed(0)
    model = _tiny("tiny-bert")
    ids = torch.randint(10, 200, (2, 20))
    labels = torch.full_like(ids, IGNORE)
    labels[:, ::4] = ids[:, ::4]
    full = loss_sum(model, "masked", ids, labels, None, split=None)
    gathered = loss_sum(model, "masked", ids, labels, None, split=split_head(model, "masked"))
    assert float(gathered) == pytest.approx(float(full), rel=1e-5)


def test_perplexity_is_exp_mean_loss():
    assert perplexity(math.log(4) * 10, 10) == pytest.approx(4.0)
    assert perplexity(1.0, 0) == math.inf
