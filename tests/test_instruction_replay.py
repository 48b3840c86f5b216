"""Instruction-aware replay (issue 30): reading chat/instruction JSONL, the loss mask on exactly the assistant
tokens (chat template and plain layout), the mask applied in adapt's batches, self-replay's determinism, the
shipped instruction card, and a resumed run with instruction replay matching the uninterrupted one bitwise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from domainlm.corpora import instructions as ins
from domainlm.errors import ConfigError, DataError
from domainlm.lm_loss import IGNORE

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a kinase?"},
        {"role": "assistant", "content": "An enzyme that adds phosphate."}, {"role": "user", "content": "Example?"},
        {"role": "assistant", "content": "EGFR."}]


@pytest.fixture(scope="module")
def plain_tok():
    from domainlm.sources.load import load_tokenizer
    from domainlm.sources.resolution import resolve

    return load_tokenizer(resolve("tiny-llama"))


@pytest.fixture(scope="module")
def chat_tok(plain_tok):
    import copy

    tok = copy.deepcopy(plain_tok)
    tok.chat_template = CHATML
    return tok


def test_reads_openai_and_alpaca_records_and_names_the_bad_line(tmp_path):
    f = tmp_path / "mix.jsonl"
    f.write_text(json.dumps({"messages": CONV}) + "\n\n" +
                 json.dumps({"instruction": "Define apoptosis.", "input": "One sentence.", "output": "Cell death."}) + "\n")
    convs = ins.read_conversations(f)
    assert convs[0] == CONV
    assert convs[1] == [{"role": "user", "content": "Define apoptosis.\n\nOne sentence."},
                        {"role": "assistant", "content": "Cell death."}]
    assert ins.looks_like_instructions(f) and not ins.looks_like_instructions(tmp_path / "absent.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": CONV}) + "\n" + json.dumps({"messages": [{"role": "user", "content": "Hi"}]}))
    with pytest.raises(DataError, match=r"bad.jsonl:2: the conversation has no assistant answer"):
        ins.read_conversations(bad)
    bad.write_text(json.dumps({"text": "plain"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: a record needs 'messages'"):
        ins.read_conversations(bad)


def test_loss_mask_covers_exactly_the_assistant_tokens_in_the_chat_template(chat_tok):
    ids, mask = ins.encode(chat_tok, CONV)
    assert len(ids) == len(mask)
    masked = chat_tok.decode([i for i, k in zip(ids, mask, strict=True) if k])
    assert masked == "An enzyme that adds phosphate.<|im_end|>\nEGFR.<|im_end|>\n"
    unmasked = chat_tok.decode([i for i, k in zip(ids, mask, strict=True) if not k])
    assert unmasked == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is a kinase?<|im_end|>\n"
                        "<|im_start|>assistant\n<|im_start|>user\nExample?<|im_end|>\n<|im_start|>assistant\n")
    assert chat_tok.decode(ids) == chat_tok.apply_chat_template(CONV, tokenize=False)


def test_loss_mask_in_the_plain_layout_for_a_model_without_a_template(plain_tok):
    ids, mask = ins.encode(plain_tok, CONV)
    text = plain_tok.decode(ids)
    assert text == ("Be brief.\n\nQuestion: What is a kinase?\nAnswer: An enzyme that adds phosphate.\n\n"
                    "Question: Example?\nAnswer: EGFR.</s>")
    assert plain_tok.decode([i for i, k in zip(ids, mask, strict=True) if k]) == \
        "An enzyme that adds phosphate.EGFR.</s>"


def test_prepared_blocks_carry_the_mask_and_batches_ignore_every_other_label(tmp_path, chat_tok):
    from domainlm.adapt.batches import BatchBuilder
    from domainlm.corpora import load_prepared

    f = tmp_path / "chat.jsonl"
    f.write_text("".join(json.dumps({"messages": CONV}) + "\n" for _ in range(6)))
    m = ins.prepare_instructions(f, chat_tok, 32, tmp_path / "prep")
    ds = load_prepared(tmp_path / "prep", "train")
    assert set(ds.column_names) == {"input_ids", "doc_ids", "loss_mask"} and len(ds) == m["splits"]["train"]["blocks"]
    assert m["counts"]["loss_tokens"] == sum(sum(r) for r in ds["loss_mask"])
    assert ins.prepare_instructions(f, chat_tok, 32, tmp_path / "prep")["created"] == m["created"]  # reused

    domain = load_prepared(tmp_path / "prep", "train").remove_columns("loss_mask").with_format("torch")
    replay = ds.with_format("torch")
    builder = BatchBuilder({"domain": domain, "replay": replay}, None, seed=0, document_mask=True)
    # causal: label i is token i+1, so it counts where token i+1 is an assistant token (and not across documents)
    _, labels, _ = builder.labelled(torch.tensor([[10, 11, 12, 13, 14]]), torch.zeros(1, 5, dtype=torch.long), [0],
                                    loss_mask=torch.tensor([[0, 0, 1, 1, 0]]))
    assert labels.tolist() == [[IGNORE, 12, 13, IGNORE, IGNORE]]

    ids, docs, got = builder.rows([("domain", 0), ("replay", 0)])
    assert got[0].all() and torch.equal(got[1].bool(), replay[0]["loss_mask"].bool())  # domain rows count every token
    _, labels, _ = builder.labelled(ids, docs, [0, 1], loss_mask=got)
    row_mask = replay[0]["loss_mask"].bool()
    counted = labels[1] != IGNORE
    assert counted[:-1].tolist() == (row_mask[1:] & (docs[1][1:] == docs[1][:-1])).tolist()
    assert (labels[0] != IGNORE).sum() == (docs[0][1:] == docs[0][:-1]).sum()


def test_self_replay_is_deterministic_for_a_seed(plain_tok):
    from domainlm.generate.run import load_causal

    model, tok = load_causal("tiny-llama")
    convs = ins.read_conversations(ins_path())
    a = ins.self_answers(model, tok, convs, 3, seed=1, max_new_tokens=4, batch_size=2)
    b = ins.self_answers(model, tok, convs, 3, seed=1, max_new_tokens=4, batch_size=2)
    c = ins.self_answers(model, tok, convs, 3, seed=2, max_new_tokens=4, batch_size=2)
    assert a == b and len(a) == 3
    assert [x[0]["content"] for x in a] != [x[0]["content"] for x in c]  # another seed, other prompts
    assert all(x[-1]["role"] == "assistant" and x[:-1] == ins.prompt_of(x) for x in a)


def ins_path() -> Path:
    from domainlm.corpora.cards import instructions_path

    path = instructions_path("instructions-sample")
    assert path is not None
    return path


def test_shipped_instruction_sample_loads_and_is_not_a_corpus_to_prepare():
    from domainlm.corpora.cards import card_prepare_values, load_card

    card = load_card("instructions-sample")
    assert card["kind"] == "instructions"
    convs = ins.read_conversations(ins_path())
    assert 60 <= len(convs) <= 100
    topics = [json.loads(line)["topic"] for line in ins_path().read_text().splitlines()]
    assert {"general", "biomed"} == set(topics)
    with pytest.raises(ConfigError, match="is an instruction set"):
        card_prepare_values("instructions-sample")


def test_self_replay_needs_a_causal_model_and_an_instruction_source():
    from domainlm.adapt.config import AdaptConfig
    from domainlm.config import build

    with pytest.raises(ConfigError, match="'self_replay' needs a causal model"):
        build(AdaptConfig, {"self_replay": 4, "objective": "masked"})
    with pytest.raises(ConfigError, match="'self_replay' must be 0 or more"):
        build(AdaptConfig, {"self_replay": -1})
    assert build(AdaptConfig, {"self_replay": 4, "replay_fraction": 0.2}).self_replay == 4
    with pytest.raises(ConfigError, match="'self_replay' replays into corpus"):  # not silently dropped by a mixture
        build(AdaptConfig, {"self_replay": 4, "sources": ["pubmed-sample=1"]})


def _cli(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "domainlm", "adapt", *args], capture_output=True, text=True,
                          env={**os.environ, "DOMAINLM_PROGRESS": "0", **(env or {})}, timeout=600)


def _losses(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["type"] == "train"]


@pytest.mark.slow  # three adapt processes: about a minute on a quiet 2-core machine
def test_resume_mid_run_with_instruction_replay_is_bitwise(llama_corpus, tmp_path):
    args = ["--model", "tiny-llama", "--corpus", str(llama_corpus), "--max-steps", "6", "--save-every", "3",
            "--eval-every", "0", "--batch-size", "2", "--eval-batches", "1", "--log-every", "1", "--lr", "0.003",
            "--replay-corpus", "instructions-sample", "--replay-fraction", "0.5"]
    ref = _cli(args + ["--out", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr
    stream = json.loads((tmp_path / "ref/manifest.json").read_text())["stream"]
    assert stream["replay_kind"] == "instructions" and stream["replay_sequences"] > 0
    killed = _cli(args + ["--out", str(tmp_path / "cut")], env={"DOMAINLM_FAULT": "step:5"})
    assert killed.returncode == -9
    shutil.rmtree(tmp_path / "cut" / "corpora")  # the packed instruction set is rebuilt the same way on resume
    resumed = _cli(args + ["--out", str(tmp_path / "cut"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "ref")
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "ref/final/model.safetensors")), load_file(str(tmp_path / "cut/final/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
