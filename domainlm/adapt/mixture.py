"""A weighted mixture of prepared corpora for ``adapt`` (recipe key ``sources:``): loading the sources, the stream
over them with its schedule, what a budget draws from each (``compute``), and what a run drew (the manifest).

The older ``corpus`` + ``replay_corpus`` + ``replay_fraction`` form is the two-source case and keeps its stream
(``SequenceStream.replay``). Per-source held-out losses are computed by the engine's ``evaluate``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainlm.adapt.config import AdaptConfig
from domainlm.adapt.data import MixtureExhausted, SequenceStream, StreamSource
from domainlm.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Source:
    """A loaded source: its name, folder, manifest, splits and its place in the stream."""

    name: str
    dir: Path
    manifest: dict
    train: Any
    val: Any
    stream: StreamSource


def load_sources(cfg: AdaptConfig, resolve: Callable[[str, int | None], tuple[Path, dict]],
                 check_tokenizer: Callable[[dict, Path], None], block_size: int | None) -> list[Source]:
    """Resolve and open every source of ``cfg.sources``; one block size, one tokenizer, loss masks where asked."""
    from domainlm.corpora import load_prepared

    out: list[Source] = []
    block = block_size
    problems = []
    for i, spec in enumerate(cfg.sources or []):
        folder, manifest = resolve(spec.corpus, block)
        check_tokenizer(manifest, folder)
        train = load_prepared(folder, "train").with_format("torch")
        val = load_prepared(folder, "validation").with_format("torch")
        if not len(train):
            problems.append(f"'sources[{i}].corpus': {folder} has no training blocks")
            continue
        size = len(train[0]["input_ids"])
        block = block or size
        if size != block:
            problems.append(f"'sources[{i}].corpus': {folder} has blocks of {size} tokens, the first source {block}: "
                            "prepare every source with the same block_size")
        if spec.loss_mask and "loss_mask" not in train.column_names:
            problems.append(f"'sources[{i}].loss_mask' is true but {folder} has no loss_mask column: prepare it as "
                            "a chat corpus (its assistant tokens marked) or set loss_mask: false")
        out.append(Source(spec.label, folder, manifest, train, val,
                          StreamSource(spec.label, len(train), spec.weight, spec.max_epochs, salt=i)))
    if problems:
        raise ConfigError(problems)
    return out


def schedule_points(cfg: AdaptConfig, global_batch: int, block: int) -> list[tuple[int, list[float]]]:
    """``mixture_schedule`` as (global sequence index, weights in source order): a step is ``global_batch``
    sequences, a token count ``block`` tokens per sequence."""
    names = [s.label for s in cfg.sources or []]
    points = []
    for p in cfg.mixture_schedule or []:
        at = p.step * global_batch if p.step is not None else p.tokens // block
        points.append((at, [float(p.weights[n]) for n in names]))
    return points


def make_stream(cfg: AdaptConfig, sources: list[Source], global_batch: int, block: int,
                total_sequences: int) -> SequenceStream:
    """The run's stream; refuses (before any step) a budget the sources run out of under their ``max_epochs``."""
    stream = SequenceStream([s.stream for s in sources], cfg.seed,
                            schedule=schedule_points(cfg, global_batch, block), draws="even")
    if any(s.max_epochs is not None for s in cfg.sources or []):
        try:
            stream.plan(total_sequences)
        except MixtureExhausted as exc:
            raise ConfigError([f"'sources': {exc}"]) from None
    return stream


def mixture_record(stream: SequenceStream, used: dict[str, int], block: int,
                   paths: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Per source: sequences and tokens drawn, the share of tokens, the weight configured and the epochs."""
    total = max(1, sum(used.values()))
    epochs = stream.epochs(used)
    return {s.name: {"sequences": used.get(s.name, 0), "tokens": used.get(s.name, 0) * block,
                     "share": used.get(s.name, 0) / total, "weight": s.weight, "epochs": epochs[s.name],
                     "max_epochs": s.max_epochs, **({"path": paths[s.name]} if paths else {})}
            for s in stream.sources}


def forgetting_warnings(initial: dict, final: dict, threshold: float) -> list[str]:
    """One warning per source whose held-out perplexity rose more than ``threshold`` over the run."""
    out = []
    for name, fin in (final.get("sources") or {}).items():
        init = (initial.get("sources") or {}).get(name)
        if not init or not init.get("ppl") or fin.get("ppl") is None:
            continue
        rise = fin["ppl"] / init["ppl"] - 1
        fin["ppl_rise"] = rise
        if rise > threshold:
            out.append(f"FORGETTING: held-out perplexity of source '{name}' rose {rise:+.1%} ({init['ppl']:.2f} -> "
                       f"{fin['ppl']:.2f}), above the {threshold:.0%} threshold. Consider a larger weight for it, a "
                       "lower lr, or fewer steps.")
    return out
