"""Exceptions that reach the user. Each carries what was wrong, where, and the fix.

The CLI catches :class:`DomainLMError` and prints its message without a traceback; anything else
is a bug in domainlm and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# Names users bring from other tools (HF Trainer, litgpt, axolotl) for our fields.
_SYNONYMS = {"learning_rate": "lr", "gradient_accumulation_steps": "grad_accum", "per_device_train_batch_size":
             "batch_size", "micro_batch_size": "batch_size", "num_train_steps": "max_steps", "steps": "max_steps",
             "warmup": "warmup_ratio", "lr_scheduler_type": "schedule", "model_name_or_path": "model",
             "output_dir": "out", "seq_len": "block_size", "max_seq_length": "block_size", "sequence_len": "block_size",
             "lora_rank": "lora_r", "lora_target_linear": "lora_target_modules", "dataset": "corpus"}


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """Return a ' (did you mean X?)' hint for a misspelt ``name``, or an empty string.

    It lives here, beside the exceptions whose messages it completes, so every module can import it
    without importing the config machinery.
    """
    known = list(known)
    if _SYNONYMS.get(name) in known:
        return f" (did you mean '{_SYNONYMS[name]}'?)"
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class DomainLMError(Exception):
    """Base class for errors caused by user input, files or the environment."""


class ConfigError(DomainLMError):
    """A recipe or flag set that cannot run. Holds every problem found, not just the first."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s){where}:\n{lines}")


class SourceError(DomainLMError):
    """A model source that cannot be resolved or loaded safely."""


class DataError(DomainLMError):
    """Unusable input data: names the file, the record and the fix."""


class IncompleteArtifactError(DomainLMError):
    """A run folder, checkpoint or prepared corpus whose manifest does not say it is complete."""
