"""``domainlm vocab extend``: candidate choice, refusals, embedding init, unchanged outputs, LoRA round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from domainlm.errors import ConfigError

# Hand-written domain text: a few biomedical words repeated often enough to be chosen.
DOMAIN = [
    "Phosphorylation of the kinase domain activates downstream signalling in cardiomyocytes.",
    "The kinase phosphorylates tyrosine residues after ligand binding; the phosphorylation is reversible.",
    "Cardiomyocytes express the receptor, and its phosphorylation depends on the kinase.",
    "Dephosphorylation by a phosphatase terminates the signalling in cardiomyocytes.",
    "Tyrosine phosphorylation of the receptor recruits adaptor proteins to the membrane.",
    "Inhibitors of the kinase reduced phosphorylation and hypertrophy of cardiomyocytes.",
]
HELD_OUT = [
    "In isolated cardiomyocytes, kinase inhibitors lowered receptor phosphorylation.",
    "A phosphatase removes the phosphorylation that the kinase added.",
]
# Four copies, numbered so they are not exact duplicates (which vocab extend drops); numbers are never chosen.
CORPUS = [f"{t} [{k}]" for k in range(4) for t in DOMAIN]
# Text none of whose words can be chosen from DOMAIN (checked in the tests that use it).
PLAIN = "Quick brown foxes jump over lazy dogs."


def _jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("vocab_corpus")
    return _jsonl(d / "domain.jsonl", CORPUS), _jsonl(d / "held.jsonl", HELD_OUT)


def _wordpiece_tokenizer(with_unk: bool = True):
    """An uncased BERT-style WordPiece tokenizer trained on a few general sentences (domain words fragment)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    general = ["the cat sat on the mat and the dog ran to the park", "a quick brown fox jumps over lazy dogs",
               "people read books in the library on rainy days", "she drinks tea with milk every morning"] * 5
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    alphabet = list("abcdefghijklmnopqrstuvwxyz0123456789.,;-")
    tok.train_from_iterator(general, trainers.WordPieceTrainer(vocab_size=150, special_tokens=specials,
                                                               initial_alphabet=alphabet))
    if not with_unk:
        vocab = {t: i for t, i in tok.get_vocab().items() if t != "[UNK]"}
        vocab = {t: k for k, t in enumerate(sorted(vocab, key=vocab.get))}
        bare = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
        bare.normalizer, bare.pre_tokenizer = tok.normalizer, tok.pre_tokenizer
        return PreTrainedTokenizerFast(tokenizer_object=bare)
    vocab = tok.get_vocab()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


@pytest.fixture(scope="module")
def wordpiece_bert(tmp_path_factory) -> Path:
    """A tiny masked BERT (tied output layer, per-token output bias) with an uncased WordPiece tokenizer."""
    from transformers import BertConfig, BertForMaskedLM

    folder = tmp_path_factory.mktemp("wp_bert")
    tokenizer = _wordpiece_tokenizer()
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=128, pad_token_id=0)
    model = BertForMaskedLM(config)
    with torch.no_grad():  # a non-zero bias, so the test can see that new entries are means of pieces
        model.cls.predictions.bias.copy_(torch.randn(len(tokenizer)))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llama_extended(corpus_files, tmp_path_factory):
    from domainlm.vocab import extend

    domain, held = corpus_files
    out = tmp_path_factory.mktemp("vx") / "tiny-llama"
    manifest = extend(model="tiny-llama", corpus=str(domain), held_out=str(held), add=5, min_frequency=3,
                      domain_vocab_size=400, out=str(out))
    return out, manifest


# --------------------------------------------------------------------------------------------------
# Tier 1: tokenizer checks and the ranking, on hand-built tokenizers
# --------------------------------------------------------------------------------------------------

