"""One merge of an adapted model with the model it came from, with mergekit as the engine.

The inputs are made into two plain safetensors folders mergekit reads (:func:`prepare_pair`): a LoRA
run is merged into its base first with publish's export code, and the other model gets the adapted
model's extended-vocabulary rows so the shapes agree. mergekit then merges (linear, SLERP, TIES or
DARE) through its Python API, and :func:`write_run` turns its output into a run folder (manifest,
``final/`` with the adapted model's tokenizer and a logits probe) that bench, publish and generate
load like any run.

Written by hand, and why:
* the vocabulary: mergekit's ``tokenizer_source`` would give the base rows for the added tokens (zeros
  or a mean) and merge them; the added rows must be the adapted model's own, so they are copied in.
* the pair checks: mergekit reports a shape mismatch deep in its planner as a traceback; a user gets one
  line naming both models before any merge starts.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainlm.errors import DataError, DomainLMError
from domainlm.merge.config import MergeConfig

log = logging.getLogger(__name__)

INSTALL = "pip install 'domainlm[merge]'  (or: pip install mergekit)"
# task arithmetic in mergekit's names: DARE with TIES' sign consensus, as BioMistral merged
MERGEKIT_METHOD = {"linear": "linear", "slerp": "slerp", "ties": "ties", "dare": "dare_ties"}


def require_mergekit() -> None:
    """Fail at once, before any model loads, when the optional engine is missing."""
    try:
        import mergekit.merge  # noqa: F401
    except ImportError:
        raise DomainLMError(f"merge needs mergekit, which is not installed: {INSTALL}") from None


@dataclass
class Pair:
    """Two safetensors folders of the same architecture and shapes, and what they are."""

    adapted: Path  # holds model.safetensors (+ config.json, tokenizer)
    other: Path
    adapted_spec: str
    other_spec: str
    run: Any  # RunInfo of the adapted run, or None for a model folder
    objective: str
    shared_rows: int  # vocabulary rows both models have; rows beyond come from the adapted model
    vocab_rows: int


def _weights_file(folder: Path) -> Path | None:
    for name in ("model.safetensors", "model.safetensors.index.json"):
        if (folder / name).is_file():
            return folder / name
    return None


def _header(folder: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the safetensors headers (no weights read)."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [
        "model.safetensors"]
    out = {}
    for name in files:
        with safe_open(str(folder / name), framework="pt") as fh:
            for key in fh.keys():
                out[key] = tuple(fh.get_slice(key).get_shape())
    return out


def _config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def _adapted_folder(spec: str, scratch: Path):
    """(folder, RunInfo | None, objective): a LoRA run is merged into its base with publish's export."""
    from domainlm.loading import is_run_folder, read_run

    if is_run_folder(spec):
        info = read_run(spec)
        if info.is_adapter:
            from domainlm.publish.export import export_merged

            folder = scratch / "adapted"
            folder.mkdir(parents=True, exist_ok=True)
            export_merged(info, folder, "float32")
            return folder, info, info.objective
        if _weights_file(info.final) is None:
            raise DataError(f"{info.final} holds no model.safetensors for mergekit; re-run `domainlm adapt`")
        return info.final, info, info.objective
    folder = Path(spec).expanduser()
    if not (folder / "config.json").is_file() or _weights_file(folder) is None:
        raise DataError(f"{spec} is neither a run folder nor a model folder with config.json and model.safetensors; "
                        "pass a `domainlm adapt` run or a `domainlm publish` output")
    from domainlm.sources.resolution import resolve

    return folder, None, resolve(str(folder)).kind


def _other_spec(info: Any, other: str | None) -> str:
    if other:
        return other
    if info is None:
        raise DataError("the adapted model is a model folder, not a run, so its base is not known: name the model to "
                        "merge into with --other")
    spec = info.base_model.get("model") if info.is_adapter else info.config.get("model")
    if not spec:
        raise DataError(f"{info.run_dir}: the run does not record its base model; pass --other")
    return spec


def _refuse(adapted: str, other: str, why: str) -> DomainLMError:
    return DomainLMError(f"cannot merge {adapted} with {other}: {why}")


