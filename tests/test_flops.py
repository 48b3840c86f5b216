"""FLOPs accounting against hand-computed values, and the formulas against real models' tensors."""

from __future__ import annotations

import math

import pytest

from domainlm.device import bf16_is_fast
from domainlm.errors import DomainLMError
from domainlm.flops import (
    CHINCHILLA_TOKENS_PER_PARAM,
    chinchilla_optimal_tokens,
    measure_matmul_peak,
    mfu,
    model_flops,
    training_flops,
)


def _gpt2_medium():
    from transformers import GPT2Config

    return GPT2Config(n_embd=1024, n_layer=24, n_head=16, vocab_size=50257, n_positions=1024)


def test_gpt2_medium_parameter_count_by_hand():
    fb = model_flops(_gpt2_medium(), seq_len=1024)
    d, L, V = 1024, 24, 50257
    # Per layer: 12·d² weights (QKV 3d², out d², MLP 8d²) + 13·d biases/LayerNorms; final LayerNorm 2d.
    assert fb.non_embedding_params == L * (12 * d * d + 13 * d) + 2 * d == 302_311_424
    # Token embeddings (tied with the head) + learned positions.
    assert fb.embedding_params == V * d + 1024 * d == 52_511_744
    assert fb.total_params == 354_823_168  # the "355M" of GPT-2 medium
    assert fb.counted_from == "config"


def test_gpt2_medium_on_1b_tokens_is_2e18_flops():
    fb = model_flops(_gpt2_medium(), seq_len=1024)
    tokens = 1e9
    # The check: 6·N·D with N = 355M, D = 1B ≈ 2.1e18 (Chinchilla counts embeddings).
    assert fb.chinchilla_6n * tokens == pytest.approx(2.129e18, rel=1e-3)
    assert fb.kaplan_6n * tokens == pytest.approx(6 * 302_311_424 * 1e9)
    # Our fuller count adds attention (2·24·1024·1024 per token) and the head (2·1024·50257), 3× for training.
    forward = 2 * 302_311_424 + 2 * 24 * 1024 * 1024 + 2 * 1024 * 50257
    assert fb.forward_flops_per_token == forward
    assert training_flops(fb, tokens) == pytest.approx(3 * forward * tokens)
    assert training_flops(fb, tokens) == pytest.approx(2.3e18, rel=0.02)


def test_kaplan_and_chinchilla_differ_by_the_embeddings():
    fb = model_flops(_gpt2_medium(), seq_len=1024)
    assert fb.chinchilla_6n - fb.kaplan_6n == 6 * fb.embedding_params
    # For GPT-2 medium the embeddings are about 15% of all parameters; Kaplan leaves them out.
    assert fb.embedding_params / fb.total_params == pytest.approx(0.148, abs=0.001)


def test_attention_term_scales_with_seq_len():
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=64, intermediate_size=192, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=260, tie_word_embeddings=False)
    short, long = model_flops(cfg, seq_len=128), model_flops(cfg, seq_len=1024)
    assert short.attention_flops_per_token == 2 * 4 * 128 * 64  # 2·n_layer·n_ctx·d_attn
    assert long.attention_flops_per_token == 2 * 4 * 1024 * 64
    assert long.forward_flops_per_token - short.forward_flops_per_token == 2 * 4 * (1024 - 128) * 64
    assert short.non_embedding_params == long.non_embedding_params


def test_llama_hand_computed_with_gqa_and_untied_head():
    from transformers import LlamaConfig

    # SmolLM2-135M's shape: d 576, 30 layers, 9 heads of 64, 3 KV heads, MLP 1536, vocab 49152, tied.
    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True)
    fb = model_flops(cfg, seq_len=2048)
    per_layer = 576 * 576 + 2 * 576 * 192 + 576 * 576 + 3 * 576 * 1536 + 2 * 576
    assert fb.non_embedding_params == 30 * per_layer + 576
    assert fb.embedding_params == 49152 * 576
    assert fb.total_params == 134_515_008  # SmolLM2-135M's published count
    untied = model_flops(LlamaConfig(**{**cfg.to_dict(), "tie_word_embeddings": False}), seq_len=2048)
    assert untied.embedding_params == 2 * 49152 * 576


def test_head_fraction_and_lora_trainable_fraction():
    from transformers import BertConfig

    cfg = BertConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                     vocab_size=1000, max_position_embeddings=128)
    full = model_flops(cfg, seq_len=128)
    masked = model_flops(cfg, seq_len=128, head_fraction=0.15)
    assert full.head_flops_per_token == 2 * 64 * 1000
    assert full.forward_flops_per_token - masked.forward_flops_per_token == pytest.approx(0.85 * 2 * 64 * 1000)
    assert full.training_flops_per_token == 3 * full.forward_flops_per_token
    lora = model_flops(cfg, seq_len=128, trainable_fraction=0.01)
    assert lora.training_flops_per_token == pytest.approx(2.01 * lora.forward_flops_per_token)
    frozen = model_flops(cfg, seq_len=128, trainable_fraction=0.0)
    assert frozen.training_flops_per_token == 2 * frozen.forward_flops_per_token


def _configs():
    from transformers import BertConfig, GPT2Config, LlamaConfig, RobertaConfig

    from domainlm.sources.tiny import tiny_config

    return {
        "tiny-llama": (tiny_config("tiny-llama", 260), "causal"),
        "tiny-bert": (tiny_config("tiny-bert", 261), "masked"),
        "tiny-esm": (tiny_config("tiny-esm", 33), "masked"),
        "tiny-esm-absolute": (tiny_config("tiny-esm", 33, position_embedding_type="absolute",
                                          emb_layer_norm_before=True), "masked"),
        "llama-gqa-bias": (LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                       num_attention_heads=6, num_key_value_heads=2, vocab_size=50,
                                       attention_bias=True, mlp_bias=True, tie_word_embeddings=True), "causal"),
        "gpt2": (GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64, n_inner=80,
                            bos_token_id=0, eos_token_id=0), "causal"),
        "bert-untied": (BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   vocab_size=100, max_position_embeddings=64, tie_word_embeddings=False), "masked"),
        "roberta": (RobertaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                  vocab_size=100), "masked"),
    }


