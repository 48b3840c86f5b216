"""The training stream: deterministic order, replay mixing, and MLM masking.

Order and masks are pure functions of (seed, position), so a resumed run sees exactly the
sequences and masks an uninterrupted run would, without re-reading the data consumed before the
checkpoint: the stream state is three integers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from domainlm.lm_loss import IGNORE

_MASK64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a well-mixed 64-bit hash of each counter (vectorised)."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def replay_draws(start: int, stop: int, seed: int, fraction: float) -> np.ndarray:
    """Boolean per global sequence index in [start, stop): True where a replay sequence goes."""
    if fraction <= 0:
        return np.zeros(stop - start, dtype=bool)
    idx = np.arange(start, stop, dtype=np.uint64) ^ np.uint64((seed * 0x632BE59BD9B4E019) & _MASK64)
    u = (_splitmix64(idx) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return u < fraction


@dataclass
class StreamState:
    """Where the stream is: next global sequence index and how many of each source were used."""

    next_index: int = 0
    domain_used: int = 0
    replay_used: int = 0


class SequenceStream:
    """Global sequence index -> (source, row). Every process computes the same mapping."""

    def __init__(self, n_domain: int, n_replay: int, seed: int, replay_fraction: float):
        if n_domain <= 0:
            raise ValueError("the domain corpus has no training blocks")
        self.n_domain, self.n_replay = n_domain, n_replay
        self.seed, self.fraction = seed, (replay_fraction if n_replay > 0 else 0.0)
        self.state = StreamState()
        self._perm_cache: dict[tuple[str, int], np.ndarray] = {}

    def _perm(self, source: str, epoch: int, n: int) -> np.ndarray:
        key = (source, epoch)
        if key not in self._perm_cache:
            if len(self._perm_cache) > 4:
                self._perm_cache.clear()
            salt = 0 if source == "domain" else 1
            self._perm_cache[key] = np.random.default_rng([self.seed, salt, epoch]).permutation(n)
        return self._perm_cache[key]

    def _row(self, source: str, used: int) -> int:
        n = self.n_domain if source == "domain" else self.n_replay
        return int(self._perm(source, used // n, n)[used % n])

    def take(self, count: int) -> list[tuple[str, int]]:
        """The next ``count`` global sequences as (source, row); advances the state."""
        s = self.state
        draws = replay_draws(s.next_index, s.next_index + count, self.seed, self.fraction)
        out = []
        for is_replay in draws:
            if is_replay:
                out.append(("replay", self._row("replay", s.replay_used)))
                s.replay_used += 1
            else:
                out.append(("domain", self._row("domain", s.domain_used)))
                s.domain_used += 1
        s.next_index += count
        return out

    def state_dict(self) -> dict:
        return asdict(self.state)

    def load_state_dict(self, d: dict) -> None:
        self.state = StreamState(**d)


def word_start_table(tokenizer) -> torch.Tensor:
    """Boolean per vocabulary id: does this piece start a word? Used for whole-word masking.

    WordPiece marks continuations with '##'; byte-level BPE marks word starts with 'Ġ' and
    SentencePiece with '▁'. Amino-acid vocabularies have one residue per token: every token starts.
    """
    vocab = tokenizer.get_vocab()
    size = max(max(vocab.values()) + 1, len(tokenizer))
    table = torch.ones(size, dtype=torch.bool)
    pieces = list(vocab)
    if any(p.startswith("##") for p in pieces):
        for p, i in vocab.items():
            table[i] = not p.startswith("##")
    elif sum(p.startswith("Ġ") for p in pieces) > len(pieces) // 10:
        for p, i in vocab.items():
            table[i] = p.startswith("Ġ") or not p[:1].isalnum()
    elif sum(p.startswith("▁") for p in pieces) > len(pieces) // 10:
        for p, i in vocab.items():
            table[i] = p.startswith("▁") or not p[:1].isalnum()
    return table


class Masker:
    """BERT-style masking: choose ``probability`` of (word or token) positions; 80% [MASK], 10% random, 10% kept."""

    def __init__(self, tokenizer, probability: float, whole_word: bool):
        if tokenizer.mask_token_id is None:
            from domainlm.errors import ConfigError

            raise ConfigError([f"the tokenizer of this model has no mask token, so it cannot be trained as a masked "
                               f"LM ({type(tokenizer).__name__}); use objective: causal"])
        self.mask_id = tokenizer.mask_token_id
        self.probability = probability
        self.whole_word = whole_word
        special = set(tokenizer.all_special_ids)
        size = max(max(tokenizer.get_vocab().values()) + 1, len(tokenizer))
        self.special = torch.zeros(size, dtype=torch.bool)
        self.special[list(special)] = True
        self.random_pool = torch.nonzero(~self.special).squeeze(1)
        self.word_start = word_start_table(tokenizer) if whole_word else None

    def __call__(self, input_ids: torch.Tensor, doc_ids: torch.Tensor | None,
                 generators: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask each row with its own generator, so a row's mask depends only on its place in the stream."""
        rows = [self._row(input_ids[i], None if doc_ids is None else doc_ids[i], g) for i, g in enumerate(generators)]
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])

    def _row(self, ids: torch.Tensor, doc: torch.Tensor | None, generator: torch.Generator):
        ids = ids.clone()
        maskable = ~self.special[ids]
        if self.whole_word:
            starts = self.word_start[ids] | ~maskable
            starts[0] = True
            if doc is not None:
                starts[1:] |= doc[1:] != doc[:-1]
            word_idx = torch.cumsum(starts.long(), dim=0) - 1
            chosen_words = torch.rand(int(word_idx[-1]) + 1, generator=generator) < self.probability
            chosen = chosen_words[word_idx] & maskable
        else:
            chosen = (torch.rand(ids.shape, generator=generator) < self.probability) & maskable
        if not chosen.any():  # a row with no target would add nothing; mask one maskable token
            flat = torch.nonzero(maskable).squeeze(1)
            if flat.numel():
                chosen[flat[torch.randint(flat.numel(), (1,), generator=generator)]] = True
        labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
        roll = torch.rand(ids.shape, generator=generator)
        to_mask = chosen & (roll < 0.8)
        to_random = chosen & (roll >= 0.8) & (roll < 0.9)
        ids[to_mask] = self.mask_id
        if to_random.any():
            picks = torch.randint(self.random_pool.numel(), (int(to_random.sum()),), generator=generator)
            ids[to_random] = self.random_pool[picks]
        return ids, labels


def sequence_generator(seed: int, index: int, salt: int = 0) -> torch.Generator:
    """A generator for one sequence's mask: a pure function of (seed, global sequence index, salt)."""
    g = torch.Generator()
    key = np.array([(seed * 1_000_003 + salt * 7_919) ^ index], dtype=np.uint64)
    g.manual_seed(int(_splitmix64(key)[0] & np.uint64(0x7FFFFFFFFFFFFFFF)))
    return g
