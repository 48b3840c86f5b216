"""``domainlm merge``: merge an adapted model back into its base (or another relative), optionally with
the weight chosen by measurement on dev splits (``--select``, :mod:`.select`).

The output is a run folder (``manifest.json`` of kind "run" with a ``merge`` entry, ``final/``), so
``bench``, ``publish`` and ``generate`` take it like any run. mergekit (LGPL-3.0) is the engine, an
optional extra imported only here: ``pip install 'domainlm[merge]'``. The verb's flow is :mod:`.run`; one
merge with mergekit (shared by a plain merge and ``--select``'s sweep) is :mod:`.engine`.
"""

from __future__ import annotations

from typing import Any

from domainlm.config import as_config
from domainlm.merge.config import METHODS, MergeConfig

__all__ = ["METHODS", "MergeConfig", "merge"]


def merge(config: MergeConfig | str | None = None, **overrides: Any) -> dict[str, Any]:
    """Merge an adapted model (a run, LoRA included, or a model folder) with its base or another model.

    --method linear|slerp|ties|dare with --weight on the adapted model (0: the other model, 1: the
    adapted one). --select sweeps --weights instead, scores each on dev/validation splits only, keeps
    the best domain score whose guard tasks are not significantly worse than the base (paired bootstrap,
    Holm), writes OUT/selection.json and OUT/pareto.png, and scores the chosen model on test once.
    Returns the output run's manifest (with the selection under "selection").
    """
    from domainlm.merge.run import run

    return run(as_config(MergeConfig, config, overrides))
