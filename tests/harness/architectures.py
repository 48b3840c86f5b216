"""The architecture matrix's rows (tests/test_architectures.py runs them; experiments/architectures.py writes a table
row for each): every family users adapt, as a tiny random model with the traps the family carries."""

from __future__ import annotations

from dataclasses import dataclass, field

_ATTN = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4}
_GQA = {**_ATTN, "num_key_value_heads": 2}
_LLAMA_LORA = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
_BERT_LORA = {"query", "key", "value", "dense"}


@dataclass(frozen=True)
class Arch:
    name: str
    config_class: str  # transformers config class; the architecture is skipped when it is missing
    objective: str  # causal | masked | protein
    config: dict = field(default_factory=dict)
    lora: frozenset = frozenset()  # leaf module names LoRA's default targets must wrap
    fused: bool = True  # whether the fused / masked-only head applies to the family
    # Features whose cell runs in the slow tier: the default tier keeps masking, head and publish (which trains
    # 3 full steps first) for every architecture, within ~3 minutes on 2 cores.
    slow: frozenset = frozenset({"train", "resume", "bench"})


# The traps each family carries (issue 20) are set on purpose: sliding windows of 8 (shorter than the test
# documents), Qwen2's q/k/v biases (its default), Gemma 2's final-logit soft-capping (its default 30),
# Phi-3's fused qkv_proj/gate_up_proj, GPT-2's absolute positions and Conv1D layers, BioGPT's own masking,
# RoBERTa's positions after the padding row, DeBERTa-v3's relative attention and ModernBERT's local attention.
ARCHS = [
    Arch("llama", "LlamaConfig", "causal", _GQA, frozenset(_LLAMA_LORA)),
    Arch("qwen2", "Qwen2Config", "causal", _GQA, frozenset(_LLAMA_LORA)),
    Arch("qwen3", "Qwen3Config", "causal", {**_GQA, "head_dim": 16}, frozenset(_LLAMA_LORA)),
    Arch("mistral", "MistralConfig", "causal", {**_GQA, "sliding_window": 8}, frozenset(_LLAMA_LORA)),
    Arch("gemma2", "Gemma2Config", "causal", {**_GQA, "head_dim": 16, "sliding_window": 8,
                                               "query_pre_attn_scalar": 16}, frozenset(_LLAMA_LORA), fused=False),
    Arch("gemma3", "Gemma3TextConfig", "causal", {**_GQA, "head_dim": 16, "sliding_window": 8,
                                                   "query_pre_attn_scalar": 16}, frozenset(_LLAMA_LORA)),
    Arch("phi3", "Phi3Config", "causal", {**_ATTN, "num_key_value_heads": 4},
         frozenset({"qkv_proj", "o_proj", "gate_up_proj", "down_proj"})),
    Arch("gpt2", "GPT2Config", "causal", {"n_embd": 64, "n_head": 4, "n_layer": 2, "n_positions": 128},
         frozenset({"c_attn", "c_proj", "c_fc"})),
    Arch("biogpt", "BioGptConfig", "causal", dict(_ATTN), frozenset({"q_proj", "k_proj", "v_proj", "out_proj",
                                                                     "fc1", "fc2"})),
    Arch("bert", "BertConfig", "masked", dict(_ATTN), frozenset(_BERT_LORA)),
    Arch("roberta", "RobertaConfig", "masked", {**_ATTN, "max_position_embeddings": 130}, frozenset(_BERT_LORA)),
    Arch("deberta-v2", "DebertaV2Config", "masked",
         {**_ATTN, "relative_attention": True, "position_biased_input": False, "pos_att_type": ["p2c", "c2p"],
          "max_relative_positions": -1, "position_buckets": 16, "norm_rel_ebd": "layer_norm", "share_att_key": True},
         frozenset({"query_proj", "key_proj", "value_proj", "dense"})),
    Arch("modernbert", "ModernBertConfig", "masked",
         {**_ATTN, "global_attn_every_n_layers": 2, "local_attention": 8, "cls_token_id": 2, "sep_token_id": 3,
          "mask_token_id": 4, "bos_token_id": 2, "eos_token_id": 3}, frozenset({"Wqkv", "Wo", "Wi"})),
    Arch("esm", "EsmConfig", "protein",
         {**_ATTN, "position_embedding_type": "rotary", "pad_token_id": 1, "mask_token_id": 32,
          "emb_layer_norm_before": False, "token_dropout": True, "max_position_embeddings": 130},
         frozenset(_BERT_LORA)),
]
