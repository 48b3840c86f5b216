"""The schema of ``domainlm adapt``: every recipe key is a field here, with why its default is what it is."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from domainlm.config import did_you_mean, opt

TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
# Muennighoff et al. 2023 (Scaling Data-Constrained Language Models): up to about 4 epochs of repeated data are
# almost as good as fresh data; beyond that the returns fall quickly.
REPEAT_WARNING_EPOCHS = 4
# Tokens per training sequence by objective where no block_size is given; adapt's corpus-card preparation and
# compute's seq_len both read it. Causal 256: a PubMed abstract averages ~250 tokens, so a block holds about one;
# masked 128: BERT spent 90% of its pretraining steps at 128; protein 512: most protein sequences are shorter.
DEFAULT_BLOCK_SIZE = {"masked": 128, "causal": 256, "protein": 512}


@dataclass
class SourceSpec:
    """One corpus of a ``sources:`` mixture."""

    corpus: str = opt(None, "prepared corpus folder, or a corpus card name (prepared into OUT/corpora on first use)")
    weight: float = opt(None, "this source's share of training tokens (weights are normalised over the sources)")
    name: str | None = opt(None, "label in metrics, curves and the schedule; default: the card name or the "
                           "folder's name")
    max_epochs: float | None = opt(None, "passes over this source's training blocks after which it stops and the "
                                   "other sources share its weight (unset: it repeats as often as drawn)")
    loss_mask: bool = opt(False, "the source is chat-formatted: its prepared blocks carry a loss_mask column "
                          "(assistant tokens 1) and only those tokens count in the loss; required to be there")

    @classmethod
    def from_text(cls, text: str) -> SourceSpec:
        """``CORPUS=WEIGHT`` (the flag form ``--sources pubmed-sample=0.7 general-english-sample=0.3``)."""
        corpus, sep, weight = text.rpartition("=")
        if not sep or not corpus:
            raise ValueError(f"expected CORPUS=WEIGHT (e.g. pubmed-sample=0.7), got {text!r}")
        try:
            return cls(corpus=corpus, weight=float(weight))
        except ValueError:
            raise ValueError(f"expected CORPUS=WEIGHT with a number after '=', got {text!r}") from None

    @property
    def label(self) -> str:
        return self.name or Path(self.corpus.rstrip("/")).name

    def problems(self) -> list[str]:
        out = []
        if self.corpus is None or self.corpus == "":
            out.append("'corpus' is required: a prepared corpus folder or a corpus card name")
        if self.weight is None:
            out.append("'weight' is required: this source's share of training tokens (e.g. 0.5)")
        elif not self.weight > 0:
            out.append(f"'weight' must be positive, got {self.weight} (drop the source to leave it out)")
        if self.max_epochs is not None and not self.max_epochs > 0:
            out.append(f"'max_epochs' must be positive, got {self.max_epochs}")
        return out


@dataclass
class MixturePoint:
    """The mixture's weights at one step (or token count); between points they change linearly."""

    weights: dict = opt(None, "weight of every source by its name at this point (0 switches a source off)")
    step: int | None = opt(None, "optimizer step where these weights hold")
    tokens: int | None = opt(None, "training tokens after which these weights hold (instead of step)")

    def problems(self) -> list[str]:
        out = []
        if not isinstance(self.weights, dict) or not self.weights:
            out.append("'weights' is required: a mapping of source name to weight, e.g. {pubmed: 0.3, general: 0.7}")
        if (self.step is None) == (self.tokens is None):
            out.append("give exactly one of 'step' and 'tokens'")
        for key in ("step", "tokens"):
            if getattr(self, key) is not None and getattr(self, key) < 0:
                out.append(f"'{key}' must be 0 or more, got {getattr(self, key)}")
        return out


