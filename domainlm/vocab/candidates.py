"""Which domain words to add to a base tokenizer, and the extended tokenizer that holds them.

The words come from a domain tokenizer trained on the corpus with Hugging Face ``tokenizers`` (same
normaliser, pre-tokeniser and model type as the base, via ``train_new_from_iterator``). A word of
that vocabulary is a candidate when it is a whole word, occurs at least ``min_frequency`` times and
the base tokenizer splits it into two or more pieces; candidates are ranked by the tokens they save
on the corpus, ``frequency x (pieces - 1)``.

New words enter as *added tokens* (``tokenizer.add_tokens``), which ``tokenizers`` matches in the
raw text before pre-tokenisation. How an added token is matched decides whether text without the
new words keeps its old tokenisation, so the two supported families are handled differently:

* **WordPiece** (BERT): the word is added as it appears after normalisation (lowercased for uncased
  models), with ``normalized=True`` and ``single_word=True``: it matches only a whole word, so
  ``dephosphorylation`` or ``phosphorylations`` keep their old pieces.
* **byte-level BPE** (GPT-2, Llama-3, SmolLM, Qwen): a word inside running text is pre-tokenised
  with its leading space (``Ġphosphorylation``), so the token is added as ``" phosphorylation"``,
  leading space included. ``single_word`` cannot be used (its left-boundary test looks at the
  character before the space), so the token also matches the start of a longer word
  (``" phosphorylations"`` -> ``" phosphorylation"`` + ``"s"``); the ranking charges a candidate for
  every corpus word whose tokenisation that would lengthen. Words directly after punctuation or at
  the start of a document (no leading space) are not candidates: adding a space-less form would
  split the space before it into a token of its own.

SentencePiece-style tokenizers (Metaspace, ``▁``) are refused: text after an added token is
normalised again with a fresh ``▁`` prefix (the "legacy" behaviour), which would change the
tokenisation of text that does not contain the new words.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from domainlm.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Family = Literal["wordpiece", "byte_level"]


@dataclass
class Candidate:
    """A domain word that the base tokenizer fragments."""

    word: str  # as the base pre-tokeniser writes it ('Ġphosphorylation', 'phosphorylation')
    content: str  # the text the added token matches (' phosphorylation')
    frequency: int  # whole-word occurrences in the corpus
    pieces: list[str]  # the base tokenizer's pieces for the word
    piece_ids: list[int]
    collision_cost: int = 0  # tokens added to longer corpus words whose start the token would match
    unknown: bool = False  # the base tokenizer writes (part of) the word as its unknown token

    @property
    def tokens_saved(self) -> int:
        gain = self.frequency * (len(self.pieces) - 1)
        if self.unknown:  # a word the base cannot spell at all gains at least one token's worth
            gain = self.frequency * max(len(self.pieces) - 1, 1)
        return gain - self.collision_cost


@dataclass
class Selection:
    """The candidates found and the ones chosen."""

    family: Family
    chosen: list[Candidate]
    candidate_count: int
    domain_vocab_size: int
    words_in_corpus: int
    distinct_words: int
    dropped_by_collisions: int = 0
    notes: list[str] = field(default_factory=list)


def _json(tokenizer: Any) -> dict[str, Any]:
    return json.loads(tokenizer.backend_tokenizer.to_str())


def _has_byte_level(pre: dict[str, Any] | None) -> bool:
    if not pre:
        return False
    if pre.get("type") == "ByteLevel":
        return True
    return any(_has_byte_level(p) for p in pre.get("pretokenizers") or [])


def _has_metaspace(tok: dict[str, Any]) -> bool:
    text = json.dumps({k: tok.get(k) for k in ("normalizer", "pre_tokenizer", "decoder")})
    return "Metaspace" in text or "\u2581" in text


def byte_symbols() -> dict[int, str]:
    """Byte -> symbol table of byte-level BPE (GPT-2's ``bytes_to_unicode``, which ``tokenizers`` uses too).

    ``tokenizers`` does not expose the table itself; the test suite checks this one against
    ``ByteLevel.alphabet()``.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
            *range(ord("\u00ae"), ord("\u00ff") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _text_byte_symbols() -> list[str]:
    """The byte-level symbols of every byte that valid, cleaned UTF-8 text can contain.

    Byte-level vocabularies often lack symbols for bytes that never occur in valid UTF-8 (0xC0, 0xC1,
    0xF5-0xFF), for lead bytes of unassigned Unicode planes (0xF1, 0xF2 start U+40000-U+BFFFF) and for
    control characters, which ``corpus prepare`` removes anyway (SmolLM2 lacks 0x04, 0x06, 0x13, 0x14,
    0x16, 0x1D, 0xF1, 0xF2); only the others matter.
    """
    table = byte_symbols()
    lead = [*range(0xC2, 0xF1), 0xF3, 0xF4]
    return [table[b] for b in (0x09, 0x0A, 0x0D, *range(0x20, 0x7F), *range(0x80, 0xC0), *lead)]


def tokenizer_family(tokenizer: Any, name: str) -> Family:
    """The tokenizer's family, refusing tokenizers whose unknown characters or added tokens would go wrong.

    Raises:
        ConfigError: a slow (Python) tokenizer, one that silently drops or cannot encode characters it
            does not know (no unknown token and no byte fallback), or an unsupported family.
    """
    if not getattr(tokenizer, "is_fast", False) or not hasattr(tokenizer, "backend_tokenizer"):
        raise ConfigError([f"the tokenizer of {name} ({type(tokenizer).__name__}) is not backed by Hugging Face "
                           "`tokenizers`, so domainlm cannot train a domain tokenizer of its kind; vocab extend needs "
                           "a fast tokenizer (a tokenizer.json in the model folder)"])
    tok = _json(tokenizer)
    model = tok["model"]
    mtype = model.get("type")
    vocab = model.get("vocab") or {}
    byte_level = _has_byte_level(tok.get("pre_tokenizer"))
    problem = None
    if mtype == "WordPiece":
        unk = model.get("unk_token")
        if not unk or unk not in vocab:
            problem = (f"its WordPiece vocabulary has no unknown token ({unk!r} is not in it), so any word with a "
                       "character outside the vocabulary cannot be encoded at all")
    elif mtype == "BPE":
        unk = model.get("unk_token")
        full_bytes = False
        if byte_level:
            full_bytes = all(c in vocab for c in _text_byte_symbols())
        if not (model.get("byte_fallback") or full_bytes or (unk and unk in vocab)):
            problem = ("its BPE model has no unknown token and no byte fallback" +
                       (" and its byte alphabet is incomplete" if byte_level else "") +
                       ", so characters outside its vocabulary are dropped silently: the pieces a new word 'used "
                       "to be split into' would leave characters out, and fragmentation would be under-counted")
    elif mtype == "Unigram" and model.get("unk_id") is None:
        problem = "its Unigram model has no unknown token, so characters outside its vocabulary cannot be encoded"
    if problem:
        raise ConfigError([f"cannot extend the vocabulary of {name}: {problem}. Use a tokenizer with an unknown token "
                           "or byte fallback (byte-level BPE like GPT-2/Llama-3/SmolLM, or BERT's WordPiece with "
                           "[UNK]), or give this one an unknown token (model.unk_token in tokenizer.json)"])
    if mtype == "WordPiece":
        return "wordpiece"
    if mtype == "BPE" and byte_level and not _has_metaspace(tok):
        return "byte_level"
    kind = "SentencePiece-style (Metaspace)" if _has_metaspace(tok) else f"{mtype}"
    raise ConfigError([f"vocab extend supports WordPiece (BERT) and byte-level BPE (GPT-2, Llama-3, SmolLM, Qwen) "
                       f"tokenizers; {name} has a {kind} tokenizer. For SentencePiece tokenizers, text after an "
                       "added token is normalised again with a fresh '▁' prefix, which would change the "
                       "tokenisation of text without the new words"])


def pre_tokenize(tokenizer: Any, text: str) -> list[str]:
    """The words of ``text`` as the base tokenizer's normaliser and pre-tokeniser write them."""
    backend = tokenizer.backend_tokenizer
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    if backend.pre_tokenizer is None:
        return text.split()
    return [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(text)]


def count_words(tokenizer: Any, texts: Iterable[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(pre_tokenize(tokenizer, text))
    return counts


def train_domain_tokenizer(tokenizer: Any, texts: list[str], vocab_size: int, min_frequency: int) -> Any:
    """A tokenizer of the base's kind trained on ``texts`` (``tokenizers`` trainers via transformers)."""
    batches = (texts[i:i + 1000] for i in range(0, len(texts), 1000))
    return tokenizer.train_new_from_iterator(batches, vocab_size=vocab_size, length=len(texts),
                                             min_frequency=min_frequency, show_progress=False)


def _content(word: str, family: Family) -> str:
    if family == "byte_level":
        from tokenizers import decoders

        return decoders.ByteLevel().decode([word])
    return word


def _is_word_form(word: str, content: str, family: Family) -> bool:
    """A whole-word vocabulary entry of the domain tokenizer (see the module docstring for why)."""
    # At least one letter: numbers are not vocabulary, and tokenizers that split digits one by one (Llama-3,
    # SmolLM2) do so on purpose, for arithmetic.
    if family == "wordpiece":
        return not word.startswith("##") and len(word) >= 2 and any(c.isalpha() for c in word)
    body = content[1:]
    return (content.startswith(" ") and len(body) >= 2 and not any(c.isspace() for c in body)
            and any(c.isalpha() for c in body))


def select(tokenizer: Any, texts: list[str], n: int, *, domain_vocab_size: int, min_frequency: int,
           name: str) -> tuple[Selection, Any]:
    """Choose the ``n`` domain words that save the most tokens; return the selection and the domain tokenizer.

    Raises:
        ConfigError: the tokenizer cannot be extended safely (see :func:`tokenizer_family`), or fewer than
            ``n`` words qualify (the message gives the count and how to get more).
    """
    family = tokenizer_family(tokenizer, name)
    if not texts:
        raise DataError("the corpus holds no text to learn domain words from")
    counts = count_words(tokenizer, texts)
    domain = train_domain_tokenizer(tokenizer, texts, domain_vocab_size, min_frequency)
    base_vocab = tokenizer.get_vocab()
    specials = set(tokenizer.all_special_tokens) | set(domain.all_special_tokens)
    model = tokenizer.backend_tokenizer.model
    unk_id = tokenizer.unk_token_id
    sorted_words = sorted(counts) if family == "byte_level" else []
    candidates: list[Candidate] = []
    dropped = 0
    for word in domain.get_vocab():
        if word in specials or word in base_vocab or counts.get(word, 0) < min_frequency:
            continue
        content = _content(word, family)
        # ``content in base_vocab``: one of the base model's own added tokens already matches this text.
        if content in base_vocab or not _is_word_form(word, content, family):
            continue
        toks = model.tokenize(word)
        if len(toks) < 2 and not (unk_id is not None and any(t.id == unk_id for t in toks)):
            continue
        cand = Candidate(word, content, counts[word], [t.value for t in toks], [t.id for t in toks],
                         unknown=unk_id is not None and any(t.id == unk_id for t in toks))
        if family == "byte_level":
            cand.collision_cost = _collision_cost(model, word, counts, sorted_words)
        if cand.tokens_saved <= 0:
            dropped += 1
            continue
        candidates.append(cand)
    # Ties broken by the word itself, so the choice does not depend on dictionary order.
    candidates.sort(key=lambda c: (-c.tokens_saved, c.word))
    if len(candidates) < n:
        raise ConfigError([f"asked to add {n} words but only {len(candidates)} domain words qualify (whole words seen "
                           f"at least {min_frequency} times that the base tokenizer of {name} splits into 2 or more "
                           f"pieces, from a domain vocabulary of {len(domain)}). Use --add {len(candidates)} or less, "
                           "or lower --min-frequency, raise --domain-vocab-size, or bring a larger corpus"])
    sel = Selection(family, candidates[:n], len(candidates), len(domain), sum(counts.values()), len(counts),
                    dropped_by_collisions=dropped)
    return sel, domain


def _collision_cost(model: Any, word: str, counts: Counter[str], sorted_words: list[str]) -> int:
    """Extra tokens on longer corpus words that start with ``word``, which the added token would split.

    ``' phosphorylation'`` also matches the start of ``' phosphorylations'``; the rest (``'s'``) is then
    tokenised on its own. Only harm is counted: where the split happens to save tokens, the longer word
    is usually a candidate of its own (and, being longer, wins the match when both are added), so
    crediting the saving to the shorter word would count it twice.
    """
    cost = 0
    i = bisect.bisect_right(sorted_words, word)
    while i < len(sorted_words) and sorted_words[i].startswith(word):
        longer = sorted_words[i]
        rest = longer[len(word):]
        before = len(model.tokenize(longer))
        after = 1 + len(model.tokenize(rest))
        cost += counts[longer] * max(0, after - before)
        i += 1
    return cost


def extended_tokenizer(tokenizer: Any, chosen: list[Candidate], family: Family) -> tuple[Any, list[int]]:
    """A copy of ``tokenizer`` with the chosen words added; returns it and their new ids.

    Raises:
        DomainLMError: an added word does not come out as its single new token (never expected; checked
            because a silent mismatch would train embeddings nobody uses).
    """
    import copy

    from tokenizers import AddedToken

    from domainlm.errors import DomainLMError

    ext = copy.deepcopy(tokenizer)
    wordpiece = family == "wordpiece"
    tokens = [AddedToken(c.content, single_word=wordpiece, normalized=wordpiece, special=False) for c in chosen]
    added = ext.add_tokens(tokens)
    if added != len(chosen):
        raise DomainLMError(f"the tokenizer accepted {added} of {len(chosen)} new tokens; some were already present")
    ids = ext.convert_tokens_to_ids([c.content for c in chosen])
    wrong = []
    for c, i in zip(chosen, ids, strict=True):
        probe = "x" + c.content + "." if family == "byte_level" else f"x {c.content}."
        got = ext(probe, add_special_tokens=False)["input_ids"]
        if got.count(i) != 1:
            wrong.append(f"{c.content!r} -> {ext.convert_ids_to_tokens(got)}")
    if wrong:
        raise DomainLMError("added words are not tokenised as their new token: " + "; ".join(wrong[:5]))
    return ext, ids
