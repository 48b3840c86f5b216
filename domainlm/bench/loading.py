"""Load a model for evaluation from a source spec or a domainlm run folder (bench and publish share it).

A run folder (``manifest.json`` of kind "run") holds the trained model in ``final/``: either a full
``save_pretrained`` model, or a LoRA adapter (``adapter_config.json``) whose base is recorded in
``final/base_model.json`` as ``{"model": SPEC}``. An adapter is applied to its base with peft and
merged, so evaluation runs a plain transformers model. The tokenizer is always read from
``final/``, because ``vocab extend`` may have changed it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainlm.errors import IncompleteArtifactError, SourceError

log = logging.getLogger(__name__)


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


def is_run_folder(spec: str | Path) -> bool:
    path = Path(spec).expanduser()
    manifest = path / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("kind") == "run"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def _run_objective(manifest: dict[str, Any]) -> str | None:
    obj = (manifest.get("config") or {}).get("objective")
    return obj if obj in ("causal", "masked", "protein") else None


def load_for_eval(spec: str, objective: str | None = None, **kwargs: Any) -> LoadedModel:
    """Load ``spec`` (anything :func:`domainlm.sources.resolve` accepts, or a run folder).

    Args:
        spec: model name, folder, Hub id, or a domainlm run folder.
        objective: 'causal', 'masked' or 'protein'; default: what the source or run says.
        **kwargs: passed to ``from_pretrained`` (e.g. ``attn_implementation="eager"``).

    Raises:
        IncompleteArtifactError: a run folder whose manifest does not say it is complete, or that
            lacks ``final/``.
        SourceError: the model cannot be resolved or loaded.
    """
    from domainlm import sources

    if is_run_folder(spec):
        return _load_run(Path(spec).expanduser(), objective, **kwargs)
    src = sources.resolve(spec)
    model, report = sources.load_model(src, objective, **kwargs)
    tokenizer = sources.load_tokenizer(src)
    model.eval()
    return LoadedModel(model, tokenizer, objective or src.kind, spec, src.origin, list(report.fresh_parameters))


def _load_run(run: Path, objective: str | None, **kwargs: Any) -> LoadedModel:
    from domainlm import sources
    from domainlm.artifacts import read_manifest

    manifest = read_manifest(run, "run")
    final = run / "final"
    if not final.is_dir():
        raise IncompleteArtifactError(f"{run} has no final/ folder: the run did not finish; resume it with "
                                      f"`domainlm adapt --out {run} --resume` or evaluate a checkpoint folder")
    objective = objective or _run_objective(manifest)
    adapter = final / "adapter_config.json"
    if adapter.is_file():
        base_file = final / "base_model.json"
        if not base_file.is_file():
            raise SourceError(f"{final} holds a LoRA adapter but no base_model.json naming its base; write "
                              '{"model": "BASE"} there')
        try:
            base_spec = json.loads(base_file.read_text(encoding="utf-8"))["model"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise SourceError(f"{base_file} must hold {{\"model\": \"BASE\"}}") from None
        from peft import PeftModel

        src = sources.resolve(base_spec)
        objective = objective or src.kind
        base, report = sources.load_model(src, objective, **kwargs)
        if (final / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(final))
        else:
            tokenizer = sources.load_tokenizer(src)
        if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
            base.resize_token_embeddings(len(tokenizer))  # vocab extend added tokens before LoRA training
        try:
            model = PeftModel.from_pretrained(base, str(final)).merge_and_unload()
        except (ValueError, RuntimeError, OSError) as exc:
            raise SourceError(f"cannot apply the LoRA adapter in {final} to {base_spec}: "
                              f"{str(exc).splitlines()[0]}") from None
        model.eval()
        log.info("loaded run %s: LoRA adapter merged into %s", run, base_spec)
        return LoadedModel(model, tokenizer, objective, str(run), f"run folder (LoRA on {base_spec})",
                           [], run_folder=str(run), base_model=base_spec)
    src = sources.resolve(str(final))
    objective = objective or src.kind
    model, report = sources.load_model(src, objective, **kwargs)
    model.eval()
    base_spec = (manifest.get("config") or {}).get("model")
    return LoadedModel(model, sources.load_tokenizer(src), objective, str(run), "run folder (full model)",
                       list(report.fresh_parameters), run_folder=str(run), base_model=base_spec)