@dataclass
class AdaptConfig:
    # --- what to adapt, on what -------------------------------------------------------------------
    model: str = opt("tiny-llama", "base model: local folder, packaged name (minilm, smollm2), tiny-* or a Hub id")
    corpus: str = opt("pubmed-sample", "prepared corpus folder, or a corpus card name (prepared with the model's "
                      "tokenizer into OUT/corpus on first use)")
    out: str = opt("runs/adapt", "run folder (checkpoints, metrics, curves, final model, manifest)")
    objective: Literal["auto", "causal", "masked", "protein"] = opt(
        "auto", "training objective; auto picks it from the model (causal LM, masked LM, protein masked LM)")
    from_scratch: bool = opt(False, "initialise the weights from the model's config instead of its checkpoint "
                             "(ESM trained from scratch)")
    block_size: int | None = opt(None, "tokens per training sequence when adapt prepares a corpus card "
                                 "(default: 128 for masked, 256 for causal, 512 for protein: DEFAULT_BLOCK_SIZE)")
    # --- full training or LoRA --------------------------------------------------------------------
    method: Literal["full", "lora", "qlora"] = opt("full", "train every weight, LoRA adapters (peft), or QLoRA: LoRA "
                                                   "over a 4-bit NF4 base (bitsandbytes, extra domainlm[qlora])")
    lora_r: int = opt(16, "LoRA rank; 16 is peft's and LLaMA-Factory's common default for 100M-class models")
    lora_alpha: int = opt(32, "LoRA scaling numerator (alpha/r = 2, the usual choice)")
    lora_dropout: float = opt(0.05, "dropout on the LoRA path")
    lora_target_modules: list[str] | None = opt(None, "module names to wrap; default: every linear layer of the "
                                                "transformer blocks (QLoRA found all-linear beats attention-only)")
    train_embeddings: bool = opt(False, "under LoRA also train the input embeddings and output layer fully "
                                 "(needed after `vocab extend`)")
    embedding_rows: Literal["all", "new"] = opt("all", "with train_embeddings on a `vocab extend` output: 'all' "
                                                "trains the whole embedding matrices, 'new' only the added rows "
                                                "(peft trainable_token_indices; the base's rows stay as they were). "
                                                "experiments/FORGETTING_VOCAB.md compares them")
    # --- objective details ------------------------------------------------------------------------
    mlm_probability: float = opt(0.15, "fraction of tokens masked (BERT, RoBERTa and ESM all use 15%)")
    whole_word_mask: bool = opt(False, "mask whole words rather than pieces (MatSciBERT, PubMedBERT)")
    document_mask: bool = opt(True, "restart positions and block attention at document boundaries in packed blocks")
    # --- optimisation -----------------------------------------------------------------------------
    lr: float = opt(2e-4, "peak learning rate (AdamW); 2e-4 suits LoRA and small models, use ~5e-5 for full "
                    "training of a pretrained 100M+ model")
    weight_decay: float = opt(0.01, "AdamW weight decay (not applied to biases and norms)")
    adam_beta1: float = opt(0.9, "AdamW beta1")
    adam_beta2: float = opt(0.98, "AdamW beta2; 0.98 as in RoBERTa/ESM for stability with large batches")
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0 disables)")
    schedule: Literal["cosine", "linear", "constant"] = opt("cosine", "decay after warmup")
    warmup_ratio: float = opt(0.05, "fraction of steps spent warming up; continued pretraining re-warms "
                              "(Ibrahim et al. 2024 found re-warming + re-decaying works best)")
    min_lr_ratio: float = opt(0.1, "final learning rate as a fraction of the peak (cosine/linear)")
    head_warmup_steps: int = opt(0, "optimizer steps at the start in which only the language-model head trains "
                                 "(the body's gradients are dropped): a fresh head's random gradients never reach "
                                 "the pretrained body (MiniLM ships no MLM head; experiments/DAPT_BIOMED.md)")
    body_lr_ratio: float = opt(1.0, "the body's learning rate as a fraction of lr (the LM head's own weights keep "
                               "lr): a fresh head learns fast while a pretrained body moves gently")
    batch_size: int = opt(8, "sequences per micro-batch (per process)")
    grad_accum: int = opt(1, "micro-batches per optimizer step")
    max_steps: int | None = opt(100, "optimizer steps; the run stops at this or max_tokens, whichever comes first")
    max_tokens: int | None = opt(None, "training-token budget (non-padding tokens, all processes)")
    seed: int = opt(0, "seed for weights of fresh heads, masking, data order and dropout")
    bf16: Literal["auto", "on", "off"] = opt("auto", "bf16 autocast with fp32 master weights; auto turns it on when "
                                             "the CPU/GPU runs bf16 matmuls fast")
    # --- scale: sharding, memory and speed (issues 14, 15) ----------------------------------------
    strategy: Literal["auto", "ddp", "fsdp"] = opt(
        "auto", "how several processes share the work: ddp (full copy per process), fsdp (FSDP2 fully_shard: "
        "weights, gradients and optimizer state sharded); auto picks ddp when the training state fits one device")
    load_once: bool = opt(True, "under strategy: fsdp, process 0 reads the checkpoint and the other processes build "
                          "the model on the meta device; the weights are broadcast into the shards (one copy of the "
                          "model in host memory instead of one per process). false: every process loads it")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass (activation "
                                       "checkpointing): about a third more compute for far less activation memory")
    compile: bool = opt(False, "torch.compile the model's forward (compile time is reported separately)")
    attention: Literal["auto", "sdpa", "flex", "flash", "varlen"] = opt(
        "auto", "attention for packed documents: sdpa (dense document mask), flex (FlexAttention BlockMask; GPU "
        "only for training), flash (flash_attention_2 varlen, CUDA, causal; needs flash-attn), varlen (torch's own "
        "varlen_attn flash kernel with the documents' offsets, CUDA, no install); auto: varlen on CUDA for the "
        "families it was checked on (attention.VARLEN_FAMILIES, no attention dropout), else flash when flash-attn is "
        "installed (causal), else sdpa (flex measured slower, and failing at 1B, on an H200: SPEED_ADAPT_GPU.md)")
    # --- replay and forgetting --------------------------------------------------------------------
    replay_corpus: str | None = opt(None, "general corpus (prepared folder or card) mixed into training "
                                    "against forgetting; or a chat/instruction JSONL (OpenAI 'messages' or Alpaca "
                                    "'instruction'/'input'/'output', or the instructions-sample card), rendered with "
                                    "the model's chat template with the loss on the assistant tokens only")
    self_replay: int = opt(0, "before training, the base model answers this many prompts of the instruction set "
                           "(replay_corpus when it is one, else instructions-sample), greedily; its answers become "
                           "the replay data (pulls the model back towards its own behaviour; no outside data)")
    self_replay_max_tokens: int = opt(96, "longest self-replay answer, in tokens")
    replay_fraction: float | None = opt(None, "fraction of training sequences drawn from replay_corpus; default "
                                        "0.05 for text when a replay corpus is given, 0 for protein")
    # --- a mixture of several corpora (issue 33) -------------------------------------------------------
    sources: list[SourceSpec] | None = opt(None, "weighted mixture of corpora instead of corpus + replay_corpus: a "
                                           "list of {corpus, weight, name, max_epochs, loss_mask}; weights are "
                                           "shares of training tokens. Flags: --sources CORPUS=WEIGHT ...")
    mixture_schedule: list[MixturePoint] | None = opt(None, "weights changing over the run: a list of {step or "
                                                      "tokens, weights: {name: weight}}; linear between points, "
                                                      "the last held after it, the sources' weights before the "
                                                      "first (e.g. more general text early, the best source at "
                                                      "the end, as in a WSD decay)")
    general_eval: str | None = opt(None, "general corpus whose validation perplexity is tracked (forgetting "
                                   "monitor); defaults to replay_corpus")
    forgetting_threshold: float = opt(0.10, "warn when general perplexity rises by more than this fraction")
    # --- evaluation, logging, checkpoints ---------------------------------------------------------
    eval_every: int = opt(50, "steps between held-out evaluations (0: only at the start and end)")
    eval_sequences: int = opt(128, "validation sequences scored per evaluation, the same whatever the number of "
                              "processes (0: the whole split)")
    eval_batches: int | None = opt(None, "older form of eval_sequences, in micro-batches of batch_size sequences; "
                                   "when set it wins (eval_sequences = eval_batches x batch_size)")
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "trackio"]] | None = opt(
        None, "experiment trackers that get the metrics.jsonl records, the resolved config and the manifest, each an "
        "extra (pip install 'domainlm[wandb]'), from process 0 only; [] for none. Unset: tensorboard when it is "
        "installed. Offline by default: W&B in offline mode unless WANDB_MODE is set, MLflow into OUT/mlruns unless "
        "MLFLOW_TRACKING_URI is set, Trackio into OUT/trackio unless TRACKIO_DIR is set")
    log_every: int | None = opt(None, "steps between metric log lines; default every step for runs under 100 steps, "
                                "else about 100 lines over the run")
    save_every: int = opt(100, "steps between checkpoints (0: only at the end)")
    keep_last: int = opt(2, "checkpoints kept; older ones are deleted after a new one is complete")
    resume: bool = opt(False, "continue from the newest complete checkpoint in OUT")
    overwrite: bool = opt(False, "delete an existing run in OUT and start again")
    chunked_head: bool | None = opt(None, "compute the output head and cross-entropy only where needed and in "
                                    "chunks (masked positions for MLM); saves the full-vocabulary logits. Unset: on "
                                    "for CPU runs, off on CUDA, where the full logits measured 11-33% faster "
                                    "(experiments/SPEED_ADAPT_GPU.md)")
    prefetch: int | None = opt(None, "optimizer steps whose batches a background thread builds ahead of the step "
                               "(0: build each in the loop); the batches are the same either way. Unset: 2 on CUDA, "
                               "0 on CPU, where the thread competes with the step for the cores "
                               "(experiments/SPEED_ADAPT.md)")
    allow_pickle: bool = opt(False, "allow loading pickle (.bin) weights; pickle can execute code")
    trust_remote_code: bool = opt(False, "allow model code from the model folder to run")

    def problems(self) -> list[str]:
        out = []
        for key in ("lora_r", "lora_alpha", "batch_size", "grad_accum", "keep_last"):
            if getattr(self, key) < 1:
                out.append(f"'{key}' must be at least 1, got {getattr(self, key)}")
        for key in ("eval_every", "eval_sequences", "eval_batches", "log_every", "save_every", "prefetch"):
            if (getattr(self, key) or 0) < 0:
                out.append(f"'{key}' must be 0 or more, got {getattr(self, key)}")
        if not 0 < self.mlm_probability < 1:
            out.append(f"'mlm_probability' must be between 0 and 1, got {self.mlm_probability}")
        if self.lr <= 0:
            out.append(f"'lr' must be positive, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            out.append(f"'warmup_ratio' must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.min_lr_ratio <= 1:
            out.append(f"'min_lr_ratio' must be in [0, 1], got {self.min_lr_ratio}")
        if self.head_warmup_steps < 0:
            out.append(f"'head_warmup_steps' must be 0 or more, got {self.head_warmup_steps}")
        if not 0 < self.body_lr_ratio <= 1:
            out.append(f"'body_lr_ratio' must be in (0, 1], got {self.body_lr_ratio}")
        if self.max_steps is None and self.max_tokens is None:
            out.append("set 'max_steps' or 'max_tokens': a run needs a budget")
        if self.max_steps is not None and self.max_steps < 1:
            out.append(f"'max_steps' must be at least 1, got {self.max_steps}")
        if self.max_tokens is not None and self.max_tokens < 1:
            out.append(f"'max_tokens' must be at least 1, got {self.max_tokens}")
        if self.replay_fraction is not None:
            if not 0 <= self.replay_fraction < 1:
                out.append(f"'replay_fraction' must be in [0, 1), got {self.replay_fraction}")
            elif self.replay_fraction > 0 and not self.replay_corpus and not self.self_replay:
                out.append("'replay_fraction' is set but 'replay_corpus' is not: name a general corpus to replay "
                           "(e.g. replay_corpus: general-english-sample) or set replay_fraction: 0")
        if self.self_replay < 0 or self.self_replay_max_tokens < 1:
            out.append(f"'self_replay' must be 0 or more and 'self_replay_max_tokens' at least 1, got "
                       f"{self.self_replay} and {self.self_replay_max_tokens}")
        if self.self_replay and self.objective in ("masked", "protein"):
            out.append(f"'self_replay' needs a causal model that answers prompts, but 'objective' is '{self.objective}'")
        if self.from_scratch and self.method in ("lora", "qlora"):
            out.append("'from_scratch: true' with 'method: lora' trains adapters on random weights; use method: full")
        if self.whole_word_mask and self.objective == "causal":
            out.append("'whole_word_mask' applies to masked LMs, not objective: causal")
        if self.train_embeddings and self.method not in ("lora", "qlora"):
            out.append("'train_embeddings' is a LoRA option (full training already trains embeddings); "
                       "drop it or set method: lora")
        if self.resume and self.overwrite:
            out.append("'resume' and 'overwrite' contradict each other; choose one")
        if self.block_size is not None and self.block_size < 8:
            out.append(f"'block_size' must be at least 8, got {self.block_size}")
        from domainlm.corpora.cards import (
            corpus_problem,  # a missing path is named as one, before --out is made
        )

        for key in ("corpus", "replay_corpus", "general_eval"):
            if getattr(self, key) and (why := corpus_problem(key, getattr(self, key))):
                out.append(why)
        if self.report_to and len(self.report_to) != len(set(self.report_to)):
            out.append(f"'report_to' lists a tracker twice: {self.report_to}")
        out.extend(self.mixture_problems())
        return out

    def mixture_problems(self) -> list[str]:
        """``sources:`` and ``mixture_schedule:`` checks, each naming the key (``sources[1].weight``)."""
        out: list[str] = []
        if self.mixture_schedule and not self.sources:
            out.append("'mixture_schedule' needs 'sources': list the corpora it weighs")
        if not self.sources:
            if self.sources is not None:
                out.append("'sources' is empty: list at least one {corpus, weight}, or drop it and use 'corpus'")
            return out
        if self.corpus != AdaptConfig.corpus:  # the default stands in for "not set"; a set one would be dropped
            out.append(f"'corpus' ({self.corpus}) and 'sources' are both set: list the corpus as one of the sources "
                       "(with its weight) and drop 'corpus'")
        if self.replay_corpus or self.replay_fraction:
            out.append("'sources' replaces 'replay_corpus'/'replay_fraction': add the replay corpus as a source "
                       "with its weight (e.g. {corpus: general-english-sample, weight: 0.05})")
        if self.self_replay:
            out.append("'self_replay' replays into corpus + replay_fraction, not into a 'sources' mixture: drop "
                       "'self_replay' or use 'corpus' instead of 'sources'")
        names = [s.label for s in self.sources]
        for i, name in enumerate(names):
            if names.index(name) != i:
                out.append(f"'sources[{i}].name': '{name}' names two sources; give each a distinct 'name'")
        unit = None
        last = -1
        for i, point in enumerate(self.mixture_schedule or []):
            key = f"mixture_schedule[{i}]"
            here = "step" if point.step is not None else "tokens"
            unit = unit or here
            if here != unit:
                out.append(f"'{key}': every point uses the same unit; the first uses '{unit}', this one '{here}'")
            at = point.step if point.step is not None else point.tokens
            if at is not None and at <= last:
                out.append(f"'{key}.{here}': points must be in increasing order, got {at} after {last}")
            last = at if at is not None else last
            for name, w in point.weights.items():
                if name not in names:
                    out.append(f"'{key}.weights': unknown source '{name}'{did_you_mean(str(name), names)}; the "
                               f"sources are {', '.join(names)}")
                elif not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0:
                    out.append(f"'{key}.weights.{name}' must be a number, 0 or more, got {w!r}")
            if missing := [n for n in names if n not in point.weights]:
                out.append(f"'{key}.weights' is missing {', '.join(missing)}: give every source a weight at each "
                           "point (0 switches one off)")
            elif all(isinstance(w, (int, float)) and w == 0 for w in point.weights.values()):
                out.append(f"'{key}.weights' are all 0: at least one source needs weight")
        return out

    def prefetch_steps(self, device_type: str) -> int:
        """``prefetch`` as set; unset, 2 on CUDA (the batch is built while the GPU runs the step) and 0 elsewhere.
        Measured on the 2-core CPU (SPEED_ADAPT.md, 2026-12-04, tiny Llama, four back-to-back comparisons): 0 was
        6-18% faster than 2 in each, since the builder thread took CPU time from the step it overlapped."""
        if self.prefetch is not None:
            return self.prefetch
        return 2 if device_type == "cuda" else 0

    def chunked_head_on(self, device_type: str) -> bool:
        """``chunked_head`` as set; unset, on except on CUDA. Measured on an H200 (SPEED_ADAPT_GPU.md, 2026-12-04):
        full logits ran 11% faster at 1.1B x 2048 tokens and 33% at 135M x 1024, where the logits fit easily; on
        CPU the chunked head is the faster one and saves the logits' memory."""
        return self.chunked_head if self.chunked_head is not None else device_type != "cuda"
