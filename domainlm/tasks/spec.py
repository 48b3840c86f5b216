"""The schema of a task YAML: :class:`TaskSpec`, whose fields are the keys a task file may hold.

A task file in ``benchmarks/<suite>/<task>.yaml`` names its reader ``format``, its data ``files``
per split, the ``head`` it trains or the scoring rule it uses (``mode``), its ``metric`` and a
``version`` (lm-evaluation-harness habit: bump it whenever data, prompt or scoring change, so old
numbers are never compared with new ones). Every key is a field of :class:`TaskSpec`;
``domainlm validate TASK.yaml`` checks a file against it without loading any data. Finding and loading
task files and suites is :mod:`.suites`.

The schema checks ``format`` and ``metric`` against the registries (:mod:`.builtin`), which name the built-in
readers and metrics by their import path, so this module never imports a concrete reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from domainlm.config import opt
from domainlm.tasks.builtin import FORMATS, METRICS

Head = Literal["token", "sequence", "multilabel", "regression", "lm", "contacts"]
Mode = Literal["probe", "finetune", "zeroshot", "perplexity"]
SOURCE_KEYS = {"path", "url", "sha256", "license", "why", "note", "unpack", "size"}


@dataclass
class TaskSpec:
    """One benchmark task. Every key of a task YAML is a field here."""

    version: int = opt(help="task version; bump it when data, prompt or scoring change")
    format: str = opt(help="reader for the data files (see FORMATS: conll, pubtator, brat, jsonl, csv, ...)")
    metric: str = opt(help="headline metric (entity_f1, micro_f1, macro_f1, accuracy, pearson, spearman, "
                      "word_perplexity, token_perplexity, recovery_accuracy, precision_at_l5)")
    head: Head = opt("sequence", "what is predicted: token tags, one label per sequence, several labels, a "
                     "number, language-model likelihood (lm) or residue contacts")
    mode: Mode = opt("probe", "probe: frozen features + scikit-learn; finetune: train a head for a fixed budget "
                     "over several seeds; zeroshot: log-likelihood of answer choices (causal models); "
                     "perplexity: held-out likelihood")
    fallback_mode: Mode | None = opt(None, "mode used when the model cannot run `mode` (zero-shot needs a causal LM)")
    files: dict[str, str] = opt(factory=dict, help="split -> data file or folder (train, dev, test), relative to "
                                "the task file's folder, or to --data-root when it is set")
    name: str | None = opt(None, "task name (default: the file name without .yaml)")
    family: str | None = opt(None, "task family for the BLURB-style macro average (default: the task name)")
    description: str = opt("", "what the task measures, one line")
    labels: list[str] | None = opt(None, "the label set (entity types for NER); data with another label is an "
                                   "error. Default: the labels seen in the train split")
    other_labels: Literal["error", "drop"] = opt("error", "data labels outside 'labels': an error naming the line, "
                                                 "or drop them (entities become O, records are skipped; counted) "
                                                 "for real sets with types the task does not score")
    on_error: Literal["raise", "skip"] = opt("raise", "a bad record in the data (a CoNLL line without a tag, a broken "
                                             "JSON line, a label that is not a number): stop with its file and "
                                             "line, or skip it; skips are counted by reason, with examples, in "
                                             "the report and manifest")
    negative_label: str | None = opt(None, "label left out of micro-F1 (ChemProt/DDI style: the 'no relation' "
                                     "class)")
    text_field: str = opt("text", "jsonl/csv field (column) holding the text")
    text_b_field: str | None = opt(None, "jsonl/csv field holding the second text of a pair")
    label_field: str | None = opt(None, "jsonl/csv field holding the label (default 'label', or 'labels' for "
                                  "multilabel); fasta: 'key' reads key=value from the header, default the "
                                  "number after the last '|'")
    id_field: str = opt("id", "jsonl/csv field holding a record id (optional in the data)")
    label_sep: str | None = opt(None, "csv multilabel: separator between labels in one cell")
    prompt: str | None = opt(None, "zeroshot: prompt template with {question}, {context} and/or {text}")
    choices: list[str] | None = opt(None, "zeroshot: the answer strings scored after the prompt (default: labels)")
    spaced: bool | None = opt(None, "put a space between characters before tokenising (ProtBert's convention for "
                              "residues). Default: on for FASTA tasks when the model is not a protein model, whose "
                              "word pieces would see one 300-letter word (BERT's WordPiece turns it into [UNK])")
    max_length: int = opt(256, "tokens per example; longer inputs are truncated and counted")
    batch_size: int = opt(32, "examples per forward pass")
    pooling: Literal["mean", "cls", "last"] = opt("mean", "how token states become one sequence vector (probe)")
    layers: list[int] = opt(factory=lambda: [-4, -3, -2, -1], help="hidden layers averaged into probe features "
                            "(negative: from the top). The BERT paper found the last four layers the best frozen "
                            "features for NER; averaging keeps the probe's size")
    probe_c: float = opt(1.0, "inverse regularisation of the logistic-regression probe (ridge alpha = 1/C)")
    probe_c_grid: list[float] | None = opt(None, "when a dev split exists, choose the probe's C from these by "
                                           "the dev score")
    finetune_steps: int = opt(100, "optimizer steps per seed in finetune mode (a fixed small budget; "
                              "finetune_epochs replaces it)")
    finetune_epochs: float | None = opt(None, "finetune mode: train for this many passes over the train split "
                                        "instead of finetune_steps (the BLURB protocol trains for epochs)")
    finetune_evals: int = opt(4, "finetune mode with a dev split: score dev this many times, evenly over the "
                              "budget, and score test with the best checkpoint on dev (BLURB's model selection)")
    finetune_lr: float = opt(5e-5, "AdamW learning rate in finetune mode (BERT fine-tuning's usual range)")
    finetune_batch_size: int = opt(16, "examples per step in finetune mode")
    carve_train: float | None = opt(None, "no train file: move this fraction of the test file's records "
                                    "(seeded, stratified) into a train split (real sets shipping only a test file)")
    test_ids: str | None = opt(None, "file of record ids forming the test split; the test file's other records "
                               "become train (PubMedQA's official split)")
    split_seed: int = opt(0, "seed for carve_train")
    role: Literal["domain", "general"] = opt("domain", "lm tasks: held-out domain text or the general-English "
                                             "forgetting check")
    window: int = opt(256, "lm: tokens per window (causal sliding window / masked scoring context)")
    stride: int | None = opt(None, "lm: causal window step; tokens before it are context only (default window/2)")
    max_tokens: int | None = opt(None, "lm: stop after this many scored tokens per model (pseudo-perplexity costs "
                                 "one forward pass per token)")
    masked_window: int | None = opt(None, "lm: tokens of context per masked position in pseudo-perplexity "
                                    "(default: window); each scored token costs a forward pass of this length")
    masked_max_tokens: int | None = opt(None, "lm: scored-token budget for masked models, whose pseudo-perplexity "
                                        "costs one forward pass per token (default: max_tokens)")
    contact_threshold: float = opt(8.0, "contacts: C-beta distance in angstrom below which residues touch")
    min_separation: int = opt(24, "contacts: sequence separation counted as long range (Rao et al. 2020)")
    train_separation: int = opt(6, "contacts: smallest separation of residue pairs the regression is fit on")

    # Real suites (benchmarks/blurb, matsci, protein-fitness): provenance, protocol and published numbers.
    sources: list[dict[str, Any]] = opt(factory=list, help="real suites: the canonical source of each data file, "
                                        "one mapping per file: path (relative to the data root: the download "
                                        "cache or --data-root), url (pinned at a commit or release; null when the "
                                        "file must be placed by hand), sha256 (null when not known: the downloader "
                                        "then refuses the file unless --allow-unpinned), license, why (why this "
                                        "source), note, unpack (zip/tar.gz archives: extract beside the archive)")
    protocol: str | None = opt(None, "real suites: the evaluation protocol in words (the paper's: fine-tune on "
                               "train, select on dev, score test, 3 seeds; or zero-shot for causal models)")
    protocol_seeds: int | None = opt(None, "seeds the protocol asks for (BLURB: 3); fewer in a run is reported as "
                                     "a shortened protocol")
    metric_definition: str | None = opt(None, "the metric in the benchmark's own definition (BLURB: entity-level "
                                        "F1, micro-F1 without the negative class, Pearson, ...)")
    reference: dict[str, Any] | None = opt(None, "a published score shown beside ours: {model, score (0-1 like "
                                           "ours), source (paper and table)}")
    ready: bool = opt(True, "false: the task is registered with its sources but domainlm cannot run it yet "
                      "(no reader for its release format, or data behind a login); 'note' says why")
    note: str | None = opt(None, "real suites: caveats a user must know (a source that differs from the paper's, "
                           "a file that must be placed by hand)")

    # Filled by the loader, not by users.
    source: str | None = opt(None, "the task file (set by the loader)")

    @property
    def task_name(self) -> str:
        return self.name or (Path(self.source).stem if self.source else "task")

    @property
    def task_family(self) -> str:
        return self.family or self.task_name

    @property
    def folder(self) -> Path:
        return Path(self.source).parent if self.source else Path.cwd()

    @property
    def supervised(self) -> bool:
        return self.head in ("token", "sequence", "multilabel", "regression")

    def problems(self) -> list[str]:
        """Impossible combinations, each naming the keys involved and a fix."""
        out: list[str] = []
        if self.version < 1:
            out.append(f"'version' must be 1 or more, got {self.version}")
        if self.format not in FORMATS:
            out.append(f"'format': {FORMATS.unknown(self.format)}")
        elif self.head not in FORMATS.get(self.format).heads:
            heads = ", ".join(FORMATS.get(self.format).heads)
            out.append(f"format '{self.format}' cannot feed head '{self.head}'; it feeds: {heads}")
        if self.metric not in METRICS:
            out.append(f"'metric': {METRICS.unknown(self.metric)}")
        elif self.head not in METRICS.get(self.metric).heads:
            fits = [m for m in METRICS.names() if self.head in METRICS.get(m).heads]
            out.append(f"metric '{self.metric}' does not apply to head '{self.head}'; use one of: {', '.join(fits)}")
        if "test" not in self.files:
            out.append("'files' needs a 'test' entry (the split that is scored)")
        unknown_splits = set(self.files) - {"train", "dev", "test"}
        if unknown_splits:
            out.append(f"'files' has unknown splits {sorted(unknown_splits)}; use train, dev and test")
        for mode_key in ("mode", "fallback_mode"):
            mode = getattr(self, mode_key)
            if mode is None:
                continue
            if self.head == "lm" and mode != "perplexity":
                out.append(f"'{mode_key}: {mode}' does not apply to head 'lm'; use mode: perplexity")
            if mode == "perplexity" and self.head != "lm":
                out.append(f"'{mode_key}: perplexity' needs head: lm, got head '{self.head}'")
            if self.head == "contacts" and mode != "probe":
                out.append(f"head 'contacts' is scored by a probe over attention maps; set {mode_key}: probe")
            if mode == "zeroshot" and self.head != "sequence":
                out.append(f"'{mode_key}: zeroshot' scores answer choices, so it needs head: sequence")
            if mode == "zeroshot" and not (self.choices or self.labels):
                out.append("'mode: zeroshot' needs 'choices' (or 'labels') to score")
            if mode == "zeroshot" and not self.prompt:
                out.append("'mode: zeroshot' needs a 'prompt' template")
        needs_train = self.mode in ("probe", "finetune") or self.fallback_mode in ("probe", "finetune")
        if needs_train and "train" not in self.files and self.carve_train is None and not self.test_ids:
            out.append(f"mode '{self.mode}' trains on a train split: add files.train, or carve_train / test_ids "
                       "to make one from the test file")
        if self.carve_train is not None and not 0 < self.carve_train < 1:
            out.append(f"'carve_train' must be between 0 and 1, got {self.carve_train}")
        if self.carve_train is not None and self.test_ids:
            out.append("'carve_train' and 'test_ids' both make a train split; keep one")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            out.append("'labels' lists a label twice")
        if self.labels is not None and self.head in ("regression", "lm", "contacts"):
            out.append(f"'labels' does not apply to head '{self.head}'; remove it")
        if self.negative_label is not None and self.labels is not None and self.negative_label not in self.labels:
            out.append(f"'negative_label' {self.negative_label!r} is not in 'labels'")
        if self.finetune_epochs is not None and self.finetune_epochs <= 0:
            out.append(f"'finetune_epochs' must be positive, got {self.finetune_epochs}")
        for key in ("max_length", "batch_size", "finetune_steps", "finetune_batch_size", "finetune_evals"):
            if getattr(self, key) < 1:
                out.append(f"'{key}' must be at least 1, got {getattr(self, key)}")
        for key in ("window", "masked_window"):
            if getattr(self, key) is not None and getattr(self, key) < 8:
                out.append(f"'{key}' must be at least 8, got {getattr(self, key)}")
        if self.stride is not None and not 1 <= self.stride <= self.window:
            out.append(f"'stride' must be between 1 and window ({self.window}), got {self.stride}")
        for key in ("max_tokens", "masked_max_tokens"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                out.append(f"'{key}' must be at least 1, got {getattr(self, key)}")
        if not self.layers:
            out.append("'layers' must name at least one hidden layer (e.g. [-1])")
        if self.probe_c <= 0 or any(c <= 0 for c in self.probe_c_grid or []):
            out.append("'probe_c' and 'probe_c_grid' must be positive")
        if self.finetune_lr <= 0:
            out.append(f"'finetune_lr' must be positive, got {self.finetune_lr}")
        out.extend(self._source_problems())
        return out

    def _source_problems(self) -> list[str]:
        """Real-suite keys: every source is complete and every data file is covered by one."""
        import re

        out: list[str] = []
        for i, src in enumerate(self.sources):
            where = f"'sources[{i}]'"
            if not isinstance(src, dict):
                out.append(f"{where} must be a mapping with path, url, sha256, license")
                continue
            unknown = set(src) - SOURCE_KEYS
            if unknown:
                out.append(f"{where} has unknown keys {sorted(unknown)}; known: {', '.join(sorted(SOURCE_KEYS))}")
            path = src.get("path")
            if not isinstance(path, str) or not path or path.startswith("/") or ".." in Path(path).parts:
                out.append(f"{where}.path must be a relative path inside the data root, got {path!r}")
            url = src.get("url")
            if url is not None and not (isinstance(url, str) and re.match(r"^(https?|file)://", url)):
                out.append(f"{where}.url must be an http(s):// or file:// URL or null, got {url!r}")
            sha = src.get("sha256")
            if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
                out.append(f"{where}.sha256 must be 64 lowercase hex digits or null, got {sha!r}")
            if (sha is None or url is None) and not (src.get("note") or src.get("why")):
                out.append(f"{where}: a source without a url or sha256 needs a 'note' saying why and what to do")
            if not src.get("license"):
                out.append(f"{where}.license is required (quote the source's license, or 'unknown' with a note)")
            if src.get("unpack") not in (None, "zip", "tar.gz"):
                out.append(f"{where}.unpack must be zip or tar.gz, got {src.get('unpack')!r}")
        if self.sources:
            for key, rel in [(f"files.{k}", v) for k, v in self.files.items()] + [("test_ids", self.test_ids)]:
                if rel and self.source_for(rel) is None:
                    out.append(f"'{key}' ({rel}) has no entry in 'sources'; add one (path, url, sha256, license)")
        if self.reference is not None:
            if not isinstance(self.reference.get("score"), (int, float)) or not 0 <= self.reference["score"] <= 1:
                out.append("'reference' needs a numeric 'score' between 0 and 1 (like ours), with 'model' and 'source'")
            if set(self.reference) != {"model", "score", "source"}:
                out.append(f"'reference' takes exactly model, score and source, got {sorted(map(str, self.reference))}")
        if self.protocol_seeds is not None and self.protocol_seeds < 1:
            out.append(f"'protocol_seeds' must be at least 1, got {self.protocol_seeds}")
        if not self.ready and not self.note:
            out.append("'ready: false' needs a 'note' saying what is missing")
        return out

    def source_for(self, rel: str) -> dict[str, Any] | None:
        """The source entry that provides data file ``rel``: the same path, or an archive unpacked above it."""
        for src in self.sources:
            path = src.get("path") or ""
            if rel == path or Path(rel).is_relative_to(path):  # a file, or a folder placed whole
                return src
            if src.get("unpack") and Path(rel).is_relative_to(Path(path).parent):
                return src
        return None
