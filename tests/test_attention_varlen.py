"""The varlen attention path (issue 32): torch's variable-length flash kernel behind transformers' AttentionInterface.

On CPU: the bookkeeping (``cu_seqlens`` / ``max_seqlen`` from packed document ids against the dense document mask's
blocks), the choice and refusals of ``attention: varlen|auto``, and the plumbing of every family in
``VARLEN_FAMILIES`` (offsets reach every layer, windows and grouped k/v heads are passed right) with a reference
kernel (SDPA per document) standing in for the CUDA one: loss and gradients equal today's SDPA path with its dense
mask. The kernel itself runs only on CUDA (last test, skipped elsewhere).
"""

from __future__ import annotations

import pytest
import torch

import domainlm.attention as attention
from domainlm.attention import VARLEN, register_varlen, resolve_attention, varlen_offsets
from domainlm.errors import ConfigError
from domainlm.lm_loss import bidirectional_doc_mask, causal_labels, loss_sum, split_head


def blocks_from_offsets(cu: torch.Tensor, b: int, n: int) -> torch.Tensor:
    """[B, 1, L, L] mask: True where two positions of a row fall in the same segment of ``cu``."""
    seg = torch.searchsorted(cu[1:-1].long(), torch.arange(b * n), right=True).reshape(b, n)
    return (seg[:, :, None] == seg[:, None, :]).unsqueeze(1)


def packed_doc_ids(lengths_per_row: list[list[int]]) -> torch.Tensor:
    rows, first = [], 0
    for lengths in lengths_per_row:
        row = torch.cat([torch.full((k,), first + i) for i, k in enumerate(lengths)])
        rows.append(row)
        first += len(lengths) - 1  # a row may start inside the previous row's last document, as packing does
    return torch.stack(rows)


def test_offsets_by_hand():
    docs = packed_doc_ids([[2, 3], [1, 4]])  # row 1 starts in document 1, which row 0 ended with
    cu, longest = varlen_offsets(docs)
    assert cu.dtype == torch.int32
    assert cu.tolist() == [0, 2, 5, 6, 10] and longest == 4


@pytest.mark.parametrize("seed", range(5))
def test_offsets_equal_the_dense_mask_blocks(seed):
    g = torch.Generator().manual_seed(seed)
    b, n = 3, 64
    rows = []
    for _ in range(b):
        lengths, left = [], n
        while left:
            k = min(left, int(torch.randint(1, 30, (1,), generator=g)))
            lengths.append(k)
            left -= k
        rows.append(lengths)
    docs = packed_doc_ids(rows)
    cu, longest = varlen_offsets(docs)
    dense = bidirectional_doc_mask(docs)
    assert torch.equal(blocks_from_offsets(cu, b, n), dense)
    assert longest == int(dense.sum(-1).max())  # the longest block: the most keys any query sees
    assert int(cu[-1]) == b * n and len(cu) == sum(len(r) for r in rows) + 1


