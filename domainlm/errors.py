"""Exceptions that reach the user. Each carries what was wrong, where, and the fix.

The CLI catches :class:`DomainLMError` and prints its message without a traceback; anything else
is a bug in domainlm and keeps its traceback.
"""

from __future__ import annotations


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
