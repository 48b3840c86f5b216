"""Load a model from a source spec or a domainlm run folder: the one loader bench, publish and generate share.

So the model you benchmark is loaded exactly as the model you publish or generate from: the same
safety checks (:func:`domainlm.sources.resolution.resolve` and :func:`~domainlm.sources.load.load_model`: no pickle,
no remote code without the opt-in, config and weights must agree), the same embedding resize and the
same adapter merge.

A run folder (``manifest.json`` of kind "run") holds the trained model in ``final/``: either a full
``save_pretrained`` model, or (methods ``lora`` and ``qlora``) a peft adapter plus ``base_model.json``
naming the base (``{"model": SPEC, "vocab_size": N, ...}``). The adapter is applied to the base loaded
the way adapt loaded it and, by default, merged, so callers get a plain transformers model. The
tokenizer is always read from ``final/``, because ``vocab extend`` may have changed it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainlm.artifacts import peek_manifest, read_manifest
from domainlm.errors import DataError, DomainLMError, IncompleteArtifactError, SourceError
from domainlm.noise import ignoring
from domainlm.sources.gguf import materialise
from domainlm.sources.load import load_model, load_tokenizer
from domainlm.sources.resolution import resolve

log = logging.getLogger(__name__)

KINDS = ("causal", "masked", "protein")
# Methods whose final/ is a peft adapter over a base (qlora: the base was 4-bit while training).
ADAPTER_METHODS = ("lora", "qlora")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


# ----------------------------------------------------------------------------------------------------
# reading a run folder (no weights)
# ----------------------------------------------------------------------------------------------------

@dataclass
class RunInfo:
    """A finished run: its manifest, its final folder and how to load it."""

    run_dir: Path
    manifest: dict[str, Any]
    final: Path
    method: str  # "full" | "lora" | "qlora"
    objective: str  # "causal" | "masked" | "protein"
    base_model: dict[str, Any] = field(default_factory=dict)  # final/base_model.json (adapter runs)

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.get("config") or {}

    @property
    def is_adapter(self) -> bool:
        return self.method in ADAPTER_METHODS

    @property
    def probe(self) -> Path | None:
        p = self.final / "probe.safetensors"
        return p if p.is_file() else None

    def load_flags(self, allow_pickle: bool = False, trust_remote_code: bool = False) -> dict[str, bool]:
        """The opt-ins the run was trained with, or given now."""
        return {"allow_pickle": allow_pickle or bool(self.config.get("allow_pickle")),
                "trust_remote_code": trust_remote_code or bool(self.config.get("trust_remote_code"))}


def is_run_folder(spec: str | Path) -> bool:
    """True when ``spec`` is a folder whose manifest says it is an adapt run (finished or not)."""
    return peek_manifest(Path(spec).expanduser()).get("kind") == "run"


def read_run(run_dir: str | Path) -> RunInfo:
    """Check that ``run_dir`` is a finished adapt run with a complete final model, and describe it.

    Raises:
        IncompleteArtifactError: the manifest is missing or says the run did not finish, or the final
            model folder is missing or incomplete.
        DataError: the final folder lacks the files its method needs.
    """
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise DataError(f"run folder {run_dir} does not exist; pass the --out folder of a `domainlm adapt` run")
    try:
        manifest = read_manifest(run_dir, "run")
    except IncompleteArtifactError as exc:
        raise IncompleteArtifactError(f"{run_dir} is not a finished run: {exc}. Resume it with `domainlm adapt "
                                      f"--out {run_dir} --resume`, or use one of its checkpoint folders") from None
    except DomainLMError as exc:
        raise DataError(f"{run_dir} is not a run folder: {exc}") from None
    final = run_dir / (manifest.get("final_dir") or "final")
    if not final.is_dir():
        raise IncompleteArtifactError(f"{run_dir} has no final/ folder: the manifest says the run finished but its "
                                      f"final model folder {final} is missing; re-run `domainlm adapt` (with "
                                      "--overwrite)")
    try:
        read_manifest(final, "final")
    except DomainLMError as exc:
        raise IncompleteArtifactError(f"{final}: the final model folder is not complete ({exc}); re-run `domainlm "
                                      "adapt` (with --overwrite)") from None
    config = manifest.get("config") or {}
    method = manifest.get("method") or config.get("method") or (
        "lora" if (final / "adapter_config.json").is_file() else "full")
    base_model: dict[str, Any] = {}
    if method in ADAPTER_METHODS:
        missing = [n for n in (*ADAPTER_FILES, "base_model.json") if not (final / n).is_file()]
        if missing:
            raise DataError(f"{final} is a {method} run's final folder but lacks {', '.join(missing)}; the run "
                            "folder is damaged: re-run `domainlm adapt`")
        try:
            base_model = json.loads((final / "base_model.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{final / 'base_model.json'} is not valid JSON ({exc}); re-run `domainlm adapt`") from None
        if not isinstance(base_model, dict) or not isinstance(base_model.get("model"), str):
            raise DataError(f"{final / 'base_model.json'} must hold {{\"model\": \"BASE\", ...}}; re-run "
                            "`domainlm adapt`")
    elif not (final / "config.json").is_file() or not any(final.glob("*.safetensors")):
        raise DataError(f"{final} should hold a full model (config.json and *.safetensors) but does not; "
                        "re-run `domainlm adapt`")
    objective = next((o for o in (manifest.get("objective"), base_model.get("objective"), config.get("objective"))
                      if o in KINDS), None)
    if objective is None and method == "full":
        objective = resolve(str(final), **RunInfo(run_dir, manifest, final, method, "causal").load_flags()).kind
    return RunInfo(run_dir, manifest, final, method, objective or "causal", base_model)


# ----------------------------------------------------------------------------------------------------
# loading a run
# ----------------------------------------------------------------------------------------------------

def base_source(info: RunInfo, **flags: bool):
    """The resolved base of an adapter run as a :class:`~domainlm.sources.source.ModelSource` whose ``path`` is a
    plain safetensors folder (GGUF bases are dequantised into the cache)."""
    flags = info.load_flags(**flags)
    spec = info.base_model.get("model") or info.config.get("model")
    try:
        src = resolve(spec, **flags)
    except SourceError as first:
        # The spec may have been a folder that moved; the path adapt recorded may still exist.
        path = info.base_model.get("path")
        if not path or not Path(path).is_dir() or not (Path(path) / "config.json").is_file():
            raise SourceError(f"the base model of {info.run_dir} ('{spec}', from {info.final / 'base_model.json'}) "
                              f"cannot be loaded: {first}") from None
        src = resolve(path, **flags)
    return materialise(src)


def load_run_tokenizer(info: RunInfo):
    """The run's tokenizer, from ``final/`` (``vocab extend`` may have grown it)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(info.final), **({"trust_remote_code": True} if
                                                                 info.load_flags()["trust_remote_code"] else {}))
    except (OSError, ValueError) as exc:
        raise DataError(f"the tokenizer in {info.final} cannot be loaded ({exc}); re-run `domainlm adapt`") from None