@pytest.mark.parametrize("name", list(_configs()))
def test_formula_matches_the_models_own_tensors(name):
    """Tier 3 parity: the config formula counts what transformers actually builds."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    config, kind = _configs()[name]
    auto = AutoModelForCausalLM if kind == "causal" else AutoModelForMaskedLM
    with torch.device("meta"):
        model = auto.from_config(config)
    by_formula = model_flops(config, seq_len=64)
    by_model = model_flops(model, seq_len=64)
    assert by_model.counted_from == "model"
    assert (by_formula.non_embedding_params, by_formula.embedding_params) == (
        by_model.non_embedding_params, by_model.embedding_params)
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert by_model.total_params == total
    assert by_formula.forward_flops_per_token == by_model.forward_flops_per_token


def test_unknown_family_is_counted_on_the_meta_device():
    from transformers import Qwen2Config

    cfg = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=80, tie_word_embeddings=True)
    fb = model_flops(cfg, seq_len=16)
    assert fb.counted_from == "meta"
    assert fb.embedding_params == 80 * 32
    # Qwen2 adds biases to q, k and v (not o): 32 + 2·16 per layer on top of the Llama formula.
    per_layer = 32 * 32 + 2 * 32 * 16 + 32 * 32 + 3 * 32 * 64 + 2 * 32 + (32 + 2 * 16)
    assert fb.non_embedding_params == 2 * per_layer + 32


def test_lora_model_infers_trainable_fraction():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from domainlm.sources.tiny import tiny_config

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(tiny_config("tiny-llama", 260))
    base_fb = model_flops(base, seq_len=32)
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    fb = model_flops(model, seq_len=32)
    lora_params = 4 * 2 * (2 * 64 * 2)  # 4 layers × 2 modules × (A: r·d + B: d·r)
    assert fb.non_embedding_params == base_fb.non_embedding_params + lora_params
    assert fb.trainable_fraction == pytest.approx(lora_params / fb.total_params)
    assert 2 < fb.training_flops_per_token / fb.forward_flops_per_token < 2.01


def test_bad_arguments_are_refused():
    from transformers import GPT2Config

    with pytest.raises(DomainLMError, match="seq_len"):
        model_flops(GPT2Config(), seq_len=0)
    with pytest.raises(DomainLMError, match="head_fraction"):
        model_flops(GPT2Config(), seq_len=8, head_fraction=1.5)
    with pytest.raises(DomainLMError, match="peak_flops"):
        mfu(1.0, 1.0, 0.0)


def test_mfu_and_chinchilla_tokens():
    assert mfu(tokens_per_s=1000, training_flops_per_token=6e6, peak_flops=1.2e10) == pytest.approx(0.5)
    assert CHINCHILLA_TOKENS_PER_PARAM == 20
    assert chinchilla_optimal_tokens(70e9) == pytest.approx(1.4e12)  # Chinchilla itself: 70B on 1.4T


@pytest.mark.parametrize("machine,flags,fast,basis", [
    ("x86_64", ["avx2", "fma"], False, "no avx512_bf16 or amx_bf16"),  # the AVX2-only EPYC: emulated, no timing
    ("x86_64", ["avx2", "avx512f", "avx512_bf16", "amx_bf16"], True, "amx_bf16"),  # Sapphire Rapids Xeon
    ("x86_64", ["avx2", "avx512f", "avx512_bf16"], True, "measured"),  # Zen 4 EPYC: timed, see below
    ("aarch64", [], False, "measured")])  # flags say nothing: timed
def test_bf16_answer_comes_from_the_cpu_flags_where_they_settle_it(monkeypatch, machine, flags, fast, basis):
    import platform

    from domainlm import device, flops

    monkeypatch.delenv("DOMAINLM_BF16_FAST", raising=False)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    monkeypatch.setattr(device, "cpu_flags", lambda: flags)
    device._decided_bf16_is_fast.cache_clear()
    # where timing decides: a busy machine's samples, one of each kind disturbed (a lost core reads low); the
    # best-of-rounds ratio is the undisturbed 3x (AVX512-BF16) or 0.02x (emulated), whatever sample came first
    fp32 = iter([2e9, 20e9, 20e9, 20e9, 20e9])
    bf16 = iter([60e9, 60e9, 1e9, 60e9, 60e9] if fast else [0.4e9] * 5)
    calls = []
    monkeypatch.setattr(flops, "measure_matmul_peak",
                        lambda dtype, **kw: calls.append(dtype) or next(fp32 if dtype == "fp32" else bf16))
    try:
        assert bf16_is_fast() is fast
        assert basis in device.bf16_basis()
        assert (len(calls) == 10) == (basis == "measured")  # the flags' answers time nothing
        if basis == "measured":
            assert calls[:2] == ["fp32", "bf16"]  # interleaved: a burst of load hits both kinds alike
            assert ("ratio 3" if fast else "ratio 0.02") in device.bf16_basis()
    finally:
        device._decided_bf16_is_fast.cache_clear()


def test_matmul_peak_is_measured():
    peak = measure_matmul_peak("fp32", seconds=0.05, size=128)
    assert math.isfinite(peak) and peak > 1e6  # any CPU manages a MFLOP/s
    assert isinstance(bf16_is_fast(), bool)
    with pytest.raises(DomainLMError, match="dtype"):
        measure_matmul_peak("int3")
