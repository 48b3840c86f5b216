"""Reading-comprehension conversion (``corpus prepare --reading-comprehension``), after AdaptLLM.

Continued pretraining on raw domain text teaches a chat or instruct model the field but makes it a worse
answerer (AdaptLLM, Cheng et al., ICLR 2024; the quickstart's PubMedQA zero-shot fell 0.537 -> 0.412). Their
remedy: each document is followed by tasks mined from that document alone, phrased as questions with
answers, so the model keeps reading text *and* answering about it. The miners here are patterns over the
document's own sentences:

* ``title``: the document's title from its text (summarisation) and ``abstract``: the opening of the text
  from its title (PubMed and arXiv records, whose readers keep the title in the metadata);
* ``definition``: "X is a Y that ..." -> "What is X?";
* ``cause`` ("A because B" -> why A?), ``effect`` ("A. Therefore, B" -> what follows from A?) and
  ``contrast`` ("A. However, B" -> what qualifies A?), from the connectives;
* ``keywords``: a sentence from its content words, and ``completion``: the second half of a sentence from
  its first half.

Every choice (which sentences, which words) is a pure function of the document, so a re-run converts the
same way. The tasks are rendered with the model's chat template (``tokenizer.apply_chat_template``; the
document opens the first user turn) or, for a model without one, as plain ``Question: ... Answer: ...``
lines after the document. :class:`Comprehension` is applied inside prepare's read stage, after cleaning and
before decontamination and tokenising, so a mined question that copies a test item is dropped too; exact and
near-duplicate detection hash the document as read, without its questions.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

TASK_TYPES = ("title", "abstract", "definition", "cause", "effect", "contrast", "keywords", "completion")
Layout = Literal["auto", "chat", "plain"]

# At most this many tasks of one type per document, and this many in all: a 200-word abstract followed by
# twenty questions would be mostly questions.
PER_TYPE = 2
PER_DOCUMENT = 8

_ABBREV = r"(?<!\be\.g)(?<!\bi\.e)(?<!\bet al)(?<!\bvs)(?<!\bFig)(?<!\bNo)(?<!\bapprox)(?<!\bca)(?<!\bDr)(?<!\bSt)"
_SENTENCE_END = re.compile(_ABBREV + r"(?<=[.!?])\s+(?=[A-Z0-9(\[\"'])")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9\-]+")

# Words that cannot head a definition ("It is a ...", "This is a ...") or be chosen as a keyword.
_PRONOUNS = {"it", "this", "that", "these", "those", "there", "here", "they", "he", "she", "we", "which", "what",
             "one", "each", "such", "our", "its", "their", "his", "her", "all", "both", "another", "other"}
STOPWORDS = _PRONOUNS | {
    "a", "an", "the", "and", "or", "but", "of", "in", "on", "at", "to", "for", "with", "by", "from", "as", "is",
    "are", "was", "were", "be", "been", "being", "has", "have", "had", "not", "no", "than", "then", "into",
    "also", "may", "can", "could", "would", "should", "will", "did", "does", "do", "more", "most", "less", "after",
    "before", "between", "during", "within", "without", "about", "over", "under", "while", "whereas", "these",
    "however", "therefore", "thus", "because", "although", "using", "used", "use", "based", "study", "studies",
    "results", "result", "showed", "shown", "show", "found", "here", "well", "including", "among", "via", "per",
    "both", "either", "neither", "only", "very", "some", "any", "many", "much", "further", "other", "whether",
}

# "X is a/an Y ..." with a short subject that is not a pronoun; X may start with a capital or not.
_DEFINITION = re.compile(r"^(?:(?:An?|The)\s+)?(?P<x>[A-Za-z0-9][\w\-/()α-ωΑ-Ω]*(?:\s+[\w\-/()α-ωΑ-Ω]+){0,5}?)"
                         r"\s+(?:is|are)\s+(?:an?|the)\s+(?P<y>\S.*)$")
_BECAUSE = re.compile(r"^(?P<a>.{10,}?),?\s+because\s+(?:of\s+)?(?P<b>.{10,})$")
_EFFECT_START = re.compile(r"^(?:Therefore|Thus|Hence|Consequently|As a result|Accordingly),\s+(?P<b>.+)$")
_CONTRAST_START = re.compile(r"^(?:However|In contrast|Nevertheless|Nonetheless|Conversely),\s+(?P<b>.+)$")
_EFFECT_INSIDE = re.compile(r"^(?P<a>.{20,}?)[;,]\s+(?:and\s+)?(?:therefore|thus|hence|consequently),?\s+"
                            r"(?P<b>.{10,})$")


@dataclass(frozen=True)
class Task:
    """One mined question with its answer; ``kind`` is one of :data:`TASK_TYPES`."""

    kind: str
    question: str
    answer: str


def split_sentences(text: str) -> list[str]:
    """Sentences of a document (paragraph and line breaks end one; common scientific abbreviations do not)."""
    out = []
    for para in re.split(r"\n+", text):
        out.extend(s.strip() for s in _SENTENCE_END.split(para.strip()) if s.strip())
    return out


def _stable(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")


def _sentence(text: str) -> str:
    """``text`` as a sentence: first letter capitalised, final full stop."""
    text = text.strip().rstrip(",;:")
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def _lower_first(text: str) -> str:
    """Lower-case the first word unless it looks like an acronym or a name with inner capitals (EGFR, mRNA)."""
    first = text.split(" ", 1)[0]
    if len(first) > 1 and (first[1:].lower() != first[1:] or any(c.isdigit() for c in first)):
        return text
    return text[:1].lower() + text[1:]


def _clause(text: str) -> str:
    return text.strip().rstrip(".!?;:, ")


def mine_title(title: str | None, body: str) -> list[Task]:
    """title <- text (summarise) and opening <- title (write), when the document has a title and a body."""
    if not title or len(title.split()) < 3 or len(body.split()) < 25:
        return []
    opening = " ".join(split_sentences(body)[:2])
    return [Task("title", "Write a title for the text above.", _clause(title)),
            Task("abstract", f"Write the opening sentences of an abstract for a paper titled \"{_clause(title)}\".",
                 opening)]


def mine_definitions(sentences: list[str]) -> list[Task]:
    """"X is a Y ..." -> "What is X?" with the sentence as the answer; pronoun subjects and long ones are not X."""
    out = []
    for s in sentences:
        m = _DEFINITION.match(s)
        if not m:
            continue
        x = m.group("x").strip()
        words = x.split()
        if words[0].lower() in _PRONOUNS or words[0].lower() in STOPWORDS or len(m.group("y").split()) < 3:
            continue
        if any(w.lower() in ("is", "are", "was", "were", "of") for w in words[1:]):  # "The aim of X is a ..."
            continue
        verb = "are" if re.search(r"\s+are\s+", s[: m.end("x") + 5]) else "is"
        out.append(Task("definition", f"What {verb} {_lower_first(x)}?", _sentence(s)))
    return out


def mine_connectives(sentences: list[str]) -> list[Task]:
    """Cause (because), effect (therefore, thus, hence, consequently) and contrast (however, in contrast)."""
    out = []
    for i, s in enumerate(sentences):
        m = _BECAUSE.match(s)
        if m and not m.group("a").lower().startswith(("it is", "this is")):
            out.append(Task("cause", f"According to the text, why is it that {_lower_first(_clause(m.group('a')))}?",
                            _sentence("Because " + _clause(m.group("b")))))
        m = _EFFECT_INSIDE.match(s)
        if m:
            out.append(Task("effect", f"{_sentence(m.group('a'))} What follows from this, according to the text?",
                            _sentence(m.group("b"))))
        if i == 0:
            continue
        prev = sentences[i - 1]
        if len(prev.split()) < 5:
            continue
        m = _EFFECT_START.match(s)
        if m:
            out.append(Task("effect", f"{_sentence(prev)} What follows from this, according to the text?",
                            _sentence(m.group("b"))))
        m = _CONTRAST_START.match(s)
        if m:
            out.append(Task("contrast", f"{_sentence(prev)} What does the text say in contrast to this?",
                            _sentence(m.group("b"))))
    return out


def keywords(sentence: str, n: int = 4) -> list[str]:
    """The ``n`` longest distinct content words of a sentence, in the order they appear."""
    words = [w for w in _WORD.findall(sentence) if w.lower() not in STOPWORDS and len(w) > 3]
    seen: dict[str, int] = {}
    for i, w in enumerate(words):
        seen.setdefault(w.lower(), i)
    ranked = sorted(seen, key=lambda w: (-len(w), seen[w]))[:n]
    return sorted(ranked, key=lambda w: seen[w])


def mine_words(sentences: list[str], doc_key: str) -> list[Task]:
    """Keyword-to-sentence and sentence-completion, each on one sentence chosen by a hash of the document."""
    usable = [s for s in sentences if 10 <= len(s.split()) <= 60]
    if not usable:
        return []
    out = []
    s = usable[_stable(doc_key + "/keywords") % len(usable)]
    kw = keywords(s)
    if len(kw) >= 3:
        out.append(Task("keywords", f"Write a sentence about the topic above that uses these words: {', '.join(kw)}.",
                        _sentence(s)))
    s = usable[_stable(doc_key + "/completion") % len(usable)]
    words = s.split()
    cut = len(words) // 2
    out.append(Task("completion", f"Complete this sentence from the text: \"{' '.join(words[:cut])} ...\"",
                    " ".join(words[cut:])))
    return out


def mine(text: str, title: str | None = None, doc_key: str = "") -> list[Task]:
    """Every task mined from one document, at most :data:`PER_TYPE` of a kind and :data:`PER_DOCUMENT` in all,
    in the order of :data:`TASK_TYPES`. ``title`` is the record's title (its text then starts with it)."""
    body = text
    if title and text.startswith(title):
        body = text[len(title):].lstrip()
    sentences = split_sentences(body)
    found = mine_title(title, body) + mine_definitions(sentences) + mine_connectives(sentences) + \
        mine_words(sentences, doc_key or text[:200])
    by_kind: dict[str, list[Task]] = {}
    for t in found:
        if t.answer and t.question and len(by_kind.setdefault(t.kind, [])) < PER_TYPE:
            by_kind[t.kind].append(t)
    out = [t for k in TASK_TYPES for t in by_kind.get(k, [])]
    return out[:PER_DOCUMENT]


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------

