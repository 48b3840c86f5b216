"""domainlm: adapt general language models to a scientific field.

Every CLI verb is a plain typed function in its verb folder; heavy libraries load only when one runs::

    from domainlm.adapt import adapt
    from domainlm.bench import bench
    from domainlm.corpora import prepare

A verb whose name is not also a folder's is importable from here too (``from domainlm import prepare``). One
whose name is its folder's (``adapt``, ``bench``, ``publish``, ...) is not: ``from domainlm import adapt``
gives the package ``domainlm.adapt`` (Python binds a subpackage over a lazy export of the same name), so
import it from its folder. The verbs come from the one verb table, :data:`domainlm.cli.VERBS`; the model
loaders are the only other names.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from domainlm.cli import VERBS

__version__ = "0.1.0"

_HERE = Path(__file__).parent
_EXPORTS = {
    **{v.python_name: v.target for v in VERBS
       if v.python_name and not (_HERE / v.python_name).is_dir() and not (_HERE / f"{v.python_name}.py").is_file()},
    "resolve": "domainlm.sources.resolution:resolve",
    "load_model": "domainlm.sources.load:load_model",
    "load_tokenizer": "domainlm.sources.load:load_tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, _, attr = _EXPORTS[name].partition(":")
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'domainlm' has no attribute '{name}'")
