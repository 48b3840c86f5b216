"""Reading-comprehension conversion (issue 30): each miner on sentences written for the test, the rendering
through a chat template and the plain layout, and ``corpus prepare --reading-comprehension`` end to end (manifest
counts, decontamination after the conversion)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from domainlm.corpora import comprehension as rc
from domainlm.errors import ConfigError

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    """tiny-llama with a ChatML chat template added to its tokenizer (a tiny model that has one)."""
    from domainlm.sources.load import load_tokenizer
    from domainlm.sources.resolution import resolve

    src = resolve("tiny-llama")
    out = tmp_path_factory.mktemp("chat") / "tiny-llama-chat"
    shutil.copytree(src.path, out)
    tok = load_tokenizer(src)
    tok.chat_template = CHATML
    tok.save_pretrained(out)
    return out


def test_sentences_split_at_ends_but_not_at_abbreviations():
    text = "Cells were counted (e.g. by flow cytometry). Smith et al. reported it. Then\nA new line."
    assert rc.split_sentences(text) == ["Cells were counted (e.g. by flow cytometry).", "Smith et al. reported it.",
                                        "Then", "A new line."]


def test_definitions_found_and_pronoun_or_long_subjects_refused():
    found = rc.mine_definitions(["Osimertinib is a third-generation EGFR inhibitor that targets T790M.",
                                 "Cytokines are a family of small proteins that regulate immunity.",
                                 "It is a small molecule with good oral availability.",
                                 "The aim of this study is a comparison of two regimens.",
                                 "This is a retrospective cohort of 120 patients.",
                                 "Aspirin was a common choice in the older trials of prevention.",
                                 "Metformin is a drug."])
    assert [(t.question, t.answer[:20]) for t in found] == [("What is osimertinib?", "Osimertinib is a thi"),
                                                            ("What are cytokines?", "Cytokines are a fami")]
    assert {t.kind for t in found} == {"definition"}


def test_connectives_give_cause_effect_and_contrast_items_and_nothing_without_them():
    sents = ["Patients relapsed early because the tumour acquired MET amplification.",
             "Plasma was collected from 120 patients at baseline.",
             "However, tissue biopsies were available in only 40 of them.",
             "Resistance emerged in most patients within two years.",
             "Therefore, combination regimens are now being tested.",
             "MET was amplified in 15% of cases, and therefore MET inhibitors may help."]
    tasks = rc.mine_connectives(sents)
    assert [t.kind for t in tasks] == ["cause", "contrast", "effect", "effect"]
    cause, contrast, effect, inside = tasks
    assert cause.question == "According to the text, why is it that patients relapsed early?"
    assert cause.answer == "Because the tumour acquired MET amplification."
    assert contrast.question.startswith("Plasma was collected from 120 patients at baseline.")
    assert contrast.answer == "Tissue biopsies were available in only 40 of them."
    assert effect.answer == "Combination regimens are now being tested."
    assert inside.question.startswith("MET was amplified in 15% of cases.") and inside.answer == "MET inhibitors may help."
    plain = ["The samples were stored at minus eighty degrees.", "Sequencing used a 74-gene panel on all samples."]
    assert rc.mine_connectives(plain) == []
    # a contrast needs a preceding sentence to contrast with; a sentence-initial "However" alone gives nothing
    assert rc.mine_connectives(["However, the effect was small in older patients."]) == []


def test_keywords_and_completion_come_from_one_sentence_of_the_document():
    sent = "Serial liquid biopsy guides the selection of combination regimens after progression on osimertinib."
    tasks = rc.mine_words([sent, "Too short."], "doc-1")
    kw, comp = tasks
    assert kw.kind == "keywords" and kw.answer == sent
    assert kw.question.endswith("selection, combination, progression, osimertinib.")
    assert comp.kind == "completion"
    prefix = comp.question.split('"')[1].removesuffix(" ...")
    assert f"{prefix} {comp.answer}" == sent
    assert rc.mine_words(["Short one.", "Another short sentence here."], "doc-1") == []
    assert rc.mine_words([sent], "doc-1") == rc.mine_words([sent], "doc-1")  # a pure function of the document


def test_title_tasks_need_a_title_and_a_body():
    body = " ".join(["Resistance to EGFR inhibitors was profiled in plasma from patients."] * 4)
    title = "Plasma profiling of resistance to osimertinib"
    tasks = rc.mine(f"{title}\n{body}", title, "p1")
    assert [t.kind for t in tasks[:2]] == ["title", "abstract"]
    assert tasks[0].answer == title and title in tasks[1].question
    assert not any(t.kind in ("title", "abstract") for t in rc.mine(body, None, "p1"))
    assert rc.mine_title("Too short", body) == []


def test_mine_caps_each_kind_and_the_document():
    sents = " ".join(f"Drug{i} is a kinase inhibitor that blocks signalling in cells." for i in range(6))
    tasks = rc.mine(sents, None, "d")
    assert sum(t.kind == "definition" for t in tasks) == rc.PER_TYPE
    assert len(tasks) <= rc.PER_DOCUMENT


def test_plain_layout_and_chat_template_rendering(chat_model):
    from domainlm.sources.load import load_tokenizer
    from domainlm.sources.resolution import resolve

    tasks = [rc.Task("definition", "What is osimertinib?", "Osimertinib is an EGFR inhibitor.")]
    plain = rc.render("Doc text.", tasks, "plain")
    assert plain == "Doc text.\n\nQuestion: What is osimertinib?\nAnswer: Osimertinib is an EGFR inhibitor."
    tok = load_tokenizer(resolve(str(chat_model)))
    chat = rc.render("Doc text.", tasks, "chat", tok)
    assert chat == (f"<|im_start|>user\n{rc.INSTRUCTION}\n\nDoc text.\n\nWhat is osimertinib?<|im_end|>\n"
                    "<|im_start|>assistant\nOsimertinib is an EGFR inhibitor.<|im_end|>")
    assert rc.render("Doc text.", [], "chat", tok) == "Doc text."
    assert rc.resolve_layout("auto", tok) == "chat"
    plain_tok = load_tokenizer(resolve("tiny-llama"))
    assert rc.resolve_layout("auto", plain_tok) == "plain"
    with pytest.raises(ConfigError, match="no chat template"):
        rc.resolve_layout("chat", plain_tok)


DOCS = [
    {"id": "d1", "text": "Osimertinib is a kinase inhibitor used in lung cancer. Patients relapsed early because the "
                         "tumour acquired MET amplification. Plasma samples were collected at baseline from all "
                         "patients. However, tissue was available in only a few of them."},
    {"id": "d2", "text": "Short text."},
    {"id": "d3", "text": "The kidneys filter blood and regulate the balance of salts in the body of mammals. "
                         "Nephrons are the functional units that do this work in every kidney we examined."},
]


def _decode_all(out: Path, model: str) -> str:
    from domainlm.corpora import load_prepared
    from domainlm.sources.load import load_tokenizer
    from domainlm.sources.resolution import resolve

    tok = load_tokenizer(resolve(model))
    ids = [i for row in load_prepared(out, "train")["input_ids"] for i in row]
    return tok.decode(ids)


def _write_docs(tmp_path: Path) -> dict:
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    return dict(inputs=[str(src)], format="jsonl", block_size=16, validation_fraction=0.0, min_chars=5, near_dup=False)


def test_prepare_converts_and_counts_tasks_per_type(tmp_path):
    from domainlm.corpora import prepare

    common = _write_docs(tmp_path)
    m = prepare(model="tiny-llama", out=str(tmp_path / "plain"), reading_comprehension=True, **common)
    info = m["reading_comprehension"]
    assert info["layout"] == "plain" and info["documents"] == 3 and info["documents_without_tasks"] == 1
    assert info["tasks"]["definition"] == 2 and info["tasks"]["cause"] == 1 and info["tasks"]["contrast"] == 1
    assert info["tasks_total"] == sum(info["tasks"].values())
    text = _decode_all(tmp_path / "plain", "tiny-llama")
    assert "Question: What is osimertinib?\nAnswer: Osimertinib is a kinase inhibitor used in lung cancer." in text
    assert "Short text.</s>" in text  # a document that yielded nothing stays as it was


def test_task_counts_are_of_the_documents_kept_after_deduplication(tmp_path):
    # The conversion runs in the read stage, before duplicates are dropped (at packing): the manifest still counts
    # only the tasks of the documents that reached the corpus.
    from domainlm.corpora import prepare

    common = _write_docs(tmp_path)
    with open(common["inputs"][0], "a") as fh:
        fh.write(json.dumps(dict(DOCS[0], id="d1-copy")) + "\n")
    m = prepare(model="tiny-llama", out=str(tmp_path / "dup"), reading_comprehension=True, dedup=True, **common)
    assert m["counts"]["drops"]["exact_duplicate"] == 1
    info = m["reading_comprehension"]
    assert info["documents"] == 3 and info["tasks"]["definition"] == 2 and info["tasks"]["cause"] == 1


@pytest.mark.slow
def test_prepare_renders_through_the_chat_template_and_decontaminates_after_conversion(tmp_path, chat_model):
    from domainlm.corpora import prepare

    common = _write_docs(tmp_path)
    chat = prepare(model=str(chat_model), out=str(tmp_path / "chat"), reading_comprehension=True, **common)
    assert chat["reading_comprehension"]["layout"] == "chat"
    assert "<|im_start|>assistant\nOsimertinib is a kinase inhibitor" in _decode_all(tmp_path / "chat",
                                                                                       str(chat_model))
    # A test item that matches only the converted text (the question and its answer side by side): the raw
    # document passes decontamination, the converted one is dropped, so the check runs after the conversion.
    test_items = tmp_path / "test_items.txt"
    test_items.write_text("Question: What is osimertinib? Answer: Osimertinib is a kinase\n")
    decont = dict(common, decontaminate=[str(test_items)], decontaminate_ngram=8)
    kept = prepare(model="tiny-llama", out=str(tmp_path / "d-raw"), **decont)
    assert kept["decontamination"]["dropped"] == 0 and "reading_comprehension" not in kept
    dropped = prepare(model="tiny-llama", out=str(tmp_path / "d-rc"), reading_comprehension=True, **decont)
    assert dropped["decontamination"]["dropped"] == 1 and dropped["decontamination"]["examples"][0]["id"] == "d1"


def test_layout_without_reading_comprehension_is_refused(tmp_path):
    from domainlm.corpora import prepare

    with pytest.raises(ConfigError, match="'reading_comprehension' is off"):
        prepare(inputs=["x.jsonl"], model="tiny-llama", out=str(tmp_path / "o"), reading_comprehension_layout="plain")