INSTRUCTION = "Read the text and answer the questions about it."


def resolve_layout(layout: str, tokenizer: Any) -> str:
    """'chat' when asked, or on 'auto' when the tokenizer has a chat template; else 'plain'."""
    if layout == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    if layout == "chat" and not getattr(tokenizer, "chat_template", None):
        from domainlm.errors import ConfigError

        raise ConfigError([f"'reading_comprehension_layout: chat', but the tokenizer of "
                           f"{getattr(tokenizer, 'name_or_path', 'this model')} has no chat template; use auto or "
                           "plain"])
    return layout


def render(text: str, tasks: list[Task], layout: str, tokenizer: Any = None) -> str:
    """The document followed by its tasks. ``chat``: one conversation through the chat template, the document
    and the first question in the first user turn; ``plain``: ``Question: ...`` / ``Answer: ...`` lines."""
    if not tasks:
        return text
    if layout == "plain":
        return text + "\n\n" + "\n\n".join(f"Question: {t.question}\nAnswer: {t.answer}" for t in tasks)
    messages = []
    for i, t in enumerate(tasks):
        q = f"{INSTRUCTION}\n\n{text}\n\n{t.question}" if i == 0 else t.question
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": t.answer}]
    out = tokenizer.apply_chat_template(messages, tokenize=False).rstrip()
    eos = getattr(tokenizer, "eos_token", None)
    # prepare's packer ends every document with EOS; a template that closes the last turn with it would double it
    return out[: -len(eos)] if eos and out.endswith(eos) else out


