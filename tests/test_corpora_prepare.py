"""corpus prepare: packing, splits, deduplication, resume, reuse, cards and the CLI, with tiny tokenizers."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from domainlm.artifacts import sha256_file
from domainlm.cli import main
from domainlm.corpora import PrepareConfig, prepare
from domainlm.corpora import run as prepare_mod
from domainlm.corpora.cards import list_cards, load_card
from domainlm.corpora.clean import clean_text, validation_of
from domainlm.corpora.pack import load_documents, load_prepared, read_corpus_manifest
from domainlm.corpora.run import prepare_card
from domainlm.errors import ConfigError, DataError, IncompleteArtifactError
from domainlm.sources.load import load_tokenizer

FIX = Path(__file__).parent / "fixtures" / "corpora"
PUBMED = [str(FIX / "pubmed_baseline.xml"), str(FIX / "pubmed_update.xml")]

WORDS = ("alloy steel grain boundary diffusion solute vacancy lattice strain stress fatigue crack corrosion oxide "
         "film phase transition glass ceramic polymer fiber composite elastic modulus hardness yield strength "
         "annealing quench temperature pressure density defect dislocation twin precipitate matrix interface").split()


def _docs(n: int, seed: int = 0, words: int = 60) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=words)) + "." for _ in range(n)]


def _jsonl(path: Path, texts: list[str], prefix: str = "doc") -> Path:
    path.write_text("".join(json.dumps({"id": f"{prefix}{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def _blocks(out: Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Both columns as 2-D arrays of their stored dtype (the numpy formatter would upcast to int64)."""
    table = load_prepared(out, split).with_format("arrow")[:]
    n = table.num_rows
    return tuple(np.asarray(table.column(c).combine_chunks().flatten()).reshape(n, -1)
                 for c in ("input_ids", "doc_ids"))  # type: ignore[return-value]


def _documents_from_blocks(ids: np.ndarray, docs: np.ndarray) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for tok, d in zip(ids.ravel().tolist(), docs.ravel().tolist(), strict=True):
        out.setdefault(d, []).append(tok)
    return out


def test_causal_packing_appends_eos_and_keeps_doc_ids(tmp_path):
    out = tmp_path / "pm"
    manifest = prepare(inputs=PUBMED, model="tiny-llama", out=str(out), block_size=32, validation_fraction=0.0)
    assert manifest["complete"] and read_corpus_manifest(out)["fingerprint"] == manifest["fingerprint"]
    tok = load_tokenizer("tiny-llama")
    ids, docs = _blocks(out)
    assert ids.dtype == np.int32 and ids.shape[1] == 32 and docs.shape == ids.shape
    assert (np.diff(docs.ravel()) >= 0).all()  # documents in order; a long one continues into the next block
    assert tok.pad_token_id not in ids  # never padded
    table = load_documents(out)
    assert table["id"] == ["90000001", "90000002", "90000004", "90000006"]
    by_doc = _documents_from_blocks(ids, docs)
    for index in list(by_doc)[:-1]:  # the last document may be cut by the dropped final partial block
        assert by_doc[index][-1] == tok.eos_token_id
        assert by_doc[index].count(tok.eos_token_id) == 1
    text = tok.decode(by_doc[0], skip_special_tokens=True)
    assert text == clean_text(
        "Hepatic steatosis in a fictional cohort.\nBACKGROUND: Fatty liver disease is common in the invented town "
        "of Lowell Creek.\nMETHODS: We measured hepatic fat in 120 volunteers with magnetic resonance "
        "spectroscopy.\nRESULTS: Steatosis was found in 41 volunteers and correlated with waist circumference.")
    counts = manifest["counts"]
    assert counts["tokens"] == sum(table["tokens"])
    assert counts["tokens"] == counts["tokens_in_blocks"] + sum(counts["tail_tokens_dropped"].values())
    assert counts["tail_tokens_dropped"]["train"] < 32
    assert counts["drops"] == {"deleted": 1, "no_abstract": 1, "superseded": 1}
    assert manifest["splits"]["train"]["blocks"] == len(ids)
    assert manifest["tokenizer"]["separator"] == tok.eos_token and manifest["block_size"] == 32
    assert [i["sha256"] for i in manifest["inputs"]] == [sha256_file(p) for p in PUBMED]
    assert {"transformers", "datasets", "tokenizers"} <= set(manifest["versions"])


