"""How ``domainlm merge`` runs: check the output folder and mergekit, then one merge or ``--select``'s sweep."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from domainlm.merge.config import MergeConfig
from domainlm.merge.engine import merge_info, prepare_pair, require_mergekit, run_mergekit, write_run


def check_out(out: Path, overwrite: bool) -> None:
    from domainlm.errors import ConfigError

    if out.exists() and (out.is_file() or any(out.iterdir())) and not overwrite:
        raise ConfigError([f"'out': {out} is not empty; choose a new folder or pass --overwrite"])


def run(cfg: MergeConfig) -> dict[str, Any]:
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