def test_choice_and_refusals():
    from transformers import BertConfig, BertForMaskedLM, BioGptForCausalLM, LlamaConfig, LlamaForCausalLM

    llama = LlamaConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=1, vocab_size=64)
    bert = BertConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=1, vocab_size=64)  # dropout 0.1
    assert resolve_attention("auto", "causal", LlamaForCausalLM, "cuda", config=llama) == VARLEN
    assert resolve_attention("auto", "causal", LlamaForCausalLM, "cpu", config=llama) == "sdpa"
    assert resolve_attention("auto", "masked", BertForMaskedLM, "cuda", config=bert) == "sdpa"  # attention dropout
    bert.attention_probs_dropout_prob = 0.0
    assert resolve_attention("auto", "masked", BertForMaskedLM, "cuda", config=bert) == VARLEN
    with pytest.raises(ConfigError, match="needs a CUDA GPU") as exc:
        resolve_attention("varlen", "causal", LlamaForCausalLM, "cpu", config=llama)
    assert len(exc.value.problems) == 1
    with pytest.raises(ConfigError, match="AttentionInterface"):
        resolve_attention("varlen", "causal", BioGptForCausalLM, "cuda")
    bert.attention_probs_dropout_prob = 0.1
    with pytest.raises(ConfigError, match="no attention dropout"):
        resolve_attention("varlen", "masked", BertForMaskedLM, "cuda", config=bert)


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False,
                     **_):
    """What varlen_attn computes, written with SDPA one segment at a time (a CPU stand-in for the CUDA kernel)."""
    assert torch.equal(cu_q, cu_k) and max_q == max_k == int((cu_q[1:] - cu_q[:-1]).max())
    assert q.dim() == 3 and enable_gqa == (q.shape[1] != k.shape[1])
    out = q.new_empty(q.shape[0], q.shape[1], v.shape[-1])
    left, right = window_size
    for s, e in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True):
        i = torch.arange(e - s, device=q.device)
        allowed = torch.ones(e - s, e - s, dtype=torch.bool, device=q.device)
        if left >= 0:
            allowed &= (i[:, None] - i[None, :]) <= left
        if right >= 0:
            allowed &= (i[None, :] - i[:, None]) <= right
        qs, ks, vs = (t[s:e].transpose(0, 1) for t in (q, k, v))
        o = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, attn_mask=allowed, scale=scale,
                                                             enable_gqa=enable_gqa)
        out[s:e] = o.transpose(0, 1)
    return out


def dense_reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1),
                           enable_gqa=False, **_):
    """:func:`reference_varlen` as tensor operations only (one masked SDPA over the flat batch), so torch.compile
    can capture a block with it whole (fullgraph) and differentiate it."""
    t = q.shape[0]
    pos = torch.arange(t, device=q.device)
    seg = torch.searchsorted(cu_q[1:-1].long(), pos, right=True)
    rel = pos[:, None] - pos[None, :]  # query minus key
    allowed = seg[:, None] == seg[None, :]
    left, right = window_size
    if left >= 0:
        allowed = allowed & (rel <= left)
    if right >= 0:
        allowed = allowed & (-rel <= right)
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                                           attn_mask=allowed, scale=scale, enable_gqa=enable_gqa)
    return out.transpose(0, 1)


_ATTN = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2,
         "vocab_size": 96, "max_position_embeddings": 128, "pad_token_id": 0}
_GQA = {**_ATTN, "num_key_value_heads": 2}
_NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
FAMILIES = {  # windows of 8, shorter than the documents below, so a wrong window changes the loss
    "llama": ("LlamaConfig", "causal", _GQA),
    "mistral": ("MistralConfig", "causal", {**_GQA, "sliding_window": 8}),
    "qwen2": ("Qwen2Config", "causal", _GQA),
    "qwen3": ("Qwen3Config", "causal", {**_GQA, "head_dim": 16}),
    "gemma3_text": ("Gemma3TextConfig", "causal", {**_GQA, "head_dim": 16, "sliding_window": 8,
                                                   "query_pre_attn_scalar": 16}),
    "phi3": ("Phi3Config", "causal", {**_ATTN, "num_key_value_heads": 4}),
    "bert": ("BertConfig", "masked", {**_ATTN, **_NO_DROPOUT}),
    "roberta": ("RobertaConfig", "masked", {**_ATTN, **_NO_DROPOUT, "max_position_embeddings": 130}),
    "modernbert": ("ModernBertConfig", "masked", {**_ATTN, "global_attn_every_n_layers": 2, "local_attention": 8,
                                                  "cls_token_id": 2, "sep_token_id": 3, "mask_token_id": 4,
                                                  "bos_token_id": 2, "eos_token_id": 3}),
}


def test_families_cover_varlen_families():
    assert set(FAMILIES) == attention.VARLEN_FAMILIES