def test_bert_and_esm_wrapping(tmp_path):
    out = tmp_path / "b"
    prepare(inputs=[str(FIX / "arxiv.jsonl")], model="tiny-bert", out=str(out), block_size=16, validation_fraction=0)
    tok = load_tokenizer("tiny-bert")
    ids, docs = _blocks(out)
    by_doc = _documents_from_blocks(ids, docs)
    first = by_doc[0]
    assert first[0] == tok.cls_token_id and first[-1] == tok.sep_token_id
    assert tok.eos_token_id is None or tok.eos_token_id not in first
    out = tmp_path / "p"
    manifest = prepare(inputs=[str(FIX / "proteins.fasta")], model="tiny-esm", out=str(out), block_size=16,
                       validation_fraction=0, min_length=10)
    tok = load_tokenizer("tiny-esm")
    assert manifest["tokenizer"]["mode"] == "chars"
    ids, docs = _blocks(out)
    first = _documents_from_blocks(ids, docs)[0]
    expected = tok("MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEGLYTHM"
                   "KALRPDEDRLSPLHSVYVDQWDWE")["input_ids"]
    assert first == list(expected)  # <cls> residues <eos>, exactly as the ESM tokenizer encodes it
    assert manifest["content"] == "protein" and manifest["counts"]["drops"] == {"invalid_alphabet": 2}


def test_split_is_stable_when_files_are_added(tmp_path):
    a = _jsonl(tmp_path / "a.jsonl", _docs(40, 1), "a")
    b = _jsonl(tmp_path / "b.jsonl", _docs(40, 2), "b")
    kw = dict(model="tiny-llama", block_size=16, validation_fraction=0.2, near_dup=False)
    prepare(inputs=[str(a)], out=str(tmp_path / "one"), **kw)
    prepare(inputs=[str(a), str(b)], out=str(tmp_path / "two"), **kw)
    one = load_documents(tmp_path / "one")
    two = load_documents(tmp_path / "two")
    split_one = dict(zip(one["id"], one["split"], strict=True))
    split_two = dict(zip(two["id"], two["split"], strict=True))
    assert all(split_two[k] == v for k, v in split_one.items())
    assert {v for v in split_two.values()} == {"train", "validation"}
    assert all((split_one[k] == "validation") == validation_of(k, 0.2) for k in split_one)


def test_exact_and_near_duplicates_are_dropped(tmp_path):
    texts = _docs(6, 3)
    words = texts[0].split()
    words[30] = "unrelatedword"
    near = " ".join(words)
    src = _jsonl(tmp_path / "d.jsonl", texts + [texts[1], "  " + texts[2].replace(" ", "  ") + " ", near])
    m = prepare(inputs=[str(src)], model="tiny-llama", out=str(tmp_path / "o"), block_size=16, validation_fraction=0)
    assert m["counts"]["drops"] == {"exact_duplicate": 2, "near_duplicate": 1}  # whitespace differences are repaired
    assert m["counts"]["documents"] == 6
    m = prepare(inputs=[str(src)], model="tiny-llama", out=str(tmp_path / "o2"), block_size=16, validation_fraction=0,
                dedup=False, near_dup=False)
    assert m["counts"]["documents"] == 9 and m["counts"]["drops"] == {}