def prepare_pair(model: str, other: str | None, scratch: Path) -> Pair:
    """Check that the two models can merge and lay them out as mergekit folders under ``scratch``."""
    from domainlm.sources.gguf import materialise
    from domainlm.sources.resolution import resolve

    adapted, info, objective = _adapted_folder(model, scratch)
    other_spec = _other_spec(info, other)
    src = materialise(resolve(other_spec, **(info.load_flags() if info else {})))
    other_dir = Path(src.path)
    if _weights_file(other_dir) is None:
        raise _refuse(model, other_spec, f"{other_dir} holds no model.safetensors")
    if other_dir.resolve() == adapted.resolve():
        raise _refuse(model, other_spec, "they are the same folder; a model merged with itself is that model")
    a_cfg, o_cfg = _config(adapted), _config(other_dir)
    if a_cfg.get("model_type") != o_cfg.get("model_type") or a_cfg.get("architectures") != o_cfg.get("architectures"):
        raise _refuse(model, other_spec, f"different architectures ({a_cfg.get('architectures')} vs "
                                         f"{o_cfg.get('architectures')})")
    a_tok, o_tok = _tokenizer(adapted), _tokenizer(other_dir)
    n_other = len(o_tok)
    if len(a_tok) < n_other or a_tok.convert_ids_to_tokens(list(range(n_other))) != \
            o_tok.convert_ids_to_tokens(list(range(n_other))):
        raise _refuse(model, other_spec, "their tokenizers differ (the adapted one must be the other's vocabulary, "
                                         "possibly extended at the end by `vocab extend`)")
    a_head, o_head = _header(adapted), _header(other_dir)
    a_rows = _vocab_rows(a_cfg)
    o_rows = _vocab_rows(o_cfg)
    tied_a = a_cfg.get("tie_word_embeddings", False) and not any(k.startswith("lm_head") for k in a_head)
    tied_o = o_cfg.get("tie_word_embeddings", False) and not any(k.startswith("lm_head") for k in o_head)
    if a_rows != o_rows or tied_a != tied_o:
        other_dir = _align_other(adapted, other_dir, objective, scratch / "other", a_rows, untie=not tied_a)
        o_head = _header(other_dir)
    diff = sorted(k for k in set(a_head) | set(o_head) if a_head.get(k) != o_head.get(k))
    if diff:
        k = diff[0]
        raise _refuse(model, other_spec, f"{len(diff)} tensor(s) differ in name or shape, e.g. {k}: "
                                         f"{a_head.get(k, 'absent')} vs {o_head.get(k, 'absent')}")
    return Pair(adapted, other_dir, model, other_spec, info, objective, min(n_other, o_rows), a_rows)


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def _vocab_rows(cfg: dict[str, Any]) -> int:
    return int(cfg.get("vocab_size") or (cfg.get("text_config") or {}).get("vocab_size") or 0)


def _align_other(adapted: Path, other: Path, objective: str, out: Path, rows: int, untie: bool) -> Path:
    """The other model with the adapted model's vocabulary rows appended (and untied if the adapted one is)."""
    import torch

    from domainlm.sources.load import auto_class

    cls = auto_class(objective)
    a = cls.from_pretrained(str(adapted), dtype=torch.float32)
    o = cls.from_pretrained(str(other), dtype=torch.float32)
    n = o.get_input_embeddings().weight.shape[0]
    if rows < n:
        raise _refuse(str(adapted), str(other), f"the adapted model has fewer vocabulary rows ({rows}) than the "
                                                f"other ({n})")
    if rows > n:
        o.resize_token_embeddings(rows, mean_resizing=False)
        with torch.no_grad():
            o.get_input_embeddings().weight[n:] = a.get_input_embeddings().weight[n:]
            out_o, out_a = o.get_output_embeddings(), a.get_output_embeddings()
            if out_o is not None and out_a is not None and out_o.weight is not o.get_input_embeddings().weight:
                out_o.weight[n:] = out_a.weight[n:]
    if untie and getattr(o.config, "tie_word_embeddings", False):
        o.get_output_embeddings().weight = torch.nn.Parameter(o.get_input_embeddings().weight.detach().clone())
        o.config.tie_word_embeddings = False
    out.mkdir(parents=True, exist_ok=True)
    o.save_pretrained(str(out))
    return out


