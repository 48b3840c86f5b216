"""The options of ``domainlm quickstart``, and the schema of its per-domain YAMLs (``quickstart/<domain>.yaml``).

A domain's quickstart is a shipped adapt recipe plus the keys the quickstart changes in it (its CPU budget),
both visible in one YAML beside this file, and the bench suite, bench budget and merge step that follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from domainlm.config import opt

DOMAINS_DIR = Path(__file__).resolve().parent


def shipped_domains() -> dict[str, Path]:
    """Every domain the quickstart ships, by name: ``biomed`` -> ``quickstart/biomed.yaml``."""
    return {p.stem: p for p in sorted(DOMAINS_DIR.glob("*.yaml"))}


@dataclass
class QuickstartConfig:
    domain: Literal["biomed", "materials", "protein"] = opt("biomed", "which shipped sample and base model to use "
                                                            "(domainlm/quickstart/DOMAIN.yaml)")
    out: str = opt("domainlm-quickstart", "folder for every stage's output")
    fresh: bool = opt(False, "start again instead of reusing finished stages (only in a folder a quickstart wrote)")
    model: str | None = opt(None, "use another base model (default: the domain's packaged or tiny model)")
    max_steps: int | None = opt(None, "training steps (default: the domain's budget)")
    max_examples: int | None = opt(None, "cap each bench split at this many examples (default: the domain's "
                                   "budget; 80 for biomed)")
    seeds: int = opt(1, "seeds per fine-tuned bench task (probes are deterministic)")
    merge: bool = opt(True, "merge the adapted model back into its base with the weight chosen on dev splits "
                      "(merge --select) and publish that (biomed; needs mergekit: pip install 'domainlm[merge]')")
    gguf: list[str] = opt(factory=list, help="also publish verified GGUF files for llama.cpp/Ollama: f16, bf16, q8_0 "
                          "(see `domainlm publish --gguf`)")


@dataclass
class QuickstartDomain:
    """One ``quickstart/<domain>.yaml``: the recipe, what the quickstart changes in it, and what follows adapt."""

    recipe: str = opt(help="the adapt recipe: a shipped recipe's name (domainlm/recipes/NAME.yaml) or a path; its "
                      "`corpus` is the card the quickstart prepares, its `block_size` that corpus's block size")
    suite: str = opt(help="bench suites the adapted model is scored on against its base")
    adapt: dict[str, Any] = opt(factory=dict, help="recipe keys the quickstart changes (its budget); every other "
                                "key is the recipe's")
    max_examples: int | None = opt(None, "cap on each bench split and on merge's test splits (unset: whole splits)")
    merge: dict[str, Any] | None = opt(None, "`domainlm merge --select` options after adapt (method, weights, "
                                       "domain_tasks, guard_tasks, max_examples ...); unset: no merge stage")