def test_byte_symbol_table_matches_tokenizers():
    from tokenizers import pre_tokenizers

    from domainlm.vocab.candidates import byte_symbols

    table = byte_symbols()
    assert sorted(table.values()) == sorted(pre_tokenizers.ByteLevel.alphabet())
    pt = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    assert all(pt.pre_tokenize_str(chr(b))[0][0] == table[b] for b in range(128))
    assert pt.pre_tokenize_str("é")[0][0] == table[0xC3] + table[0xA9]


def _byte_level_base():
    """Byte-level BPE in which ' kinases' is one token but ' kinase' is four: a prefix collision."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from domainlm.vocab.candidates import byte_symbols

    merges = [("Ġ", "k"), ("i", "n"), ("Ġk", "in"), ("e", "s"), ("s", "es"), ("a", "ses"), ("Ġkin", "ases")]
    vocab = {"<|endoftext|>": 0}
    for sym in sorted(byte_symbols().values()):
        vocab[sym] = len(vocab)
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def test_ranking_counts_tokens_saved_minus_prefix_collisions():
    from domainlm.vocab.candidates import extended_tokenizer, select

    base = _byte_level_base()
    assert base.tokenize(" kinase") == ["Ġkin", "a", "s", "e"]
    assert base.tokenize(" kinases") == ["Ġkinases"]
    texts = ["a kinase b kinase c kinase d kinases e kinases"] * 4  # ' kinase' x12, ' kinases' x8
    sel, _ = select(base, texts, 1, domain_vocab_size=400, min_frequency=3, name="hand-built")
    (c,) = sel.chosen
    assert c.content == " kinase" and c.frequency == 12 and len(c.pieces) == 4
    # 12 x (4 - 1) saved, minus 8 x 1 lost: ' kinases' becomes ' kinase' + 's' (2 tokens instead of 1).
    assert c.collision_cost == 8
    assert c.tokens_saved == 12 * 3 - 8
    ext, ids = extended_tokenizer(base, sel.chosen, sel.family)
    assert ext.convert_ids_to_tokens(ext(" kinase kinases")["input_ids"]) == [" kinase", " kinase", "s"]


def test_uncased_wordpiece_adds_whole_lowercase_words():
    from domainlm.vocab.candidates import extended_tokenizer, select

    base = _wordpiece_tokenizer()
    sel, _ = select(base, CORPUS, 3, domain_vocab_size=300, min_frequency=3, name="tiny-wordpiece")
    words = [c.content for c in sel.chosen]
    assert "phosphorylation" in words and all(w == w.lower() for w in words)
    ext, ids = extended_tokenizer(base, sel.chosen, sel.family)
    new = dict(zip(words, ids, strict=True))
    got = ext("Phosphorylation, PHOSPHORYLATION; dephosphorylation", add_special_tokens=False)["input_ids"]
    # Case-folded like the base tokenizer, and only whole words: 'dephosphorylation' keeps its old pieces.
    assert got[0] == new["phosphorylation"] and got[2] == new["phosphorylation"]
    tail = base("dephosphorylation", add_special_tokens=False)["input_ids"]
    assert got[4:] == tail


def test_too_many_words_requested_names_the_count():
    from domainlm.sources.load import load_tokenizer
    from domainlm.vocab.candidates import select

    with pytest.raises(ConfigError) as err:
        select(load_tokenizer("tiny-llama"), CORPUS, 100_000, domain_vocab_size=400, min_frequency=3,
               name="tiny-llama")
    msg = str(err.value)
    assert "asked to add 100000 words but only" in msg and "--add" in msg and "--min-frequency" in msg


def test_tokenizer_without_unknown_token_is_refused():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from domainlm.vocab.candidates import tokenizer_family

    with pytest.raises(ConfigError, match="no unknown token"):
        tokenizer_family(_wordpiece_tokenizer(with_unk=False), "wp-no-unk")
    bpe = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")]))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ConfigError, match="dropped silently"):
        tokenizer_family(PreTrainedTokenizerFast(tokenizer_object=bpe), "bpe-no-unk")


def test_sentencepiece_style_tokenizer_is_refused_with_the_reason():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from domainlm.vocab.candidates import tokenizer_family

    sp = Tokenizer(models.BPE(vocab={"<unk>": 0, "▁": 1, "a": 2}, merges=[], unk_token="<unk>"))
    sp.pre_tokenizer = pre_tokenizers.Metaspace()
    with pytest.raises(ConfigError, match="SentencePiece-style"):
        tokenizer_family(PreTrainedTokenizerFast(tokenizer_object=sp, unk_token="<unk>"), "sp")


# --------------------------------------------------------------------------------------------------
# Tier 2: extend tiny models end to end
# --------------------------------------------------------------------------------------------------

def test_new_rows_are_means_of_old_pieces_untied(tiny_llama_extended):
    from domainlm.sources.load import load_model, load_tokenizer

    out, manifest = tiny_llama_extended
    base, _ = load_model("tiny-llama")
    ext, _ = load_model(str(out))
    tok = load_tokenizer(str(out))
    assert manifest["kind"] == "vocab" and manifest["complete"] and len(manifest["added"]) == 5
    assert manifest["embeddings"]["tied"] is False and manifest["embeddings"]["output_initialised_separately"]
    assert ext.get_input_embeddings().weight.shape[0] == len(tok) == 260 + 5
    e_old, o_old = base.get_input_embeddings().weight, base.get_output_embeddings().weight
    e_new, o_new = ext.get_input_embeddings().weight, ext.get_output_embeddings().weight
    for a in manifest["added"]:
        pieces = torch.tensor(a["piece_ids"])
        assert a["piece_count"] >= 2
        torch.testing.assert_close(e_new[a["id"]], e_old[pieces].mean(0), rtol=0, atol=1e-6)
        torch.testing.assert_close(o_new[a["id"]], o_old[pieces].mean(0), rtol=0, atol=1e-6)
        # The reloaded tokenizer writes the word as its single new token.
        assert tok(a["token"], add_special_tokens=False)["input_ids"] == [a["id"]]
    torch.testing.assert_close(e_new[:260], e_old)  # old rows untouched


def test_output_on_text_without_new_words_is_unchanged(tiny_llama_extended):
    from domainlm.sources.load import load_model, load_tokenizer

    out, manifest = tiny_llama_extended
    assert not any(a["token"] in " " + PLAIN for a in manifest["added"]), "PLAIN must avoid the added words"
    base_tok, ext_tok = load_tokenizer("tiny-llama"), load_tokenizer(str(out))
    ids = base_tok(PLAIN, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, ext_tok(PLAIN, return_tensors="pt")["input_ids"])
    base, _ = load_model("tiny-llama")
    ext, _ = load_model(str(out))
    with torch.no_grad():
        before, after = base(input_ids=ids).logits, ext(input_ids=ids).logits
    assert after.shape[-1] == before.shape[-1] + 5
    torch.testing.assert_close(after[..., :260], before, rtol=0, atol=1e-5)


def test_report_fragmentation_and_token_counts_fall(tiny_llama_extended):
    _, m = tiny_llama_extended
    frag = m["fragmentation"]["held_out"]
    assert frag["after"]["pieces_per_word"] < frag["before"]["pieces_per_word"]
    for key in ("corpus", "held_out"):
        c = m["token_counts"][key]
        assert c["after"] < c["before"] and c["change"] == pytest.approx(c["after"] / c["before"] - 1)
    assert m["counts"]["added"] == 5 and m["counts"]["candidates"] >= 5
    assert m["inputs"]["corpus"]["documents"] == len(CORPUS)


def test_tied_wordpiece_model_shares_rows_and_says_so(wordpiece_bert, corpus_files, tmp_path, caplog):
    from domainlm.sources.load import load_model, load_tokenizer
    from domainlm.vocab import extend

    domain, held = corpus_files
    base, _ = load_model(str(wordpiece_bert), "masked")
    with caplog.at_level("WARNING"):
        m = extend(model=str(wordpiece_bert), corpus=str(domain), held_out=str(held), add=3, min_frequency=3,
                   domain_vocab_size=300, out=str(tmp_path / "wp"))
    assert "tied embeddings" in caplog.text
    assert m["embeddings"]["tied"] is True and any("tied" in n for n in m["notes"])
    ext, _ = load_model(str(tmp_path / "wp"), "masked")
    assert ext.get_output_embeddings().weight.data_ptr() == ext.get_input_embeddings().weight.data_ptr()
    n_old = len(load_tokenizer(str(wordpiece_bert)))
    for a in m["added"]:
        pieces = torch.tensor(a["piece_ids"])
        torch.testing.assert_close(ext.get_input_embeddings().weight[a["id"]],
                                   base.get_input_embeddings().weight[pieces].mean(0), rtol=0, atol=1e-6)
        torch.testing.assert_close(ext.cls.predictions.bias[a["id"]], base.cls.predictions.bias[pieces].mean(),
                                   rtol=0, atol=1e-6)
    assert ext.get_input_embeddings().weight.shape[0] == n_old + 3


def test_prepared_corpus_is_decoded_and_its_validation_split_is_held_out(corpus_files, tmp_path):
    from domainlm.corpora import prepare
    from domainlm.vocab.texts import read_held_out, read_texts

    prepared = tmp_path / "prepared"
    prepare(inputs=[str(corpus_files[0])], model="tiny-llama", out=str(prepared), block_size=32,
            validation_fraction=0.3, dedup=False, near_dup=False, tasks=1)
    train = read_texts(str(prepared))
    held = read_held_out(None, train)
    assert train.source["kind"] == "prepared" and held.source["split"] == "validation"
    # Whole documents come back (they span several 32-token blocks); only a split's last one may be cut.
    assert set(train.texts[:-1]) <= set(CORPUS) and set(held.texts[:-1]) <= set(CORPUS)
    assert len(train.texts) + len(held.texts) >= len(CORPUS) - 2


def test_raw_inputs_drop_exact_duplicates(tmp_path):
    from domainlm.vocab.texts import read_texts

    texts = read_texts(str(_jsonl(tmp_path / "dup.jsonl", DOMAIN + DOMAIN[:2])))
    assert texts.texts == DOMAIN and texts.source["skipped"] == {"exact_duplicate": 2}


def test_card_corpus_uses_the_cards_held_out_sample(tmp_path):
    from domainlm.vocab import extend

    m = extend(model="tiny-llama", corpus="pubmed-sample", add=10, domain_vocab_size=1000, out=str(tmp_path / "o"))
    assert m["inputs"]["corpus"]["kind"] == "card" and m["inputs"]["corpus"]["documents"] > 150
    held = m["inputs"]["held_out"]
    assert held["split"] == "held_out" and held["files"][0]["path"].endswith("pubmed_heldout_sample.xml")
    assert m["token_counts"]["held_out"]["after"] < m["token_counts"]["held_out"]["before"]


def test_held_out_given_as_a_card_name_reads_its_held_out_files(corpus_files):
    from domainlm.vocab.texts import read_held_out, read_texts

    held = read_held_out("pubmed-sample", read_texts(str(corpus_files[0])))
    assert held.source["split"] == "held_out" and len(held.texts) == 30


def test_unknown_corpus_name_gets_a_hint(tmp_path):
    from domainlm.vocab import extend

    with pytest.raises(ConfigError, match="did you mean 'pubmed-sample'"):
        extend(model="tiny-llama", corpus="pubmed-sampel", add=1, out=str(tmp_path / "o"))


def test_existing_output_is_not_replaced_without_overwrite(tiny_llama_extended, corpus_files):
    from domainlm.vocab import extend

    out, _ = tiny_llama_extended
    with pytest.raises(ConfigError, match="--overwrite"):
        extend(model="tiny-llama", corpus=str(corpus_files[0]), add=1, out=str(out))


def test_cli_reports_too_large_request(corpus_files, tmp_path, capsys):
    from domainlm.cli import main

    domain, held = corpus_files
    code = main(["vocab", "extend", "--model", "tiny-llama", "--corpus", str(domain), "--held-out", str(held),
                 "--add", "5000", "--min-frequency", "3", "--domain-vocab-size", "400", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "domain words qualify" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_protein_model_is_refused(tmp_path):
    from domainlm.vocab import extend

    with pytest.raises(ConfigError, match="one token per residue"):
        extend(model="tiny-esm", corpus="x", add=1, out=str(tmp_path / "o"))


# --------------------------------------------------------------------------------------------------
# save -> reload -> LoRA adapt with trainable embeddings -> merge keeps the new rows
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows", ["new", "all"])
def test_lora_adapt_and_merge_keep_the_new_rows(rows, tiny_llama_extended, corpus_files, tmp_path, monkeypatch,
                                               bf16_fast):
    """'new' trains only the added rows (peft trainable_token_indices); 'all' the whole matrices. Under both bf16
    answers: with bf16 fast the frozen base is stored in bf16, and the base's rows must still come out untouched."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from domainlm.adapt import adapt
    from domainlm.corpora import prepare

    monkeypatch.setenv("DOMAINLM_PROGRESS", "0")
    out, manifest = tiny_llama_extended
    new_ids = [a["id"] for a in manifest["added"]]
    prepare(inputs=[str(corpus_files[0])], model=str(out), out=str(tmp_path / "corpus"), block_size=32,
            validation_fraction=0.2, near_dup=False, dedup=False, tasks=1)
    run = tmp_path / "run"
    adapt(model=str(out), corpus=str(tmp_path / "corpus"), out=str(run), method="lora",
          train_embeddings=True, embedding_rows=rows, max_steps=2, batch_size=2, eval_every=0,
          save_every=0, lr=1e-2)
    assert json.loads((run / "final" / "base_model.json").read_text())["storage"] == (
        "bfloat16" if bf16_fast else "float32")
    base = AutoModelForCausalLM.from_pretrained(out)
    init_in = base.get_input_embeddings().weight.detach().clone()
    init_out = base.get_output_embeddings().weight.detach().clone()
    adapter = load_file(str(run / "final" / "adapter_model.safetensors"))
    merged = PeftModel.from_pretrained(base, run / "final").merge_and_unload()
    emb, head = merged.get_input_embeddings().weight.detach(), merged.get_output_embeddings().weight.detach()
    assert emb.shape[0] == head.shape[0] == 265
    old = [i for i in range(265) if i not in new_ids]
    # The new rows were trained (they moved from their mean-of-pieces start) and survived the merge.
    assert (emb[new_ids] - init_in[new_ids]).abs().max() > 0
    assert (head[new_ids] - init_out[new_ids]).abs().max() > 0
    if rows == "new":
        assert any("trainable_tokens" in k for k in adapter) and not any("modules_to_save" in k for k in adapter)
        torch.testing.assert_close(emb[old], init_in[old], rtol=0, atol=0)  # the base's rows are untouched
        torch.testing.assert_close(head[old], init_out[old], rtol=0, atol=0)
    else:
        trained_in = next(v for k, v in adapter.items() if k.endswith("embed_tokens.modules_to_save.weight"))
        trained_out = next(v for k, v in adapter.items() if k.endswith("lm_head.modules_to_save.weight"))
        torch.testing.assert_close(emb, trained_in)
        torch.testing.assert_close(head, trained_out)
        assert (emb[old] - init_in[old]).abs().max() > 0  # every row of the matrices trained


def test_lora_on_a_vocab_model_without_train_embeddings_warns(tiny_llama_extended, corpus_files, tmp_path, caplog):
    from domainlm.adapt.config import AdaptConfig
    from domainlm.adapt.setup import prepare_model

    out, manifest = tiny_llama_extended
    with caplog.at_level("WARNING"):
        prepare_model(AdaptConfig(model=str(out), corpus="x", method="lora"))
    assert "5 added tokens" in caplog.text and "train_embeddings: true" in caplog.text