def mergekit_config(pair: Pair, method: str, weight: float, density: float) -> dict[str, Any]:
    """The mergekit YAML (as a dict): ``weight`` is on the adapted model, ``1 - weight`` on the other."""
    a, o = str(pair.adapted), str(pair.other)
    if method == "linear":
        return {"merge_method": "linear", "dtype": "float32",
                "models": [{"model": o, "parameters": {"weight": 1.0 - weight}},
                           {"model": a, "parameters": {"weight": weight}}]}
    if method == "slerp":
        return {"merge_method": "slerp", "base_model": o, "dtype": "float32", "parameters": {"t": weight},
                "models": [{"model": o}, {"model": a}]}
    # task arithmetic: other + weight * sparsified (adapted - other)
    return {"merge_method": MERGEKIT_METHOD[method], "base_model": o, "dtype": "float32",
            "parameters": {"normalize": False},
            "models": [{"model": a, "parameters": {"weight": weight, "density": density}}]}


def run_mergekit(pair: Pair, method: str, weight: float, density: float, seed: int, out: Path) -> Path:
    """Merge with mergekit into ``out`` (weights and config only), then copy the adapted model's added rows."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from domainlm.noise import muted_log

    config = MergeConfiguration.model_validate(mergekit_config(pair, method, weight, density))
    options = MergeOptions(copy_tokenizer=False, write_model_card=False, random_seed=seed, quiet=True,
                           lazy_unpickle=False, safe_serialization=True)
    # mergekit 0.1.5 sets `torch_dtype` on the merged config, and transformers 5 logs that the name is deprecated:
    # mergekit's code, not the user's setting, so the note is muted here (--verbose shows it)
    with muted_log("transformers.configuration_utils", "`torch_dtype` is deprecated"):
        run_merge(config, str(out), options)
    if pair.vocab_rows > pair.shared_rows:
        _copy_added_rows(pair, out)
    return out


def _copy_added_rows(pair: Pair, out: Path) -> None:
    """Rows past the shared vocabulary are the adapted model's, exactly (see the module docstring)."""
    from safetensors.torch import load_file, save_file

    files = sorted(out.glob("*.safetensors"))
    adapted = {}
    for f in sorted(pair.adapted.glob("model*.safetensors")):
        adapted.update(load_file(str(f)))
    n = pair.shared_rows
    for f in files:
        tensors = load_file(str(f))
        changed = False
        for key, t in tensors.items():
            if key in adapted and t.dim() == 2 and t.shape[0] == pair.vocab_rows and ("embed" in key or "lm_head" in key):
                t[n:] = adapted[key][n:]
                changed = True
        if changed:
            save_file(tensors, str(f), metadata={"format": "pt"})


def write_run(pair: Pair, merged: Path, out: Path, merge_info: dict[str, Any], extras=None) -> dict[str, Any]:
    """Make mergekit's output folder a run folder: ``final/`` (weights, tokenizer, probe) and the manifest."""
    import torch

    from domainlm.artifacts import atomic_dir, write_manifest
    from domainlm.publish.verify import write_reference
    from domainlm.sources.load import auto_class

    with atomic_dir(out) as tmp:
        final = tmp / "final"
        shutil.copytree(merged, final)
        tok = _tokenizer(pair.adapted)
        tok.save_pretrained(str(final))
        for name in ("generation_config.json",):
            src = pair.adapted / name
            if src.is_file():
                shutil.copyfile(src, final / name)
        model = auto_class(pair.objective).from_pretrained(str(final), dtype=torch.float32)
        run_probe = getattr(pair.run, "probe", None)
        if run_probe is not None and Path(run_probe).is_file():
            # the adapted run's own probe tokens (64 validation tokens), so publish checks the merge on the same text
            from safetensors.torch import load_file

            ids = load_file(str(run_probe))["input_ids"]
        else:
            ids = tok("Merged models keep what the base could do.", return_tensors="pt")["input_ids"][:, :64]
        write_reference(model, ids, final / "probe.safetensors")
        del model
        write_manifest(final, "final", complete=True, notes=[f"merge: {merge_info['method']} weight "
                                                              f"{merge_info['weight']}"])
        run = dict(pair.run.manifest) if pair.run is not None else {}
        for key in ("manifest_version", "kind", "complete", "created", "versions"):
            run.pop(key, None)
        config = dict(run.get("config") or {})
        config.setdefault("objective", pair.objective)
        config.setdefault("model", pair.other_spec)
        run.update(config=config, method="full", final_dir="final", objective=pair.objective, merge=merge_info)
        run.setdefault("base", {"name": pair.other_spec})
        if extras is not None:
            extras(tmp)  # selection.json and pareto.png, inside the same atomic folder
        manifest = write_manifest(tmp, "run", complete=True, **run)
    return manifest


def merge_info(cfg: MergeConfig, pair: Pair, weight: float, wall_s: float, **extra: Any) -> dict[str, Any]:
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
