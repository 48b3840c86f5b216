"""Loading a resolved model or its tokenizer: safetensors unless the user allows pickle, fresh parameters reported,
and a config that does not fit its weights refused (:mod:`domainlm.sources.safety`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from domainlm.errors import SourceError
from domainlm.sources.gguf import materialise
from domainlm.sources.resolution import resolve
from domainlm.sources.safety import check_layout, config_mismatch
from domainlm.sources.source import ModelSource

log = logging.getLogger(__name__)


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
        mismatch = config_mismatch(src.path, cls)
        raise SourceError(mismatch or f"could not load model weights from {src.path}: "
                          f"{str(exc).splitlines()[0]}") from None
    check_layout(src.path, model, info)
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


def count_parameters(model, *, trainable_only: bool = False) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total