def load_base(info: RunInfo, objective: str | None = None, *, allow_pickle: bool = False,
              trust_remote_code: bool = False, **kwargs: Any):
    """The base of an adapter run, loaded as adapt loaded it (fp32) and sized to the run's vocabulary."""
    from domainlm.quant import dequantized_base  # the base as the run held it: NF4 (QLoRA) or bf16, in fp32

    flags = info.load_flags(allow_pickle, trust_remote_code)
    model, _ = dequantized_base(base_source(info, **flags), objective or info.objective, info.base_model, **flags,
                                **kwargs)
    vocab = info.base_model.get("vocab_size") or len(load_run_tokenizer(info))
    if vocab > model.get_input_embeddings().weight.shape[0]:
        # adapt resized before wrapping (vocab extend); the new rows are replaced by the adapter's saved
        # embeddings (modules_to_save), so how they are initialised here does not matter.
        model.resize_token_embeddings(vocab, mean_resizing=False)
    return model


def load_run_model(info: RunInfo, *, merge: bool = True, objective: str | None = None, allow_pickle: bool = False,
                   trust_remote_code: bool = False, **kwargs: Any):
    """``(model, fresh_parameters)``: the run's final model in fp32 and eval mode.

    Full runs load ``final/`` through :func:`domainlm.sources.load.load_model` (every check a base model gets).
    Adapter runs load the base, apply the adapter and, with ``merge``, fold it into the weights (a plain
    transformers model); without ``merge`` the peft wrapper is returned.
    """
    flags = info.load_flags(allow_pickle, trust_remote_code)
    objective = objective or info.objective
    if not info.is_adapter:
        model, report = load_model(resolve(str(info.final), **flags), objective, **flags, **kwargs)
        model.eval()
        return model, list(report.fresh_parameters)
    from peft import PeftModel

    base = load_base(info, objective, **flags, **kwargs)
    try:
        # peft reads transformers' deprecated is_gradient_checkpointing: a FutureWarning on every adapter load
        with ignoring(".*is_gradient_checkpointing", FutureWarning):
            model = PeftModel.from_pretrained(base, str(info.final))
    except (ValueError, RuntimeError, OSError, KeyError) as exc:
        raise SourceError(f"cannot apply the adapter in {info.final} to {info.base_model.get('model')}: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if merge:
        model = model.merge_and_unload()
    model.eval()
    return model, []


# ----------------------------------------------------------------------------------------------------
# any spec, for evaluation and generation
# ----------------------------------------------------------------------------------------------------

@dataclass
class LoadedModel:
    """A model ready for evaluation (``eval()`` mode, float32 weights) and what it is."""

    model: Any
    tokenizer: Any
    kind: str  # causal | masked | protein
    spec: str
    origin: str
    fresh_parameters: list[str] = field(default_factory=list)
    run_folder: str | None = None
    base_model: str | None = None

    @property
    def is_causal(self) -> bool:
        return self.kind == "causal"


def load_for_eval(spec: str, objective: str | None = None, *, allow_pickle: bool = False,
                  trust_remote_code: bool = False, **kwargs: Any) -> LoadedModel:
    """Load ``spec`` (anything :func:`domainlm.sources.resolution.resolve` accepts, or a run folder), merged and in eval mode.

    Args:
        spec: model name, folder, Hub id, or a domainlm run folder.
        objective: 'causal', 'masked' or 'protein'; default: what the source or run says.
        allow_pickle, trust_remote_code: the opt-ins of :func:`domainlm.sources.resolution.resolve` (a run folder also
            uses the ones it was trained with).
        **kwargs: passed to ``from_pretrained`` (e.g. ``attn_implementation="eager"``).

    Raises:
        IncompleteArtifactError: a run folder that did not finish, or whose final folder is incomplete.
        DataError: a run folder lacking the files its method needs.
        SourceError: the model cannot be resolved or loaded safely.
    """
    flags = {"allow_pickle": allow_pickle, "trust_remote_code": trust_remote_code}
    if is_run_folder(spec):
        info = read_run(spec)
        model, fresh = load_run_model(info, merge=True, objective=objective, **flags, **kwargs)
        base = info.base_model.get("model") if info.is_adapter else info.config.get("model")
        method = {"lora": "LoRA", "qlora": "QLoRA"}.get(info.method, info.method)
        origin = f"run folder ({method} on {base})" if info.is_adapter else "run folder (full model)"
        if info.is_adapter:
            log.info("loaded run %s: %s adapter merged into %s", info.run_dir, info.method, base)
        return LoadedModel(model, load_run_tokenizer(info), objective or info.objective, str(spec), origin, fresh,
                           run_folder=str(spec), base_model=base)
    src = resolve(spec, **flags)
    model, report = load_model(src, objective, **flags, **kwargs)
    model.eval()
    tokenizer = load_tokenizer(src, **({"trust_remote_code": True} if trust_remote_code else {}))
    return LoadedModel(model, tokenizer, objective or src.kind, spec, src.origin, list(report.fresh_parameters))
