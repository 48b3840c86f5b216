"""What the steps of an adapt run hand to each other: :class:`Run` (set up), :class:`Data`, :class:`Trainer` and
:class:`Progress`. They live on their own so that the steps (``build.py``, ``run.py``, ``finish.py``) share them
without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from domainlm.adapt.batches import BatchBuilder
from domainlm.adapt.config import AdaptConfig
from domainlm.adapt.curves import MetricsLog
from domainlm.adapt.data import SequenceStream, StreamState
from domainlm.adapt.parallel import Dist, Strategy
from domainlm.adapt.setup import Prepared


@dataclass
class Run:
    """Set up: where the run writes, what it resumes, the loaded model."""

    cfg: AdaptConfig
    dist: Dist
    dir: Path
    resume_from: Path | None
    prepared: Prepared
    t_start: float


@dataclass
class Data:
    corpus_dir: Path
    corpus_manifest: dict
    train: Any
    val: Any
    general_val: Any
    replay: Any
    replay_fraction: float
    block: int
    stream: SequenceStream
    builder: BatchBuilder
    global_batch: int
    tokens_per_step: int
    total_steps: int
    sources: list = field(default_factory=list)  # a ``sources:`` mixture (adapt/mixture.py Source); [] otherwise


@dataclass
class Trainer:
    model: Any  # the (peft) model; under FSDP its parameters are shards
    loss_module: torch.nn.Module  # build.LossModule: the model as one forward returning the loss
    train_module: torch.nn.Module  # what the loop calls (DDP around loss_module, or loss_module itself)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    params: list[torch.Tensor]
    body_params: list[torch.Tensor]
    bf16: bool
    strategy: Strategy
    n_total: int
    n_trainable: int
    flops: Any
    peak: float | None


@dataclass
class Progress:
    start_step: int = 0
    elapsed_before: float = 0.0
    history: dict = field(default_factory=dict)
    metrics: MetricsLog | None = None
    stream_state: StreamState = field(default_factory=StreamState)
    last_loss: float = float("nan")
    tokens_session: int = 0
    loop_s: float = 0.0
    state_bytes: dict = field(default_factory=dict)
    peak_rss_training: int = 0