class Comprehension:
    """The conversion applied by prepare's read stage to each cleaned text document (``convert``): the document
    followed by the tasks mined from it. One row per document the read stage keeps, in read order (``skip`` for a
    document left as it is): whether it was converted and its tasks per type, saved by ``save`` for the pack
    stage, which counts only the documents that survive deduplication and decontamination (:func:`kept_counts`)."""

    def __init__(self, model: str, layout: str) -> None:
        self.layout = layout
        self.tokenizer = None
        if layout == "chat":
            from domainlm.sources.load import load_tokenizer
            from domainlm.sources.resolution import resolve

            self.tokenizer = load_tokenizer(resolve(model))
        self.rows: list[list[int]] = []

    def convert(self, text: str, title: str | None, doc_id: str) -> str:
        found = mine(text, title, doc_id)
        per_type = Counter(t.kind for t in found)
        self.rows.append([1] + [per_type.get(k, 0) for k in TASK_TYPES])
        return render(text, found, self.layout, self.tokenizer)

    def skip(self) -> None:
        self.rows.append([0] * (1 + len(TASK_TYPES)))

    def save(self, work: str, rank: int) -> None:
        import numpy as np

        from domainlm.artifacts import atomic_write_bytes

        arr = np.asarray(self.rows, dtype=np.uint8).reshape(-1, 1 + len(TASK_TYPES))
        buf = io.BytesIO()
        np.save(buf, arr)
        atomic_write_bytes(rows_path(work, rank), buf.getvalue())


def rows_path(work: str, rank: int):
    from pathlib import Path

    return Path(work) / "comprehension" / f"{rank:05d}.npy"


def kept_counts(rows: Any) -> dict[str, Any]:
    """Counts of the rows (of :meth:`Comprehension.save`) of the documents a pack task kept."""
    converted = rows[rows[:, 0] == 1, 1:].astype("int64")
    return {"documents": int(len(converted)), "documents_without_tasks": int((converted.sum(axis=1) == 0).sum()),
            "tasks": {k: int(converted[:, i].sum()) for i, k in enumerate(TASK_TYPES)}}


def summarise_counts(counts: list[dict[str, Any]], layout: str) -> dict[str, Any]:
    """The manifest's ``reading_comprehension`` entry from every task's counts."""
    tasks: Counter[str] = Counter()
    for c in counts:
        tasks.update(c["tasks"])
    return {"layout": layout, "documents": sum(c["documents"] for c in counts),
            "documents_without_tasks": sum(c["documents_without_tasks"] for c in counts),
            "tasks": {k: tasks.get(k, 0) for k in TASK_TYPES}, "tasks_total": sum(tasks.values())}
