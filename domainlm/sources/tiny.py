"""Tiny architectures built from a config: Llama, BERT and ESM-2 with 4 layers and hidden 64, and their byte-level
or amino-acid tokenizers (tests, scaling sweeps, from-scratch protein models)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from domainlm.artifacts import atomic_dir
from domainlm.errors import SourceError
from domainlm.sources.source import ModelSource, cache_dir

TINY = {
    "tiny-llama": ("causal", "Llama, 4 layers, hidden 64, byte-level tokenizer (built from a config)"),
    "tiny-bert": ("masked", "BERT, 4 layers, hidden 64, byte-level tokenizer (built from a config)"),
    "tiny-esm": ("protein", "ESM-2 style, 4 layers, hidden 64, amino-acid tokenizer (built from a config)"),
}

# ESM-2's alphabet in its vocabulary order, so ids match facebook/esm2_* checkpoints.
ESM_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K",
             "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>"]


def byte_level_tokenizer(kind: Literal["causal", "masked"]):
    """A 256-symbol byte-level BPE tokenizer with no merges: needs no training and never meets an unknown."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<pad>", "<s>", "</s>", "<unk>"] if kind == "causal" else ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=specials[-1] if kind == "causal" else "[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    if kind == "masked":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                       sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=2048)


def tiny_config(name: str, vocab_size: int, **overrides: Any):
    """The config of a tiny architecture; ``overrides`` resize it (scaling sweeps)."""
    from transformers import BertConfig, EsmConfig, LlamaConfig

    if name == "tiny-llama":
        cfg = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=192, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048, bos_token_id=1,
                   eos_token_id=2, pad_token_id=0, tie_word_embeddings=False, rope_theta=10000.0)
        cfg.update(overrides)
        return LlamaConfig(**cfg)
    if name == "tiny-bert":
        cfg = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                   num_attention_heads=4, max_position_embeddings=512, pad_token_id=0)
        cfg.update(overrides)
        return BertConfig(**cfg)
    if name == "tiny-esm":
        # ESM-2 settings (rotary positions, pre-LN without the embedding LayerNorm) except token dropout:
        # ESM rescales embeddings by the mask ratio of the whole row, which would leak across packed documents.
        cfg = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                   num_attention_heads=4, max_position_embeddings=1026, position_embedding_type="rotary",
                   pad_token_id=1, mask_token_id=32, emb_layer_norm_before=False, token_dropout=False,
                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        cfg.update(overrides)
        return EsmConfig(**cfg)
    raise SourceError(f"unknown tiny architecture '{name}'; known: {', '.join(TINY)}")


def build_tiny(name: str, out: str | Path, *, seed: int = 0, **overrides: Any) -> Path:
    """Build a tiny model + tokenizer from a config into ``out`` (safetensors) and return the folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, EsmTokenizer

    out = Path(out)
    with atomic_dir(out) as tmp:
        if name == "tiny-esm":
            vocab_file = tmp / "vocab.txt"
            vocab_file.write_text("\n".join(ESM_VOCAB) + "\n")
            tokenizer = EsmTokenizer(vocab_file=str(vocab_file))
        else:
            tokenizer = byte_level_tokenizer("causal" if name == "tiny-llama" else "masked")
        config = tiny_config(name, len(tokenizer), **overrides)
        torch.manual_seed(seed)
        auto = AutoModelForCausalLM if name == "tiny-llama" else AutoModelForMaskedLM
        model = auto.from_config(config)
        from domainlm.noise import no_transformers_bars

        with no_transformers_bars():  # the first `domainlm models` builds three: three bars of one tiny shard
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "domainlm_source.json").write_text(json.dumps({"tiny": name, "seed": seed, "overrides": overrides}))
    return out


def tiny_source(name: str) -> ModelSource:
    kind, desc = TINY[name]
    folder = cache_dir() / "tiny" / name
    if not (folder / "config.json").is_file():
        build_tiny(name, folder)
    return ModelSource(name, kind, "tiny: built from a config in code", str(folder), description=desc)
