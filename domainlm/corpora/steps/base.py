"""What every step of ``corpus prepare`` shares: the step base class, the per-task counts files, each task's run of
input files, the whitespace word tokenizer of our n-grams, and the layout of the removal records."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.word_tokenizers import WordTokenizer

NONE = np.uint32(0xFFFFFFFF)  # "no kept document": a record that was read but dropped, or a deletion
REMOVED_DTYPE = np.dtype([("idx", "<u4"), ("reason", "u1")])
REASONS = ("superseded", "deleted", "exact_duplicate")


def _cache_loguru_lib_dirs() -> None:
    """datatrove adds loguru handlers for every task of every stage, and each builds an ``ExceptionFormatter`` that
    recomputes the standard-library and site-packages folders from sysconfig: ~36 ms each, 0.5-0.7 CPU-s of a
    3 MB prepare (cProfile). The answer depends only on ``sys.path``: computed once per path list."""
    try:
        from loguru import _better_exceptions as be
    except ImportError:
        return
    original = be.ExceptionFormatter.__dict__.get("_get_lib_dirs")
    if not isinstance(original, staticmethod) or getattr(original.__func__, "_domainlm_cached", False):
        return
    cache: dict[tuple[str, ...], list[str]] = {}

    def lib_dirs() -> list[str]:
        key = tuple(sys.path)
        if key not in cache:
            cache[key] = original.__func__()
        return list(cache[key])

    lib_dirs._domainlm_cached = True  # type: ignore[attr-defined]
    be.ExceptionFormatter._get_lib_dirs = staticmethod(lib_dirs)


# Here, so that every Slurm or Ray job (a fresh interpreter that unpickles a step) has it: every step module imports
# this one.
_cache_loguru_lib_dirs()


def file_range(rank: int, world_size: int, n_files: int) -> range:
    """The contiguous run of input files task ``rank`` of ``world_size`` reads (so task order is input order)."""
    return range(rank * n_files // world_size, (rank + 1) * n_files // world_size)


def save_counts(work: str, step: str, rank: int, data: dict[str, Any]) -> None:
    from domainlm.artifacts import atomic_write_json

    atomic_write_json(Path(work) / "counts" / step / f"{rank:05d}.json", data)


def load_counts(work: str, step: str) -> list[dict[str, Any]]:
    folder = Path(work) / "counts" / step
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]


class Whitespace(WordTokenizer):
    """Words split on whitespace: datatrove's English tokenizer needs spaCy, and our n-grams (near-duplicate
    shingles, decontamination) are defined over whitespace words after datatrove's text simplification."""

    def word_tokenize(self, text: str) -> list[str]:
        return text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        return [text]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        raise NotImplementedError


class Step(PipelineStep):
    """A datatrove step of ours: it knows the run's work folder (``OUT/.work``), where the stages leave their files."""

    type = "domainlm"

    def __init__(self, work: str) -> None:
        super().__init__()
        self.work = work