def _task_streams(out: Path, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(token ids, doc ids) of each pack task's blocks, flattened: the unit blocks never cross."""
    m = read_corpus_manifest(out)
    ids, docs = _blocks(out, split)
    block, streams, at = m["block_size"], [], 0
    for task in m["layout"]["tasks"]:
        n = task["blocks"][split]
        streams.append((ids[at:at + n].ravel(), docs[at:at + n].ravel()))
        at += n
    assert at == len(ids) and all(len(s[0]) % block == 0 for s in streams)
    return streams


def test_one_and_four_tasks_keep_the_same_documents_and_blocks_differ_only_at_task_ends(tmp_path):
    """Blocks never span tasks: each task packs its own documents and drops its own partial block per split.
    Everything else is the same on any task count: documents, their global indices and token counts, and every
    block is a run of the one-task token stream."""
    docs = _docs(700, 4)
    srcs = [str(_jsonl(tmp_path / f"d{k}.jsonl", docs[k * 175:(k + 1) * 175], prefix=f"f{k}-")) for k in range(4)]
    kw = dict(inputs=srcs, model="tiny-llama", block_size=64, validation_fraction=0.1, shard_size=300)
    one = prepare(out=str(tmp_path / "one"), tasks=1, **kw)
    four = prepare(out=str(tmp_path / "four"), tasks=4, workers=2, **kw)
    assert four["executor"]["tasks"] == 4 and len(four["layout"]["tasks"]) == 4
    same = ("documents", "tokens", "records_read", "drops", "word_tokenised_documents")
    assert {k: one["counts"][k] for k in same} == {k: four["counts"][k] for k in same}
    assert load_documents(tmp_path / "one").to_dict() == load_documents(tmp_path / "four").to_dict()
    for s in ("train", "validation"):
        assert one["splits"][s]["documents"] == four["splits"][s]["documents"]
        assert four["counts"]["tail_tokens_dropped"][s] <= 4 * (64 - 1)
    c = four["counts"]
    assert c["tokens"] == c["tokens_in_blocks"] + sum(c["tail_tokens_dropped"].values())
    extra = sum(four["counts"]["tail_tokens_dropped"].values()) - sum(one["counts"]["tail_tokens_dropped"].values())
    assert four["layout"]["tail_tokens_from_task_boundaries"] == extra > 0
    assert one["layout"]["tail_tokens_from_task_boundaries"] == 0
    table = load_documents(tmp_path / "one")
    for split in ("train", "validation"):
        (whole_ids, whole_docs), = _task_streams(tmp_path / "one", split)
        for ids, doc_ids in _task_streams(tmp_path / "four", split):
            # A task's stream is the one-task stream from its first document on, cut at a block boundary.
            # (The last task's cut may fall after the one-task cut: compare what both hold.)
            start = int(np.flatnonzero(whole_docs == doc_ids[0])[0])
            n = min(len(ids), len(whole_ids) - start)
            assert n > len(ids) - 64
            assert np.array_equal(whole_ids[start:start + n], ids[:n])
            assert np.array_equal(whole_docs[start:start + n], doc_ids[:n])
        # Every document's length in the table is what the blocks hold of it, unless it was cut at a task's end.
        lengths = dict(zip(table["doc_index"], table["tokens"], strict=True))
        got = Counter(_blocks(tmp_path / "four", split)[1].ravel().tolist())
        assert sum(got[d] == lengths[d] for d in got) >= len(got) - 4


def test_interrupted_prepare_resumes_with_the_finished_tasks(tmp_path, monkeypatch):
    src = _jsonl(tmp_path / "d.jsonl", _docs(50, 5) + [_docs(1, 5)[0]])  # one exact duplicate
    kw = dict(inputs=[str(src)], model="tiny-llama", block_size=32, validation_fraction=0.2, shard_size=10)
    prepare(out=str(tmp_path / "whole"), **kw)
    out = tmp_path / "cut"

    def stop_after_two(shard):
        if shard == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(prepare_mod, "_after_shard", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        prepare(out=str(out), **kw)
    assert not (out / "manifest.json").exists()
    with pytest.raises(IncompleteArtifactError):
        load_prepared(out)
    assert (out / ".work" / "logs" / "read" / "completions" / "00000").is_file()
    from domainlm.corpora.steps.read import ReadClean

    calls, reads = [], []
    monkeypatch.setattr(prepare_mod, "_after_shard", calls.append)
    monkeypatch.setattr(ReadClean, "run", lambda self, *a, **k: reads.append(a) or iter(()))
    manifest = prepare(out=str(out), **kw)
    assert calls == [0, 1, 2, 3, 4]  # the pack task is redone (50 documents, 10 a document file) ...
    assert reads == []  # ... the finished read stage is not
    whole = read_corpus_manifest(tmp_path / "whole")
    assert manifest["counts"] == whole["counts"] and manifest["splits"] == whole["splits"]
    assert manifest["counts"]["drops"] == {"exact_duplicate": 1}
    for split in ("train", "validation"):
        a, da = _blocks(out, split)
        b, db = _blocks(tmp_path / "whole", split)
        assert np.array_equal(a, b) and np.array_equal(da, db)
    assert not (out / ".work").exists()


def test_finished_folder_is_reused_and_changes_need_overwrite(tmp_path):
    kw = dict(inputs=PUBMED, model="tiny-llama", out=str(tmp_path / "o"), block_size=32)
    first = prepare(**kw)
    again = prepare(**kw)
    assert again["created"] == first["created"]
    with pytest.raises(ConfigError, match="block_size.*--overwrite|--overwrite"):
        prepare(**{**kw, "block_size": 64})
    replaced = prepare(**{**kw, "block_size": 64, "overwrite": True})
    assert replaced["block_size"] == 64 and len(_blocks(tmp_path / "o")[0][0]) == 64
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="never deletes folders it did not write"):
        prepare(**{**kw, "out": str(stranger), "overwrite": True})
    assert (stranger / "notes.txt").exists()


def test_config_problems_are_reported_together():
    with pytest.raises(ConfigError) as err:
        prepare(inputs=["x.fasta"], model="tiny-llama", out="o", block_size=4, validation_fraction=1.5,
                format="fasta", categories=["cond-mat.mtrl-sci"], near_dup_threshold=2)
    assert len(err.value.problems) == 4
    with pytest.raises(ConfigError, match="did you mean 'block_size'"):
        prepare(inputs=["x"], model="m", out="o", blocksize=3)
    with pytest.raises(ConfigError, match="'model' is required"):
        prepare(inputs=PUBMED, out="o")


def test_bad_inputs_stop_without_a_finished_looking_folder(tmp_path):
    data = gzip.compress((FIX / "pubmed_baseline.xml").read_bytes())
    cut = tmp_path / "pubmed25n0001.xml.gz"
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "o"
    with pytest.raises(DataError, match="truncated"):
        prepare(inputs=[str(cut)], model="tiny-llama", out=str(out))
    assert not (out / "manifest.json").exists()
    with pytest.raises(DataError, match="no document .* survived"):
        prepare(inputs=[str(FIX / "arxiv.jsonl")], model="tiny-llama", out=str(tmp_path / "o2"),
                categories=["q-bio.NC"])
    with pytest.raises(DataError, match="no complete block"):
        prepare(inputs=[str(FIX / "plain.txt")], model="tiny-llama", out=str(tmp_path / "o3"), block_size=4096)
    assert not (tmp_path / "o3" / "manifest.json").exists()


def test_every_card_loads_and_unknown_cards_get_suggestions():
    cards = list_cards()
    assert {"pubmed", "arxiv-materials", "uniprot-sprot", "pubmed-sample", "arxiv-materials-sample", "uniprot-sample",
            "general-english-sample"} <= set(cards)
    for name in cards:
        card = load_card(name)
        assert card["name"] == name
        # an instruction set (replayed by adapt, not prepared) names its JSONL instead of prepare settings
        body = "instructions" if card.get("kind") == "instructions" else "prepare"
        assert {"description", "source", "license", "format", body} <= set(card)
    with pytest.raises(ConfigError, match="did you mean 'pubmed-sample'") as err:
        load_card("pubmed-sampel")
    assert "uniprot-sprot" in str(err.value)


def test_bad_card_reports_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nprepare:\n  inputs: [x]\n  blok_size: 3\n  min_chars: lots\n")
    with pytest.raises(ConfigError) as err:
        load_card(bad)
    text = str(err.value)
    assert "missing key 'license'" in text and "did you mean 'block_size'" in text and "'min_chars'" in text


def test_sample_cards_prepare_quickly(tmp_path):
    for name in ("pubmed-sample", "arxiv-materials-sample", "uniprot-sample", "general-english-sample"):
        values = load_card(name)["prepare"]
        if not all((Path(load_card(name)["path"]).parent / p).exists() for p in values["inputs"]):
            pytest.skip(f"the shipped sample of {name} is not there yet")
    m = prepare_card("pubmed-sample", "tiny-llama", tmp_path / "pm", block_size=128)
    drops = m["counts"]["drops"]
    assert drops["deleted"] == 2 and drops["superseded"] == 1 and drops["exact_duplicate"] >= 1
    assert drops["no_abstract"] >= 10 and m["splits"]["validation"]["blocks"] > 0
    m2 = prepare_card("uniprot-sample", "tiny-esm", tmp_path / "pr", block_size=128)
    assert m2["counts"]["drops"]["too_short"] == 2 and m2["counts"]["drops"]["invalid_alphabet"] >= 1
    again = prepare_card("pubmed-sample", "tiny-llama", tmp_path / "pm", block_size=128)
    assert again["created"] == m["created"]


def test_cli_prepare_and_clear_errors(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["corpus", "prepare", "--inputs", ",".join(PUBMED), "--model", "tiny-llama", "--out", str(out),
                 "--block-size", "32"]) == 0
    assert read_corpus_manifest(out)["counts"]["documents"] == 4
    (tmp_path / "card.yaml").write_text(
        "name: fixture\ndescription: d\nsource: s\nlicense: l\nformat: pubmed-xml\n"
        f"prepare:\n  inputs: [{PUBMED[0]}, {PUBMED[1]}]\n  block_size: 16\n")
    assert main(["corpus", "prepare", "--card", str(tmp_path / "card.yaml"), "--model", "tiny-llama", "--out",
                 str(tmp_path / "c"), "--near-dup-num-perm", "64"]) == 0
    m = read_corpus_manifest(tmp_path / "c")
    assert len(m["inputs"]) == 2 and m["block_size"] == 16 and m["config"]["near_dup_num_perm"] == 64
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    code = main(["corpus", "prepare", "--inputs", str(tmp_path / "bad.jsonl"), "--model", "tiny-llama", "--out",
                 str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 1 and "no 'text' field" in err and "Traceback" not in err
    code = main(["corpus", "prepare", "--inputs", "nothing-here.xml", "--model", "tiny-llama", "--out",
                 str(tmp_path / "n"), "--block-size", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "block_size" in err


def test_prepare_config_is_a_recipe_schema(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("inputs: [a.xml]\nformat: pubmed-xml\nblock_size: 128\n")
    from domainlm.config import load

    cfg = load(PrepareConfig, recipe, {"model": "tiny-llama", "out": "o"})
    assert cfg.block_size == 128 and cfg.format == "pubmed-xml"


SPACED = ("Staining with 5 - bromo - 2 ' - deoxyuridine ( BrdU kit ; Boehringer , Germany ) per the manufacturer ' s "
          "protocol in 2 % formalin , 10 ng / ml [ 3 ] .")
RAW = ("Staining with 5-bromo-2'-deoxyuridine (BrdU kit; Boehringer, Germany) per the manufacturer's protocol in 2% "
       "formalin, 10 ng/ml [3].")


def test_detokenize_undoes_ner_spacing_and_leaves_raw_text_alone():
    from domainlm.corpora.clean import detokenize

    assert detokenize(SPACED) == RAW
    assert detokenize(RAW) == RAW
    assert detokenize("a 1 - 2 h range ( n = 3 )") == "a 1-2 h range (n = 3)"


def test_looks_word_tokenised_tells_ner_spacing_from_raw_text():
    from domainlm.corpora.clean import looks_word_tokenised

    assert looks_word_tokenised(SPACED)
    assert looks_word_tokenised("Patients were treated with cisplatin .")
    assert not looks_word_tokenised(RAW)
    assert not looks_word_tokenised("Doses of 2.5 mg (n = 3) were given; 10 ng/ml.")
    assert not looks_word_tokenised("no punctuation at all")


def test_prepare_notes_word_tokenised_text_and_suggests_detokenize(tmp_path, caplog):
    spaced = [SPACED.replace("Staining", f"Staining {i}") for i in range(3)]
    raw = [RAW.replace("Staining", f"Labelling {i}") for i in range(3)]
    kw = dict(model="tiny-llama", block_size=8, validation_fraction=0, near_dup=False)

    def run(name: str, docs: list[str], **extra) -> dict:
        prepare(inputs=[str(_jsonl(tmp_path / f"{name}.jsonl", docs))], out=str(tmp_path / name), **kw, **extra)
        return read_corpus_manifest(tmp_path / name)

    with caplog.at_level("WARNING"):
        m = run("spaced", spaced + raw[:1])
    assert m["counts"]["word_tokenised_documents"] == 3
    (note,) = [n for n in m["notes"] if "word-tokenised" in n]
    assert note.startswith("3 of 4 documents look word-tokenised") and "--detokenize" in note
    assert any("--detokenize" in r.getMessage() for r in caplog.records)
    raw_m = run("raw", raw)
    assert raw_m["counts"]["word_tokenised_documents"] == 0 and not any("word-tokenised" in n for n in raw_m["notes"])
    detok = run("detok", spaced, detokenize=True)  # the fix applied: nothing left to note
    assert not any("word-tokenised" in n for n in detok["notes"])


def test_prepare_detokenize_option_rewrites_documents_and_is_off_by_default(tmp_path):
    src = _jsonl(tmp_path / "ner.jsonl", [SPACED, RAW.replace("Staining", "Labelling")])
    kw = dict(inputs=[str(src)], model="tiny-llama", block_size=8, validation_fraction=0, near_dup=False)
    tok = load_tokenizer("tiny-llama")

    def texts(out: Path, **extra) -> list[str]:
        prepare(out=str(out), **kw, **extra)
        by_doc = _documents_from_blocks(*_blocks(out))
        return [tok.decode(by_doc[i], skip_special_tokens=True) for i in sorted(by_doc)]

    on = texts(tmp_path / "on", detokenize=True)
    off = texts(tmp_path / "off")  # off by default
    assert RAW.startswith(on[0]) and not on[0].startswith(SPACED[:20])  # the last block may cut the end
    assert off[0].startswith(SPACED[:60])
    assert read_corpus_manifest(tmp_path / "on")["fingerprint"] != read_corpus_manifest(tmp_path / "off")["fingerprint"]
