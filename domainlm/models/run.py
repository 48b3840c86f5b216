"""The listing behind ``domainlm models``: each source's kind and parameter count, read from file headers."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from domainlm.artifacts import atomic_write_json
from domainlm.models.config import ModelsConfig
from domainlm.sources.resolution import available_sources
from domainlm.sources.source import ModelSource, cache_dir
from domainlm.sources.tiny import build_tiny


def _safetensors_params(folder: Path) -> int | None:
    """Sum tensor sizes from safetensors headers (8-byte length + JSON), without importing torch."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            size = 1
            for d in meta["shape"]:
                size *= d
            total += size
    return total


def _gguf_params(path: Path) -> int | None:
    """Parameter count of a GGUF file. GGUFReader maps every field (~10 s here), so the count is cached."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}"
    cache = cache_dir() / "gguf_params.json"
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    if key in known:
        return known[key]
    try:
        from gguf import GGUFReader
    except ImportError:
        return None
    reader = GGUFReader(str(path))
    n = int(sum(int(t.n_elements) for t in reader.tensors))
    atomic_write_json(cache, {**known, key: n})
    return n


def parameter_count(src: ModelSource) -> int | None:
    if src.gguf_file:
        return _gguf_params(Path(src.path) / src.gguf_file)
    return _safetensors_params(Path(src.path))


def human(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def run(config: ModelsConfig) -> list[dict[str, Any]]:
    rows = []
    for src in available_sources():
        if src.origin.startswith("tiny") and not (Path(src.path) / "config.json").is_file():
            build_tiny(src.name, cache_dir() / "tiny" / src.name)
        rows.append({"name": src.name, "kind": src.kind, "parameters": parameter_count(src),
                     "hub_id": src.hub_id, "origin": src.origin,
                     "path": str(Path(src.path) / src.gguf_file) if src.gguf_file else src.path,
                     "description": src.description})
    if config.json:
        print(json.dumps(rows, indent=2))
        return rows
    header = f"{'name':<11} {'kind':<8} {'params':>7}  {'hub id':<38} origin"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['name']:<11} {r['kind']:<8} {human(r['parameters']):>7}  {r['hub_id'] or '-':<38} {r['origin']}")
    print("\nAlso accepted: a local model folder, a .gguf file, or a Hub id (online, or cached with HF_HUB_OFFLINE=1).")
    return rows
