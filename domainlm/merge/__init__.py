"""``domainlm merge``: merge an adapted model back into its base (or another relative), optionally with
the weight chosen by measurement on dev splits (``--select``, :mod:`.select`).

The output is a run folder (``manifest.json`` of kind "run" with a ``merge`` entry, ``final/``), so
``bench``, ``publish`` and ``generate`` take it like any run. mergekit (LGPL-3.0) is the engine, an
optional extra imported only here: ``pip install 'domainlm[merge]'``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from domainlm.config import as_config
from domainlm.merge.config import METHODS, MergeConfig

__all__ = ["METHODS", "MergeConfig", "merge"]


def check_out(out: Path, overwrite: bool) -> None:
    from domainlm.errors import ConfigError

    if out.exists() and (out.is_file() or any(out.iterdir())) and not overwrite:
        raise ConfigError([f"'out': {out} is not empty; choose a new folder or pass --overwrite"])


def merge(config: MergeConfig | str | None = None, **overrides: Any) -> dict[str, Any]:
    """Merge an adapted model (a run, LoRA included, or a model folder) with its base or another model.

    --method linear|slerp|ties|dare with --weight on the adapted model (0: the other model, 1: the
    adapted one). --select sweeps --weights instead, scores each on dev/validation splits only, keeps
    the best domain score whose guard tasks are not significantly worse than the base (paired bootstrap,
    Holm), writes OUT/selection.json and OUT/pareto.png, and scores the chosen model on test once.
    Returns the output run's manifest (with the selection under "selection").
    """
    from domainlm.merge.run import prepare_pair, require_mergekit, run_mergekit, write_run

    cfg = as_config(MergeConfig, config, overrides)
    require_mergekit()
    out = Path(cfg.out)
    check_out(out, cfg.overwrite)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    if cfg.select:
        from domainlm.merge.select import select

        return select(cfg)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="domainlm-merge-", dir=out.parent if out.parent.exists() else None) as s:
        scratch = Path(s)
        pair = prepare_pair(cfg.model, cfg.other, scratch)
        merged = run_mergekit(pair, cfg.method, cfg.weight, cfg.density, cfg.seed, scratch / "merged")
        manifest = write_run(pair, merged, out, merge_info(cfg, pair, cfg.weight, time.perf_counter() - t0))
    print(f"merged {cfg.model} into {pair.other_spec} ({cfg.method}, weight {cfg.weight:g} on the adapted model) "
          f"-> {out}")
    return manifest


def merge_info(cfg: MergeConfig, pair: Any, weight: float, wall_s: float, **extra: Any) -> dict[str, Any]:
    """The manifest's ``merge`` entry: inputs, method and weights."""
    from importlib.metadata import version

    info = {"method": cfg.method, "engine": f"mergekit {version('mergekit')}", "weight": weight,
            "adapted": str(cfg.model), "other": pair.other_spec,
            # linear/SLERP interpolate (SLERP's t); TIES/DARE add weight x the sparsified task vector to the other
            "weights": {"adapted": weight, "other": 1.0 - weight} if cfg.method in ("linear", "slerp") else
            {"task_vector": weight, "other": 1.0},
            "vocabulary": {"rows": pair.vocab_rows, "shared_rows": pair.shared_rows,
                           "added_rows_from": "adapted" if pair.vocab_rows > pair.shared_rows else None},
            "wall_time_s": wall_s}
    if cfg.method in ("ties", "dare"):
        info["density"] = cfg.density
    if cfg.method == "dare":
        info["seed"] = cfg.seed
    info.update(extra)
    return info
