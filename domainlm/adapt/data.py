"""The training stream: deterministic order, a weighted (and scheduled) mixture of sources, and MLM masking.

Order and masks are pure functions of (seed, position), so a resumed run sees exactly the
sequences and masks an uninterrupted run would, without re-reading the data consumed before the
checkpoint: the stream state is the position and a count per source.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from domainlm.lm_loss import IGNORE

_MASK64 = (1 << 64) - 1
# 1/golden ratio split into a 26-bit head and the rest, for an exact frac(i * alpha) (Kronecker sequence)
_ALPHA = (math.sqrt(5.0) - 1.0) / 2.0
_ALPHA_HI = math.floor(_ALPHA * (1 << 26)) / (1 << 26)
_ALPHA_LO = _ALPHA - _ALPHA_HI


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


@dataclass(frozen=True)
class StreamSource:
    """One corpus of the mixture: its training blocks, its weight (share of training tokens) and its cap."""

    name: str
    rows: int
    weight: float
    max_epochs: float | None = None
    salt: int = 0  # seeds this source's per-epoch permutations

    @property
    def cap(self) -> int | None:
        """Sequences this source may give before it stops (``max_epochs`` x its blocks), None for no cap."""
        return None if self.max_epochs is None else int(math.floor(self.max_epochs * self.rows + 1e-9))


@dataclass
class StreamState:
    """Where the stream is: the next global sequence index and how many sequences each source gave."""

    next_index: int = 0
    used: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> StreamState:
        """From ``asdict`` of this class, or of the older two-source form (``domain_used``, ``replay_used``)."""
        if "used" in d:
            return cls(int(d["next_index"]), {k: int(v) for k, v in d["used"].items()})
        used = {k: int(d.get(f"{k}_used", 0)) for k in ("domain", "replay")}
        return cls(int(d.get("next_index", 0)), used)

    def copy(self) -> StreamState:
        return StreamState(self.next_index, dict(self.used))


class MixtureExhausted(ValueError):
    """Every source with weight at some position has reached its ``max_epochs``."""


class SequenceStream:
    """Global sequence index -> (source, row). Every process computes the same mapping.

    Sequence ``i`` goes to the source whose slice of [0, 1) holds a uniform number ``u_i``, the slices being the
    weights at ``i`` (linear between schedule points) renormalised over the sources still under their
    ``max_epochs``. Each source is read in a fresh permutation per epoch. ``u_i`` depends only on (seed, i):

    * ``draws="random"``: a hash of (seed, i), independent draws: the replay form's stream, unchanged since the
      first version (``SequenceStream.replay``), so old recipes give the same sequences for the same seed.
    * ``draws="even"``: the Kronecker sequence frac(c_seed + i / golden ratio), whose points fill [0, 1) evenly;
      the realised share of a source over any stretch of n sequences is within O(log n / n) of its weight (a
      random draw drifts by sqrt(w(1-w)/n): 0.5% over 10k sequences), which a ``sources:`` mixture uses.

    Blocks are packed to ``block_size`` without padding, so a share of sequences is the same share of tokens.
    """

    def __init__(self, sources: list[StreamSource], seed: int, *, schedule: list[tuple[int, list[float]]] | None
                 = None, draws: str = "even"):
        if not sources:
            raise ValueError("a stream needs at least one source")
        if empty := [s.name for s in sources if s.rows <= 0]:
            raise ValueError(f"source {', '.join(empty)} has no training blocks")
        if draws not in ("even", "random"):
            raise ValueError(f"draws must be 'even' or 'random', got {draws!r}")
        self.sources, self.seed, self.draws = list(sources), seed, draws
        self.names = [s.name for s in sources]
        # (sequence index, weights) points; before the first, the sources' own weights hold
        points = sorted(schedule or [], key=lambda p: p[0])
        if not points or points[0][0] > 0:
            points.insert(0, (0, [s.weight for s in sources]))
        self.at = np.array([p[0] for p in points], dtype=np.float64)
        self.weights = np.array([p[1] for p in points], dtype=np.float64)  # [points, sources]
        self.state = StreamState(0, {n: 0 for n in self.names})
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    @classmethod
    def replay(cls, n_domain: int, n_replay: int, seed: int, replay_fraction: float) -> SequenceStream:
        """The two-source stream of ``corpus`` + ``replay_corpus`` + ``replay_fraction`` (the older recipe form):
        replay where the hashed draw is below the fraction, as in every earlier version."""
        if n_domain <= 0:
            raise ValueError("the domain corpus has no training blocks")
        fraction = replay_fraction if n_replay > 0 else 0.0
        domain = StreamSource("domain", n_domain, 1.0 - fraction, salt=0)
        if fraction <= 0:
            return cls([domain], seed, draws="random")
        return cls([StreamSource("replay", n_replay, fraction, salt=1), domain], seed, draws="random")

    # --- the pure functions of the position -----------------------------------------------------------

    def weights_at(self, index: np.ndarray) -> np.ndarray:
        """Scheduled weights (not renormalised, caps ignored) at each global sequence index: [len, sources]."""
        index = np.asarray(index, dtype=np.float64)
        return np.stack([np.interp(index, self.at, self.weights[:, k]) for k in range(len(self.sources))], axis=1)

    def uniforms(self, start: int, stop: int) -> np.ndarray:
        idx = np.arange(start, stop, dtype=np.uint64)
        key = np.uint64((self.seed * 0x632BE59BD9B4E019) & _MASK64)
        if self.draws == "random":
            return (_splitmix64(idx ^ key) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
        offset = float(_splitmix64(np.array([key], dtype=np.uint64))[0] >> np.uint64(11)) / float(1 << 53)
        # frac(offset + i * alpha) as frac(offset + frac(i * alpha_hi) + i * alpha_lo): i * alpha_hi is exact for
        # i below 2**27, so the points keep their spacing far into a run instead of losing bits to a large i * alpha
        i = idx.astype(np.float64)
        return np.mod(offset + np.mod(i * _ALPHA_HI, 1.0) + i * _ALPHA_LO, 1.0)

    # --- walking the stream -----------------------------------------------------------------------------

    def _perm(self, k: int, epoch: int) -> np.ndarray:
        key = (k, epoch)
        if key not in self._perm_cache:
            if len(self._perm_cache) > 4 * len(self.sources):
                self._perm_cache.clear()
            src = self.sources[k]
            self._perm_cache[key] = np.random.default_rng([self.seed, src.salt, epoch]).permutation(src.rows)
        return self._perm_cache[key]

    def _choose(self, start: int, stop: int, exhausted: np.ndarray) -> np.ndarray:
        """Source index of each sequence in [start, stop) with the sources in ``exhausted`` left out."""
        w = self.weights_at(np.arange(start, stop))
        w[:, exhausted] = 0.0
        total = w.sum(axis=1)
        if not (total > 0).all():
            at = start + int(np.argmin(total > 0))
            done = [n for n, e in zip(self.names, exhausted, strict=True) if e]
            raise MixtureExhausted(f"at sequence {at} no source is left to draw from"
                                   + (f" ({', '.join(done)} reached max_epochs)" if done else "")
                                   + ": raise max_epochs, give the sources weight there, or train fewer steps")
        cum = np.cumsum(w, axis=1) / total[:, None]
        last = w.shape[1] - 1 - np.argmax(w[:, ::-1] > 0, axis=1)  # the last source with weight takes the rest
        cum[np.arange(len(cum)), last] = np.inf
        return np.argmax(self.uniforms(start, stop)[:, None] < cum, axis=1)

    def take(self, count: int) -> list[tuple[str, int]]:
        """The next ``count`` global sequences as (source, row); advances the state."""
        s = self.state
        out: list[tuple[str, int]] = []
        caps = [src.cap for src in self.sources]
        while len(out) < count:
            start = s.next_index
            used = np.array([s.used[n] for n in self.names], dtype=np.int64)
            exhausted = np.array([c is not None and u >= c for c, u in zip(caps, used, strict=True)])
            choice = self._choose(start, start + count - len(out), exhausted)
            n_ok = len(choice)
            for k, cap in enumerate(caps):  # stop where a source would pass its cap; the rest renormalise
                if cap is not None:
                    over = np.flatnonzero(np.cumsum(choice == k) > cap - used[k])
                    if len(over):
                        n_ok = min(n_ok, int(over[0]))
            choice = choice[:n_ok]
            rows = np.empty(n_ok, dtype=np.int64)
            for k in np.unique(choice):
                where = np.flatnonzero(choice == k)
                nth = used[k] + np.arange(len(where))
                n = self.sources[k].rows
                for epoch in np.unique(nth // n):
                    sel = nth // n == epoch
                    rows[where[sel]] = self._perm(int(k), int(epoch))[nth[sel] % n]
                s.used[self.names[k]] += len(where)
            out.extend((self.names[k], int(r)) for k, r in zip(choice.tolist(), rows.tolist(), strict=True))
            s.next_index += n_ok
        return out

    def plan(self, count: int) -> dict[str, int]:
        """Sequences each source gives over the first ``count`` sequences of a fresh stream (raises
        MixtureExhausted when the sources run out first); the stream itself does not move."""
        other = SequenceStream(self.sources, self.seed, draws=self.draws)
        other.at, other.weights = self.at, self.weights
        for start in range(0, count, 1 << 16):
            other.take(min(1 << 16, count - start))
        return dict(other.state.used)

    def epochs(self, used: dict[str, int]) -> dict[str, float]:
        return {s.name: used.get(s.name, 0) / s.rows for s in self.sources}

    def state_dict(self) -> dict:
        return asdict(self.state)

    def load_state_dict(self, d: dict) -> None:
        state = StreamState.from_dict(d)
        state.used = {n: state.used.get(n, 0) for n in self.names}
        self.state = state


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