def _loss_and_grads(model, objective, ids, labels, docs):
    loss = loss_sum(model, objective, ids, labels, docs, split=split_head(model, objective), scale=1.0)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), grads


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_varlen_path_equals_sdpa_with_reference_kernel(family, monkeypatch):
    import transformers
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    cls_name, objective, kw = FAMILIES[family]
    config = getattr(transformers, cls_name)(**kw)
    torch.manual_seed(0)
    auto = AutoModelForCausalLM if objective == "causal" else AutoModelForMaskedLM
    model = auto.from_config(config, attn_implementation="sdpa").train()
    docs = packed_doc_ids([[20, 14, 14], [9, 39]])
    ids = torch.randint(5, 96, docs.shape, generator=torch.Generator().manual_seed(1))
    if objective == "causal":
        labels = causal_labels(ids, docs)
    else:
        labels = torch.where(torch.rand(ids.shape, generator=torch.Generator().manual_seed(2)) < 0.3, ids, -100)
    loss_a, grads_a = _loss_and_grads(model, objective, ids, labels, docs)
    monkeypatch.setattr(attention, "_varlen_kernel", lambda: reference_varlen)
    calls = []
    monkeypatch.setattr(attention, "varlen_offsets", lambda d: calls.append(1) or varlen_offsets(d))
    register_varlen()
    model.set_attn_implementation(VARLEN)
    assert attention.uses_varlen(model)
    loss_b, grads_b = _loss_and_grads(model, objective, ids, labels, docs)
    assert calls == [1]  # offsets built once per batch, not per layer
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for k in grads_a:
        assert torch.allclose(grads_a[k], grads_b[k], atol=1e-5, rtol=1e-4), k


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_compiled_blocks_on_the_varlen_path_are_whole_graphs(family, monkeypatch):
    """``--compile`` with varlen: every block captured as one graph (fullgraph, which compile_blocks turns on for the
    varlen path), AOT-differentiated, equal to eager; a second batch with other documents (another max_length)
    runs too. The CUDA kernel is replaced by a traceable dense reference."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from domainlm.adapt.features import compile_blocks

    cls_name, objective, kw = FAMILIES[family]
    torch.manual_seed(0)
    auto = AutoModelForCausalLM if objective == "causal" else AutoModelForMaskedLM
    model = auto.from_config(getattr(transformers, cls_name)(**kw), attn_implementation="sdpa").train()
    monkeypatch.setattr(attention, "_varlen_kernel", lambda: dense_reference_varlen)
    register_varlen()
    model.set_attn_implementation(VARLEN)
    ids = torch.randint(5, 96, (2, 48), generator=torch.Generator().manual_seed(1))
    batches = [packed_doc_ids([[20, 14, 14], [9, 39]]), packed_doc_ids([[30, 18], [48]])]

    def labels(docs):
        return causal_labels(ids, docs) if objective == "causal" else torch.where(ids % 3 == 0, ids, -100)

    eager = [_loss_and_grads(model, objective, ids, labels(d), d) for d in batches]
    torch._dynamo.reset()
    assert compile_blocks(model, backend="aot_eager") >= 2  # BERT also lists its embeddings as a block
    for (loss_a, grads_a), docs in zip(eager, batches, strict=True):
        loss_b, grads_b = _loss_and_grads(model, objective, ids, labels(docs), docs)
        assert loss_b == pytest.approx(loss_a, rel=1e-5)
        for k in grads_a:
            assert torch.allclose(grads_a[k], grads_b[k], atol=1e-5, rtol=1e-4), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch's varlen_attn is a CUDA flash kernel; the CPU tests "
                    "above check its inputs with an SDPA reference in its place")
def test_varlen_kernel_on_cuda():
    from torch.nn.attention.varlen import varlen_attn

    docs = packed_doc_ids([[100, 60, 96], [31, 225]]).cuda()
    cu, longest = varlen_offsets(docs)
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(docs.numel(), 8, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(docs.numel(), 2, 64, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    for window in ((-1, 0), (-1, -1), (15, 0)):
        out = varlen_attn(q, k, v, cu, cu, longest, longest, window_size=window, enable_gqa=True)
        ref = reference_varlen(*(t.float() for t in (q, k, v)), cu, cu, longest, longest, window_size=window,
                               enable_gqa=True)
        assert torch.allclose(out.float(), ref, atol=2e-2), window
