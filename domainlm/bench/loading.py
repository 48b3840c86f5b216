"""bench's names for the shared loader: :mod:`domainlm.loading` loads models for bench, publish and generate.

Kept so ``from domainlm.bench.loading import LoadedModel, load_for_eval`` (bench's modes, user scripts)
keeps working; the code lives in one place.
"""

from __future__ import annotations

from domainlm.loading import LoadedModel, is_run_folder, load_for_eval

__all__ = ["LoadedModel", "is_run_folder", "load_for_eval"]
